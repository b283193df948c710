//! `mcpgw-bench-relay`: what the session relay costs a legacy SSE client. The same 1 KB
//! `tools/call` of a virtual server's tool, sent by the same number of clients (each
//! sequential), over streamable HTTP (`POST /servers/{id}/mcp`, answer in the response)
//! and over the legacy SSE transport (`POST /servers/{id}/message`, 202, the answer on the
//! client's `/servers/{id}/sse` stream, through the relay and back through Envoy), in
//! alternating rounds.
//!
//! Setup: the upstream of `mcpgw-bench` (answers a `tools/call` of `echo`), a control plane
//! in this process (SQLite; xDS and the relay on 127.0.0.1:0) with one gateway whose
//! catalog is written straight to the store and a virtual server over it, and one Envoy
//! started from `envoy/ads-bootstrap.yaml` pointed at the control plane.
//!
//! Knobs (environment): `MCPGW_BENCH_ROUNDS` (3), `MCPGW_BENCH_SECONDS` (10),
//! `MCPGW_BENCH_WARMUP_SECONDS` (2), `MCPGW_BENCH_CONNECTIONS` (16), `MCPGW_ENVOY`,
//! `MCPGW_WASM`, `MCPGW_BENCH_OUTPUT` (`docs/benchmarks.md`, `-` for none),
//! `MCPGW_BENCH_COMMAND`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use mcpgw::model::{
    AuthType, GatewayName, ItemName, NewGateway, Tags, ToolSpec, Transport, UpstreamUrl,
};
use mcpgw::store::{Discovered, DiscoveredItem, NewServer};
use mcpgw_bench::envoy::Envoy;
use mcpgw_bench::machine;
use mcpgw_bench_registry::env_or;
use mcpgw_harness::Artifacts;
use mcpgw_harness::bootstrap::{COMMITTED_NODE, committed_ads};
use tokio_stream::StreamExt as _;

const SECTION_BEGIN: &str = "<!-- mcpgw-bench:relay:begin -->";
const SECTION_END: &str = "<!-- mcpgw-bench:relay:end -->";
const ACCEPT_BOTH: &str = "application/json, text/event-stream";
const PROTOCOL: &str = "2025-06-18";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport2 {
    Streamable,
    LegacySse,
}

impl Transport2 {
    fn label(self) -> &'static str {
        match self {
            Transport2::Streamable => "streamable HTTP",
            Transport2::LegacySse => "legacy SSE (relay)",
        }
    }
}

struct Knobs {
    rounds: u32,
    seconds: u64,
    warmup: u64,
    connections: usize,
    envoy: PathBuf,
    wasm: PathBuf,
    output: String,
    command: String,
}

#[derive(Default)]
struct Totals {
    requests: u64,
    seconds: f64,
    envoy_ticks: u64,
    own_ticks: u64,
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let root = repo_root();
    let knobs = Knobs {
        rounds: env_or("MCPGW_BENCH_ROUNDS", 3)?,
        seconds: env_or("MCPGW_BENCH_SECONDS", 10)?,
        warmup: env_or("MCPGW_BENCH_WARMUP_SECONDS", 2)?,
        connections: env_or("MCPGW_BENCH_CONNECTIONS", 16)?,
        envoy: env_or(
            "MCPGW_ENVOY",
            root.join(".venv/bin/envoy").display().to_string(),
        )?
        .into(),
        wasm: env_or(
            "MCPGW_WASM",
            root.join("target/wasm32-wasip1/release/mcpgw_filter.wasm")
                .display()
                .to_string(),
        )?
        .into(),
        output: env_or("MCPGW_BENCH_OUTPUT", "docs/benchmarks.md".to_owned())?,
        command: env_or(
            "MCPGW_BENCH_COMMAND",
            "./target/release/mcpgw-bench-relay".to_owned(),
        )?,
    };
    if knobs.rounds == 0 || knobs.seconds == 0 || knobs.connections == 0 {
        bail!("rounds, seconds and connections must be at least 1");
    }
    let wasm = knobs.wasm.canonicalize().with_context(|| {
        format!(
            "the filter module {} (run `make wasm`)",
            knobs.wasm.display()
        )
    })?;
    mcpgw::tls::install_crypto_provider();

