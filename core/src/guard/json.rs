//! Rewriting the strings of a JSON text in place: every byte a plugin does not change stays
//! as it was (member order, number spelling, whitespace), so a masked message differs from
//! the original only where something was masked. No tree is built.

use crate::jsonrpc::write_json_string;
use std::borrow::Cow;

/// JSON the walker cannot follow (an unterminated string, a bad escape, invalid UTF-8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed;

/// Every byte of a word set to `c`.
const fn splat(c: u8) -> u64 {
    u64::from_ne_bytes([c; 8])
}

/// The eight bytes of `raw` from `i` as one word, if there are eight.
fn word_at(raw: &[u8], i: usize) -> Option<u64> {
    let bytes = raw.get(i..i.checked_add(8)?)?;
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_ne_bytes)
}

/// Whether any byte of `v` is zero (exact: no false positives or negatives).
const fn has_zero_byte(v: u64) -> bool {
    v.wrapping_sub(splat(0x01)) & !v & splat(0x80) != 0
}

/// The first offset at or after `from` where `raw` holds `a` or `b`: eight bytes at a time
/// while none is either.
pub(crate) fn find2(raw: &[u8], mut from: usize, a: u8, b: u8) -> Option<usize> {
    while let Some(v) = word_at(raw, from) {
        if has_zero_byte(v ^ splat(a)) || has_zero_byte(v ^ splat(b)) {
            break;
        }
        from += 8;
    }
    raw.get(from..)?
        .iter()
        .position(|&c| c == a || c == b)
        .map(|p| from + p)
}

/// The offset just past the string literal that opens at `i` (a `"`), and whether it holds
/// an escape.
fn string_end(raw: &[u8], i: usize) -> Result<(usize, bool), Malformed> {
    let mut j = i + 1;
    let mut escaped = false;
    loop {
        j = find2(raw, j, b'"', b'\\').ok_or(Malformed)?;
        if raw.get(j) == Some(&b'"') {
            return Ok((j + 1, escaped));
        }
        escaped = true;
        j += 2;
    }
}

/// The value of the string literal `raw[start..end]` (quotes included), which holds an
/// escape if `escaped`.
fn decode(raw: &[u8], start: usize, end: usize, escaped: bool) -> Result<Cow<'_, str>, Malformed> {
    let literal = raw.get(start..end).ok_or(Malformed)?;
    let inner = literal
        .get(1..literal.len().saturating_sub(1))
        .ok_or(Malformed)?;
    if escaped {
        serde_json::from_slice::<String>(literal)
            .map(Cow::Owned)
            .map_err(|_| Malformed)
    } else {
        std::str::from_utf8(inner)
            .map(Cow::Borrowed)
            .map_err(|_| Malformed)
    }
}

