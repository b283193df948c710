//! `Origin` and `Host` checks: the streamable HTTP transport's defence against DNS
//! rebinding and cross-site pages. A request without `Origin` is not from a browser and
//! passes; one from a browser page passes only from an allowed origin. The `Host` must be
//! one the listener answers to: a name an attacker rebound to this address is not.
//!
//! Patterns: an origin is `scheme://host[:port]`, with `:*` for any port, or `*` for any
//! origin; a host is `host`, `host:port`, `host:*` or `*.domain` (any subdomain, any port).
//! Hosts compare case-insensitively.

/// Checks an origin pattern.
pub fn check_origin_pattern(pattern: &str) -> Result<(), String> {
    if pattern == "*" {
        return Ok(());
    }
    let Some((scheme, rest)) = pattern.split_once("://") else {
        return Err(format!("{pattern:?} is not scheme://host[:port] or *"));
    };
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        return Err(format!("{pattern:?} has no valid scheme"));
    }
    if rest.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "{pattern:?}: an origin has no path, query or userinfo"
        ));
    }
    check_host_pattern(rest)
}

/// Checks a host pattern.
pub fn check_host_pattern(pattern: &str) -> Result<(), String> {
    let (host, port) = split_host(pattern);
    let host = host.strip_prefix("*.").unwrap_or(host);
    let host_ok = !host.is_empty()
        && (host.starts_with('[') && host.ends_with(']')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)));
    let port_ok = match port {
        None | Some("*") => true,
        Some(p) => p.parse::<u16>().is_ok(),
    };
    if host_ok && port_ok {
        Ok(())
    } else {
        Err(format!(
            "{pattern:?} is not host, host:port, host:* or *.domain"
        ))
    }
}

/// Splits `host[:port]` (IPv6 in brackets).
fn split_host(s: &str) -> (&str, Option<&str>) {
    if s.starts_with('[') {
        return match s.find(']') {
            Some(end) => {
                let (host, rest) = s.split_at(end + 1);
                (host, rest.strip_prefix(':'))
            }
            None => (s, None),
        };
    }
    match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    }
}

fn host_matches(pattern: &str, value: &str) -> bool {
    let (ph, pp) = split_host(pattern);
    let (vh, vp) = split_host(value);
    let host_ok = match ph.strip_prefix("*.") {
        Some(domain) => {
            vh.len() > domain.len() + 1
                && vh
                    .get(vh.len() - domain.len()..)
                    .is_some_and(|d| d.eq_ignore_ascii_case(domain))
                && vh.as_bytes().get(vh.len() - domain.len() - 1) == Some(&b'.')
        }
        None => ph.eq_ignore_ascii_case(vh),
    };
    let port_ok = match (pp, ph.starts_with("*.")) {
        (Some("*"), _) | (None, true) => true,
        (None, false) => vp.is_none(),
        (Some(p), _) => vp == Some(p),
    };
    host_ok && port_ok
}

/// Whether `host` (a request's `:authority`) is allowed by `patterns` (empty: any).
pub fn host_allowed(patterns: &[String], host: &str) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| host_matches(p, host))
}

/// Whether `origin` (an `Origin` header) is allowed by any of the pattern lists.
pub fn origin_allowed(lists: &[&[String]], origin: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    lists.iter().flat_map(|l| l.iter()).any(|p| {
        p == "*"
            || p.split_once("://").is_some_and(|(ps, prest)| {
                ps.eq_ignore_ascii_case(scheme) && host_matches(prest, rest)
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn hosts_match_exactly_by_port_or_by_domain() {
        let allowed = list(&[
            "localhost:*",
            "127.0.0.1:8080",
            "[::1]:*",
            "*.corp.example",
            "mcp.example.com",
        ]);
        for (host, ok) in [
            ("localhost:8080", true),
            ("LOCALHOST:1", true),
            ("127.0.0.1:8080", true),
            ("127.0.0.1:9090", false),
            ("[::1]:8080", true),
            ("a.corp.example:443", true),
            ("corp.example", false),
            ("evilcorp.example", false),
            ("mcp.example.com", true),
            ("mcp.example.com:8443", false),
            ("evil.com:8080", false),
        ] {
            assert_eq!(host_allowed(&allowed, host), ok, "{host}");
        }
        assert!(host_allowed(&[], "anything"), "no list: any host");
    }

    #[test]
    fn origins_need_a_listed_scheme_and_host() {
        let a = list(&["http://localhost:*", "https://app.example.com"]);
        let b = list(&["https://other.example"]);
        for (origin, ok) in [
            ("http://localhost:6274", true),
            ("https://localhost:6274", false),
            ("https://app.example.com", true),
            ("https://app.example.com:444", false),
            ("https://other.example", true),
            ("https://evil.example", false),
            ("null", false),
        ] {
            assert_eq!(origin_allowed(&[&a, &b], origin), ok, "{origin}");
        }
        assert!(origin_allowed(&[&list(&["*"])], "https://anything"));
        assert!(
            !origin_allowed(&[], "https://anything"),
            "no list: no browser origin"
        );
    }

    #[test]
    fn bad_patterns_are_named() {
        for bad in [
            "localhost",
            "http://",
            "http://a/b",
            "http://u@a",
            "://a",
            "http://a:x",
        ] {
            assert!(check_origin_pattern(bad).is_err(), "{bad}");
        }
        for bad in ["", "a b", "a:99999", "*.", "a:b"] {
            assert!(check_host_pattern(bad).is_err(), "{bad}");
        }
        for good in [
            "*",
            "http://localhost:*",
            "https://a.example:8443",
            "http://[::1]:*",
        ] {
            assert!(check_origin_pattern(good).is_ok(), "{good}");
        }
    }
}
