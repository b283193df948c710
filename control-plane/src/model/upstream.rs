//! [`UpstreamUrl`]: a gateway's MCP endpoint, parsed once where it enters (API, import,
//! store row) and used as a value everywhere after: the SSRF guard, the federation client,
//! the credential binding (its origin), the API views (redacted) and the edge translation.

use super::FieldInvalid;

/// Longest upstream URL accepted.
pub const MAX_URL_BYTES: usize = 4096;

/// What replaces a redacted secret.
pub const REDACTED: &str = "***";

/// An upstream MCP endpoint: an `http` or `https` URL with a host and without credentials in
/// it (those belong in `auth_type` and the `auth_*` fields, sealed at rest). It may carry a
/// query, whose values can be secrets (`?token=…`): [`UpstreamUrl::as_str`] is for
/// connecting only, and every answer shows [`UpstreamUrl::redacted`].
///
/// Deliberately neither `Display` nor `Serialize`: printing one must choose between the two.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct UpstreamUrl(url::Url);

impl std::fmt::Debug for UpstreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("UpstreamUrl")
            .field(&self.redacted())
            .finish()
    }
}

impl UpstreamUrl {
    /// Parses a URL given by an operator (field `url`).
    pub fn parse(raw: &str) -> Result<UpstreamUrl, FieldInvalid> {
        let url = Self::parse_lenient(raw)?;
        if !url.0.username().is_empty() || url.0.password().is_some() {
            return Err(FieldInvalid::new(
                "url",
                "must not carry credentials (user:password@host): give them as auth_type basic \
                 with auth_username and auth_password, or as auth_type bearer or headers with \
                 auth_token or auth_headers; they are then sealed at rest and never returned",
            ));
        }
        Ok(url)
    }

    /// Reads a stored URL. Rows written before userinfo was refused may carry it: they
    /// still load (and [`UpstreamUrl::redacted`] hides it); everything else must hold.
    pub fn from_stored(raw: &str) -> Result<UpstreamUrl, FieldInvalid> {
        Self::parse_lenient(raw)
    }

    fn parse_lenient(raw: &str) -> Result<UpstreamUrl, FieldInvalid> {
        if raw.len() > MAX_URL_BYTES {
            return Err(FieldInvalid::new(
                "url",
                format!("at most {MAX_URL_BYTES} bytes"),
            ));
        }
        let url = url::Url::parse(raw.trim())
            .map_err(|e| FieldInvalid::new("url", format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(FieldInvalid::new("url", "scheme must be http or https"));
        }
        if url.host().is_none() {
            return Err(FieldInvalid::new("url", "must have a host"));
        }
        Ok(UpstreamUrl(url))
    }

    /// The whole URL, query secrets included: for connecting to the upstream, never for
    /// showing.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The URL as answers show it: query values, fragment and any userinfo replaced by
    /// `***` (`https://h/mcp?token=***&team=***`).
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }

    /// Whether `candidate` is this URL as answers show it: a client that read a gateway and
    /// writes it back sends the redacted form, which must not replace the stored secret.
    pub fn is_redacted_form(&self, candidate: &str) -> bool {
        let redacted = self.redacted();
        redacted != self.as_str() && redacted == candidate.trim()
    }

    /// `scheme://host:port` (port always explicit): what credentials are bound to.
    pub fn origin(&self) -> String {
        format!("{}://{}:{}", self.0.scheme(), self.host(), self.port())
    }

    /// The host (IPv6 addresses without brackets).
    pub fn host(&self) -> url::Host<&str> {
        // `parse_lenient` admits only URLs with a host.
        self.0.host().unwrap_or(url::Host::Domain(""))
    }

    /// The TCP port, explicit or the scheme's default.
    pub fn port(&self) -> u16 {
        self.0
            .port_or_known_default()
            .unwrap_or(if self.is_tls() { 443 } else { 80 })
    }

    /// Whether the upstream speaks TLS (`https`).
    pub fn is_tls(&self) -> bool {
        self.0.scheme() == "https"
    }

    /// Path and query, as a request line carries them (query secrets included).
    pub fn path_and_query(&self) -> String {
        match self.0.query() {
            Some(q) => format!("{}?{q}", self.0.path()),
            None => self.0.path().to_owned(),
        }
    }

    /// `host[:port]` as the URL writes it (the HTTP `Host` header).
    pub fn authority(&self) -> String {
        let host = self.0.host_str().unwrap_or_default();
        match self.0.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        }
    }
}

