//! Credentials: PEM private keys, JWTs, AWS keys and API keys.

use super::{Starts, at, before, entropy, is_word};
use base64::Engine as _;

/// How a PEM block starts.
pub(super) const BEGIN: &[u8] = b"-----BEGIN ";

/// PEM private keys: `-----BEGIN {label}-----` where the label ends in `PRIVATE KEY` (RSA,
/// EC, DSA, OPENSSH, ENCRYPTED, PGP … `PRIVATE KEY BLOCK`), through the matching `END`
/// line; a key cut short (no `END` line) is masked to the end of the text.
pub(super) fn private_keys(text: &str, mut starts: Starts<'_>, out: &mut Vec<(usize, usize)>) {
    let mut from = 0;
    while let Some(start) = starts.next_from(from, text.len()) {
        from = start + 1;
        if !text
            .as_bytes()
            .get(start..)
            .is_some_and(|t| t.starts_with(BEGIN))
        {
            continue;
        }
        let label_start = start + BEGIN.len();
        from = label_start;
        let Some(q) = text.get(label_start..).and_then(|t| t.find("-----")) else {
            break;
        };
        let label = text.get(label_start..label_start + q).unwrap_or_default();
        if label.len() > 48
            || label.contains(['\n', '\r'])
            || !(label.ends_with("PRIVATE KEY") || label.ends_with("PRIVATE KEY BLOCK"))
        {
            continue;
        }
        let body = label_start + q + 5;
        let end_line = format!("-----END {label}-----");
        let end = text
            .get(body..)
            .and_then(|t| t.find(&end_line))
            .map_or(text.len(), |r| body + r + end_line.len());
        out.push((start, end));
        from = end;
    }
}

fn is_b64url(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

/// The end of a run of base64url characters from `i`.
fn b64url_run(b: &[u8], mut i: usize) -> usize {
    while is_b64url(at(b, i)) {
        i += 1;
    }
    i
}

/// JWTs: `header.payload.signature` in base64url, the header and the payload JSON objects
/// (`eyJ…`), the header decoding to JSON that names its `alg`; the signature may be empty
/// (`alg: none`). Not inside a longer token.
pub(super) fn jwts(b: &[u8], mut starts: Starts<'_>, out: &mut Vec<(usize, usize)>) {
    let mut from = 0;
    while let Some(start) = starts.next_from(from, b.len()) {
        if b.get(start..start + 3) != Some(b"eyJ") {
            from = start + 1;
            continue;
        }
        from = start + 3;
        let prev = before(b, start);
        if is_b64url(prev) || prev == b'.' {
            continue;
        }
        let header_end = b64url_run(b, start);
        if header_end - start < 10 || at(b, header_end) != b'.' {
            continue;
        }
        let payload = header_end + 1;
        let payload_end = b64url_run(b, payload);
        if b.get(payload..payload + 3) != Some(b"eyJ")
            || payload_end - payload < 10
            || at(b, payload_end) != b'.'
        {
            continue;
        }
        let end = b64url_run(b, payload_end + 1);
        if at(b, end) == b'.' && is_b64url(at(b, end + 1)) {
            // A fourth part: a JWE or something else.
            continue;
        }
        let header = b.get(start..header_end).unwrap_or_default();
        let names_alg = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .is_some_and(|h| h.first() == Some(&b'{') && h.windows(5).any(|w| w == b"\"alg\""));
        if names_alg {
            out.push((start, end));
            from = end;
        }
    }
}

/// Prefixes of AWS access key ids (long-term, temporary, and the other issuers).
const AWS_KEY_PREFIXES: [&[u8]; 5] = [b"AKIA", b"ASIA", b"ABIA", b"ACCA", b"A3T"];

/// Names a secret access key is written after.
const AWS_SECRET_NAMES: [&str; 4] = [
    "aws_secret_access_key",
    "secret_access_key",
    "secretaccesskey",
    "aws_secret_key",
];

/// AWS keys: access key ids (`AKIA`, `ASIA`, `ABIA`, `ACCA` or `A3T` and 20 uppercase
/// letters and digits in all, not inside a longer word), and secret access keys (40
/// characters of base64) written after one of [`AWS_SECRET_NAMES`] and `=` or `:`. A
/// 40-character token alone is not looked for: every SHA-1 in hex would be one.
///
/// Both start where a word does: `starts` lists (at least) the word starts of the text.
/// A name is matched at every word start, which finds what a search for each name finds:
/// no name overlaps itself (see the tests).
pub(super) fn aws_keys(b: &[u8], mut starts: Starts<'_>, out: &mut Vec<(usize, usize)>) {
    let mut i = 0;
    while let Some(s) = starts.next_from(i, b.len()) {
        i = s + 1;
        if is_word(before(b, s)) {
            continue;
        }
        let key = b.get(s..s + 20).unwrap_or_default();
        if key.len() == 20
            && at(b, s) == b'A'
            && AWS_KEY_PREFIXES.iter().any(|p| key.starts_with(p))
            && key
                .iter()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
            && !is_word(at(b, s + 20))
        {
            out.push((s, s + 20));
        }
        for name in AWS_SECRET_NAMES {
            if !starts_with_lowercase(b, s, name) {
                continue;
            }
            if let Some(value) = assigned(b, s + name.len(), false)
                && value.1 - value.0 == 40
                && b.get(value.0..value.1).is_some_and(|v| {
                    v.iter()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'/' | b'+'))
                })
            {
                out.push(value);
            }
        }
    }
}