    let upstream = mcpgw_bench::upstream::Upstream::start()?;
    let dir = tempfile::tempdir()?;
    let mut settings = mcpgw::config::Settings::for_database(format!(
        "sqlite://{}/mcpgw.db?mode=rwc",
        dir.path().display()
    ));
    settings.federation.health_interval = Duration::from_secs(86_400);
    settings.federation.resync_interval = None;
    settings.xds_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    settings.relay_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    settings.edge.envoy_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    settings.edge.filter_wasm = wasm.display().to_string();
    settings.edge.upstream_ca_file = None;
    let (cp, stop_tx) = mcpgw_bench_registry::start_control_plane(settings).await?;
    let xds = cp.xds_addr.context("xDS is off")?;
    let (gateway, _) = cp
        .store
        .create_gateway_with_catalog(
            NewGateway {
                id: mcpgw::store::new_id(),
                name: GatewayName::parse("bench")?,
                url: UpstreamUrl::parse(&format!("http://{}/mcp", upstream.addr()))?,
                transport: Transport::default(),
                description: None,
                tags: Tags::default(),
                enabled: true,
                auth_type: AuthType::None,
                auth_sealed: None,
                identity: Default::default(),
                identity_sealed: None,
            },
            Some(&Discovered {
                tools: vec![DiscoveredItem {
                    original_name: mcpgw_bench::catalog::CALLED_TOOL.into(),
                    uri: None,
                    description: Some("Echoes".into()),
                    spec: ToolSpec::default(),
                }],
                resources: vec![],
                prompts: vec![],
                capabilities: Some(serde_json::json!({"tools": {}})),
                server_info: Some(serde_json::json!({"name": "bench-upstream", "version": "1"})),
                protocol_version: Some(PROTOCOL.into()),
                protocol_versions: vec![PROTOCOL.into()],
                skipped: vec![],
            }),
            "__",
        )
        .await?;
    let tools = cp
        .store
        .all_items::<ToolSpec>()
        .await?
        .into_iter()
        .filter(|t| t.gateway_id.as_deref() == Some(gateway.id.as_str()))
        .map(|t| t.id)
        .collect();
    let server = cp
        .store
        .create_server(NewServer {
            name: ItemName::parse("relay-bench")?,
            description: None,
            icon: None,
            tags: Tags::default(),
            enabled: true,
            tools,
            resources: vec![],
            prompts: vec![],
            naming: Default::default(),
            allowed_origins: Default::default(),
        })
        .await?;

    let bootstrap = committed_ads(&Artifacts::from_env(), xds, COMMITTED_NODE, "GRPC")?;
    let envoy = Envoy::start(&knobs.envoy, "relay", &bootstrap, None, 0).await?;
    let base = format!("http://{}/servers/{}", envoy.listener(), server.id);
    let body = mcpgw_bench::load::tools_call_body(&format!(
        "bench__{}",
        mcpgw_bench::catalog::CALLED_TOOL
    ));
    // The catalog reaches Envoy over xDS: wait until the tool is callable.
    let probe = Client::streamable(&base).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match &probe {
            Ok(c) if c.call(&body).await.is_ok() => break,
            _ if Instant::now() > deadline => bail!(
                "the virtual server never answered a call; Envoy's log:\n{}",
                envoy.log_tail()
            ),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }

    let mut results: Vec<(Transport2, Histogram<u64>, Totals)> =
        [Transport2::Streamable, Transport2::LegacySse]
            .into_iter()
            .map(|t| Ok((t, mcpgw_bench::load::new_histogram()?, Totals::default())))
            .collect::<anyhow::Result<_>>()?;
    for round in 1..=knobs.rounds {
        // Alternate the order between rounds: neither transport always runs first.
        let order: Vec<usize> = if round % 2 == 1 {
            vec![0, 1]
        } else {
            vec![1, 0]
        };
        for i in order {
            let (transport, hist, totals) = &mut results[i];
            let r = run(*transport, &knobs, &base, &body, envoy.pid()).await?;
            eprintln!(
                "round {round}/{} {:<20} {:>7.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms",
                knobs.rounds,
                transport.label(),
                r.1.requests as f64 / r.1.seconds,
                r.0.value_at_quantile(0.5) as f64 / 1000.0,
                r.0.value_at_quantile(0.99) as f64 / 1000.0,
            );
            hist.add(&r.0)?;
            totals.requests += r.1.requests;
            totals.seconds += r.1.seconds;
            totals.envoy_ticks += r.1.envoy_ticks;
            totals.own_ticks += r.1.own_ticks;
        }
    }
    let report = section(&knobs, &results);
    println!("{report}");
    let _ = stop_tx.send(());
    drop(envoy);
    mcpgw_bench_registry::write_report(&knobs.output, SECTION_BEGIN, SECTION_END, &report)?;
    Ok(())
}

