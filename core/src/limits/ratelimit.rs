//! The two messages of Envoy's rate-limit service (`envoy.service.ratelimit.v3`,
//! `RateLimitService.ShouldRateLimit`) the filter sends and reads, in protobuf by hand:
//! `core` has no protobuf runtime, and these are a few fields (the control plane's tests
//! check them against the generated types).
//!
//! Each global limit is one descriptor: `limit` = its name, then its key parts; its
//! requests per unit travel as the descriptor's limit override (so the service needs no
//! configuration of its own), its cost as the descriptor's `hits_addend`.

use super::Descriptor;

/// The gRPC service.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
/// Its method.
pub const METHOD: &str = "ShouldRateLimit";

pub(crate) fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire));
}

pub(crate) fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    tag(out, field, 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

pub(crate) fn varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    tag(out, field, 0);
    varint(out, v);
}

/// `envoy.type.v3.RateLimitUnit` of a period in seconds.
pub fn unit(per_seconds: u32) -> u64 {
    match per_seconds {
        1 => 1,
        60 => 2,
        3600 => 3,
        86400 => 4,
        _ => 0,
    }
}

/// A `RateLimitRequest` for `descriptors` in `domain`.
pub fn request(domain: &str, descriptors: &[Descriptor]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + 64 * descriptors.len());
    bytes_field(&mut out, 1, domain.as_bytes());
    for d in descriptors {
        let mut desc = Vec::with_capacity(96);
        for (k, v) in &d.entries {
            let mut entry = Vec::with_capacity(k.len() + v.len() + 4);
            bytes_field(&mut entry, 1, k.as_bytes());
            bytes_field(&mut entry, 2, v.as_bytes());
            bytes_field(&mut desc, 1, &entry);
        }
        let mut limit = Vec::with_capacity(8);
        varint_field(&mut limit, 1, u64::from(d.requests));
        varint_field(&mut limit, 2, unit(d.per_seconds));
        bytes_field(&mut desc, 2, &limit);
        let mut hits = Vec::with_capacity(6);
        varint_field(&mut hits, 1, u64::from(d.cost));
        bytes_field(&mut desc, 3, &hits);
        bytes_field(&mut out, 2, &desc);
    }
    out
}

/// What the service answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// `overall_code` is `OVER_LIMIT`.
    pub over_limit: bool,
    /// Per descriptor, in request order: over its limit, and seconds until its window
    /// resets (0: not said).
    pub statuses: Vec<(bool, u64)>,
}

/// `RateLimitResponse.Code.OVER_LIMIT`.
const OVER_LIMIT: u64 = 2;

pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

/// A field's value (shared with [`crate::guard::external`]'s messages).
pub(crate) enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Skipped,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, at: 0 }
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.bytes.get(self.at)?;
            self.at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }

    fn skip(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let out = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(out)
    }

    /// The next field, `None` at the end, `Some(Err)` on a malformed one.
    pub(crate) fn next(&mut self) -> Option<Result<(u64, Value<'a>), ()>> {
        if self.at >= self.bytes.len() {
            return None;
        }
        Some(self.field().ok_or(()))
    }

    fn field(&mut self) -> Option<(u64, Value<'a>)> {
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.skip(8)?;
                Value::Skipped
            }
            2 => {
                let n = usize::try_from(self.varint()?).ok()?;
                Value::Bytes(self.skip(n)?)
            }
            5 => {
                self.skip(4)?;
                Value::Skipped
            }
            _ => return None,
        };
        Some((key >> 3, value))
    }
}

/// Reads a `RateLimitResponse`; `None` if it is not one.
pub fn answer(bytes: &[u8]) -> Option<Answer> {
    let mut out = Answer::default();
    let mut r = Reader::new(bytes);
    while let Some(field) = r.next() {
        match field.ok()? {
            (1, Value::Varint(code)) => out.over_limit = code == OVER_LIMIT,
            (2, Value::Bytes(status)) => out.statuses.push(status_of(status)?),
            _ => {}
        }
    }
    Some(out)
}

fn status_of(bytes: &[u8]) -> Option<(bool, u64)> {
    let (mut over, mut reset) = (false, 0);
    let mut r = Reader::new(bytes);
    while let Some(field) = r.next() {
        match field.ok()? {
            (1, Value::Varint(code)) => over = code == OVER_LIMIT,
            (4, Value::Bytes(duration)) => {
                let mut d = Reader::new(duration);
                while let Some(f) = d.next() {
                    if let (1, Value::Varint(s)) = f.ok()? {
                        reset = s;
                    }
                }
            }
            _ => {}
        }
    }
    Some((over, reset))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_request_encodes_every_field() {
        let d = Descriptor {
            name: "g".into(),
            entries: vec![("limit", "g".into()), ("tool", "x".into())],
            requests: 300,
            per_seconds: 60,
            cost: 2,
        };
        let bytes = request("mcpgw", &[d]);
        let want: Vec<u8> = [
            &[0x0a, 5][..],
            b"mcpgw",
            &[0x12, 34],
            &[0x0a, 10, 0x0a, 5],
            b"limit",
            &[0x12, 1, b'g'],
            &[0x0a, 9, 0x0a, 4],
            b"tool",
            &[0x12, 1, b'x'],
            &[0x12, 5, 0x08, 0xac, 0x02, 0x10, 2],
            &[0x1a, 2, 0x08, 2],
        ]
        .concat();
        assert_eq!(bytes, want);
    }

    #[test]
    fn answers_read_codes_and_resets_and_refuse_garbage() {
        // overall OVER_LIMIT; statuses: OK, then OVER_LIMIT resetting in 42 s; unknown
        // fields (3: headers, a fixed64) skipped.
        let bytes: Vec<u8> = [
            &[0x08, 2][..],
            &[0x12, 2, 0x08, 1],
            &[0x12, 8, 0x08, 2, 0x18, 0, 0x22, 2, 0x08, 42],
            &[0x1a, 0],
            &[0x09, 0, 0, 0, 0, 0, 0, 0, 0],
        ]
        .concat();
        assert_eq!(
            answer(&bytes).unwrap(),
            Answer {
                over_limit: true,
                statuses: vec![(false, 0), (true, 42)]
            }
        );
        assert_eq!(answer(&[]).unwrap(), Answer::default());
        assert_eq!(answer(&[0x08]), None);
        assert_eq!(answer(&[0x12, 9, 0]), None);
        assert_eq!(answer(&[0x0b]), None, "groups are not used");
    }
}
