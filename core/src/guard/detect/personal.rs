//! Email addresses, phone numbers and US Social Security numbers.

use super::{Starts, at, before, is_word};

/// Characters of an email's local part (the common ones; quoted local parts are not
/// looked for).
fn is_local(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-')
}

/// Email addresses: `local@domain.tld`. The local part is 1 to 64 characters of letters,
/// digits and `._%+-`, not starting with a dot; the domain has at least two labels of
/// letters, digits and `-` (not at a label's ends) and ends in an alphabetic TLD of at
/// least two letters. `user@localhost` and `@handles` are not addresses.
pub(super) fn emails(b: &[u8], mut starts: Starts<'_>, out: &mut Vec<(usize, usize)>) {
    let mut from = 0;
    while let Some(at_sign) = starts.next_from(from, b.len()) {
        from = at_sign + 1;
        if at(b, at_sign) != b'@' {
            continue;
        }
        let mut start = at_sign;
        while start > 0 && is_local(before(b, start)) {
            start -= 1;
        }
        while start < at_sign && at(b, start) == b'.' {
            start += 1;
        }
        if start == at_sign || at_sign - start > 64 || before(b, at_sign) == b'.' {
            continue;
        }
        let mut end = at_sign + 1;
        while at(b, end).is_ascii_alphanumeric() || matches!(at(b, end), b'-' | b'.') {
            end += 1;
        }
        while end > at_sign + 1 && matches!(before(b, end), b'.' | b'-') {
            end -= 1;
        }
        let Some(domain) = b.get(at_sign + 1..end) else {
            continue;
        };
        let labels: Vec<&[u8]> = domain.split(|&c| c == b'.').collect();
        let tld_ok = labels
            .last()
            .is_some_and(|t| t.len() >= 2 && t.iter().all(u8::is_ascii_alphabetic));
        let labels_ok = labels.iter().all(|l| {
            !l.is_empty() && l.first() != Some(&b'-') && l.last() != Some(&b'-') && l.len() <= 63
        });
        if labels.len() >= 2 && tld_ok && labels_ok {
            out.push((start, end));
            from = end;
        }
    }
}

/// A run of digit groups and the separators between them, as written.
#[derive(Debug, Default)]
struct Groups {
    /// `(start, end)` of each group of digits (a parenthesised group includes its
    /// parentheses).
    spans: Vec<(usize, usize)>,
    /// Digits per group.
    digits: Vec<usize>,
    /// Whether each group was parenthesised.
    paren: Vec<bool>,
    /// The separator before each group after the first (`0`: none, after a `)`).
    seps: Vec<u8>,
}

/// Reads digit groups from `i` on: digits, optionally one group in parentheses, joined by
/// single separators from `seps` (a `)` may be followed by a space or nothing).
fn groups(b: &[u8], mut i: usize, seps: &[u8]) -> Groups {
    let mut g = Groups::default();
    loop {
        let start = i;
        let paren = at(b, i) == b'(';
        if paren {
            i += 1;
        }
        let digits_start = i;
        while at(b, i).is_ascii_digit() {
            i += 1;
        }
        let n = i - digits_start;
        if n == 0 || (paren && at(b, i) != b')') {
            break;
        }
        if paren {
            i += 1;
        }
        g.spans.push((start, i));
        g.digits.push(n);
        g.paren.push(paren);
        // The next group, if a separator and a digit (or `(`) follow.
        let sep = at(b, i);
        let next = if paren && (at(b, i).is_ascii_digit()) {
            g.seps.push(0);
            continue;
        } else if seps.contains(&sep) {
            at(b, i + 1)
        } else {
            break;
        };
        if next.is_ascii_digit() || (next == b'(' && !g.paren.contains(&true)) {
            g.seps.push(sep);
            i += 1;
        } else {
            break;
        }
    }
    g
}

/// Whether what ends at `end` is not part of something longer (a word, a number).
fn ends_clean(b: &[u8], end: usize) -> bool {
    let next = at(b, end);
    !(is_word(next) || (matches!(next, b'.' | b'-' | b',') && at(b, end + 1).is_ascii_digit()))
}

