//! The closed-loop load generator: a fixed number of keep-alive HTTP/1.1 connections, each
//! sending the next request as soon as the previous response is read, recording every
//! latency in an HDR histogram.

use anyhow::{Context, anyhow};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::header::{ACCEPT, CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Path the client posts to (the MCP streamable HTTP endpoint).
pub const MCP_PATH: &str = "/mcp";
/// Largest latency the histogram holds (longer ones are clamped): 60 s in nanoseconds.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// Size of the `tools/call` body, whatever the tool's name.
pub const CALL_BODY_BYTES: usize = 1024;

/// A 1 KB MCP `tools/call` of `tool`: envelope first (method, id, tool name), then
/// arguments, as MCP clients serialize it, so filters that stop parsing once routable can
/// do so. The filler absorbs the name's length, so every call body is
/// [`CALL_BODY_BYTES`] long.
pub fn tools_call_body(tool: &str) -> Bytes {
    let head = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{tool}","_meta":{{"progressToken":"bench-1"}},"arguments":{{"message":""#
    );
    let tail = r#"","repeat":1,"tags":["bench","mcp","tools-call"]}}}"#;
    let filler_len = CALL_BODY_BYTES.saturating_sub(head.len() + tail.len());
    let filler: String = "The quick brown fox jumps over the lazy dog. "
        .chars()
        .cycle()
        .take(filler_len)
        .collect();
    Bytes::from(format!("{head}{filler}{tail}"))
}

/// The 2026-07-28 version of MCP (stateless: every request carries its envelope).
pub const MODERN_VERSION: &str = "2026-07-28";

/// A 1 KB MCP 2026-07-28 `tools/call` of `tool`: as [`tools_call_body`], with the envelope
/// that era requires in `_meta` (protocol version, client capabilities, client info), the
/// same [`CALL_BODY_BYTES`] long.
pub fn modern_tools_call_body(tool: &str) -> Bytes {
    let head = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{tool}","_meta":{{"progressToken":"bench-1","io.modelcontextprotocol/protocolVersion":"{MODERN_VERSION}","io.modelcontextprotocol/clientCapabilities":{{}},"io.modelcontextprotocol/clientInfo":{{"name":"mcpgw-bench","version":"1"}}}},"arguments":{{"message":""#
    );
    let tail = r#"","repeat":1,"tags":["bench","mcp","tools-call"]}}}"#;
    let filler_len = CALL_BODY_BYTES.saturating_sub(head.len() + tail.len());
    let filler: String = "The quick brown fox jumps over the lazy dog. "
        .chars()
        .cycle()
        .take(filler_len)
        .collect();
    Bytes::from(format!("{head}{filler}{tail}"))
}

/// The request a client repeats: `POST path` with `body`.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Request path.
    pub path: &'static str,
    /// JSON-RPC request body.
    pub body: Bytes,
    /// For a 2026-07-28 `tools/call`, the tool it names: the request then carries that
    /// era's headers (`MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`), which the filter
    /// checks against the body.
    pub modern_call_of: Option<&'static str>,
    /// `Authorization` of every request (the `edge-call-auth` variant's token).
    pub authorization: Option<&'static str>,
    /// `Authorization` values taken in turn, one per request, instead (the
    /// `edge-call-auth-fresh` variant's tokens); the turn is shared by every clone.
    pub rotating: Option<(&'static [String], Arc<AtomicUsize>)>,
}

impl Workload {
    /// `POST path` with `body`, as a 2025-06-18 client sends it.
    pub fn new(path: &'static str, body: Bytes) -> Workload {
        Workload {
            path,
            body,
            modern_call_of: None,
            authorization: None,
            rotating: None,
        }
    }

    /// The same requests, each with `Authorization: <authorization>`.
    pub fn authorized(mut self, authorization: Option<&'static str>) -> Workload {
        self.authorization = authorization;
        self
    }

    /// The same requests, each with the next of `authorizations` (round robin).
    pub fn authorized_in_turn(mut self, authorizations: Option<&'static [String]>) -> Workload {
        self.rotating = authorizations
            .filter(|a| !a.is_empty())
            .map(|a| (a, Arc::new(AtomicUsize::new(0))));
        self
    }

    /// `POST path` of a 2026-07-28 `tools/call` of `tool` (`body`), with that era's headers.
    pub fn modern_call(path: &'static str, tool: &'static str, body: Bytes) -> Workload {
        Workload {
            path,
            body,
            modern_call_of: Some(tool),
            authorization: None,
            rotating: None,
        }
    }

    fn request(&self) -> anyhow::Result<Request<Full<Bytes>>> {
        let mut request = Request::post(self.path)
            .header(HOST, "mcpgw-bench")
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json, text/event-stream");
        request = match self.modern_call_of {
            None => request.header("mcp-protocol-version", "2025-06-18"),
            Some(tool) => request
                .header("mcp-protocol-version", MODERN_VERSION)
                .header("mcp-method", "tools/call")
                .header("mcp-name", tool),
        };
        if let Some(authorization) = self.authorization {
            request = request.header("authorization", authorization);
        }
        if let Some((all, turn)) = &self.rotating {
            let i = turn.fetch_add(1, Ordering::Relaxed) % all.len();
            if let Some(authorization) = all.get(i) {
                request = request.header("authorization", authorization.as_str());
            }
        }
        request
            .body(Full::new(self.body.clone()))
            .context("building the request")
    }
}

