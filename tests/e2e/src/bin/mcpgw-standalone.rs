//! `make run`: mcpgw standalone on one machine, until Ctrl-C.
//!
//! 1. starts the bundled demo upstream (the reference MCP server, server-everything);
//! 2. starts the control plane (`mcpgw serve --dev`: SQLite in `.run/mcpgw-data`, admin API on
//!    127.0.0.1:4444, xDS on 127.0.0.1:18000), starting from an empty registry;
//! 3. registers the demo upstream through the REST API, with the platform-admin API token
//!    `--dev` writes to `.run/mcpgw-data/admin.token`, and composes a virtual server `demo`
//!    from everything it discovered;
//! 4. starts Envoy with `envoy/ads-bootstrap.yaml`, which knows only the control plane's
//!    xDS address: the listener, routes, clusters and the filter's catalog arrive over ADS;
//! 5. prints the MCP URL once Envoy answers `tools/list` there, and a one-line client example.
//!
//! Environment: `MCPGW_BIN` (default `target/debug/mcpgw`), plus what the harness reads
//! (`MCPGW_ENVOY`, `MCPGW_WASM`, `MCPGW_NODE_MODULES`, `MCPGW_PYTHON`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mcpgw_e2e::process::ChildGuard;
use mcpgw_e2e::{Artifacts, ServerEverything};
use serde_json::{Value, json};

const API: &str = "http://127.0.0.1:4444";
const MCP_BASE: &str = "http://127.0.0.1:8080";
const ENVOY_ADMIN: &str = "http://127.0.0.1:9901";
const START_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let root = std::env::current_dir()?;
    let artifacts = Artifacts::from_env();
    let wasm = artifacts.wasm()?.to_path_buf();
    let envoy_bin = artifacts.envoy()?.to_path_buf();
    let run = root.join(".run");
    let data = run.join("mcpgw-data");
    if data.exists() {
        std::fs::remove_dir_all(&data).with_context(|| format!("clearing {}", data.display()))?;
    }
    std::fs::create_dir_all(&run)?;

    eprintln!("starting the demo upstream (server-everything) ...");
    let upstream = ServerEverything::start(&artifacts).await?;

    eprintln!("starting the control plane ...");
    let mcpgw_bin = std::env::var_os("MCPGW_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/debug/mcpgw"));
    let mut cmd = Command::new(&mcpgw_bin);
    cmd.args(["serve", "--dev", "--allow-loopback-upstreams", "--data-dir"])
        .arg(&data)
        .arg("--filter-wasm")
        .arg(&wasm);
    let mut cp = ChildGuard::spawn("mcpgw serve", cmd, &run.join("mcpgw.log"))?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    wait_for(&mut cp, "the admin API", || {
        let http = http.clone();
        async move {
            http.get(format!("{API}/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await?;
    // `--dev` wrote a platform-admin API token into the data directory (0600): the admin
    // API needs a credential.
    let token_file = data.join("admin.token");
    let token = std::fs::read_to_string(&token_file)
        .with_context(|| format!("reading {}", token_file.display()))?
        .trim()
        .to_owned();
    let admin = reqwest::Client::builder()
        .no_proxy()
        .default_headers(reqwest::header::HeaderMap::from_iter([(
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))?,
        )]))
        .build()?;

    eprintln!("registering {} ...", upstream.mcp_url());
    // The admin client only: the MCP endpoint never sees the admin token.
    let server_id = register(&admin, &upstream.mcp_url()).await?;

    eprintln!("starting Envoy (ADS-only bootstrap) ...");
    let mut cmd = Command::new(&envoy_bin);
    cmd.current_dir(&root)
        .arg("-c")
        .arg(root.join("envoy/ads-bootstrap.yaml"))
        .args(["--concurrency", "1", "--disable-hot-restart"]);
    let mut envoy = ChildGuard::spawn("envoy", cmd, &run.join("envoy.log"))?;
    let url = format!("{MCP_BASE}/servers/{server_id}/mcp");
    let tools = {
        let (probe_http, probe_url) = (http.clone(), url.clone());
        wait_for(&mut envoy, "Envoy to serve the virtual server", move || {
            let (http, url) = (probe_http.clone(), probe_url.clone());
            async move { list_tools(&http, &url).await.is_some() }
        })
        .await?;
        list_tools(&http, &url).await.unwrap_or_default()
    };

    let python = artifacts
        .python()
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| PathBuf::from(".venv/bin/python"));
    println!();
    println!(
        "MCP endpoint (virtual server `demo`, {} tools): {url}",
        tools.len()
    );
    println!(
        "try it with the official Python SDK:\n  {} tests/py/mcp_try.py {url} everything__echo '{{\"message\":\"hello\"}}'",
        relative(&python, &root)
    );
    println!(
        "legacy SSE clients (2024-11-05 transport, through the session relay): {MCP_BASE}/servers/{server_id}/sse\n  {} tests/py/mcp_try.py {MCP_BASE}/servers/{server_id}/sse everything__echo '{{\"message\":\"hello\"}}'",
        relative(&python, &root)
    );
    println!("admin API:   {API}  (GET /gateways, /tools, /servers, /xds/nodes, /openapi.json)");
    println!(
        "admin token: {} (dev mode; `mcpgw login --api-token-file {}` stores it for the CLI)",
        relative(&token_file, &root),
        relative(&token_file, &root)
    );
    println!("Envoy admin: {ENVOY_ADMIN}  (/stats/prometheus, /config_dump)");
    println!("logs:        .run/mcpgw.log, .run/envoy.log");
    println!("Ctrl-C stops everything.");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install SIGTERM handler")?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if envoy.exited().is_some() {
                    return Err(envoy.failure("exited"));
                }
                if cp.exited().is_some() {
                    return Err(cp.failure("exited"));
                }
            }
        }
    }
    eprintln!("stopping");
    drop(upstream);
    Ok(()) // Envoy and the control plane are killed on drop.
}