/// Whether what starts at `start` is not part of something longer.
fn starts_clean(b: &[u8], start: usize) -> bool {
    let prev = before(b, start);
    !(is_word(prev)
        || matches!(prev, b'+' | b'/' | b'$' | b'#' | b'=')
        || (matches!(prev, b'.' | b'-' | b',' | b':')
            && before(b, start.saturating_sub(1)).is_ascii_digit()))
}

/// Phone numbers, in one of these forms (anything else is not one, so dates, versions,
/// IPs, order ids and card numbers are not):
/// - international: `+` and 8 to 15 digits, in one group or in groups of 1 to 5 digits
///   joined by single spaces, `-` or `.` (one group may be parenthesised);
/// - North American: `415-555-2671`, `(415) 555-2671`, `415.555.2671`, `1 415 555 2671`:
///   3-3-4 digits (after an optional `1`), one kind of separator;
/// - national with a trunk `0`: `020 7946 0958`, `030-123456`: 10 or 11 digits in 2 to 4
///   groups joined by spaces or `-`.
///
/// A bare run of digits without `+` is never a phone number: an id, a timestamp or an
/// amount looks the same.
pub(super) fn phones(b: &[u8], mut starts: Starts<'_>, out: &mut Vec<(usize, usize)>) {
    let mut i = 0;
    while let Some(s) = starts.next_from(i, b.len()) {
        i = s;
        let c = at(b, i);
        let plus = c == b'+';
        if !(plus || c == b'(' || c.is_ascii_digit()) || !starts_clean(b, i) {
            i += 1;
            continue;
        }
        let first = if plus { i + 1 } else { i };
        let g = groups(b, first, b" -.");
        if g.spans.is_empty() {
            i += 1;
            continue;
        }
        let run_end = g.spans.last().map_or(i + 1, |s| s.1);
        // The longest prefix of the groups that is a phone number, ending cleanly.
        let found = (1..=g.spans.len()).rev().find_map(|n| {
            let end = g.spans.get(n - 1)?.1;
            (is_phone(&g, n, plus, b, first) && ends_clean(b, end)).then_some(end)
        });
        match found {
            Some(end) => {
                out.push((i, end));
                i = end;
            }
            None => i = run_end.max(i + 1),
        }
    }
}

/// Whether the first `n` groups of `g` (read from `first`) make a phone number.
fn is_phone(g: &Groups, n: usize, plus: bool, b: &[u8], first: usize) -> bool {
    let digits = g.digits.get(..n).unwrap_or_default();
    let paren = g.paren.get(..n).unwrap_or_default();
    let seps = g.seps.get(..n.saturating_sub(1)).unwrap_or_default();
    let total: usize = digits.iter().sum();
    if paren.iter().filter(|p| **p).count() > 1 {
        return false;
    }
    if plus {
        return (8..=15).contains(&total)
            && (n == 1 || digits.iter().all(|d| (1..=5).contains(d)))
            && !paren.first().copied().unwrap_or(false);
    }
    // One kind of separator, not counting the one after a parenthesised group.
    let mut kinds = seps
        .iter()
        .zip(paren)
        .filter(|(s, p)| **s != 0 && !**p)
        .map(|(s, _)| *s);
    let one_sep_kind = kinds.next().is_none_or(|k| kinds.all(|s| s == k));
    // North American 3-3-4, with an optional leading 1.
    let nanp = match digits {
        [3, 3, 4] => true,
        [1, 3, 3, 4] => at(b, first) == b'1' && !paren.first().copied().unwrap_or(false),
        _ => false,
    };
    let paren_ok = paren
        .iter()
        .zip(digits)
        .all(|(p, d)| !p || (*d == 3 && nanp));
    if nanp && one_sep_kind && paren_ok {
        return true;
    }
    // National with a trunk 0; no dots (dotted numbers are versions and addresses).
    at(
        b,
        first + usize::from(paren.first().copied().unwrap_or(false)),
    ) == b'0'
        && (2..=4).contains(&n)
        && (10..=11).contains(&total)
        && digits.iter().all(|d| (2..=8).contains(d))
        && seps.iter().all(|s| matches!(s, b' ' | b'-' | 0))
        && one_sep_kind
}

