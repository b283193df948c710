//! Refuses state changes a browser could be tricked into sending (cross-site request
//! forgery): the admin API listens on an address a browser on the operator's machine can
//! reach, and a page elsewhere can make that browser POST to it.
//!
//! A browser sends a cross-site POST without asking first only when it looks like a form
//! (`text/plain`, `application/x-www-form-urlencoded`, `multipart/form-data`) and carries no
//! custom header; anything else needs a CORS preflight, which this API never grants. So every
//! POST, PUT, PATCH and DELETE must carry either `Content-Type: application/json` with a
//! body, or the header [`REQUEST_HEADER`]`: 1` (what the CLI sends; for body-less calls such
//! as `/state`, `/refresh` and `DELETE`). Browsers also say where a request comes from, and
//! that is checked too: `Sec-Fetch-Site` other than `same-origin` or `none`, or an `Origin`
//! that is not this API's own, is refused outright.

use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::Problem;

/// The header that marks a request as made by a program, not a browser form.
pub const REQUEST_HEADER: &str = "x-mcpgw-request";

fn refuse(detail: &str) -> Response {
    Problem::new(
        StatusCode::FORBIDDEN,
        "cross-site-request",
        "Cross-site request refused",
        detail,
    )
    .into_response()
}

/// Whether `Origin` names the host the request was sent to (scheme aside: a TLS proxy in
/// front may change it).
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host else {
        return false;
    };
    let (Ok(o), Ok(h)) = (
        url::Url::parse(origin),
        url::Url::parse(&format!("http://{host}")),
    ) else {
        return false;
    };
    let same_host = o.host_str().is_some() && o.host_str() == h.host_str();
    // Both on their scheme's default port, or on the same explicit one.
    let same_port = o.port() == h.port()
        || o.port_or_known_default() == h.port_or_known_default() && o.scheme() == "http";
    same_host && same_port
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|essence| essence.trim().to_ascii_lowercase())
        .is_some_and(|e| e == "application/json" || e.ends_with("+json"))
}

fn has_body(headers: &HeaderMap) -> bool {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match length {
        Some(n) => n > 0,
        None => headers.contains_key(header::TRANSFER_ENCODING),
    }
}

/// The middleware: safe methods pass; state changes must prove they are not a forged form.
pub async fn refuse_cross_site(req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let h = req.headers();
    if let Some(site) = h.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return refuse(&format!(
            "the browser says this request comes from another site (Sec-Fetch-Site: {site})"
        ));
    }
    if let Some(origin) = h.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("null");
        let host = h.get(header::HOST).and_then(|v| v.to_str().ok());
        if !same_origin(origin, host) {
            return refuse("the request's Origin is not this API's own");
        }
    }
    let marked = h.get(REQUEST_HEADER).is_some_and(|v| v.as_bytes() == b"1");
    if !(marked || is_json(h) && has_body(h)) {
        return refuse(&format!(
            "a {} must carry Content-Type: application/json with a JSON body, or the header \
             {REQUEST_HEADER}: 1",
            req.method()
        ));
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let cases: &[(&str, &str, Option<&str>, bool)] = &[
            (
                "same",
                "http://127.0.0.1:4444",
                Some("127.0.0.1:4444"),
                true,
            ),
            (
                "default port",
                "http://admin.example",
                Some("admin.example"),
                true,
            ),
            (
                "tls proxy",
                "https://admin.example",
                Some("admin.example"),
                true,
            ),
            (
                "other port",
                "http://127.0.0.1:8080",
                Some("127.0.0.1:4444"),
                false,
            ),
            (
                "other host",
                "http://evil.example",
                Some("127.0.0.1:4444"),
                false,
            ),
            ("null", "null", Some("127.0.0.1:4444"), false),
            ("no host header", "http://127.0.0.1:4444", None, false),
            ("ipv6", "http://[::1]:4444", Some("[::1]:4444"), true),
        ];
        for (name, origin, host, want) in cases {
            assert_eq!(same_origin(origin, *host), *want, "{name}");
        }
    }
}
