//! A header map as a proxy-wasm host hands it over (`proxy_get_header_map_pairs`), read
//! in place.
//!
//! The layout: the number of pairs as a little-endian `u32`; then, per pair, the name's
//! and the value's length (`u32` each); then, per pair, the name, a NUL, the value, a NUL.
//! The SDK copies every name and value into its own `String` and `Vec`, about 25
//! allocations for a typical request, and panics on a map it does not expect. [`pairs`]
//! borrows them from the one buffer, and ends early on a malformed one instead.

/// The `(name, value)` pairs of a serialized map, in order; ends at the first pair that
/// does not fit in `map`.
pub fn pairs(map: &[u8]) -> Pairs<'_> {
    let count = read_u32(map, 0).unwrap_or(0);
    // Every pair needs 8 bytes of lengths and 2 NULs: a count the buffer cannot hold is a
    // malformed map, read as empty.
    let fits = count
        .checked_mul(10)
        .and_then(|n| n.checked_add(4))
        .is_some_and(|n| n <= map.len());
    let count = if fits { count } else { 0 };
    Pairs {
        map,
        index: 0,
        count,
        data: 4 + count * 8,
    }
}

/// Iterator returned by [`pairs`].
#[derive(Debug, Clone)]
pub struct Pairs<'a> {
    map: &'a [u8],
    index: usize,
    count: usize,
    /// Offset of the next pair's name.
    data: usize,
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.count {
            return None;
        }
        let sizes = 4 + self.index * 8;
        let name_len = read_u32(self.map, sizes)?;
        let value_len = read_u32(self.map, sizes + 4)?;
        let name = slice(self.map, self.data, name_len)?;
        let value_at = self.data.checked_add(name_len)?.checked_add(1)?;
        let value = slice(self.map, value_at, value_len)?;
        self.data = value_at.checked_add(value_len)?.checked_add(1)?;
        self.index += 1;
        Some((name, value))
    }
}

/// Serializes `pairs` as a host does (for tests and tools that drive the exchange without
/// a host). Lengths beyond `u32::MAX` are truncated, which only a test could produce.
pub fn serialize(pairs: &[(&str, &str)]) -> Vec<u8> {
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    let mut out = len(pairs.len()).to_vec();
    for (n, v) in pairs {
        out.extend(len(n.len()));
        out.extend(len(v.len()));
    }
    for (n, v) in pairs {
        out.extend(n.as_bytes());
        out.push(0);
        out.extend(v.as_bytes());
        out.push(0);
    }
    out
}

fn read_u32(map: &[u8], at: usize) -> Option<usize> {
    let bytes: [u8; 4] = map.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(bytes)).ok()
}

fn slice(map: &[u8], at: usize, len: usize) -> Option<&[u8]> {
    map.get(at..at.checked_add(len)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serializes `pairs` as a host does.
    fn collect(map: &[u8]) -> Vec<(String, String)> {
        pairs(map)
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn a_map_reads_back_in_order() {
        let headers = [
            (":method", "POST"),
            (":path", "/mcp"),
            ("accept", "application/json"),
            ("accept", "text/event-stream"),
            ("x-empty", ""),
        ];
        let got = collect(&serialize(&headers));
        let want: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn values_keep_bytes_that_are_not_utf8() {
        let mut map = serialize(&[("x-obs", "ab")]);
        // Replace the value's bytes with obs-text.
        let at = map.len() - 3;
        map[at] = 0xE9;
        let got: Vec<_> = pairs(&map).collect();
        assert_eq!(got, vec![(&b"x-obs"[..], &[0xE9, b'b'][..])]);
    }

    #[test]
    fn empty_and_malformed_maps_read_as_far_as_they_fit() {
        assert!(collect(&[]).is_empty());
        assert!(collect(&serialize(&[])).is_empty());
        // A count the buffer cannot hold.
        assert!(collect(&u32::MAX.to_le_bytes()).is_empty());
        // Truncated in the second pair's value: the first pair still reads.
        let map = serialize(&[("a", "1"), ("b", "22")]);
        let cut = &map[..map.len() - 2];
        assert_eq!(collect(cut), vec![("a".to_string(), "1".to_string())]);
        // A length that points past the end.
        let mut map = serialize(&[("a", "1")]);
        map[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(collect(&map).is_empty());
    }

    #[test]
    fn any_bytes_are_read_without_panicking() {
        // Every prefix of a valid map, and every single-byte corruption of it.
        let map = serialize(&[(":method", "GET"), ("accept", "*/*")]);
        for end in 0..=map.len() {
            let _ = pairs(&map[..end]).count();
        }
        for i in 0..map.len() {
            for b in [0u8, 1, 0x7F, 0xFF] {
                let mut bad = map.clone();
                bad[i] = b;
                let _ = pairs(&bad).count();
            }
        }
    }
}