/// Calls `f` with every string value of the JSON text `raw` (member names are not values)
/// and the name of the member it belongs to (the nearest one: an array's items belong to
/// the array's member; empty at the top level). A string `f` returns replaces the value.
/// Returns the rewritten text, or `None` when nothing changed.
pub(crate) fn map_strings(
    raw: &[u8],
    f: &mut dyn FnMut(&str, &str) -> Option<String>,
) -> Result<Option<Vec<u8>>, Malformed> {
    // Per open container: whether it is an object, and its current member's name.
    let mut stack: Vec<(bool, Cow<'_, str>)> = Vec::new();
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut i = 0;
    while let Some(&c) = raw.get(i) {
        match c {
            b'{' => {
                stack.push((true, Cow::Borrowed("")));
                i += 1;
            }
            b'[' => {
                let name = stack.last().map_or(Cow::Borrowed(""), |(_, n)| n.clone());
                stack.push((false, name));
                i += 1;
            }
            b'}' | b']' => {
                stack.pop();
                i += 1;
            }
            b'"' => {
                let (end, escaped) = string_end(raw, i)?;
                let mut j = end;
                while raw.get(j).is_some_and(u8::is_ascii_whitespace) {
                    j += 1;
                }
                let in_object = stack.last().is_some_and(|(obj, _)| *obj);
                if in_object && raw.get(j) == Some(&b':') {
                    let name = decode(raw, i, end, escaped)?;
                    if let Some(top) = stack.last_mut() {
                        top.1 = name;
                    }
                    i = j + 1;
                    continue;
                }
                let value = decode(raw, i, end, escaped)?;
                let name = stack.last().map_or("", |(_, n)| n.as_ref());
                if let Some(new) = f(name, &value).filter(|n| *n != *value) {
                    let o = out.get_or_insert_with(|| Vec::with_capacity(raw.len() + 64));
                    o.extend_from_slice(raw.get(copied..i).ok_or(Malformed)?);
                    write_json_string(o, &new);
                    copied = end;
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    if let Some(o) = out.as_mut() {
        o.extend_from_slice(raw.get(copied..).ok_or(Malformed)?);
    }
    Ok(out)
}

/// The offset just past the object or array that opens at `start`.
pub(crate) fn value_end(raw: &[u8], start: usize) -> Result<usize, Malformed> {
    if !matches!(raw.get(start), Some(b'{' | b'[')) {
        return Err(Malformed);
    }
    let mut depth = 0usize;
    let mut i = start;
    while let Some(&c) = raw.get(i) {
        match c {
            b'"' => {
                i = string_end(raw, i)?.0;
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1).ok_or(Malformed)?;
                if depth == 0 {
                    return Ok(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    Err(Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn upper_where(raw: &str, member: &str) -> Option<String> {
        map_strings(raw.as_bytes(), &mut |name, s| {
            (name == member).then(|| s.to_uppercase())
        })
        .unwrap()
        .map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn rewrites_values_only_and_keeps_everything_else() {
        let raw = r#"{ "text" : "hi", "n": 1.50, "list": ["a", {"text": "b\"q"}], "text2": "x" }"#;
        assert_eq!(
            upper_where(raw, "text").unwrap(),
            r#"{ "text" : "HI", "n": 1.50, "list": ["a", {"text": "B\"Q"}], "text2": "x" }"#
        );
        assert_eq!(
            upper_where(raw, "list").unwrap(),
            r#"{ "text" : "hi", "n": 1.50, "list": ["A", {"text": "b\"q"}], "text2": "x" }"#
        );
        assert_eq!(upper_where(raw, "missing"), None, "nothing changed");
        // Escapes are decoded before `f` sees them and written back escaped.
        let escaped = r#"{"s":"tab\there \u00e9 \ud83d\ude00"}"#;
        let mut seen = Vec::new();
        map_strings(escaped.as_bytes(), &mut |_, s| {
            seen.push(s.to_owned());
            None
        })
        .unwrap();
        assert_eq!(seen, ["tab\there é 😀"]);
        // Member names are never values, even when they look like them.
        let mut values = Vec::new();
        map_strings(br#"{"a@b.com":"v"}"#, &mut |_, s| {
            values.push(s.to_owned());
            None
        })
        .unwrap();
        assert_eq!(values, ["v"]);
    }

    #[test]
    fn strings_of_every_length_with_escapes_anywhere() {
        // The end of a string is found eight bytes at a time: quotes and escapes at every
        // offset of a word, and strings that end at every offset.
        for len in 0..40 {
            for at in 0..=len {
                for escape in ["", "\\\"", "\\\\", "\\n", "\\u00e9", "é"] {
                    let body: String = "abcdefghij".repeat(4)[..len].to_owned();
                    let value = format!("{}{escape}{}", &body[..at], &body[at..]);
                    let raw = format!(r#"{{"k":"{value}","n":["{value}x"]}}"#);
                    let want: Value = serde_json::from_str(&raw).unwrap();
                    let mut seen = Vec::new();
                    map_strings(raw.as_bytes(), &mut |_, s| {
                        seen.push(s.to_owned());
                        None
                    })
                    .unwrap();
                    let k = want["k"].as_str().unwrap();
                    assert_eq!(seen, [k.to_owned(), format!("{k}x")], "{raw}");
                }
            }
            let open = format!("{{\"k\":\"{}", "x".repeat(len));
            assert_eq!(
                map_strings(open.as_bytes(), &mut |_, _| None),
                Err(Malformed)
            );
            let escaped_quote = format!("{open}\\\"");
            assert_eq!(
                map_strings(escaped_quote.as_bytes(), &mut |_, _| None),
                Err(Malformed)
            );
        }
        for (hay, want) in [
            (&b"0123456789abcdef\"x"[..], Some(16)),
            (b"0123456789abcdefgh\"", Some(18)),
            (b"\"", Some(0)),
            (b"0123456789abcdefgh", None),
            (b"", None),
        ] {
            assert_eq!(find2(hay, 0, b'"', b'\\'), want, "{hay:?}");
        }
        assert_eq!(find2(b"\"ab\"", 1, b'"', b'"'), Some(3));
        assert_eq!(find2(b"ab", 5, b'"', b'"'), None);
    }

    #[test]
    fn malformed_text_is_reported() {
        for bad in [&b"{\"a\":\"open"[..], b"\"\xff\"", b"\"\\x\""] {
            assert_eq!(
                map_strings(bad, &mut |_, _| None),
                Err(Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn finds_where_a_container_ends() {
        let raw = br#"{"result":{"a":"}]","b":[1,{"c":2}]},"id":1}"#;
        let open = 10;
        let end = value_end(raw, open).unwrap();
        assert_eq!(&raw[open..end], br#"{"a":"}]","b":[1,{"c":2}]}"#);
        assert!(value_end(b"{\"a\":1", 0).is_err());
        assert!(value_end(b"1", 0).is_err());
    }
}