/// Whether `b` at `at` reads `name` (lowercase) in any case.
fn starts_with_lowercase(b: &[u8], at: usize, name: &str) -> bool {
    b.get(at..at + name.len())
        .is_some_and(|w| w.eq_ignore_ascii_case(name.as_bytes()))
}

/// The value assigned after a name that ends at `i`: optional closing quote, spaces, `:`
/// or `=` (or only spaces, when `spaced`), spaces, optional opening quote, then a run of
/// token characters. `None` if the name goes on or nothing is assigned.
fn assigned(b: &[u8], mut i: usize, spaced: bool) -> Option<(usize, usize)> {
    if is_word(at(b, i)) || at(b, i) == b'-' {
        return None;
    }
    if matches!(at(b, i), b'"' | b'\'') {
        i += 1;
    }
    let mut ws = 0;
    while matches!(at(b, i), b' ' | b'\t') {
        i += 1;
        ws += 1;
    }
    if matches!(at(b, i), b':' | b'=') {
        i += 1;
    } else if !(spaced && ws > 0) {
        return None;
    }
    while matches!(at(b, i), b' ' | b'\t') {
        i += 1;
    }
    if matches!(at(b, i), b'"' | b'\'') {
        i += 1;
    }
    let start = i;
    while at(b, i).is_ascii_alphanumeric()
        || matches!(at(b, i), b'_' | b'-' | b'.' | b'/' | b'+' | b'=' | b'~')
    {
        i += 1;
    }
    // A sentence's full stop is not part of the value.
    while i > start && before(b, i) == b'.' {
        i -= 1;
    }
    (i > start).then_some((start, i))
}

/// Known API key prefixes and the shortest token after each.
const KEY_PREFIXES: [(&str, usize); 27] = [
    ("sk-", 20),
    ("sk_live_", 16),
    ("sk_test_", 16),
    ("rk_live_", 16),
    ("rk_test_", 16),
    ("ghp_", 30),
    ("gho_", 30),
    ("ghu_", 30),
    ("ghs_", 30),
    ("ghr_", 30),
    ("github_pat_", 30),
    ("glpat-", 20),
    ("xoxb-", 20),
    ("xoxp-", 20),
    ("xoxa-", 20),
    ("xoxr-", 20),
    ("xoxs-", 20),
    ("xapp-", 20),
    ("AIza", 35),
    ("hf_", 30),
    ("npm_", 36),
    ("pypi-", 50),
    ("SG.", 40),
    ("shpat_", 32),
    ("shpss_", 32),
    ("dop_v1_", 64),
    ("sq0atp-", 22),
];

