//! Shared fixtures: gateways in front of upstreams, raw JSON-RPC over HTTP, assertions.

use std::collections::BTreeMap;

use anyhow::{Context, anyhow, bail};
use mcpgw_e2e::{Artifacts, Envoy, EnvoyConfig, RmcpServer, RmcpServerMode, ServerEverything};
use serde_json::{Value, json};

/// What clients send as `Accept` on POST.
pub const ACCEPT_BOTH: &str = "application/json, text/event-stream";

/// The artifacts from the environment (`make test` exports them).
pub fn artifacts() -> Artifacts {
    Artifacts::from_env()
}

/// An HTTP client that never goes through a proxy.
pub fn http() -> reqwest::Client {
    mcpgw_e2e::init_tls();
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("build reqwest client")
}

/// Envoy with the filter (configured by `config`) in front of a stateless JSON rmcp server.
pub struct JsonGateway {
    pub envoy: Envoy,
    /// Kept alive for the gateway's lifetime.
    pub _upstream: RmcpServer,
}

impl JsonGateway {
    pub async fn start(config: &str) -> anyhow::Result<Self> {
        let upstream = RmcpServer::start("primary", RmcpServerMode::StatelessJson).await?;
        let envoy = Envoy::start(
            &artifacts(),
            &EnvoyConfig::with_filter(config, upstream.addr),
        )
        .await?;
        Ok(Self {
            envoy,
            _upstream: upstream,
        })
    }
}

/// Envoy with the filter in front of server-everything.
pub struct EverythingGateway {
    pub envoy: Envoy,
    /// Kept alive for the gateway's lifetime.
    pub _upstream: ServerEverything,
}

impl EverythingGateway {
    pub async fn start(config: &str) -> anyhow::Result<Self> {
        let upstream = ServerEverything::start(&artifacts()).await?;
        let envoy = Envoy::start(
            &artifacts(),
            &EnvoyConfig::with_filter(config, upstream.addr),
        )
        .await?;
        Ok(Self {
            envoy,
            _upstream: upstream,
        })
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    /// A header as text ("" when absent).
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    /// The body as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The JSON-RPC messages in the body: the JSON document, or each SSE `data:` event.
    pub fn messages(&self) -> anyhow::Result<Vec<Value>> {
        if self.header("content-type").starts_with("text/event-stream") {
            sse_messages(&self.text())
        } else {
            let v: Value = serde_json::from_slice(&self.body)
                .with_context(|| format!("body is not JSON: {}", self.text()))?;
            Ok(match v {
                Value::Array(items) => items,
                other => vec![other],
            })
        }
    }

    /// The one JSON-RPC response with `id` in the body.
    pub fn response(&self, id: &Value) -> anyhow::Result<Value> {
        self.messages()?
            .into_iter()
            .find(|m| &m["id"] == id && (m.get("result").is_some() || m.get("error").is_some()))
            .ok_or_else(|| {
                anyhow!(
                    "no response with id {id} in {} {}",
                    self.status,
                    self.text()
                )
            })
    }
}

/// The `data:` payloads of an SSE stream, parsed as JSON (empty/priming events skipped).
pub fn sse_messages(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for event in text.split("\n\n") {
        let data: Vec<&str> = event
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        let data = data.join("\n");
        if data.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&data).with_context(|| format!("SSE data not JSON: {data}"))?,
        );
    }
    Ok(out)
}

/// POSTs `body` with MCP's headers (`Content-Type: application/json`, `Accept` both);
/// `extra` adds or, with the same name, replaces headers (an empty value removes one).
pub async fn post(
    url: &str,
    body: impl Into<reqwest::Body>,
    extra: &[(&str, &str)],
) -> anyhow::Result<Reply> {
    let mut headers = BTreeMap::from([
        ("content-type".to_owned(), "application/json".to_owned()),
        ("accept".to_owned(), ACCEPT_BOTH.to_owned()),
    ]);
    for (k, v) in extra {
        headers.insert(k.to_ascii_lowercase(), (*v).to_owned());
    }
    let mut req = http().post(url).body(body);
    for (k, v) in &headers {
        if !v.is_empty() {
            req = req.header(k.as_str(), v.as_str());
        }
    }
    send(req).await
}

