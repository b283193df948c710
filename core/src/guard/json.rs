//! Rewriting the strings of a JSON text in place: every byte a plugin does not change stays
//! as it was (member order, number spelling, whitespace), so a masked message differs from
//! the original only where something was masked. No tree is built.

use crate::jsonrpc::stream::MAX_DEPTH;
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
    if a == b {
        while let Some(v) = word_at(raw, from) {
            if has_zero_byte(v ^ splat(a)) {
                break;
            }
            from += 8;
        }
    }
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
///
/// Only strings are checked: the walk is for text a parser has already accepted (see
/// [`map_message_strings`] for text none has).
pub(crate) fn map_strings(
    raw: &[u8],
    f: &mut dyn FnMut(&str, &str) -> Option<String>,
) -> Result<Option<Vec<u8>>, Malformed> {
    walk::<false>(raw, None, f).map(|(_, new)| new)
}

/// [`map_strings`] on a whole message, checked as a strict parser would check it: RFC 8259
/// syntax (no control character in a string, no leading zero, nothing but whitespace after
/// the value), nesting no deeper than the parser's [`MAX_DEPTH`] (the parser's skim does not
/// limit it), and no object that repeats a member name (parsers keep one or the other, so
/// a repeated name could hide text from a check that reads the other). Only the strings
/// of the object or array that opens at `raw[region]` go to `f` (none when no container
/// opens there). Returns the offset just past that container (`None`: none opened there),
/// and the message rewritten.
pub(crate) fn map_message_strings(
    raw: &[u8],
    region: usize,
    f: &mut dyn FnMut(&str, &str) -> Option<String>,
) -> Result<(Option<usize>, Option<Vec<u8>>), Malformed> {
    walk::<true>(raw, Some(region), f)
}

/// What may come next in a strict walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A value.
    Value,
    /// A value, or `]` (just after `[`).
    ValueOrClose,
    /// A member name, or `}` too when `true` (just after `{`).
    Name(bool),
    /// The `:` after a member name.
    Colon,
    /// A `,` or the end of the container.
    CommaOrClose,
}

/// The offset just past the number or literal (`true`, `false`, `null`) at `raw[i]`.
fn scalar_end(raw: &[u8], mut i: usize) -> Result<usize, Malformed> {
    for literal in [&b"true"[..], b"false", b"null"] {
        if raw.get(i..).is_some_and(|r| r.starts_with(literal)) {
            return Ok(i + literal.len());
        }
    }
    let digits = |i: &mut usize| {
        let from = *i;
        while raw.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i > from
    };
    if raw.get(i) == Some(&b'-') {
        i += 1;
    }
    match raw.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return Err(Malformed),
    }
    if raw.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return Err(Malformed);
        }
    }
    if matches!(raw.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(raw.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(&mut i) {
            return Err(Malformed);
        }
    }
    Ok(i)
}

/// One open container of a walk.
struct Open<'a> {
    object: bool,
    /// The current member's name (an array's: its member's).
    name: Cow<'a, str>,
    /// (strict) Where this object's names start in the walk's list of names.
    names_from: usize,
}

