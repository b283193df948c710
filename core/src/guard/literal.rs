//! A required-literal prefilter for regex rules.
//!
//! `regex-lite` has no literal optimisations: every search runs its backtracking-free
//! engine over the whole text. Most rules start with a literal (`internal\.example\.com`,
//! `(?i)password=`), and most texts do not contain it, so a substring search in front of
//! the engine skips it on those texts.
//!
//! Only a literal that every match must contain is taken: the pattern's leading run of
//! literal characters, cut before any character a quantifier makes optional, and nothing
//! at all when the pattern has an alternation at its top level (`ab|cd` needs neither).

/// A literal every match of a pattern contains.
#[derive(Debug, Clone)]
pub(crate) struct Literal {
    text: String,
    /// Compared ASCII-case-insensitively (the pattern starts with `(?i)`).
    fold: bool,
    /// Where in `text` the byte searched for is: the one least common in text (see
    /// [`commonness`]), so the search stops at few places that are not a match.
    pivot: usize,
}

/// How common a byte is in the text tools exchange (prose, code, JSON): the search for a
/// literal looks for its least common byte. A rough order (English letter frequencies;
/// spaces, common punctuation and vowels first); only the order matters, and a wrong guess
/// costs speed, never a match.
fn commonness(b: u8) -> u8 {
    match b.to_ascii_lowercase() {
        b' ' => 255,
        b'e' => 250,
        b't' | b'a' | b'o' => 240,
        b'i' | b'n' | b's' | b'h' | b'r' => 230,
        b'd' | b'l' | b'.' | b',' | b'"' => 220,
        b'c' | b'u' | b'm' | b'w' | b'f' | b'g' | b'y' | b'p' | b'b' => 200,
        b'/' | b'-' | b':' | b'_' | b'0'..=b'9' => 180,
        b'v' | b'k' => 160,
        b'\'' | b'(' | b')' | b'\n' => 150,
        b'j' | b'x' | b'q' | b'z' => 120,
        c if c.is_ascii_alphanumeric() || c.is_ascii_punctuation() => 60,
        // Other control and non-ASCII bytes.
        _ => 100,
    }
}

/// Characters with a meaning of their own outside a class.
const META: &[char] = &[
    '\\', '.', '+', '*', '?', '(', ')', '|', '[', ']', '{', '}', '^', '$',
];

impl Literal {
    /// The literal every match of `pattern` contains, if there is one worth searching for.
    pub(crate) fn of(pattern: &str) -> Option<Literal> {
        let (fold, body) = match pattern.strip_prefix("(?i)") {
            Some(rest) => (true, rest),
            // Any other flag group (`x` changes what whitespace means) or a leading group:
            // no prefilter.
            None => (false, pattern),
        };
        if body.starts_with("(?") || has_top_level_alternation(body) {
            return None;
        }
        let body = body.strip_prefix('^').unwrap_or(body);
        let mut text = String::new();
        let mut chars = body.chars().peekable();
        while let Some(c) = chars.next() {
            let literal = match c {
                '\\' => match chars.next() {
                    Some(e) if META.contains(&e) || "-#&~".contains(e) => e,
                    // `\d`, `\b`, `\x41`, …: a class, an assertion or an escape not worth decoding.
                    _ => break,
                },
                c if META.contains(&c) => break,
                c => c,
            };
            if fold && !folds_in_ascii_only(literal) {
                break;
            }
            match chars.peek() {
                // The character may be absent from a match: keep what came before it.
                Some('?' | '*' | '{') => break,
                // Present at least once: keep it, but what follows may repeat it.
                Some('+') => {
                    text.push(literal);
                    break;
                }
                _ => text.push(literal),
            }
        }
        if text.is_empty() {
            return None;
        }
        if fold {
            text.make_ascii_lowercase();
        }
        let pivot = text
            .bytes()
            .enumerate()
            .min_by_key(|&(_, b)| commonness(b))
            .map_or(0, |(i, _)| i);
        Some(Literal { text, fold, pivot })
    }

    /// False only when no match of the pattern can occur in `haystack`.
    /// The literal's least common byte is looked for eight bytes at a time (in both cases
    /// under `(?i)`), and the whole literal compared where it is found.
    pub(crate) fn may_match(&self, haystack: &str) -> bool {
        let needle = self.text.as_bytes();
        let hay = haystack.as_bytes();
        let Some(&pivot) = needle.get(self.pivot) else {
            return true;
        };
        let (a, b) = if self.fold {
            (pivot, pivot.to_ascii_uppercase())
        } else {
            (pivot, pivot)
        };
        // The pivot of a match is `self.pivot` bytes into it.
        let mut from = self.pivot;
        while let Some(p) = super::json::find2(hay, from, a, b) {
            let start = p - self.pivot;
            let Some(window) = hay.get(start..start + needle.len()) else {
                return false;
            };
            if window == needle || (self.fold && window.eq_ignore_ascii_case(needle)) {
                return true;
            }
            from = p + 1;
        }
        false
    }
}

/// Whether `c` compares the way `eq_ignore_ascii_case` compares it under `(?i)`.
/// `regex-lite` folds ASCII case only; a non-ASCII character ends the literal all the same,
/// so the prefilter does not depend on that.
fn folds_in_ascii_only(c: char) -> bool {
    c.is_ascii()
}