/// One round of one transport: warmup, then the measured interval.
async fn run(
    transport: Transport2,
    knobs: &Knobs,
    base: &str,
    body: &bytes::Bytes,
    envoy_pid: u32,
) -> anyhow::Result<(Histogram<u64>, Totals)> {
    let mut clients = Vec::with_capacity(knobs.connections);
    for _ in 0..knobs.connections {
        clients.push(match transport {
            Transport2::Streamable => Client::streamable(base).await?,
            Transport2::LegacySse => Client::legacy(base).await?,
        });
    }
    let warm_until = Instant::now() + Duration::from_secs(knobs.warmup);
    let until = warm_until + Duration::from_secs(knobs.seconds);
    let mut tasks = Vec::new();
    for mut c in clients {
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = mcpgw_bench::load::new_histogram()?;
            let mut done = 0u64;
            let mut first = None;
            loop {
                let t0 = Instant::now();
                if t0 >= until {
                    break;
                }
                c.call_mut(&body).await?;
                if t0 >= warm_until {
                    first.get_or_insert(t0);
                    let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
                    hist.record(us.max(1))?;
                    done += 1;
                }
            }
            anyhow::Ok((hist, done))
        }));
    }
    // CPU is counted from the end of the warmup.
    tokio::time::sleep_until(warm_until.into()).await;
    let (envoy0, own0) = (
        machine::cpu_ticks(envoy_pid)?,
        machine::cpu_ticks(std::process::id())?,
    );
    let mut hist = mcpgw_bench::load::new_histogram()?;
    let mut requests = 0;
    // Ticks are read when the last client has finished its last request.
    for t in tasks {
        let (h, n) = t.await??;
        hist.add(&h)?;
        requests += n;
    }
    let seconds = (Instant::now() - warm_until).as_secs_f64().max(1e-9);
    let totals = Totals {
        requests,
        seconds,
        envoy_ticks: machine::cpu_ticks(envoy_pid)? - envoy0,
        own_ticks: machine::cpu_ticks(std::process::id())? - own0,
    };
    Ok((hist, totals))
}

/// One MCP client of the virtual server.
struct Client {
    http: reqwest::Client,
    /// Where messages go: the `/mcp` endpoint, or the legacy session's `/message` URL.
    post_to: String,
    /// Streamable HTTP: the signed session id.
    session: Option<String>,
    /// Legacy SSE: the events of the client's stream.
    events: Option<tokio::sync::mpsc::UnboundedReceiver<String>>,
}

impl Client {
    fn http() -> anyhow::Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .build()?)
    }

    /// A streamable HTTP session (`initialize` at the edge).
    async fn streamable(base: &str) -> anyhow::Result<Client> {
        let http = Client::http()?;
        let post_to = format!("{base}/mcp");
        let r = http
            .post(&post_to)
            .header("accept", ACCEPT_BOTH)
            .header("content-type", "application/json")
            .body(initialize())
            .send()
            .await?;
        if r.status() != 200 {
            bail!("initialize: HTTP {}", r.status());
        }
        let session = r
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(Client {
            http,
            post_to,
            session,
            events: None,
        })
    }

    /// A legacy SSE session: the stream, its endpoint, `initialize` and `initialized`.
    async fn legacy(base: &str) -> anyhow::Result<Client> {
        let http = Client::http()?;
        let r = http
            .get(format!("{base}/sse"))
            .header("accept", "text/event-stream")
            .send()
            .await?;
        if r.status() != 200 {
            bail!("GET /sse: HTTP {}", r.status());
        }
        let origin = base
            .split("/servers/")
            .next()
            .unwrap_or_default()
            .to_owned();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut body = r.bytes_stream();
            let mut buf = String::new();
            while let Some(Ok(chunk)) = body.next().await {
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    let data: Vec<&str> = block
                        .lines()
                        .filter_map(|l| l.strip_prefix("data:"))
                        .map(|d| d.strip_prefix(' ').unwrap_or(d))
                        .collect();
                    if !data.is_empty() && tx.send(data.join("\n")).is_err() {
                        return;
                    }
                }
            }
        });
        let endpoint = rx
            .recv()
            .await
            .context("the stream ended before its endpoint")?;
        let mut c = Client {
            http,
            post_to: format!("{origin}{endpoint}"),
            session: None,
            events: Some(rx),
        };
        let answer = c.exchange(initialize().into()).await?;
        if !answer.contains("\"result\"") {
            bail!("initialize over legacy SSE: {answer}");
        }
        let r = c
            .http
            .post(&c.post_to)
            .header("content-type", "application/json")
            .body(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
            .send()
            .await?;
        if r.status() != 202 {
            bail!("notifications/initialized: HTTP {}", r.status());
        }
        Ok(c)
    }

    /// Posts `body` to a legacy session and waits for the next message on its stream.
    async fn exchange(&mut self, body: bytes::Bytes) -> anyhow::Result<String> {
        let r = self
            .http
            .post(&self.post_to)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        if r.status() != 202 {
            bail!("POST message: HTTP {}", r.status());
        }
        let events = self.events.as_mut().context("not a legacy session")?;
        tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .context("no answer on the stream within 30 s")?
            .context("the stream ended")
    }

    /// One call; an error unless the upstream's result came back.
    async fn call_mut(&mut self, body: &bytes::Bytes) -> anyhow::Result<()> {
        let answer = if self.events.is_some() {
            self.exchange(body.clone()).await?
        } else {
            return self.call(body).await;
        };
        if answer.contains("pong") {
            Ok(())
        } else {
            bail!("unexpected answer: {answer}")
        }
    }

    /// One streamable HTTP call.
    async fn call(&self, body: &bytes::Bytes) -> anyhow::Result<()> {
        let mut req = self
            .http
            .post(&self.post_to)
            .header("accept", ACCEPT_BOTH)
            .header("content-type", "application/json")
            .header("mcp-protocol-version", PROTOCOL)
            .body(body.clone());
        if let Some(s) = &self.session {
            req = req.header("mcp-session-id", s);
        }
        let r = req.send().await?;
        let status = r.status();
        let text = r.text().await?;
        if status == 200 && text.contains("pong") {
            Ok(())
        } else {
            bail!("HTTP {status}: {text}")
        }
    }
}

