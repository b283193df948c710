//! How a virtual server shows what it serves, and to which web pages: its naming mode
//! (prefixed or the upstreams' own names) and the browser `Origin`s it admits.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::FieldInvalid;

/// How a virtual server names the tools and prompts it serves (resources and resource
/// templates are always named by their URI).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Naming {
    /// `{gateway}{separator}{name}`: the registry's name of each item, unique by
    /// construction, so any set of upstreams can be composed.
    #[default]
    Prefixed,
    /// The upstream's own name of each item: a virtual server over one upstream is a
    /// transparent front of it. Two members may not expose the same name (tool name,
    /// prompt name, resource URI, resource-template URI): such a server is refused.
    Upstream,
}

impl Naming {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prefixed => "prefixed",
            Self::Upstream => "upstream",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "prefixed" => Some(Self::Prefixed),
            "upstream" => Some(Self::Upstream),
            _ => None,
        }
    }
}

/// Most origins one virtual server may list.
pub const MAX_ALLOWED_ORIGINS: usize = 64;
/// Longest origin pattern.
pub const MAX_ORIGIN_BYTES: usize = 255;

/// The browser `Origin`s a virtual server admits besides the listener's
/// (`policy.allowed_origins`): each `scheme://host[:port]`, `:*` for any port, or `*` for
/// any origin, checked with the filter's own rule, without duplicates (compared
/// case-insensitively, as the filter matches them), in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct AllowedOrigins(Vec<String>);

impl AllowedOrigins {
    /// Parses a list (field `allowed_origins`, `allowed_origins[i]` for the offending one).
    pub fn parse<S: AsRef<str>>(raw: &[S]) -> Result<AllowedOrigins, FieldInvalid> {
        let mut out: Vec<String> = Vec::new();
        for (i, o) in raw.iter().enumerate() {
            let o = o.as_ref();
            let field = || format!("allowed_origins[{i}]");
            if o.len() > MAX_ORIGIN_BYTES {
                return Err(FieldInvalid::new(
                    field(),
                    format!("at most {MAX_ORIGIN_BYTES} bytes"),
                ));
            }
            mcpgw_core::origin::check_origin_pattern(o).map_err(|reason| {
                FieldInvalid::new(
                    field(),
                    format!(
                        "{reason} (an origin is scheme://host[:port] as a browser sends it, \
                         e.g. https://app.example.com or http://localhost:*; no path)"
                    ),
                )
            })?;
            if !out.iter().any(|seen| seen.eq_ignore_ascii_case(o)) {
                out.push(o.to_owned());
            }
        }
        if out.len() > MAX_ALLOWED_ORIGINS {
            return Err(FieldInvalid::new(
                "allowed_origins",
                format!("at most {MAX_ALLOWED_ORIGINS} origins"),
            ));
        }
        Ok(AllowedOrigins(out))
    }

    /// The patterns.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// The patterns, owned.
    pub fn to_vec(&self) -> Vec<String> {
        self.0.clone()
    }

    /// The stored form: a JSON array of strings.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_else(|_| "[]".to_owned())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn naming_round_trips_its_stored_form() {
        for n in [Naming::Prefixed, Naming::Upstream] {
            assert_eq!(Naming::parse(n.as_str()), Some(n));
        }
        assert_eq!(Naming::parse("Upstream"), None);
        assert_eq!(Naming::default(), Naming::Prefixed);
        assert_eq!(
            serde_json::from_str::<Naming>("\"upstream\"").unwrap(),
            Naming::Upstream
        );
    }

    #[test]
    fn origins_are_checked_with_the_filters_rule() {
        let good = AllowedOrigins::parse(&[
            "https://app.example.com",
            "http://localhost:*",
            "HTTPS://APP.example.com",
            "http://[::1]:6274",
        ])
        .unwrap();
        assert_eq!(
            good.as_slice(),
            [
                "https://app.example.com",
                "http://localhost:*",
                "http://[::1]:6274"
            ],
            "duplicates (case-insensitive) dropped"
        );
        assert_eq!(
            good.to_json(),
            r#"["https://app.example.com","http://localhost:*","http://[::1]:6274"]"#
        );
        for (name, bad, field) in [
            ("no scheme", vec!["app.example.com"], "allowed_origins[0]"),
            (
                "a path",
                vec!["https://ok.example", "https://a.example/x"],
                "allowed_origins[1]",
            ),
            (
                "userinfo",
                vec!["https://u@a.example"],
                "allowed_origins[0]",
            ),
            (
                "bad port",
                vec!["https://a.example:99999"],
                "allowed_origins[0]",
            ),
            (
                "trailing slash",
                vec!["https://a.example/"],
                "allowed_origins[0]",
            ),
            ("empty", vec![""], "allowed_origins[0]"),
        ] {
            let e = AllowedOrigins::parse(&bad).unwrap_err();
            assert_eq!(e.field, field, "{name}: {e}");
            assert!(e.reason.contains("scheme://host[:port]"), "{name}: {e}");
        }
        let many: Vec<String> = (0..65).map(|i| format!("https://a{i}.example")).collect();
        assert_eq!(
            AllowedOrigins::parse(&many).unwrap_err().field,
            "allowed_origins"
        );
        let long = format!("https://{}.example", "a".repeat(250));
        assert!(AllowedOrigins::parse(&[long]).is_err());
    }
}
