//! Names and tags, parsed once where they enter (API body, import document, discovery,
//! stored row) into types that cannot hold an invalid value.

use std::fmt;

use super::FieldInvalid;

/// Longest gateway name: it prefixes every name discovered from the gateway.
pub const MAX_GATEWAY_NAME: usize = 64;
/// Longest exposed name of a tool, resource, prompt or virtual server, in bytes.
pub const MAX_ITEM_NAME_BYTES: usize = 255;
/// Longest tag.
pub const MAX_TAG: usize = 64;
/// Most tags on one entry.
pub const MAX_TAGS: usize = 32;

/// A gateway's name: 1–64 ASCII letters, digits, `-`, `_`, `.`. It prefixes the exposed
/// name of everything discovered from the gateway (`{gateway}{separator}{name}`), so on
/// input it must also be free of the configured separator ([`GatewayName::check_separator`]):
/// otherwise `a` + `b__c` and `a__b` + `c` would both expose `a__b__c`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GatewayName(String);

impl GatewayName {
    /// Parses the characters and length (field `name`).
    pub fn parse(raw: &str) -> Result<GatewayName, FieldInvalid> {
        let ok = !raw.is_empty()
            && raw.len() <= MAX_GATEWAY_NAME
            && raw
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if ok {
            Ok(GatewayName(raw.to_owned()))
        } else {
            Err(FieldInvalid::new(
                "name",
                format!(
                    "gateway names are 1-{MAX_GATEWAY_NAME} characters of letters, digits, - _ ."
                ),
            ))
        }
    }

    /// Parses a name given on input: [`GatewayName::parse`] plus the separator rule.
    pub fn parse_input(raw: &str, separator: &str) -> Result<GatewayName, FieldInvalid> {
        let name = Self::parse(raw)?;
        name.check_separator(separator)?;
        Ok(name)
    }

    /// Refuses a name that contains the name separator (field `name`). Stored names from
    /// before the rule are only warned about at start (see `federation::Federation::spawn`).
    pub fn check_separator(&self, separator: &str) -> Result<(), FieldInvalid> {
        if !separator.is_empty() && self.0.contains(separator) {
            return Err(FieldInvalid::new(
                "name",
                format!(
                    "must not contain the name separator {separator:?}: it joins a gateway's \
                     name to the names of what it serves, and two gateways could then expose \
                     the same name"
                ),
            ));
        }
        Ok(())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The exposed name of an item this gateway serves as `original`.
    pub fn expose(&self, separator: &str, original: &str) -> String {
        format!("{}{separator}{original}", self.0)
    }
}

impl fmt::Display for GatewayName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The exposed name of a tool, resource, prompt or virtual server: not blank, at most 255
/// bytes, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItemName(String);

impl ItemName {
    /// Parses a name (field `name`).
    pub fn parse(raw: &str) -> Result<ItemName, FieldInvalid> {
        let bad = |reason: &str| Err(FieldInvalid::new("name", reason));
        if raw.trim().is_empty() {
            return bad("must not be empty");
        }
        if raw.len() > MAX_ITEM_NAME_BYTES {
            return bad("at most 255 bytes");
        }
        if raw.chars().any(char::is_control) {
            return bad("must not contain control characters");
        }
        Ok(ItemName(raw.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ItemName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for ItemName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for ItemName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// One tag: lowercase, 1–64 of `a-z 0-9 _ . : / -` (input is trimmed and lowercased).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    /// Parses one tag.
    pub fn parse(raw: &str) -> Option<Tag> {
        let t = raw.trim().to_lowercase();
        let ok = !t.is_empty()
            && t.len() <= MAX_TAG
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '/' | '-'));
        ok.then_some(Tag(t))
    }

    /// The tag.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An entry's tags: at most 32, each a [`Tag`], without duplicates, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Tags(Vec<Tag>);

impl Tags {
    /// Parses a list (field `tags`, `tags[i]` for the offending one).
    pub fn parse<S: AsRef<str>>(raw: &[S]) -> Result<Tags, FieldInvalid> {
        let mut out: Vec<Tag> = Vec::new();
        for (i, t) in raw.iter().enumerate() {
            let tag = Tag::parse(t.as_ref()).ok_or_else(|| {
                FieldInvalid::new(
                    format!("tags[{i}]"),
                    format!("tags are 1-{MAX_TAG} characters of letters, digits, _ . : / -"),
                )
            })?;
            if !out.contains(&tag) {
                out.push(tag);
            }
        }
        if out.len() > MAX_TAGS {
            return Err(FieldInvalid::new(
                "tags",
                format!("at most {MAX_TAGS} tags"),
            ));
        }
        Ok(Tags(out))
    }

    /// Parses a comma-separated filter (`?tags=a,b`; blanks ignored).
    pub fn parse_filter(raw: &str) -> Result<Tags, FieldInvalid> {
        let parts: Vec<&str> = raw
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect();
        Self::parse(&parts).map_err(|e| FieldInvalid::new("tags", e.reason))
    }

    /// The tags.
    pub fn iter(&self) -> impl Iterator<Item = &Tag> {
        self.0.iter()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The tags as strings.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(|t| t.0.clone()).collect()
    }

    /// The stored form: a JSON array of strings.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.to_strings()).unwrap_or_else(|_| "[]".to_owned())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn gateway_names() {
        let cases: &[(&str, &str, bool)] = &[
            ("plain", "time-server.v2", true),
            ("empty", "", false),
            ("space", "a b", false),
            ("unicode", "zeït", false),
            ("too long", &"a".repeat(65), false),
            ("separator inside", "a__b", false),
            ("single underscore", "a_b", true),
        ];
        for (name, raw, ok) in cases {
            let got = GatewayName::parse_input(raw, "__");
            assert_eq!(got.is_ok(), *ok, "{name}: {got:?}");
            if let Err(e) = got {
                assert_eq!(e.field, "name");
            }
        }
        // The collision the rule prevents.
        let a = GatewayName::parse("a").unwrap();
        let ab = GatewayName::parse("a__b").unwrap();
        assert_eq!(a.expose("__", "b__c"), ab.expose("__", "c"));
        assert!(ab.check_separator("__").is_err());
        assert!(GatewayName::parse_input("a-b", "-").is_err());
    }

    #[test]
    fn item_names_and_tags() {
        assert!(ItemName::parse("get_weather").is_ok());
        assert_eq!(
            ItemName::parse(" ").unwrap_err().reason,
            "must not be empty"
        );
        assert!(ItemName::parse("a\u{7}b").is_err());
        assert!(ItemName::parse(&"x".repeat(256)).is_err());
        let t = Tags::parse(&["Team-A", "team-a", "x_y"]).unwrap();
        assert_eq!(t.to_strings(), ["team-a", "x_y"]);
        assert_eq!(t.to_json(), r#"["team-a","x_y"]"#);
        assert_eq!(
            Tags::parse(&["ok", "not ok!"]).unwrap_err().field,
            "tags[1]"
        );
        let many: Vec<String> = (0..33).map(|i| format!("t{i}")).collect();
        assert_eq!(Tags::parse(&many).unwrap_err().field, "tags");
        assert_eq!(
            Tags::parse_filter("a, ,B").unwrap().to_strings(),
            ["a", "b"]
        );
    }
}