/// Sends a request and reads the whole response.
pub async fn send(req: reqwest::RequestBuilder) -> anyhow::Result<Reply> {
    let r = req.send().await.context("send request")?;
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.bytes().await.context("read body")?.to_vec();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// An `initialize` request body.
pub fn initialize(id: i64, version: &str) -> String {
    json!({
        "jsonrpc": "2.0", "id": id, "method": "initialize",
        "params": {
            "protocolVersion": version,
            "capabilities": {},
            "clientInfo": {"name": "mcpgw-e2e", "version": "0"}
        }
    })
    .to_string()
}

/// A `tools/call` request body.
pub fn tools_call(id: i64, tool: &str, arguments: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": tool, "arguments": arguments}})
    .to_string()
}

/// The first text content of a `tools/call` result.
pub fn tool_text(response: &Value) -> String {
    response["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// One expectation on a filter-generated error answer.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub status: u16,
    pub code: i64,
    pub id: Value,
}

/// Checks that `reply` is the filter's JSON-RPC error answer `want`; `Err` says what differs.
pub fn check_rejection(reply: &Reply, want: &Rejection) -> Result<(), String> {
    let mut problems = Vec::new();
    if reply.status != want.status {
        problems.push(format!("status {} (want {})", reply.status, want.status));
    }
    let ct = reply.header("content-type");
    if !ct.starts_with("application/json") {
        problems.push(format!("content-type {ct:?} (want application/json)"));
    }
    match serde_json::from_slice::<Value>(&reply.body) {
        Ok(v) => {
            if v["jsonrpc"] != "2.0" {
                problems.push("no \"jsonrpc\":\"2.0\"".into());
            }
            if v["error"]["code"].as_i64() != Some(want.code) {
                problems.push(format!(
                    "error.code {} (want {})",
                    v["error"]["code"], want.code
                ));
            }
            if v.get("id") != Some(&want.id) {
                problems.push(format!(
                    "id {} (want {})",
                    v.get("id")
                        .map(Value::to_string)
                        .unwrap_or_else(|| "absent".into()),
                    want.id
                ));
            }
        }
        Err(_) => problems.push("body is not JSON".into()),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}; body: {}",
            problems.join(", "),
            truncate(&reply.text(), 300)
        ))
    }
}

/// Asserts a table of named outcomes, reporting every failing row at once.
pub fn assert_rows(failures: Vec<String>) {
    if !failures.is_empty() {
        panic!(
            "{} row(s) failed:\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
}

/// At most `n` characters of `s`.
pub fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// One sample of `/stats/prometheus`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses Prometheus text format samples (comments skipped).
pub fn parse_prometheus(text: &str) -> anyhow::Result<Vec<Sample>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| anyhow!("bad prometheus line {line}"))?;
        let value: f64 = value
            .parse()
            .with_context(|| format!("bad value in {line}"))?;
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .ok_or_else(|| anyhow!("bad labels in {line}"))?;
                (name.to_owned(), parse_labels(body)?)
            }
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    Ok(out)
}

fn parse_labels(body: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once("=\"")
            .ok_or_else(|| anyhow!("bad label set {body}"))?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        value.push(match e {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.ok_or_else(|| anyhow!("unterminated label in {body}"))?;
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    Ok(labels)
}

/// The value of the sample named `name` whose labels include all of `labels`.
pub fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels.iter().all(|(k, v)| {
                    // Prometheus: an empty label value is the same as no label.
                    s.labels.get(*k).map(String::as_str).unwrap_or("") == *v
                })
        })
        .map(|s| s.value)
}

/// Fails unless Envoy is still running (a dead VM may not kill Envoy, but a crash would).
pub fn ensure_alive(envoy: &mut Envoy) -> anyhow::Result<()> {
    if let Some(status) = envoy.exited() {
        bail!("Envoy exited with {status}; log:\n{}", envoy.log());
    }
    Ok(())
}