/// Names a credential is commonly assigned to (lowercase).
const KEY_NAMES: [&str; 15] = [
    "api_key",
    "apikey",
    "api-key",
    "x-api-key",
    "api_secret",
    "client_secret",
    "secret_key",
    "secret",
    "access_token",
    "auth_token",
    "refresh_token",
    "token",
    "password",
    "passwd",
    "bearer",
];

/// Whether `token` looks random: letters and digits both, and at least `bits` of entropy
/// per character.
fn high_entropy(token: &[u8], bits: f64) -> bool {
    token.iter().any(u8::is_ascii_digit)
        && token.iter().any(u8::is_ascii_alphabetic)
        && entropy(token) >= bits
}

/// API keys: a known prefix ([`KEY_PREFIXES`], not inside a longer word) followed by a
/// random-looking token (letters and digits, at least 3 bits of entropy per character) of
/// at least the prefix's length; and a random-looking value of at least 16 characters (3.3
/// bits per character) assigned to a credential's name (`api_key=…`, `"token": "…"`,
/// `Bearer …`). `sk-learn`, `task-force` and `password: hunter2` are not keys.
///
/// Prefixes and names start where a word does: `starts` lists (at least) the word starts
/// of the text, and each is matched there, which finds what a search for each finds (none
/// overlaps itself: see the tests).
pub(super) fn api_keys(b: &[u8], mut starts: Starts<'_>, out: &mut Vec<(usize, usize)>) {
    let mut i = 0;
    while let Some(p) = starts.next_from(i, b.len()) {
        i = p + 1;
        let prev = before(b, p);
        if is_word(prev) || prev == b'-' {
            continue;
        }
        let rest = b.get(p..).unwrap_or_default();
        let first = at(b, p);
        for (prefix, min) in KEY_PREFIXES {
            if prefix.as_bytes().first() != Some(&first) || !rest.starts_with(prefix.as_bytes()) {
                continue;
            }
            let body = p + prefix.len();
            let dotted = prefix == "SG.";
            let mut end = body;
            while is_b64url(at(b, end)) || (dotted && at(b, end) == b'.') {
                end += 1;
            }
            let token = b.get(body..end).unwrap_or_default();
            if token.len() >= min && high_entropy(token, 3.0) {
                out.push((p, end));
            }
        }
        let lower = first.to_ascii_lowercase();
        for name in KEY_NAMES {
            if name.as_bytes().first() != Some(&lower) || !starts_with_lowercase(b, p, name) {
                continue;
            }
            if let Some((start, end)) = assigned(b, p + name.len(), name == "bearer") {
                let value = b.get(start..end).unwrap_or_default();
                if value.len() >= 16 && high_entropy(value, 3.3) {
                    out.push((start, end));
                }
            }
        }
    }
}

/// The bit of `c` as the second byte of a credential's opening (its first two bytes,
/// lowercase): letters, digits, `-`, `_` and `.`.
const fn second_bit(c: u8) -> Option<u32> {
    let c = c.to_ascii_lowercase();
    match c {
        b'a'..=b'z' => Some((c - b'a') as u32),
        b'0'..=b'9' => Some(26 + (c - b'0') as u32),
        b'-' => Some(36),
        b'_' => Some(37),
        b'.' => Some(38),
        _ => None,
    }
}

/// Adds the opening of `p` to `table`.
// Evaluated at compile time (the tables below): an index out of bounds is a build
// error, never a panic.
#[allow(clippy::indexing_slicing)]
const fn add_opening(mut table: [u64; 26], p: &[u8]) -> [u64; 26] {
    if p.len() < 2 {
        return table;
    }
    let first = p[0].to_ascii_lowercase();
    if first.is_ascii_lowercase()
        && let Some(bit) = second_bit(p[1])
    {
        table[(first - b'a') as usize] |= 1 << bit;
    }
    table
}