/// US Social Security numbers written `ddd-dd-dddd` or `ddd dd dddd`, excluding numbers
/// never issued (area 000, 666 or 9xx; group 00; serial 0000). Nine digits without
/// separators are not looked for: every nine-digit id would match.
pub(super) fn ssns(b: &[u8], mut starts: Starts<'_>, out: &mut Vec<(usize, usize)>) {
    let mut i = 0;
    while let Some(s) = starts.next_from(i, b.len()) {
        i = s;
        if i + 11 > b.len() {
            break;
        }
        if !at(b, i).is_ascii_digit() || !starts_clean(b, i) {
            i += 1;
            continue;
        }
        let g = groups(b, i, b"- ");
        let end = i + 11;
        let shape = g.digits.get(..3) == Some(&[3, 2, 4])
            && g.seps.first().is_some_and(|s| *s != 0)
            && g.seps.first() == g.seps.get(1)
            && !g.paren.contains(&true);
        if shape && ends_clean(b, end) {
            let d = |k: usize| usize::from(at(b, k) - b'0');
            let area = d(i) * 100 + d(i + 1) * 10 + d(i + 2);
            let group = d(i + 4) * 10 + d(i + 5);
            let serial = (i + 7..i + 11).fold(0, |n, k| n * 10 + d(k));
            if area != 0 && area != 666 && area < 900 && group != 0 && serial != 0 {
                out.push((i, end));
                i = end;
                continue;
            }
        }
        i = g.spans.last().map_or(i + 1, |s| s.1.max(i + 1));
    }
}

#[cfg(test)]
mod tests {
    use super::super::Detector;
    use super::super::tests::found;

    #[test]
    fn emails_in_prose_json_and_urls() {
        let cases: [(&str, &[&str]); 9] = [
            (
                "Contact jane.doe+mcp@mail.example.co.uk today.",
                &["jane.doe+mcp@mail.example.co.uk"],
            ),
            ("<bob@example.com>", &["bob@example.com"]),
            ("mailto:ops@corp.example", &["ops@corp.example"]),
            ("a@b.c is too short a TLD", &[]),
            ("root@localhost", &[]),
            ("follow @handle on social", &[]),
            ("git@github.com:org/repo.git", &["git@github.com"]),
            ("x@-bad-.com and y@ok-host.io.", &["y@ok-host.io"]),
            (".lead@example.com trail", &["lead@example.com"]),
        ];
        for (text, want) in cases {
            assert_eq!(found(text, Detector::Email), want, "{text}");
        }
    }

    #[test]
    fn phones_in_the_formats_people_write() {
        let cases: [(&str, &[&str]); 16] = [
            ("call +1 415-555-2671 now", &["+1 415-555-2671"]),
            ("intl +44 20 7946 0958.", &["+44 20 7946 0958"]),
            ("e164 +14155552671", &["+14155552671"]),
            ("(415) 555-2671", &["(415) 555-2671"]),
            ("415.555.2671", &["415.555.2671"]),
            ("1 415 555 2671", &["1 415 555 2671"]),
            ("uk 020 7946 0958", &["020 7946 0958"]),
            ("de 030-12345678", &["030-12345678"]),
            ("call 555-123-4567 2 times", &["555-123-4567"]),
            // Traps.
            ("order 4155552671 shipped", &[]),
            ("released 2024-01-15 at 12:30", &[]),
            ("server 192.168.100.200", &[]),
            ("card 4111 1111 1111 1111", &[]),
            ("version 1.2.3.4", &[]),
            ("price $415-555-2671", &[]),
            ("mixed 415-555.2671", &[]),
        ];
        for (text, want) in cases {
            assert_eq!(found(text, Detector::Phone), want, "{text}");
        }
    }

    #[test]
    fn ssns_with_separators_and_valid_ranges() {
        let cases: [(&str, &[&str]); 9] = [
            ("ssn 123-45-6789.", &["123-45-6789"]),
            ("ssn: 123 45 6789", &["123 45 6789"]),
            ("000-12-3456", &[]),
            ("666-12-3456", &[]),
            ("900-12-3456", &[]),
            ("123-00-4567", &[]),
            ("123-45-0000", &[]),
            ("123456789 plain", &[]),
            ("part 1123-45-6789 or 123-45-67890 or 123-45 6789", &[]),
        ];
        for (text, want) in cases {
            assert_eq!(found(text, Detector::Ssn), want, "{text}");
        }
    }
}
