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
