//! Detectors: hand-written scanners that find sensitive values in text (no regex engine),
//! and the masks that replace what they find.
//!
//! Each detector reports byte spans of a `&str`. Every pattern is ASCII, so a span always
//! starts and ends on a character boundary, and a mask (ASCII) keeps the text valid UTF-8.
//! [`scan`] runs a set of detectors and keeps non-overlapping spans: where two overlap, the
//! one that starts first wins, then the longer, then the detector listed first in
//! [`Detector::ALL`] (secrets before personal data).
//!
//! Each scanner documents the rule it uses against false positives; the rules are
//! summarised in docs/filter.md ("Guardrail plugins").

#[cfg(test)]
mod differential;
mod financial;
mod network;
mod personal;
mod secret;

use serde::{Deserialize, Serialize};

/// A kind of sensitive value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    /// A PEM private key block (`-----BEGIN … PRIVATE KEY-----` to its `END` line).
    PrivateKey,
    /// A JSON Web Token (`eyJ….eyJ….sig`, the header decoding to JSON with `alg`).
    Jwt,
    /// An AWS access key id (`AKIA…`, `ASIA…`), or a secret access key labelled as one.
    AwsAccessKey,
    /// An API key: a known prefix (`sk-`, `ghp_`, `xoxb-`, …) followed by a high-entropy
    /// token, or a high-entropy value assigned to a key-like name (`api_key=…`).
    ApiKey,
    /// A payment card number that passes the Luhn check and has a card network's prefix.
    CreditCard,
    /// An IBAN of a known country's length that passes the mod-97 check.
    Iban,
    /// A US Social Security number written `123-45-6789` (or with spaces).
    Ssn,
    /// An email address.
    Email,
    /// A phone number in international (`+…`) or a common national format.
    Phone,
    /// An IPv4 or IPv6 address.
    IpAddress,
}

impl Detector {
    /// Every detector, in the order overlaps are resolved.
    pub const ALL: [Detector; 10] = [
        Detector::PrivateKey,
        Detector::Jwt,
        Detector::AwsAccessKey,
        Detector::ApiKey,
        Detector::CreditCard,
        Detector::Iban,
        Detector::Ssn,
        Detector::Email,
        Detector::Phone,
        Detector::IpAddress,
    ];

    /// Its name in configurations, masks and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Detector::PrivateKey => "private_key",
            Detector::Jwt => "jwt",
            Detector::AwsAccessKey => "aws_access_key",
            Detector::ApiKey => "api_key",
            Detector::CreditCard => "credit_card",
            Detector::Iban => "iban",
            Detector::Ssn => "ssn",
            Detector::Email => "email",
            Detector::Phone => "phone",
            Detector::IpAddress => "ip_address",
        }
    }

    /// Whether it finds credentials (never partially revealed by a mask).
    pub fn is_secret(self) -> bool {
        matches!(
            self,
            Detector::PrivateKey | Detector::Jwt | Detector::AwsAccessKey | Detector::ApiKey
        )
    }

    fn bit(self) -> u16 {
        let i = Detector::ALL.iter().position(|d| *d == self).unwrap_or(0);
        1 << i
    }

    fn rank(self) -> usize {
        Detector::ALL.iter().position(|d| *d == self).unwrap_or(0)
    }

    /// Appends what this detector finds in `text`, looking only at the positions `c`
    /// found (or at every position, with [`Candidates::every`]).
    fn find(self, text: &str, c: &Candidates, out: &mut Vec<Found>) {
        let b = text.as_bytes();
        // Nothing to look at (the common case): not even a call.
        let lists: [&[usize]; 2] = match self {
            Detector::PrivateKey => [&c.pems, &[]],
            Detector::Jwt | Detector::AwsAccessKey | Detector::ApiKey => [&c.words, &[]],
            Detector::CreditCard | Detector::Iban | Detector::Ssn => [&c.digits, &[]],
            Detector::Email => [&c.ats, &[]],
            Detector::Phone => [&c.phones, &[]],
            Detector::IpAddress => [&c.digits, &c.v6_runs],
        };
        if !c.every && lists.iter().all(|l| l.is_empty()) {
            return;
        }
        let mut spans = Vec::new();
        match self {
            Detector::PrivateKey => secret::private_keys(text, c.starts(&c.pems), &mut spans),
            Detector::Jwt => secret::jwts(b, c.starts(&c.words), &mut spans),
            Detector::AwsAccessKey => secret::aws_keys(b, c.starts(&c.words), &mut spans),
            Detector::ApiKey => secret::api_keys(b, c.starts(&c.words), &mut spans),
            Detector::CreditCard => financial::cards(b, c.starts(&c.digits), &mut spans),
            Detector::Iban => financial::ibans(b, c.starts(&c.digits).back(2), &mut spans),
            Detector::Ssn => personal::ssns(b, c.starts(&c.digits), &mut spans),
            Detector::Email => personal::emails(b, c.starts(&c.ats), &mut spans),
            Detector::Phone => personal::phones(b, c.starts(&c.phones), &mut spans),
            Detector::IpAddress => {
                network::ipv4s(text, c.starts(&c.digits), &mut spans);
                network::ipv6s(text, c.starts(&c.v6_runs), &mut spans);
            }
        }
        out.extend(spans.into_iter().map(|(start, end)| Found {
            start,
            end,
            detector: self,
        }));
    }
}

