//! The candidate pass ([`super::Candidates`]) against the straightforward scan: on a varied
//! corpus of realistic payloads, every detector finds exactly what it finds visiting every
//! position of the text.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::{Detector, DetectorSet, scan, scan_every};

/// Values each detector should find, and traps that look like them.
const FRAGMENTS: &[&str] = &[
    // Emails, and things near them.
    "jane.doe+mcp@mail.example.co.uk",
    "bob@example.com",
    "ops@corp.example",
    "root@localhost",
    "@handle",
    "git@github.com:org/repo.git",
    "x@-bad-.com",
    "a@b.c",
    // Phones.
    "+1 415-555-2671",
    "(415) 555-2671",
    "415.555.2671",
    "1 415 555 2671",
    "+44 20 7946 0958",
    "020 7946 0958",
    "030-123456",
    "+4915112345678",
    "$415-555-2671",
    "415-555.2671",
    // Cards, and order ids that fail Luhn or have no network's prefix.
    "4111 1111 1111 1111",
    "4111-1111-1111-1111",
    "5500005555555559",
    "3782 822463 10005",
    "6011111111111117",
    "4111111111111112",
    "1234567812345670",
    "4111 1111-1111 1111",
    "94111111111111111",
    "0.4111111111111111",
    "12/25",
    // IBANs.
    "DE89370400440532013000",
    "DE89 3704 0044 0532 0130 00",
    "GB82 WEST 1234 5698 7654 32",
    "NO9386011117947",
    "DE88370400440532013000",
    "XDE89370400440532013000",
    // SSNs.
    "123-45-6789",
    "123 45 6789",
    "666-12-3456",
    "123-45-67890",
    "123456789",
    // IPs, and versions that look like them.
    "8.8.8.8",
    "10.0.0.1:8080",
    "192.168.0.0/16",
    "version 1.2.3.4",
    "Version: 10.0.19041.1",
    "v1.2.3.4",
    "1.2.3.4-beta",
    "1.3.6.1.4.1",
    "256.1.1.1",
    "2001:db8:85a3::8a2e:370:7334",
    "[::1]:8080",
    "fe80::1ff:fe23:4567:890a",
    "::ffff:192.0.2.1",
    "std::vec::Vec",
    "12:30:45",
    "00:1A:2B:3C:4D:5E",
    "a::b",
    // Credentials.
    "AKIAIOSFODNN7EXAMPLE",
    "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----",
    "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
    "api_key=9f8e7d6c5b4a39281706f5e4",
    "{\"SecretAccessKey\": \"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\"}",
    "Authorization: Bearer 7hG2kL9pQ4rT8vX1zC5n",
    "xoxb-2048113532-4302916729-Xk3nV8qL2mR7tP9w",
    "sk-proj-4f8Hc2LqA9xZ7mN3pR5tV1wY6bK0dE",
    "SG.a8F3kP0qZ7vL2mX9wR4t.b8F3kP0qZ7vL2mX9wR4tQ",
    "X-Api-Key",
    "Token",
    "a8F3kP0qZ7vL2mX9wR4t",
    "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
    "eyJmb28iOiJiYXIifQ.eyJzdWIiOiIxMjM0NTY3ODkwIn0.sig",
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA",
    "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----",
    "we use sk-learn-and-pandas-daily here",
    "password: hunter2",
    // Noise: prose, numbers, dates, JSON, Unicode.
    "The quick brown fox jumps over the lazy dog.",
    "order #20240115-0042 shipped on 2024-01-15 at 12:30",
    "total: 1,234.56 EUR (incl. 19% VAT)",
    "id 550e8400-e29b-41d4-a716-446655440000",
    "sha1 da39a3ee5e6b4b0d3255bfef95601890afd80709",
    "{\"n\": 42, \"ok\": true}",
    "café → naïve ✓ 東京 +",
    "(",
    ":",
    "+",
    "-",
    ".",
    "A",
    "0",
];

/// What may sit between two fragments (nothing, so values touch and boundaries matter).
const JOINS: &[&str] = &[
    "", " ", "  ", "\n", ", ", ": ", "=", "\"", "-", ".", "(", ")", "+", "/", "x", "7", ":",
];

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}

/// A text of a few fragments and joins; sometimes a fragment cut short or doubled.
fn text(rng: &mut Rng) -> String {
    let mut t = String::new();
    for _ in 0..1 + rng.below(8) {
        t.push_str(JOINS[rng.below(JOINS.len())]);
        let f = FRAGMENTS[rng.below(FRAGMENTS.len())];
        match rng.below(6) {
            0 => {
                let mut cut = rng.below(f.len() + 1);
                while !f.is_char_boundary(cut) {
                    cut -= 1;
                }
                t.push_str(&f[..cut]);
            }
            1 => {
                t.push_str(f);
                t.push_str(f);
            }
            _ => t.push_str(f),
        }
    }
    t
}

#[test]
fn the_candidate_pass_finds_what_visiting_every_position_finds() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut seen = [false; Detector::ALL.len()];
    let all = DetectorSet::of(&Detector::ALL);
    for _ in 0..5_000 {
        let t = text(&mut rng);
        for (k, d) in Detector::ALL.into_iter().enumerate() {
            let one = DetectorSet::of(&[d]);
            let fast = scan(&t, one);
            assert_eq!(fast, scan_every(&t, one), "{} in {t:?}", d.name());
            seen[k] |= !fast.is_empty();
        }
        assert_eq!(scan(&t, all), scan_every(&t, all), "{t:?}");
    }
    // The corpus exercises every detector (a comparison of empty results proves nothing).
    assert_eq!(seen, [true; Detector::ALL.len()]);
}

#[test]
fn the_candidate_pass_on_whole_payloads() {
    // Fragments in a tool result's text, one per line, and all of them in one line.
    let lines = FRAGMENTS.join("\n");
    let line = FRAGMENTS.join(" ");
    let all = DetectorSet::of(&Detector::ALL);
    for t in [&lines, &line] {
        let fast = scan(t, all);
        assert_eq!(fast, scan_every(t, all));
        assert!(fast.len() > 20, "{}", fast.len());
    }
    // Long runs of one candidate byte.
    for t in [
        "1:".repeat(2000),
        ":".repeat(3000),
        "+(".repeat(1000),
        "@".repeat(3000),
        "9".repeat(5000),
        "a.b@".repeat(1000),
    ] {
        assert_eq!(scan(&t, all), scan_every(&t, all), "{}", &t[..8]);
    }
}