/// The openings (first two bytes, in any case) of every credential looked for: key
/// prefixes and names ([`KEY_PREFIXES`], [`KEY_NAMES`]), AWS key ids and names
/// ([`AWS_KEY_PREFIXES`], [`AWS_SECRET_NAMES`]) and JWTs (`eyJ`), by first letter.
#[allow(clippy::indexing_slicing)] // compile time: see `add_opening`
const OPENINGS: [u64; 26] = {
    let mut t = [0u64; 26];
    let mut k = 0;
    while k < KEY_PREFIXES.len() {
        t = add_opening(t, KEY_PREFIXES[k].0.as_bytes());
        k += 1;
    }
    k = 0;
    while k < KEY_NAMES.len() {
        t = add_opening(t, KEY_NAMES[k].as_bytes());
        k += 1;
    }
    k = 0;
    while k < AWS_SECRET_NAMES.len() {
        t = add_opening(t, AWS_SECRET_NAMES[k].as_bytes());
        k += 1;
    }
    k = 0;
    while k < AWS_KEY_PREFIXES.len() {
        t = add_opening(t, AWS_KEY_PREFIXES[k]);
        k += 1;
    }
    add_opening(t, b"eyJ")
};

/// Whether a credential may start with `first` then `second` (in any case).
pub(super) fn opens_credential(first: u8, second: u8) -> bool {
    let row = first
        .to_ascii_lowercase()
        .checked_sub(b'a')
        .and_then(|r| OPENINGS.get(usize::from(r)));
    match (row, second_bit(second)) {
        (Some(row), Some(bit)) => row & (1 << bit) != 0,
        _ => false,
    }
}

/// Whether a credential may start with the letter `c` (in any case).
// Evaluated at compile time (the tables below): an index out of bounds is a build
// error, never a panic.
#[allow(clippy::indexing_slicing)]
pub(super) const fn starts_credential(c: u8) -> bool {
    let c = c.to_ascii_lowercase();
    c.is_ascii_lowercase() && OPENINGS[(c - b'a') as usize] != 0
}

#[cfg(test)]
mod tests {
    use super::super::Detector;
    use super::super::tests::found;

    #[test]
    fn private_keys_whole_or_cut_short() {
        let rsa =
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----";
        let text = format!("key:\n{rsa}\ntrailing");
        assert_eq!(found(&text, Detector::PrivateKey), [rsa]);
        let cut = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA";
        assert_eq!(found(&format!("x {cut}"), Detector::PrivateKey), [cut]);
        let pgp =
            "-----BEGIN PGP PRIVATE KEY BLOCK-----\nxcLY\n-----END PGP PRIVATE KEY BLOCK-----";
        assert_eq!(found(pgp, Detector::PrivateKey), [pgp]);
        // Public material is not a secret.
        let public = "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";
        assert!(found(public, Detector::PrivateKey).is_empty());
    }

    #[test]
    fn every_credential_opens_like_one() {
        let all = super::KEY_PREFIXES
            .iter()
            .map(|(p, _)| *p)
            .chain(super::KEY_NAMES)
            .chain(super::AWS_SECRET_NAMES)
            .chain(["AKIA", "ASIA", "ABIA", "ACCA", "A3T", "eyJ"]);
        for p in all {
            let b = p.as_bytes();
            for (first, second) in [
                (b[0], b[1]),
                (b[0].to_ascii_uppercase(), b[1].to_ascii_uppercase()),
                (b[0].to_ascii_lowercase(), b[1].to_ascii_lowercase()),
            ] {
                assert!(super::opens_credential(first, second), "{p}");
                assert!(super::starts_credential(first), "{p}");
            }
        }
        assert!(!super::opens_credential(b'T', b'h'), "The");
        assert!(!super::opens_credential(b'b', b'r'), "brown");
        assert_eq!(super::AWS_KEY_PREFIXES.len(), 5);
    }

    #[test]
    fn no_prefix_or_name_overlaps_itself() {
        // Matching at every word start finds what `str::match_indices` (non-overlapping)
        // would, as long as no pattern has a proper prefix that is also its suffix.
        let names = super::KEY_PREFIXES
            .iter()
            .map(|(p, _)| *p)
            .chain(super::KEY_NAMES)
            .chain(super::AWS_SECRET_NAMES);
        for p in names {
            for k in 1..p.len() {
                assert_ne!(p[..k], p[p.len() - k..], "{p}");
            }
        }
    }