/// Byte classes of the one pass ([`Candidates::of`]); a byte is in at most one.
const DIGIT: u8 = 1;
/// `+` and `(`: where a phone number may start other than at a digit.
const MARK: u8 = 2;
const COLON: u8 = 4;
const AT_SIGN: u8 = 8;
/// `-`: where a PEM block may start.
const DASH: u8 = 16;
/// The first letters of credentials (see [`secret::starts_credential`]).
const LETTER: u8 = 32;

/// The class of each byte value.
#[allow(clippy::indexing_slicing)] // compile time: out of bounds is a build error
const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut d = b'0';
    while d <= b'9' {
        t[d as usize] = DIGIT;
        d += 1;
    }
    t[b'+' as usize] = MARK;
    t[b'(' as usize] = MARK;
    t[b':' as usize] = COLON;
    t[b'@' as usize] = AT_SIGN;
    t[b'-' as usize] = DASH;
    let mut c = 0u8;
    while c < 128 {
        if secret::starts_credential(c) {
            t[c as usize] = LETTER;
        }
        c += 1;
    }
    t
};

/// Whether eight bytes hold one of `(`..=`:` (digits, `+`, `(`, `-`, `:` and a few more)
/// or `@`: every byte but a credential's letters that [`CLASS`] gives a class. Exact per
/// byte: each lane's sums stay below 0x100, so no carry crosses into the next.
fn may_hold_mark(chunk: &[u8]) -> bool {
    const fn splat(c: u8) -> u64 {
        u64::from_ne_bytes([c; 8])
    }
    let Ok(bytes) = <[u8; 8]>::try_from(chunk) else {
        return true;
    };
    let v = u64::from_ne_bytes(bytes);
    let low = v & splat(0x7F);
    // Bit 7 of a lane: its low seven bits are at least `(`, at least `;`; its byte is ASCII.
    let from_open = low + splat(0x80 - b'(');
    let past_colon = low + splat(0x80 - b';');
    let in_range = from_open & !past_colon & !v & splat(0x80);
    let at = v ^ splat(b'@');
    let has_at = at.wrapping_sub(splat(0x01)) & !at & splat(0x80);
    in_range | has_at != 0
}

/// Where, in one text, each scanner may find something: found in one pass over the text
/// before any scanner runs, so a scanner visits a handful of positions instead of every
/// byte, and text without a digit or any other byte a detector of the set starts at
/// costs one table lookup per byte. Every scanner's first test at a position implies the
/// position is in its list (see each list), so skipping the others finds exactly what
/// visiting every position finds; a test (`differential.rs`) checks this on a varied
/// corpus.
#[derive(Debug, Default)]
pub(super) struct Candidates {
    /// Visit every position instead (the straightforward scan).
    every: bool,
    /// Where runs of digits start (a digit not after a digit). Cards, SSNs and IPv4
    /// addresses start at a digit after no word character; an IBAN's check digits follow
    /// two letters, so two bytes before a run.
    digits: Vec<usize>,
    /// Where phone numbers may start: runs of digits, `+` and `(`.
    phones: Vec<usize>,
    /// Where `@` is (emails).
    ats: Vec<usize>,
    /// Where the runs of IPv6 characters (hex digits, `:`, `.`) that hold a `:` start;
    /// empty when the text has fewer than two colons (an address has at least two).
    v6_runs: Vec<usize>,
    /// Where `-----BEGIN ` is (private keys).
    pems: Vec<usize>,
    /// Where words start (after no word character) with the first two bytes of a
    /// credential (key prefixes and names, AWS key ids and names, JWTs).
    words: Vec<usize>,
}

