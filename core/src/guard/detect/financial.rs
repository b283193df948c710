//! Payment card numbers (Luhn) and IBANs (mod 97).

use super::{Starts, at, before, is_word};

/// Digits of groups joined by one kind of separator, read from `i`: the digits, and the end
/// offset after each group.
fn digit_groups(b: &[u8], mut i: usize) -> (Vec<u8>, Vec<(usize, usize)>) {
    let mut digits = Vec::new();
    let mut ends = Vec::new();
    let mut sep = None;
    loop {
        while at(b, i).is_ascii_digit() {
            digits.push(at(b, i) - b'0');
            i += 1;
        }
        ends.push((i, digits.len()));
        let s = at(b, i);
        let joins = matches!(s, b' ' | b'-') && sep.is_none_or(|k| k == s);
        if !joins || !at(b, i + 1).is_ascii_digit() || digits.len() > 19 {
            break;
        }
        sep = Some(s);
        i += 1;
    }
    (digits, ends)
}

/// The Luhn checksum holds.
fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Whether `digits` start like a number of a card network of that length (Visa,
/// Mastercard, American Express, Discover, Diners Club, JCB, UnionPay).
fn card_network(digits: &[u8]) -> bool {
    let n = |k: usize| {
        digits
            .get(..k)
            .map_or(0, |p| p.iter().fold(0u32, |v, &d| v * 10 + u32::from(d)))
    };
    let len = digits.len();
    match digits.first() {
        Some(4) => matches!(len, 13 | 16 | 19),
        Some(5) => (51..=55).contains(&n(2)) && len == 16,
        Some(2) => (2221..=2720).contains(&n(4)) && len == 16,
        Some(3) => {
            ((n(2) == 34 || n(2) == 37) && len == 15)
                || (((300..=305).contains(&n(3)) || matches!(n(2), 36 | 38 | 39))
                    && (14..=19).contains(&len))
                || ((3528..=3589).contains(&n(4)) && (16..=19).contains(&len))
        }
        Some(6) => {
            (n(4) == 6011 || (644..=649).contains(&n(3)) || n(2) == 65 || n(2) == 62)
                && (16..=19).contains(&len)
        }
        _ => false,
    }
}

/// Payment card numbers: 13 to 19 digits, plain or in groups joined by single spaces or
/// dashes (one kind), that start with a card network's prefix for that length and pass the
/// Luhn check. So an order id of 16 digits that fails Luhn, or passes it by chance without
/// a network's prefix, is not a card. A number inside a longer run of digits or a word is
/// not looked at.
pub(super) fn cards(b: &[u8], mut starts: Starts<'_>, out: &mut Vec<(usize, usize)>) {
    let mut i = 0;
    while let Some(s) = starts.next_from(i, b.len()) {
        i = s;
        let prev = before(b, i);
        let clean = !(is_word(prev)
            || prev == b'.'
            || (matches!(prev, b'-' | b' ') && before(b, i.saturating_sub(1)).is_ascii_digit()));
        if !at(b, i).is_ascii_digit() || !clean {
            i += 1;
            continue;
        }
        let (digits, ends) = digit_groups(b, i);
        let run_end = ends.last().map_or(i + 1, |e| e.0);
        // The longest run of whole groups that is a card number ("4111 1111 1111 1111 12/25"
        // ends before the expiry).
        let found = ends.iter().rev().find(|(end, n)| {
            let d = digits.get(..*n).unwrap_or_default();
            (13..=19).contains(n)
                && !is_word(at(b, *end))
                && !(at(b, *end) == b'.' && at(b, end + 1).is_ascii_digit())
                && card_network(d)
                && luhn(d)
        });
        match found {
            Some((end, _)) => {
                out.push((i, *end));
                i = *end;
            }
            None => i = run_end.max(i + 1),
        }
    }
}

/// IBAN length per country (ISO 13616 registry).
const IBAN_LENGTHS: &[(&[u8; 2], usize)] = &[
    (b"AD", 24),
    (b"AE", 23),
    (b"AL", 28),
    (b"AT", 20),
    (b"AZ", 28),
    (b"BA", 20),
    (b"BE", 16),
    (b"BG", 22),
    (b"BH", 22),
    (b"BR", 29),
    (b"BY", 28),
    (b"CH", 21),
    (b"CR", 22),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DK", 18),
    (b"DO", 28),
    (b"EE", 20),
    (b"EG", 29),
    (b"ES", 24),
    (b"FI", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"GE", 22),
    (b"GI", 23),
    (b"GL", 18),
    (b"GR", 27),
    (b"GT", 28),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IQ", 23),
    (b"IS", 26),
    (b"IT", 27),
    (b"JO", 30),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LC", 32),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"MC", 27),
    (b"MD", 24),
    (b"ME", 22),
    (b"MK", 19),
    (b"MR", 27),
    (b"MT", 31),
    (b"MU", 30),
    (b"NL", 18),
    (b"NO", 15),
    (b"PK", 24),
    (b"PL", 28),
    (b"PS", 29),
    (b"PT", 25),
    (b"QA", 29),
    (b"RO", 24),
    (b"RS", 22),
    (b"SA", 24),
    (b"SC", 31),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"ST", 25),
    (b"SV", 28),
    (b"TL", 23),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
    (b"VA", 22),
    (b"VG", 24),
    (b"XK", 20),
];