    const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";

    #[test]
    fn jwts_with_a_real_header() {
        assert_eq!(
            found(&format!("Authorization: Bearer {JWT}"), Detector::Jwt),
            [JWT]
        );
        assert_eq!(
            found(&format!("{{\"token\":\"{JWT}\"}}"), Detector::Jwt),
            [JWT]
        );
        let unsigned = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.";
        assert_eq!(found(unsigned, Detector::Jwt), [unsigned]);
        // Traps: a header that is not a JOSE header, two parts, a longer token.
        let not_jose = "eyJmb28iOiJiYXIifQ.eyJzdWIiOiIxMjM0NTY3ODkwIn0.sig";
        assert!(found(not_jose, Detector::Jwt).is_empty());
        assert!(found("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0", Detector::Jwt).is_empty());
        assert!(found(&format!("x{JWT}"), Detector::Jwt).is_empty());
    }

    #[test]
    fn aws_keys_ids_and_labelled_secrets() {
        let cases: [(&str, &[&str]); 6] = [
            ("id AKIAIOSFODNN7EXAMPLE here", &["AKIAIOSFODNN7EXAMPLE"]),
            ("\"ASIAY34FZKBOKMUTVV7A\"", &["ASIAY34FZKBOKMUTVV7A"]),
            (
                "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                &["wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"],
            ),
            (
                "{\"SecretAccessKey\": \"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\"}",
                &["wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"],
            ),
            // Traps: too short, inside a word, a bare 40-character hash.
            ("AKIAIOSFODNN7EXAMPL", &[]),
            (
                "XAKIAIOSFODNN7EXAMPLE da39a3ee5e6b4b0d3255bfef95601890afd80709",
                &[],
            ),
        ];
        for (text, want) in cases {
            assert_eq!(found(text, Detector::AwsAccessKey), want, "{text}");
        }
    }

    #[test]
    fn api_keys_by_prefix_and_by_name() {
        let cases: [(&str, &[&str]); 14] = [
            (
                "OPENAI_API_KEY=sk-proj-4f8Hc2LqA9xZ7mN3pR5tV1wY6bK0dE",
                &["sk-proj-4f8Hc2LqA9xZ7mN3pR5tV1wY6bK0dE"],
            ),
            (
                "token ghp_16C7e42F292c6912E7710c838347Ae178B4a used",
                &["ghp_16C7e42F292c6912E7710c838347Ae178B4a"],
            ),
            (
                "slack xoxb-2048113532-4302916729-Xk3nV8qL2mR7tP9w",
                &["xoxb-2048113532-4302916729-Xk3nV8qL2mR7tP9w"],
            ),
            (
                "key=AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW",
                &["AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW"],
            ),
            (
                "{\"api_key\": \"9f8e7d6c5b4a39281706f5e4\"}",
                &["9f8e7d6c5b4a39281706f5e4"],
            ),
            ("X-Api-Key: Zx81Qm27Lp04Vn93Kd", &["Zx81Qm27Lp04Vn93Kd"]),
            (
                "Authorization: Bearer 7hG2kL9pQ4rT8vX1zC5n",
                &["7hG2kL9pQ4rT8vX1zC5n"],
            ),
            (
                "client_secret: 'a8F3kP0qZ7vL2mX9wR4t'.",
                &["a8F3kP0qZ7vL2mX9wR4t"],
            ),
            // Traps.
            ("we use sk-learn-and-pandas-daily here", &[]),
            ("the task-force-2024 met", &[]),
            ("password: hunter2", &[]),
            ("token: aaaaaaaaaaaaaaaaaaaa11", &[]),
            ("tokens = 12", &[]),
            ("the api_key_id is 1234567890abcdef1234", &[]),
        ];
        for (text, want) in cases {
            assert_eq!(found(text, Detector::ApiKey), want, "{text}");
        }
    }
}