fn redact(url: &url::Url) -> String {
    let mut u = url.clone();
    if !u.username().is_empty() || u.password().is_some() {
        let _ = u.set_password(None);
        let _ = u.set_username(REDACTED);
    }
    if let Some(q) = u.query().map(str::to_owned) {
        let pairs: Vec<String> = q
            .split('&')
            .map(|part| match part.split_once('=') {
                Some((k, "")) => format!("{k}="),
                Some((k, _)) => format!("{k}={REDACTED}"),
                None if part.is_empty() => String::new(),
                None => REDACTED.to_owned(),
            })
            .collect();
        u.set_query(Some(&pairs.join("&")));
    }
    if u.fragment().is_some() {
        u.set_fragment(Some(REDACTED));
    }
    u.to_string()
}

/// `text` with every `http(s)://` URL in it redacted as [`UpstreamUrl::redacted`] does:
/// error chains of HTTP clients quote the URL they called, query secrets included.
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let start = match (rest.find("http://"), rest.find("https://")) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => break,
        };
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | ')' | '`'))
            .unwrap_or(tail.len());
        let candidate = &tail[..end];
        match url::Url::parse(candidate) {
            Ok(u) => out.push_str(&redact(&u)),
            // Not parseable: hide everything after the scheme rather than guess.
            Err(_) => {
                let scheme = candidate.find("//").map_or(0, |i| i + 2);
                out.push_str(&candidate[..scheme]);
                out.push_str(REDACTED);
            }
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let cases: &[(&str, &str, Result<&str, &str>)] = &[
            (
                "plain",
                "http://up.example/mcp",
                Ok("http://up.example/mcp"),
            ),
            (
                "https port",
                "https://up.example:8443/v1/mcp",
                Ok("https://up.example:8443/v1/mcp"),
            ),
            ("ipv6", "http://[::1]:9/mcp", Ok("http://[::1]:9/mcp")),
            ("no scheme", "up.example/mcp", Err("not a URL")),
            ("ftp", "ftp://up.example/", Err("http or https")),
            (
                "userinfo",
                "https://user:pass@up.example/mcp",
                Err("auth_type"),
            ),
            (
                "user only",
                "https://token@up.example/mcp",
                Err("auth_type"),
            ),
            (
                "too long",
                &format!("http://h/{}", "a".repeat(5000)),
                Err("at most"),
            ),
        ];
        for (name, raw, want) in cases {
            let got = UpstreamUrl::parse(raw);
            match (got, want) {
                (Ok(u), Ok(s)) => assert_eq!(u.as_str(), *s, "{name}"),
                (Err(e), Err(w)) => {
                    assert_eq!(e.field, "url", "{name}");
                    assert!(e.reason.contains(w), "{name}: {}", e.reason);
                }
                (got, want) => panic!("{name}: {got:?} vs {want:?}"),
            }
        }
        // A stored row from before the rule still loads, and shows no secret.
        let old = UpstreamUrl::from_stored("https://user:pass@up.example/mcp").unwrap();
        assert_eq!(old.redacted(), "https://***@up.example/mcp");
    }

    #[test]
    fn redaction_and_origin() {
        let u = UpstreamUrl::parse("https://up.example/mcp?token=s3cret&team=a&flag&empty=#frag")
            .unwrap();
        assert_eq!(
            u.redacted(),
            "https://up.example/mcp?token=***&team=***&***&empty=#***"
        );
        assert!(
            u.as_str().contains("s3cret"),
            "the stored URL keeps the secret"
        );
        assert!(!format!("{u:?}").contains("s3cret"));
        assert!(u.is_redacted_form(&u.redacted()));
        assert!(!u.is_redacted_form("https://up.example/mcp?token=other&team=a&flag&empty=#frag"));
        assert_eq!(u.origin(), "https://up.example:443");
        assert_eq!(u.path_and_query(), "/mcp?token=s3cret&team=a&flag&empty=");
        assert_eq!(
            UpstreamUrl::parse("http://[::1]/x").unwrap().origin(),
            "http://[::1]:80"
        );
        assert_eq!(
            UpstreamUrl::parse("http://h:8080/x").unwrap().authority(),
            "h:8080"
        );
    }

    #[test]
    fn urls_in_text_are_redacted() {
        let t = "error sending request for url (http://h:1/mcp?token=abc): refused; \
                 see https://u:p@x.example/a?b=c and http://[broken";
        assert_eq!(
            redact_urls(t),
            "error sending request for url (http://h:1/mcp?token=***): refused; \
             see https://***@x.example/a?b=*** and http://***"
        );
    }
}