/// Whether `iban` (compact, uppercase) passes the mod-97 check.
fn mod97(iban: &[u8]) -> bool {
    let (head, tail) = iban.split_at(4.min(iban.len()));
    let mut rem: u32 = 0;
    for &c in tail.iter().chain(head) {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

fn is_iban_char(c: u8) -> bool {
    c.is_ascii_digit() || c.is_ascii_uppercase()
}

/// IBANs: a country code with a registry length, two check digits, and the rest in
/// uppercase letters and digits, compact or in groups of four joined by single spaces, of
/// exactly that country's length and passing the mod-97 check.
pub(super) fn ibans(b: &[u8], mut starts: Starts<'_>, out: &mut Vec<(usize, usize)>) {
    let mut i = 0;
    while let Some(s) = starts.next_from(i, b.len()) {
        i = s;
        if i + 15 > b.len() {
            break;
        }
        let country = [at(b, i), at(b, i + 1)];
        let candidate = country.iter().all(u8::is_ascii_uppercase)
            && at(b, i + 2).is_ascii_digit()
            && at(b, i + 3).is_ascii_digit()
            && !is_word(before(b, i));
        let want = candidate
            .then(|| IBAN_LENGTHS.iter().find(|(c, _)| **c == country))
            .flatten()
            .map(|(_, n)| *n);
        let Some(want) = want else {
            i += 1;
            continue;
        };
        // Compact, or grouped by four with single spaces.
        let mut compact = Vec::with_capacity(want);
        let mut j = i;
        let mut in_group = 0;
        while compact.len() < want {
            let c = at(b, j);
            if is_iban_char(c) && (in_group < 4 || j == i + compact.len()) {
                compact.push(c);
                in_group += 1;
                j += 1;
            } else if c == b' ' && in_group == 4 && is_iban_char(at(b, j + 1)) {
                in_group = 0;
                j += 1;
            } else {
                break;
            }
        }
        if compact.len() == want && !is_word(at(b, j)) && mod97(&compact) {
            out.push((i, j));
            i = j;
        } else {
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Detector;
    use super::super::tests::found;
    use super::*;

    #[test]
    fn luhn_and_networks() {
        let digits = |s: &str| s.bytes().map(|c| c - b'0').collect::<Vec<u8>>();
        for valid in [
            "4111111111111111",
            "5500005555555559",
            "378282246310005",
            "6011111111111117",
            "3530111333300000",
            "30569309025904",
            "2223003122003222",
            "6200000000000005",
        ] {
            assert!(luhn(&digits(valid)), "{valid}");
            assert!(card_network(&digits(valid)), "{valid}");
        }
        assert!(!luhn(&digits("4111111111111112")));
        // Passes Luhn, but no network starts with 1 (or 9).
        assert!(luhn(&digits("1234567812345670")));
        assert!(!card_network(&digits("1234567812345670")));
        assert!(!card_network(&digits("9111111111111111")));
    }

    #[test]
    fn cards_in_text() {
        let cases: [(&str, &[&str]); 12] = [
            (
                "pay with 4111 1111 1111 1111 today",
                &["4111 1111 1111 1111"],
            ),
            ("4111-1111-1111-1111", &["4111-1111-1111-1111"]),
            ("amex 3782 822463 10005.", &["3782 822463 10005"]),
            ("visa 4111111111111111, exp 12/25", &["4111111111111111"]),
            ("card 4111 1111 1111 1111 12/25", &["4111 1111 1111 1111"]),
            ("{\"card\":\"5500005555555559\"}", &["5500005555555559"]),
            // Traps: order ids, mixed separators, longer numbers, decimals.
            ("order 4111111111111112 shipped", &[]),
            ("order 1234567812345670 shipped", &[]),
            ("ref 4111 1111-1111 1111", &[]),
            ("id 94111111111111111", &[]),
            ("value 0.4111111111111111", &[]),
            ("sku A4111111111111111", &[]),
        ];
        for (text, want) in cases {
            assert_eq!(found(text, Detector::CreditCard), want, "{text}");
        }
    }

    #[test]
    fn ibans_in_text() {
        let cases: [(&str, &[&str]); 9] = [
            (
                "to DE89370400440532013000 please",
                &["DE89370400440532013000"],
            ),
            (
                "iban: DE89 3704 0044 0532 0130 00.",
                &["DE89 3704 0044 0532 0130 00"],
            ),
            (
                "GB82 WEST 1234 5698 7654 32",
                &["GB82 WEST 1234 5698 7654 32"],
            ),
            ("NO9386011117947", &["NO9386011117947"]),
            // Traps: a wrong check digit, the wrong length, lower case, part of a word.
            ("DE88370400440532013000", &[]),
            ("DE8937040044053201300", &[]),
            ("de89370400440532013000", &[]),
            ("XDE89370400440532013000", &[]),
            ("DE89 3704 0044 0532 0130 001", &[]),
        ];
        for (text, want) in cases {
            assert_eq!(found(text, Detector::Iban), want, "{text}");
        }
    }
}