impl Candidates {
    /// The candidates of `text` for the detectors of `set`, in one pass.
    pub(super) fn of(text: &str, set: DetectorSet) -> Candidates {
        use Detector::*;
        let wants = |ds: &[Detector]| ds.iter().any(|d| set.contains(*d));
        let mut want = 0;
        if wants(&[CreditCard, Iban, Ssn, Phone, IpAddress]) {
            want |= DIGIT;
        }
        if wants(&[Phone]) {
            want |= MARK;
        }
        if wants(&[IpAddress]) {
            want |= COLON;
        }
        if wants(&[Email]) {
            want |= AT_SIGN;
        }
        if wants(&[PrivateKey]) {
            want |= DASH;
        }
        if wants(&[Jwt, AwsAccessKey, ApiKey]) {
            want |= LETTER;
        }
        let b = text.as_bytes();
        let mut c = Candidates::default();
        let mut colons = Vec::new();
        let class = |byte: u8| CLASS.get(usize::from(byte)).copied().unwrap_or(0);
        // Eight bytes at a time: most chunks of prose hold no byte of interest.
        let chunks = b.chunks_exact(8);
        let rest = chunks.remainder();
        // Without credential letters, a chunk holds a wanted byte only if it holds a byte
        // of `(`..=`:` or `@`: eight bytes are ruled out at once.
        let quick = want & LETTER == 0;
        for (k, chunk) in chunks.enumerate() {
            if quick && !may_hold_mark(chunk) {
                continue;
            }
            if chunk.iter().fold(0, |any, &byte| any | class(byte)) & want != 0 {
                for (j, &byte) in chunk.iter().enumerate() {
                    c.visit(b, k * 8 + j, class(byte) & want, &mut colons);
                }
            }
        }
        let rest_start = b.len() - rest.len();
        for (j, &byte) in rest.iter().enumerate() {
            c.visit(b, rest_start + j, class(byte) & want, &mut colons);
        }
        if colons.len() >= 2 {
            // Back from each colon to the start of its run, stopping at the colon before
            // it (same run, same start): linear however many colons a run holds.
            let mut previous: Option<(usize, usize)> = None;
            for colon in colons {
                let mut start = colon;
                while let Some(p) = start.checked_sub(1) {
                    if let Some((prev_colon, prev_start)) = previous
                        && prev_colon == p
                    {
                        start = prev_start;
                        break;
                    }
                    if !network::is_v6_char(at(b, p)) {
                        break;
                    }
                    start = p;
                }
                previous = Some((colon, start));
                if c.v6_runs.last() != Some(&start) {
                    c.v6_runs.push(start);
                }
            }
        }
        c
    }

    /// Records the byte at `i`, of class `class` (masked by what the set wants).
    fn visit(&mut self, b: &[u8], i: usize, class: u8, colons: &mut Vec<usize>) {
        match class {
            0 => {}
            DIGIT => {
                if !before(b, i).is_ascii_digit() {
                    self.digits.push(i);
                    self.phones.push(i);
                }
            }
            MARK => self.phones.push(i),
            COLON => colons.push(i),
            AT_SIGN => self.ats.push(i),
            DASH => {
                if b.get(i..).is_some_and(|t| t.starts_with(secret::BEGIN)) {
                    self.pems.push(i);
                }
            }
            _ => {
                if !is_word(before(b, i)) && secret::opens_credential(at(b, i), at(b, i + 1)) {
                    self.words.push(i);
                }
            }
        }
    }

    /// Every position of every text: the straightforward scan.
    #[cfg(test)]
    pub(super) fn every() -> Candidates {
        Candidates {
            every: true,
            ..Candidates::default()
        }
    }

    fn starts<'a>(&self, list: &'a [usize]) -> Starts<'a> {
        Starts {
            list: (!self.every).then_some(list),
            next: 0,
            back: 0,
        }
    }
}

/// A scanner's walk over its candidates ([`Candidates`]) or over every position.
#[derive(Debug)]
pub(super) struct Starts<'a> {
    /// `None`: every position.
    list: Option<&'a [usize]>,
    /// The next item of `list` to look at.
    next: usize,
    /// How far before each listed position to look.
    back: usize,
}

impl Starts<'_> {
    /// The same walk, `n` bytes before each listed position.
    fn back(self, n: usize) -> Self {
        Starts { back: n, ..self }
    }

    /// The first position at or after `i` to look at (`i` itself when visiting every
    /// position), or `None` past the last one (or past `len`).
    pub(super) fn next_from(&mut self, i: usize, len: usize) -> Option<usize> {
        let Some(list) = self.list else {
            return (i < len).then_some(i);
        };
        while let Some(&p) = list.get(self.next) {
            if let Some(p) = p.checked_sub(self.back)
                && p >= i
            {
                return (p < len).then_some(p);
            }
            self.next += 1;
        }
        None
    }
}