/// The walk of [`map_strings`] (lax, `region`: `None`) and of [`map_message_strings`]
/// (`STRICT`, only the strings of the container at `region` read).
fn walk<'a, const STRICT: bool>(
    raw: &'a [u8],
    region: Option<usize>,
    f: &mut dyn FnMut(&str, &str) -> Option<String>,
) -> Result<(Option<usize>, Option<Vec<u8>>), Malformed> {
    // A constant: the lax walk carries none of the strict one's checks.
    let strict = STRICT;
    // (strict) How deep the region's container is, while the walk is in it; where it ended.
    let mut inside: Option<usize> = None;
    let mut region_end = None;
    let mut stack: Vec<Open<'a>> = Vec::new();
    // (strict) The member names of the open objects, to find a repeated one.
    let mut names: Vec<Cow<'a, str>> = Vec::new();
    let mut expect = Expect::Value;
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut i = 0;
    // (strict) Whether the outermost value has been read whole.
    let mut ended = false;
    while let Some(&c) = raw.get(i) {
        if ended && !c.is_ascii_whitespace() {
            return Err(Malformed);
        }
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'{' | b'[' => {
                if strict
                    && (!matches!(expect, Expect::Value | Expect::ValueOrClose)
                        || stack.len() >= MAX_DEPTH)
                {
                    return Err(Malformed);
                }
                let object = c == b'{';
                let name = match (object, stack.last()) {
                    (false, Some(top)) => top.name.clone(),
                    _ => Cow::Borrowed(""),
                };
                stack.push(Open {
                    object,
                    name,
                    names_from: names.len(),
                });
                if region == Some(i) {
                    inside = Some(stack.len());
                }
                expect = if object {
                    Expect::Name(true)
                } else {
                    Expect::ValueOrClose
                };
                i += 1;
            }
            b'}' | b']' => {
                let top = stack.pop();
                if strict {
                    let top = top.ok_or(Malformed)?;
                    let object = c == b'}';
                    let may_close = expect == Expect::CommaOrClose
                        || expect
                            == (if object {
                                Expect::Name(true)
                            } else {
                                Expect::ValueOrClose
                            });
                    if top.object != object || !may_close {
                        return Err(Malformed);
                    }
                    if object {
                        let own = names.get_mut(top.names_from..).unwrap_or_default();
                        own.sort_unstable();
                        if own.windows(2).any(|w| w.first() == w.get(1)) {
                            return Err(Malformed);
                        }
                        names.truncate(top.names_from);
                    }
                }
                if inside.is_some_and(|depth| stack.len() < depth) {
                    inside = None;
                    region_end = Some(i + 1);
                }
                ended = strict && stack.is_empty();
                expect = Expect::CommaOrClose;
                i += 1;
            }
            b',' if strict => {
                if expect != Expect::CommaOrClose {
                    return Err(Malformed);
                }
                expect = match stack.last() {
                    Some(top) if top.object => Expect::Name(false),
                    _ => Expect::Value,
                };
                i += 1;
            }
            b':' if strict => {
                if expect != Expect::Colon {
                    return Err(Malformed);
                }
                expect = Expect::Value;
                i += 1;
            }
            b'"' => {
                let (end, escaped) = string_end(raw, i)?;
                // Where the walk goes on after a member name (past its `:`, when lax).
                let mut next = end;
                let is_name = if strict {
                    match expect {
                        Expect::Name(_) => true,
                        Expect::Value | Expect::ValueOrClose => false,
                        Expect::Colon | Expect::CommaOrClose => return Err(Malformed),
                    }
                } else {
                    let mut j = end;
                    while raw.get(j).is_some_and(u8::is_ascii_whitespace) {
                        j += 1;
                    }
                    next = j + 1;
                    stack.last().is_some_and(|top| top.object) && raw.get(j) == Some(&b':')
                };
                if strict
                    && !escaped
                    && raw.get(i..end).is_some_and(|s| s.iter().any(|&b| b < 0x20))
                {
                    return Err(Malformed);
                }
                if is_name {
                    let name = decode(raw, i, end, escaped)?;
                    if strict {
                        names.push(name.clone());
                        expect = Expect::Colon;
                    }
                    if let Some(top) = stack.last_mut() {
                        top.name = name;
                    }
                    i = next;
                    continue;
                }
                ended = strict && stack.is_empty();
                expect = Expect::CommaOrClose;
                if strict && inside.is_none() {
                    // Outside the region: checked, not read.
                    decode(raw, i, end, escaped)?;
                    i = end;
                    continue;
                }
                let value = decode(raw, i, end, escaped)?;
                let name = stack.last().map_or("", |top| top.name.as_ref());
                if let Some(new) = f(name, &value).filter(|n| *n != *value) {
                    let o = out.get_or_insert_with(|| Vec::with_capacity(raw.len() + 64));
                    o.extend_from_slice(raw.get(copied..i).ok_or(Malformed)?);
                    write_json_string(o, &new);
                    copied = end;
                }
                i = end;
            }
            _ if strict => {
                if !matches!(expect, Expect::Value | Expect::ValueOrClose) {
                    return Err(Malformed);
                }
                i = scalar_end(raw, i)?;
                ended = stack.is_empty();
                expect = Expect::CommaOrClose;
            }
            _ => i += 1,
        }
    }
    if strict && !ended {
        return Err(Malformed);
    }
    if let Some(o) = out.as_mut() {
        o.extend_from_slice(raw.get(copied..).ok_or(Malformed)?);
    }
    Ok((region_end, out))
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

    /// Whether the strict walk accepts `raw` whole (and ends where it does).
    fn strict_accepts(raw: &str) -> bool {
        map_message_strings(raw.as_bytes(), 0, &mut |_, _| None).is_ok()
    }

    #[test]
    fn the_strict_walk_accepts_what_a_strict_parser_accepts() {
        let valid = [
            r#"{}"#,
            r#"[]"#,
            r#"{"a":[1,-2.5e+3,0,0.0,1E9,true,false,null,"x",{},[]]}"#,
            " { \"a\" : [ 1 , { \"b\" : \"c\" } ] , \"b\":\"\\u0041\\n\" } ",
            r#"{"a":{"a":{"a":1}},"b":[{"a":1},{"a":2}]}"#,
            r#"[[[["deep"]]]]"#,
            r#"{"é":"ü","\u00e9x":"😀"}"#,
        ];
        for raw in valid {
            assert!(serde_json::from_str::<Value>(raw).is_ok(), "{raw}");
            assert!(strict_accepts(raw), "{raw}");
        }
        let invalid = [
            r#"{"a":1,}"#,
            r#"[1,]"#,
            r#"{"a" 1}"#,
            r#"{"a":1 "b":2}"#,
            r#"{'a':1}"#,
            r#"{"a":'x'}"#,
            r#"{a:1}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":-}"#,
            r#"{"a":1e}"#,
            r#"{"a":tru}"#,
            r#"{"a":nul}"#,
            r#"{"a":NaN}"#,
            r#"{"a":+1}"#,
            r#"{"a":1}}"#,
            r#"{"a":[1}"#,
            r#"{"a":1]"#,
            r#"{"a":1 /* no */}"#,
            "{\"a\":\"tab\there\"}",
            r#"{"a":"\x"}"#,
            r#"{"a":1,"a":2}"#,
            r#"{"a":1,"b":{"c":1,"c":2}}"#,
            r#"{"a":1,"\u0061":2}"#,
            r#"[{"x":1},{"y":1,"y":1}]"#,
            r#"{"a":"#,
            r#"{"a":1"#,
            r#"{:1}"#,
            r#"{"a"::1}"#,
            r#"["a":1]"#,
        ];
        for raw in invalid {
            assert!(!strict_accepts(raw), "{raw}");
        }
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(strict_accepts(&deep(MAX_DEPTH)));
        assert!(!strict_accepts(&deep(MAX_DEPTH + 1)));
        assert!(!strict_accepts(&deep(4 * 1024 * 1024)), "refused, not held");
        for raw in ["{} x", "{}{}", "[] []", "1", "\"a\""] {
            assert_eq!(strict_accepts(raw), raw.len() < 4, "{raw}");
        }
        // Only the region's strings are read; the rest is checked and kept.
        let body = r#"{"t":"a","result":{"t":"a@b","n":[1,{"t":"c"}]},"z":{"t":"a@b"}} "#;
        let open = body.find(r#"{"t":"a@b""#).unwrap();
        let (end, new) = map_message_strings(body.as_bytes(), open, &mut |name, s| {
            (name == "t").then(|| s.to_uppercase())
        })
        .unwrap();
        assert_eq!(
            &body[open..end.unwrap()],
            r#"{"t":"a@b","n":[1,{"t":"c"}]}"#
        );
        assert_eq!(
            String::from_utf8(new.unwrap()).unwrap(),
            r#"{"t":"a","result":{"t":"A@B","n":[1,{"t":"C"}]},"z":{"t":"a@b"}} "#
        );
        let (end, new) = map_message_strings(body.as_bytes(), 1, &mut |_, _| None).unwrap();
        assert_eq!((end, new), (None, None), "no container opens there");
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
