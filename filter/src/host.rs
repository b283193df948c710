//! The one host call the filter makes itself instead of through the SDK.
//!
//! The SDK's `get_http_request_headers_bytes` copies every header name and value into
//! its own allocation, and panics on a map or status it does not expect. The filter reads
//! the request's headers once per request, so it asks the host for the serialized map and
//! reads it in place ([`mcpgw_core::header_map`]).

use proxy_wasm::types::{MapType, Status};

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    // Declared as the SDK declares it (`proxy_wasm::hostcalls`), so both name one import.
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;
}

/// The request's header map as the host serialized it; empty if the host has none.
pub fn request_header_map() -> Result<Vec<u8>, Status> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer and a length to the two locations, which live for
    // the call.
    let status =
        unsafe { proxy_get_header_map_pairs(MapType::HttpRequestHeaders, &mut data, &mut size) };
    match status {
        Status::Ok if data.is_null() => Ok(Vec::new()),
        // SAFETY: the host allocated `size` bytes at `data` through this module's
        // `proxy_on_memory_allocate`, which the SDK implements as a `Vec<u8>` of that
        // capacity, leaked; and filled them. Ownership passes to the caller, as the SDK's
        // own map getters take it.
        Status::Ok => Ok(unsafe { Vec::from_raw_parts(data, size, size) }),
        other => Err(other),
    }
}

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    // Declared as the SDK declares them (`proxy_wasm::hostcalls`), whose wrappers panic on
    // a status they do not expect; these return it.
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> Status;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> Status;
}

#[link(wasm_import_module = "wasi_snapshot_preview1")]
unsafe extern "C" {
    fn random_get(buf: *mut u8, buf_len: usize) -> u16;
}

/// A shared-data value and its compare-and-swap token (`None`: absent); an error status
/// reads as absent.
pub fn shared_get(key: &str) -> (Option<Vec<u8>>, Option<u32>) {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    let mut cas: u32 = 0;
    // SAFETY: the key outlives the call; the host writes a pointer, a length and a token
    // to the three locations, which live for the call.
    let status =
        unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
    let cas = (cas != 0).then_some(cas);
    match status {
        Status::Ok if data.is_null() => (None, cas),
        // SAFETY: as for the header map: the host allocated `size` bytes at `data` through
        // this module's allocator, and ownership passes to the caller.
        Status::Ok => (Some(unsafe { Vec::from_raw_parts(data, size, size) }), cas),
        _ => (None, None),
    }
}

/// Stores a shared-data value unless its token moved past `cas`; `false` otherwise (or on
/// any other failure).
pub fn shared_set(key: &str, value: &[u8], cas: Option<u32>) -> bool {
    // SAFETY: key and value outlive the call; the host only reads them.
    let status = unsafe {
        proxy_set_shared_data(
            key.as_ptr(),
            key.len(),
            value.as_ptr(),
            value.len(),
            cas.unwrap_or(0),
        )
    };
    status == Status::Ok
}

/// Fills `out` from the host's random source (WASI `random_get`, which Envoy serves from
/// its own CSPRNG). A failure leaves `out` as it was and is reported.
pub fn random(out: &mut [u8]) -> bool {
    // SAFETY: the host writes exactly `out.len()` bytes into `out`, which lives for the call.
    unsafe { random_get(out.as_mut_ptr(), out.len()) == 0 }
}