/// Whether `pattern` has a `|` outside every group and class.
fn has_top_level_alternation(pattern: &str) -> bool {
    let mut depth = 0usize;
    let mut in_class = false;
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '[' if !in_class => {
                in_class = true;
                // A `]` right after `[` or `[^` is a literal member of the class.
                let mut peek = chars.clone();
                match peek.next() {
                    Some('^') if peek.next() == Some(']') => {
                        chars.next();
                        chars.next();
                    }
                    Some(']') => {
                        chars.next();
                    }
                    _ => {}
                }
            }
            ']' if in_class => in_class = false,
            '(' if !in_class => depth += 1,
            ')' if !in_class => depth = depth.saturating_sub(1),
            '|' if !in_class && depth == 0 => return true,
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::Literal;

    fn text_of(pattern: &str) -> Option<String> {
        Literal::of(pattern).map(|l| l.text)
    }

    #[test]
    fn the_leading_literal_is_taken_up_to_the_first_meta_character() {
        assert_eq!(
            text_of(r"internal\.example\.com").as_deref(),
            Some("internal.example.com")
        );
        assert_eq!(text_of(r"@example\.com").as_deref(), Some("@example.com"));
        assert_eq!(text_of(r"^secret[0-9]+").as_deref(), Some("secret"));
        assert_eq!(text_of(r"(?i)PASSWORD=[^ ]+").as_deref(), Some("password="));
        assert_eq!(text_of(r"(?i)token=").as_deref(), Some("token="));
    }

    #[test]
    fn a_character_a_quantifier_makes_optional_is_left_out() {
        assert_eq!(text_of("colou?r").as_deref(), Some("colo"));
        assert_eq!(text_of("ab*c").as_deref(), Some("a"));
        assert_eq!(text_of("ab{0,2}").as_deref(), Some("a"));
        assert_eq!(text_of("ab+c").as_deref(), Some("ab"));
        assert_eq!(text_of("a?b"), None);
    }

    #[test]
    fn no_literal_is_required_of_alternations_classes_and_flags() {
        assert_eq!(text_of("abc|def"), None);
        assert_eq!(text_of("(?x)a b"), None);
        assert_eq!(text_of("(?i)(?s)abc"), None);
        assert_eq!(text_of(r"\d{3}-abc"), None);
        assert_eq!(text_of("[ab]cd"), None);
        assert_eq!(text_of(".abc"), None);
        // Alternation inside a group after the literal keeps the literal.
        assert_eq!(text_of("key=(a|b)").as_deref(), Some("key="));
        // A `|` inside a class is not an alternation.
        assert_eq!(text_of("key[|]x").as_deref(), Some("key"));
        assert_eq!(text_of("key[]|]x").as_deref(), Some("key"));
    }

    /// The prefilter may only skip texts in which the engine finds no match.
    #[test]
    fn the_prefilter_never_hides_a_match_the_engine_finds() {
        let patterns = [
            r"internal\.example\.com",
            "(?i)password=[^ ]+",
            "(?i)TOKEN",
            "(?i)ask",
            "colou?r",
            "ab+c",
            "ab*c",
            "ab{2}",
            "key=(a|b)",
            "abc|def",
            "^start",
            r"a\-b",
            "x[|]y",
            "[]|]z",
        ];
        let texts = [
            "",
            "internal.example.com",
            "INTERNAL.example.com",
            "my Password=hunter2",
            "PASSWORD=x",
            "a token here",
            "tOkEn",
            "AS\u{212A}",
            "a\u{17F}k",
            "color",
            "colour",
            "colr",
            "abbbc",
            "ac",
            "abb",
            "key=b",
            "def",
            "start here",
            "not start",
            "a-b",
            "x|y",
            "|z",
            "]z",
            "ünïcode ab",
        ];
        for pattern in patterns {
            let re = regex_lite::Regex::new(pattern).expect("test patterns compile");
            let Some(literal) = Literal::of(pattern) else {
                continue;
            };
            for text in texts {
                if re.is_match(text) {
                    assert!(
                        literal.may_match(text),
                        "the prefilter of {pattern:?} hides its match in {text:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_text_without_the_literal_is_skipped() {
        let l = Literal::of(r"internal\.example\.com").expect("a literal");
        assert!(!l.may_match("nothing to see"));
        let l = Literal::of("(?i)token=").expect("a literal");
        assert!(l.may_match("TOKEN=abc"));
        assert!(!l.may_match("toke n="));
    }

    #[test]
    fn the_search_finds_what_comparing_every_window_finds() {
        let reference = |l: &Literal, hay: &str| {
            let needle = l.text.as_bytes();
            hay.as_bytes().windows(needle.len()).any(|w| {
                if l.fold {
                    w.eq_ignore_ascii_case(needle)
                } else {
                    w == needle
                }
            })
        };
        for pattern in [
            "(?i)password=",
            "(?i)=x",
            "internal\\.example",
            "é",
            "(?i)9",
            "(?i)xa",
            "ax",
            "(?i)ex=pa",
        ] {
            let l = Literal::of(pattern).expect("a literal");
            for len in 0..24 {
                for at in 0..=len {
                    let filler = "pAsSwOrD internal.exampl 9 ".repeat(2);
                    let base = &filler[..len];
                    for insert in [
                        "",
                        "PASSWORD=",
                        "password=",
                        "internal.example",
                        "é",
                        "=X",
                        "9",
                        "xA",
                        "ax",
                        "eX=Pa",
                    ] {
                        let hay = format!("{}{insert}{}", &base[..at], &base[at..]);
                        assert_eq!(
                            l.may_match(&hay),
                            reference(&l, &hay),
                            "{pattern} in {hay:?}"
                        );
                    }
                }
            }
        }
    }
}