fn initialize() -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":0,"method":"initialize","params":{{"protocolVersion":"{PROTOCOL}","capabilities":{{}},"clientInfo":{{"name":"mcpgw-bench-relay","version":"1"}}}}}}"#
    )
}

fn section(knobs: &Knobs, results: &[(Transport2, Histogram<u64>, Totals)]) -> String {
    let hz = machine::ticks_per_second() as f64;
    let mut s = mcpgw_bench_registry::section_head(
        SECTION_BEGIN,
        "Legacy SSE through the session relay vs streamable HTTP, same call",
        "mcpgw-bench-relay",
        &knobs.command,
    );
    let _ = writeln!(
        s,
        "- {} rounds × {} s (+{} s warmup) per transport, alternating; {} clients, each one call at a time; the 1 KB `tools/call` of `bench__echo` on a virtual server, routed to the `mcpgw-bench` upstream",
        knobs.rounds, knobs.seconds, knobs.warmup, knobs.connections
    );
    let _ = writeln!(
        s,
        "- Streamable HTTP: `POST /servers/{{id}}/mcp`, the answer in the response. Legacy SSE: `POST /servers/{{id}}/message` (202), the answer on the client's `/sse` stream; the relay posts the call to `/servers/{{id}}/mcp` through the same Envoy"
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| transport | req/s | ratio | p50 ms | p99 ms | Envoy CPU / req | bench process CPU / req (control plane, relay, clients) |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
    let rate = |t: &Totals| t.requests as f64 / t.seconds.max(1e-9);
    let base = results.first().map(|r| rate(&r.2)).unwrap_or(1.0);
    for (transport, hist, t) in results {
        let per = |ticks: u64| ticks as f64 / hz / (t.requests.max(1) as f64) * 1e6;
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.2}× | {:.3} | {:.3} | {:.1} µs | {:.1} µs |",
            transport.label(),
            rate(t),
            rate(t) / base,
            hist.value_at_quantile(0.5) as f64 / 1000.0,
            hist.value_at_quantile(0.99) as f64 / 1000.0,
            per(t.envoy_ticks),
            per(t.own_ticks),
        );
    }
    if let [(_, _, plain), (_, _, legacy)] = results {
        let per = |t: &Totals| t.envoy_ticks as f64 / hz / (t.requests.max(1) as f64) * 1e6;
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "- legacy SSE ÷ streamable HTTP: **{:.2}×** requests/s; Envoy CPU per call {:.1} vs {:.1} µs (a legacy call crosses Envoy twice: client → Envoy → relay, then relay → Envoy → upstream)",
            rate(legacy) / rate(plain).max(1e-9),
            per(legacy),
            per(plain),
        );
    }
    let _ = writeln!(s, "{SECTION_END}");
    s
}
