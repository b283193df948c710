//! Envoy's admin interface, over a plain HTTP/1.1 connection per request.
//!
//! A hand-written GET rather than an HTTP client: the admin interface is loopback and
//! plaintext, and the benchmarks, which link no HTTP client, read it too. The cost is the
//! chunked decoding below.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, anyhow};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one admin request may take (a config dump of a large catalog included).
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// `GET path` on the admin interface at `admin`: the status and the body.
pub async fn get(admin: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(admin).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow!("admin {path}: no answer within {TIMEOUT:?}"))?
        .with_context(|| format!("admin {path} at {admin}"))?;
    response(&raw).with_context(|| format!("admin {path}"))
}

/// The listeners Envoy has bound, by name, in the order `/listeners` reports them.
pub async fn listeners(admin: SocketAddr) -> anyhow::Result<Vec<(String, SocketAddr)>> {
    let (_, text) = get(admin, "/listeners?format=json").await?;
    let doc: Value = serde_json::from_str(&text).context("parsing /listeners")?;
    let bound = doc["listener_statuses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| {
            let sa = &l["local_address"]["socket_address"];
            let port = u16::try_from(sa["port_value"].as_u64()?).ok()?;
            let ip = sa["address"].as_str()?.parse().ok()?;
            let name = l["name"].as_str()?.to_owned();
            (port != 0).then(|| (name, SocketAddr::new(ip, port)))
        })
        .collect();
    Ok(bound)
}

/// The address listener `name` is bound to, as `/listeners` reports it now; `None` while
/// Envoy does not have that listener (yet) or has not bound it.
pub async fn listener(admin: SocketAddr, name: &str) -> anyhow::Result<Option<SocketAddr>> {
    let bound = listeners(admin).await?;
    Ok(bound.into_iter().find(|(n, _)| n == name).map(|(_, a)| a))
}

/// Splits a raw HTTP/1.1 response into its status and (de-chunked) body.
fn response(raw: &[u8]) -> anyhow::Result<(u16, String)> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed response (no end of head)"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no status in response head: {head}"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Decodes a `Transfer-Encoding: chunked` body (on bytes: a chunk may end inside a
/// multi-byte character).
fn dechunk(mut rest: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("truncated chunked body"))?;
        let line = String::from_utf8_lossy(&rest[..line_end]);
        let size = line.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(size, 16).map_err(|e| anyhow!("bad chunk size `{line}`: {e}"))?;
        let after = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = after
            .get(..size)
            .ok_or_else(|| anyhow!("truncated chunk"))?;
        body.extend_from_slice(chunk);
        rest = after
            .get(size..)
            .and_then(|r| r.strip_prefix(b"\r\n"))
            .ok_or_else(|| anyhow!("chunk without CRLF"))?;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies() {
        assert_eq!(
            dechunk(b"5\r\nhello\r\n1;x=y\r\n!\r\n0\r\n\r\n").unwrap(),
            b"hello!"
        );
        assert!(dechunk(b"5\r\nhel").is_err());
        // "é" is two bytes; a chunk boundary between them is fine.
        assert_eq!(
            dechunk(b"1\r\n\xc3\r\n1\r\n\xa9\r\n0\r\n\r\n").unwrap(),
            "é".as_bytes()
        );
    }

    #[test]
    fn responses_with_and_without_chunking() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nLIVE\n";
        assert_eq!(response(plain).unwrap(), (200, "LIVE\n".to_owned()));
        let chunked =
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nPRE_\r\n8\r\nINITIALI\r\n0\r\n\r\n";
        assert_eq!(response(chunked).unwrap(), (503, "PRE_INITIALI".to_owned()));
        assert!(response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(response(b"garbage\r\n\r\n").is_err());
    }
}
