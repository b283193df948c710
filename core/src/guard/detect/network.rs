//! IPv4 and IPv6 addresses.

use super::{Starts, at, before, is_word};
use std::net::Ipv6Addr;

/// Words after which a dotted quad is a version, not an address.
const VERSION_WORDS: [&str; 9] = [
    "version", "ver", "v", "release", "build", "rev", "revision", "firmware", "fw",
];

/// Whether the dotted quad starting at `start` follows a version word (`version 1.2.3.4`,
/// `ver: 1.2.3.4`, `build=1.2.3.4`).
fn after_version_word(text: &str, start: usize) -> bool {
    let head = text.get(..start).unwrap_or_default();
    let head = head.trim_end_matches([' ', '\t', ':', '=', '"', '\'']);
    let word_start = head
        .rfind(|c: char| !c.is_ascii_alphabetic())
        .map_or(0, |i| i + 1);
    let word = head.get(word_start..).unwrap_or_default();
    VERSION_WORDS.iter().any(|w| word.eq_ignore_ascii_case(w))
}

/// The end of a dotted quad of decimal octets (0-255, no leading zeros) at `i`, if any.
fn dotted_quad(b: &[u8], mut i: usize) -> Option<usize> {
    for octet in 0..4 {
        if octet > 0 {
            if at(b, i) != b'.' {
                return None;
            }
            i += 1;
        }
        let start = i;
        while at(b, i).is_ascii_digit() && i - start < 4 {
            i += 1;
        }
        let digits = b.get(start..i)?;
        let value = digits
            .iter()
            .fold(0u32, |v, d| v * 10 + u32::from(d - b'0'));
        if digits.is_empty() || digits.len() > 3 || value > 255 {
            return None;
        }
        if digits.len() > 1 && digits.first() == Some(&b'0') {
            return None;
        }
    }
    Some(i)
}

/// IPv4 addresses: four decimal octets (0-255, no leading zeros) not inside a longer
/// token. The rule against version strings: a dotted quad is not an address when it is
/// part of a longer dotted run (`1.2.3.4.5`), follows a letter (`v1.2.3.4`) or a version
/// word (`version`, `ver`, `v`, `release`, `build`, `rev`, `revision`, `firmware`, `fw`,
/// then spaces, `:` or `=`), or carries a semantic-version suffix (`1.2.3.4-beta`,
/// `1.2.3.4+build`). `8.8.8.8`, `10.0.0.1:8080` and `192.168.0.0/16` are addresses.
pub(super) fn ipv4s(text: &str, mut starts: Starts<'_>, out: &mut Vec<(usize, usize)>) {
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(s) = starts.next_from(i, b.len()) {
        i = s;
        let prev = before(b, i);
        if !at(b, i).is_ascii_digit() || is_word(prev) || prev == b'.' || prev == b'-' {
            i += 1;
            continue;
        }
        let Some(end) = dotted_quad(b, i) else {
            // Skip the rest of this number.
            while at(b, i).is_ascii_digit() {
                i += 1;
            }
            continue;
        };
        let next = at(b, end);
        let longer = is_word(next) || (next == b'.' && at(b, end + 1).is_ascii_digit());
        let suffix = matches!(next, b'-' | b'+') && at(b, end + 1).is_ascii_alphanumeric();
        if !longer && !suffix && !after_version_word(text, i) {
            out.push((i, end));
        }
        // Past this run of digits and dots either way.
        i = end;
        while at(b, i).is_ascii_digit() || (at(b, i) == b'.' && at(b, i + 1).is_ascii_digit()) {
            i += 1;
        }
    }
}

pub(super) fn is_v6_char(c: u8) -> bool {
    c.is_ascii_hexdigit() || c == b':' || c == b'.'
}

/// IPv6 addresses: a run of hex digits, colons (at least two) and dots (an embedded IPv4
/// address) with at least one decimal digit, that the standard library parses as an
/// address, not touching letters, digits or `_` on either side (so `std::vec`, `Foo::Bar`
/// and `a::b` are not addresses, and a MAC address or a time of day does not parse).
pub(super) fn ipv6s(text: &str, mut starts: Starts<'_>, out: &mut Vec<(usize, usize)>) {
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(s) = starts.next_from(i, b.len()) {
        i = s;
        let prev = before(b, i);
        if !is_v6_char(at(b, i)) || at(b, i) == b'.' || is_word(prev) || is_v6_char(prev) {
            i += 1;
            continue;
        }
        let mut end = i;
        while is_v6_char(at(b, end)) {
            end += 1;
        }
        let run_end = end;
        // A sentence's full stop or colon is not part of the address.
        while end > i && before(b, end) == b'.' {
            end -= 1;
        }
        if before(b, end) == b':' && before(b, end.saturating_sub(1)) != b':' {
            end -= 1;
        }
        let candidate = text.get(i..end).unwrap_or_default();
        let colons = candidate.bytes().filter(|c| *c == b':').count();
        let digit = candidate.bytes().any(|c| c.is_ascii_digit());
        if colons >= 2 && digit && !is_word(at(b, run_end)) && candidate.parse::<Ipv6Addr>().is_ok()
        {
            out.push((i, end));
        }
        i = run_end.max(i + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::super::Detector;
    use super::super::tests::found;

    #[test]
    fn ipv4_addresses_but_not_versions() {
        let cases: [(&str, &[&str]); 16] = [
            ("ping 8.8.8.8 now", &["8.8.8.8"]),
            ("host 10.0.0.1:8080", &["10.0.0.1"]),
            ("net 192.168.0.0/16.", &["192.168.0.0"]),
            ("\"addr\":\"172.16.254.1\"", &["172.16.254.1"]),
            ("from 1.2.3.4", &["1.2.3.4"]),
            // Traps: versions, longer runs, out-of-range octets, leading zeros.
            ("version 1.2.3.4", &[]),
            ("Version: 10.0.19041.1", &[]),
            ("build=4.1.2.0", &[]),
            ("v1.2.3.4", &[]),
            ("release 2.0.0.1 notes", &[]),
            ("pkg 1.2.3.4-beta", &[]),
            ("oid 1.3.6.1.4.1", &[]),
            ("bad 256.1.1.1", &[]),
            ("zeros 010.1.1.1", &[]),
            ("range 1.2.3", &[]),
            ("price 1.25", &[]),
        ];
        for (text, want) in cases {
            assert_eq!(found(text, Detector::IpAddress), want, "{text}");
        }
    }

    #[test]
    fn ipv6_addresses_but_not_paths_times_or_macs() {
        let cases: [(&str, &[&str]); 10] = [
            (
                "dst 2001:db8:85a3::8a2e:370:7334 ok",
                &["2001:db8:85a3::8a2e:370:7334"],
            ),
            ("loopback [::1]:8080", &["::1"]),
            (
                "link fe80::1ff:fe23:4567:890a.",
                &["fe80::1ff:fe23:4567:890a"],
            ),
            (
                "full 2001:0db8:0000:0000:0000:ff00:0042:8329",
                &["2001:0db8:0000:0000:0000:ff00:0042:8329"],
            ),
            ("mapped ::ffff:192.0.2.1", &["::ffff:192.0.2.1"]),
            // Traps.
            ("use std::vec::Vec", &[]),
            ("at 12:30:45 today", &[]),
            ("mac 00:1A:2B:3C:4D:5E", &[]),
            ("ratio a::b is odd", &[]),
            ("scope Foo::Bar", &[]),
        ];
        for (text, want) in cases {
            assert_eq!(found(text, Detector::IpAddress), want, "{text}");
        }
    }
}
