//! What an upstream's response body is, judged by its first bytes instead of its
//! `Content-Type`.
//!
//! The filter observes JSON and SSE responses. Asking the host for the `Content-Type`
//! header costs a host call and a copy into the module, about 3% of everything Envoy does
//! for a request (`make bench-instructions`), while the body's first bytes arrive anyway:
//! a JSON-RPC body starts with `{` or `[`, an event stream with a field name or a comment.
//! Anything else (an HTML error page, Envoy's own `upstream connect error …`) is neither,
//! and is not read further.

/// What a response body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// A JSON value (`{` or `[` first).
    Json,
    /// An event stream: its first line starts like `data:`, `event:`, `id:`, `retry:` or a
    /// `:` comment.
    EventStream,
    /// Neither: not observed.
    Other,
}

/// The kind of a body that starts with `start`; `None` while it has shown nothing but
/// whitespace (and a UTF-8 byte order mark), so the next chunk decides.
pub fn sniff(start: &[u8]) -> Option<BodyKind> {
    let start = start.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(start);
    let first = start
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))?;
    Some(match first {
        b'{' | b'[' => BodyKind::Json,
        // The first letters of SSE's four field names, and the comment mark. Any other
        // text starting with one of them is read as an event stream whose lines carry no
        // `data` field, so nothing is counted from it.
        b':' | b'd' | b'e' | b'i' | b'r' => BodyKind::EventStream,
        _ => BodyKind::Other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_bodies() {
        assert_eq!(sniff(br#"{"jsonrpc":"2.0"}"#), Some(BodyKind::Json));
        assert_eq!(sniff(b"[{}]"), Some(BodyKind::Json));
        assert_eq!(sniff(b" \r\n\t{"), Some(BodyKind::Json));
        assert_eq!(sniff(b"\xEF\xBB\xBF{"), Some(BodyKind::Json));
    }

    #[test]
    fn event_streams() {
        for start in [
            &b"data: {}\n\n"[..],
            b"event: message\ndata: {}\n\n",
            b"id: 7\ndata: {}\n\n",
            b"retry: 1000\n\n",
            b": keep-alive\n\n",
            b"\n\ndata: {}\n\n",
            b"\xEF\xBB\xBFdata: {}\n\n",
        ] {
            assert_eq!(
                sniff(start),
                Some(BodyKind::EventStream),
                "{}",
                String::from_utf8_lossy(start)
            );
        }
    }

    #[test]
    fn anything_else_is_not_observed() {
        for start in [
            &b"<html><body>502</body></html>"[..],
            b"upstream connect error or disconnect/reset before headers",
            b"no healthy upstream",
            b"42",
            b"\"text\"",
        ] {
            assert_eq!(
                sniff(start),
                Some(BodyKind::Other),
                "{}",
                String::from_utf8_lossy(start)
            );
        }
    }

    #[test]
    fn whitespace_alone_waits_for_more() {
        assert_eq!(sniff(b""), None);
        assert_eq!(sniff(b"  \r\n"), None);
        assert_eq!(sniff(b"\xEF\xBB\xBF"), None);
    }
}