/// What one load interval measured.
#[derive(Debug, Clone)]
pub struct Interval {
    /// Responses completed within the interval.
    pub completed: u64,
    /// Wall time from the first request to the last response.
    pub elapsed: Duration,
    /// Latency of every completed request, in nanoseconds.
    pub latency_ns: Histogram<u64>,
}

impl Interval {
    /// Completed requests per second.
    pub fn rate(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// An empty latency histogram with the bounds every interval uses.
pub fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).map_err(|e| anyhow!("latency histogram: {e}"))
}

/// Sends `workload` once on a new connection: (status, body). The run verifies this
/// answer before any load, then requires every answer under load to equal it.
pub async fn probe(addr: SocketAddr, workload: &Workload) -> anyhow::Result<(u16, Bytes)> {
    let (status, body) = Connection::open(addr).await?.send(workload).await?;
    Ok((status.as_u16(), body))
}

/// One keep-alive HTTP/1.1 connection (`TCP_NODELAY`); its driver task stops on drop.
struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    driver: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

impl Connection {
    async fn open(addr: SocketAddr) -> anyhow::Result<Connection> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect to {addr}"))?;
        stream.set_nodelay(true).context("set TCP_NODELAY")?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP/1.1 handshake")?;
        Ok(Connection {
            sender,
            driver: tokio::spawn(conn),
        })
    }

    /// Sends `workload` and reads the whole answer.
    async fn send(&mut self, workload: &Workload) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
        let request = workload.request()?;
        self.sender
            .ready()
            .await
            .context("connection closed by Envoy")?;
        let response = self
            .sender
            .send_request(request)
            .await
            .context("sending the request")?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .context("reading the response body")?
            .to_bytes();
        Ok((status, body))
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Drives `connections` closed-loop connections against `addr` for `duration`, each
/// repeating `workload`. Any response other than `200` with exactly the body `expected`
/// is an error: a benchmark of failing (or differently answered) requests measures
/// nothing. Comparing bytes costs the client a `memcmp` per response, far cheaper than
/// parsing a 28 KB list page each time.
pub async fn drive(
    addr: SocketAddr,
    workload: &Workload,
    expected: &Bytes,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<Interval> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = JoinSet::new();
    for _ in 0..connections {
        tasks.spawn(connection(
            addr,
            workload.clone(),
            expected.clone(),
            deadline,
        ));
    }
    let mut completed = 0;
    let mut latency_ns = new_histogram()?;
    while let Some(joined) = tasks.join_next().await {
        let (n, h) = joined.context("load connection task")??;
        completed += n;
        latency_ns
            .add(&h)
            .map_err(|e| anyhow!("merging latency histograms: {e}"))?;
    }
    Ok(Interval {
        completed,
        elapsed: start.elapsed(),
        latency_ns,
    })
}

/// Sends `workload` `n` times, one after another on one keep-alive connection; any answer
/// other than `200` with exactly the body `expected` is an error. For counting what a
/// request costs, not for load.
pub async fn sequential(
    addr: SocketAddr,
    workload: &Workload,
    expected: &Bytes,
    n: u64,
) -> anyhow::Result<()> {
    let mut connection = Connection::open(addr).await?;
    for _ in 0..n {
        let (status, answer) = connection.send(workload).await?;
        check_answer(status, &answer, expected)?;
    }
    Ok(())
}

fn check_answer(status: hyper::StatusCode, answer: &Bytes, expected: &Bytes) -> anyhow::Result<()> {
    if status != hyper::StatusCode::OK || answer != expected {
        anyhow::bail!(
            "got HTTP {status} with a {}-byte body other than the verified {}-byte answer (body: {})",
            answer.len(),
            expected.len(),
            String::from_utf8_lossy(&answer[..answer.len().min(300)])
        );
    }
    Ok(())
}

async fn connection(
    addr: SocketAddr,
    workload: Workload,
    expected: Bytes,
    deadline: Instant,
) -> anyhow::Result<(u64, Histogram<u64>)> {
    let mut connection = Connection::open(addr).await?;
    let mut latency_ns = new_histogram()?;
    let mut completed = 0;
    while Instant::now() < deadline {
        let sent = Instant::now();
        let (status, answer) = connection.send(&workload).await?;
        let took = sent.elapsed();
        check_answer(status, &answer, &expected)?;
        latency_ns.saturating_record(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
        completed += 1;
    }
    Ok((completed, latency_ns))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_one_kilobyte_of_json() {
        for tool in ["echo", "bench__echo"] {
            let body = tools_call_body(tool);
            assert_eq!(body.len(), CALL_BODY_BYTES, "{tool}");
            let text = std::str::from_utf8(&body).unwrap();
            assert!(text.starts_with(&format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{tool}""#
            )));
            assert!(text.ends_with("}}}"));
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(v["params"]["name"], tool);
        }
        // The existing benchmark's body is unchanged by the parameter.
        let echo = tools_call_body("echo");
        assert!(std::str::from_utf8(&echo).unwrap().contains(
            r#""arguments":{"message":"The quick brown fox jumps over the lazy dog. The"#
        ));
    }
}