/// Registers the upstream and creates virtual server `demo` with everything discovered.
async fn register(http: &reqwest::Client, upstream_url: &str) -> anyhow::Result<String> {
    let gw = api(http
        .post(format!("{API}/gateways"))
        .json(&json!({"name": "everything", "url": upstream_url, "transport": "streamable_http"})))
    .await
    .context("POST /gateways")?;
    let gw_id = gw["gateway"]["id"]
        .as_str()
        .context("gateway id")?
        .to_owned();
    let mut ids = serde_json::Map::new();
    for (kind, field) in [
        ("tools", "associated_tools"),
        ("resources", "associated_resources"),
        ("prompts", "associated_prompts"),
    ] {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            // Ids and cursors are URL-safe (UUIDs, base64url).
            let mut url = format!("{API}/{kind}?gateway_id={gw_id}&limit=500");
            if let Some(c) = &cursor {
                url.push_str("&cursor=");
                url.push_str(c);
            }
            let page = api(http.get(url))
                .await
                .with_context(|| format!("GET /{kind}"))?;
            for item in page["items"].as_array().cloned().unwrap_or_default() {
                all.push(item["id"].clone());
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        ids.insert(field.to_owned(), Value::Array(all));
    }
    let mut body = json!({"name": "demo", "description": "Everything the demo upstream offers"});
    if let Some(obj) = body.as_object_mut() {
        obj.extend(ids);
    }
    let server = api(http.post(format!("{API}/servers")).json(&body))
        .await
        .context("POST /servers")?;
    Ok(server["id"].as_str().context("server id")?.to_owned())
}

async fn api(req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    let r = req.send().await?;
    let status = r.status();
    let body: Value = r.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{status}: {body}");
    }
    Ok(body)
}

async fn list_tools(http: &reqwest::Client, url: &str) -> Option<Vec<Value>> {
    let r = http
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    let v: Value = r.json().await.ok()?;
    v["result"]["tools"].as_array().cloned()
}

/// Polls `ready` until it holds, failing early with the child's log if it exits.
async fn wait_for<F, Fut>(child: &mut ChildGuard, what: &str, ready: F) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < START_TIMEOUT {
        if child.exited().is_some() {
            return Err(child.failure(&format!("exited while waiting for {what}")));
        }
        if ready().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(child.failure(&format!("timed out waiting for {what}")))
}

fn relative(path: &Path, root: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}