/// A set of detectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DetectorSet(u16);

impl DetectorSet {
    /// The set of `detectors`.
    pub fn of(detectors: &[Detector]) -> DetectorSet {
        DetectorSet(detectors.iter().fold(0, |bits, d| bits | d.bit()))
    }

    /// Whether `d` is in the set.
    pub fn contains(self, d: Detector) -> bool {
        self.0 & d.bit() != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The detectors in the set, in [`Detector::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Detector> {
        Detector::ALL.into_iter().filter(move |d| self.contains(*d))
    }
}

/// One finding: `text[start..end]` is a value of kind `detector`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// Byte offset of the first byte.
    pub start: usize,
    /// Byte offset past the last byte.
    pub end: usize,
    /// What it is.
    pub detector: Detector,
}

/// What a mask leaves of a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Masking {
    /// The whole value becomes `[REDACTED:{detector}]`.
    #[default]
    Label,
    /// Enough is kept to recognise the value (the last 4 digits of a card, phone, SSN or
    /// IBAN, an email's first letter and domain, an IPv4 address's first octet); credentials
    /// are always replaced by their label.
    Partial,
}

/// What `set` finds in `text`, in order and without overlaps.
pub fn scan(text: &str, set: DetectorSet) -> Vec<Found> {
    scan_with(text, set, &Candidates::of(text, set))
}

/// What `set` finds in `text` visiting every position: the straightforward scan, which
/// [`scan`] must match exactly.
#[cfg(test)]
pub(super) fn scan_every(text: &str, set: DetectorSet) -> Vec<Found> {
    scan_with(text, set, &Candidates::every())
}

fn scan_with(text: &str, set: DetectorSet, c: &Candidates) -> Vec<Found> {
    let mut all = Vec::new();
    for d in set.iter() {
        d.find(text, c, &mut all);
    }
    if all.len() > 1 {
        all.sort_by_key(|f| (f.start, usize::MAX - (f.end - f.start), f.detector.rank()));
        let mut end = 0;
        all.retain(|f| {
            let keep = f.start >= end;
            if keep {
                end = f.end;
            }
            keep
        });
    }
    all
}

/// `text` with every span of `found` (from [`scan`]) masked.
pub fn mask(text: &str, found: &[Found], masking: Masking) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for f in found {
        let (Some(before), Some(value)) = (text.get(at..f.start), text.get(f.start..f.end)) else {
            continue;
        };
        out.push_str(before);
        match masking {
            Masking::Partial if !f.detector.is_secret() => {
                out.push_str(&partial(value, f.detector));
            }
            _ => {
                out.push_str("[REDACTED:");
                out.push_str(f.detector.name());
                out.push(']');
            }
        }
        at = f.end;
    }
    out.push_str(text.get(at..).unwrap_or_default());
    out
}

/// `value` (of kind `d`) partially masked.
fn partial(value: &str, d: Detector) -> String {
    match d {
        Detector::Email => {
            let (local, domain) = value.split_once('@').unwrap_or((value, ""));
            let first = local.chars().next().unwrap_or('*');
            format!("{first}***@{domain}")
        }
        Detector::IpAddress if !value.contains(':') => {
            let first = value.split('.').next().unwrap_or_default();
            format!("{first}.*.*.*")
        }
        Detector::Iban => keep_ends(value, 2, 4, |c| c.is_ascii_alphanumeric()),
        Detector::CreditCard | Detector::Phone | Detector::Ssn => {
            keep_ends(value, 0, 4, |c| c.is_ascii_digit())
        }
        _ => format!("[REDACTED:{}]", d.name()),
    }
}

/// `value` with every character `counts` replaced by `*`, except the first `head` and the
/// last `tail` of them; other characters (separators) are kept.
fn keep_ends(value: &str, head: usize, tail: usize, counts: impl Fn(char) -> bool) -> String {
    let total = value.chars().filter(|c| counts(*c)).count();
    let mut seen = 0;
    value
        .chars()
        .map(|c| {
            if !counts(c) {
                return c;
            }
            seen += 1;
            if seen <= head || seen > total.saturating_sub(tail) {
                c
            } else {
                '*'
            }
        })
        .collect()
}

/// The byte at `i`, or 0 past either end (0 is never part of a pattern).
fn at(b: &[u8], i: usize) -> u8 {
    b.get(i).copied().unwrap_or(0)
}

/// The byte before `i`, or 0 at the start.
fn before(b: &[u8], i: usize) -> u8 {
    i.checked_sub(1).map_or(0, |j| at(b, j))
}

/// Whether `c` continues a word (so a value next to it is part of something longer).
fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Shannon entropy of `s`, bits per byte.
fn entropy(s: &[u8]) -> f64 {
    if s.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &c in s {
        if let Some(n) = counts.get_mut(usize::from(c)) {
            *n += 1;
        }
    }
    let len = s.len() as f64;
    counts
        .iter()
        .filter(|n| **n > 0)
        .map(|&n| {
            let p = f64::from(n) / len;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn found(text: &str, d: Detector) -> Vec<&str> {
        scan(text, DetectorSet::of(&[d]))
            .iter()
            .map(|f| &text[f.start..f.end])
            .collect()
    }

    #[test]
    fn eight_bytes_are_ruled_out_only_when_none_has_a_class_but_letter() {
        // Every byte value in every lane, among bytes of no class (and among high bytes,
        // whose borrow or carry would spill into a neighbour if the test let it).
        for filler in [b'a', 0xFF, 0x80, 0x27, 0x3B] {
            for lane in 0..8 {
                for b in 0..=255u8 {
                    let mut chunk = [filler; 8];
                    chunk[lane] = b;
                    let marked = (b'('..=b':').contains(&b) || b == b'@';
                    assert!(CLASS[usize::from(b)] & !LETTER == 0 || marked, "{b:#x}");
                    let filler_marked = (b'('..=b':').contains(&filler) || filler == b'@';
                    assert_eq!(
                        may_hold_mark(&chunk),
                        marked || filler_marked,
                        "{b:#x} in lane {lane} among {filler:#x}"
                    );
                }
            }
        }
    }

    #[test]
    fn overlaps_keep_the_first_and_longest() {
        // The email contains nothing else; an IPv6 address contains an IPv4 one.
        let text = "mail bob@example.com from ::ffff:192.0.2.1 now";
        let all = scan(text, DetectorSet::of(&Detector::ALL));
        let names: Vec<(&str, &str)> = all
            .iter()
            .map(|f| (f.detector.name(), &text[f.start..f.end]))
            .collect();
        assert_eq!(
            names,
            [
                ("email", "bob@example.com"),
                ("ip_address", "::ffff:192.0.2.1")
            ]
        );
    }

    #[test]
    fn masks_label_or_keep_enough_to_recognise() {
        let text = "card 4111 1111 1111 1111, mail jane.doe@example.org, key AKIAIOSFODNN7EXAMPLE, ssn 123-45-6789, ip 10.1.2.3, iban DE89 3704 0044 0532 0130 00, tel +1 415-555-2671";
        let set = DetectorSet::of(&Detector::ALL);
        let found = scan(text, set);
        assert_eq!(
            mask(text, &found, Masking::Label),
            "card [REDACTED:credit_card], mail [REDACTED:email], key [REDACTED:aws_access_key], ssn [REDACTED:ssn], ip [REDACTED:ip_address], iban [REDACTED:iban], tel [REDACTED:phone]"
        );
        assert_eq!(
            mask(text, &found, Masking::Partial),
            "card **** **** **** 1111, mail j***@example.org, key [REDACTED:aws_access_key], ssn ***-**-6789, ip 10.*.*.*, iban DE** **** **** **** **30 00, tel +* ***-***-2671"
        );
        assert_eq!(mask("nothing here", &[], Masking::Label), "nothing here");
    }

    #[test]
    fn unicode_around_findings_survives() {
        let text = "café → bob@example.com ✓ naïve";
        let found = scan(text, DetectorSet::of(&[Detector::Email]));
        assert_eq!(
            mask(text, &found, Masking::Label),
            "café → [REDACTED:email] ✓ naïve"
        );
    }

    #[test]
    fn sets_and_names() {
        let s = DetectorSet::of(&[Detector::Email, Detector::Jwt]);
        assert!(s.contains(Detector::Email) && !s.contains(Detector::Phone));
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            [Detector::Jwt, Detector::Email]
        );
        assert!(DetectorSet::default().is_empty());
        for d in Detector::ALL {
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(json, format!("\"{}\"", d.name()));
            assert_eq!(serde_json::from_str::<Detector>(&json).unwrap(), d);
        }
        assert!(entropy(b"aaaa") < 0.01 && entropy(b"abcd") > 1.99);
    }
}
