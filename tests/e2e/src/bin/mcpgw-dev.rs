//! `make run`: Envoy with the mcpgw filter in front of the reference MCP server
//! (server-everything), on ephemeral 127.0.0.1 ports, until Ctrl-C.
//!
//! Usage: `mcpgw-dev [FILTER_CONFIG_JSON | @file]` (default `{}`, or `$MCPGW_CONFIG`).

use std::time::Duration;

use anyhow::Context;
use mcpgw_e2e::{Artifacts, Envoy, EnvoyConfig, ServerEverything};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = filter_config()?;
    let artifacts = Artifacts::from_env();
    eprintln!("starting server-everything ...");
    let upstream = ServerEverything::start(&artifacts).await?;
    eprintln!("starting Envoy with {} ...", artifacts.wasm.display());
    let mut envoy = Envoy::start(
        &artifacts,
        &EnvoyConfig::with_filter(&config, upstream.addr),
    )
    .await?;

    println!();
    println!("MCP endpoint (streamable HTTP): {}", envoy.mcp_url());
    println!(
        "Envoy admin:                    http://{}/  (metrics: /stats/prometheus)",
        envoy.admin
    );
    println!("upstream server-everything:     {}", upstream.mcp_url());
    println!("filter config:                  {config}");
    println!("Ctrl-C stops everything.");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install SIGTERM handler")?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if let Some(status) = envoy.exited() {
                    anyhow::bail!("Envoy exited with {status}; log:\n{}", envoy.log());
                }
            }
        }
    }
    eprintln!("stopping");
    Ok(()) // Envoy and server-everything are killed on drop.
}

fn filter_config() -> anyhow::Result<String> {
    let raw = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("MCPGW_CONFIG").ok().filter(|c| !c.is_empty()))
        .unwrap_or_else(|| "{}".to_owned());
    match raw.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("read filter config {path}"))
        }
        None => Ok(raw),
    }
}
