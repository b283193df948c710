//! Local limits in a real Envoy with two workers (docs/filter.md "Limits"): a rate budget
//! is spent exactly once across both workers and many client connections, and a place
//! among calls in flight comes back when a response ends and when a client resets.

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::support::{Reply, artifacts, parse_prometheus, post, sample, tools_call};
use mcpgw_e2e::{Envoy, EnvoyConfig, Gate, RmcpServer, RmcpServerMode};

/// A virtual server `team` over the rmcp upstream with `limits` for it.
fn snapshot(limits: Value) -> String {
    let tool = |name: &str| {
        json!({"name": format!("primary__{name}"), "upstream": "primary", "upstream_name": name,
               "item": {"name": format!("primary__{name}"), "inputSchema": {"type": "object"}}})
    };
    json!({
        "upstreams": {"primary": {"cluster": "upstream", "path": "/mcp"}},
        "servers": {"team": {"name": "Team", "tools": [tool("echo"), tool("hold")]}},
        "limits": {"servers": {"team": limits}}
    })
    .to_string()
}

/// Envoy with two workers in front of a gated upstream.
async fn gateway(limits: Value) -> anyhow::Result<(Envoy, RmcpServer, Gate)> {
    let (upstream, gate) =
        RmcpServer::start_gated("primary", RmcpServerMode::StatelessJson).await?;
    let config = EnvoyConfig::with_filter(&snapshot(limits), upstream.addr);
    let envoy = Envoy::start_workers(&artifacts(), &config, 2).await?;
    Ok((envoy, upstream, gate))
}

/// Connections each worker accepted (admin `/stats`: `listener.<addr>.worker_N.…`).
async fn connections_per_worker(envoy: &Envoy) -> anyhow::Result<Vec<u64>> {
    let stats = envoy.admin_get("/stats?filter=downstream_cx_total").await?;
    let mut per = vec![0u64; 2];
    for line in stats.lines() {
        for (n, slot) in per.iter_mut().enumerate() {
            if line.starts_with("listener.")
                && line.contains(&format!(".worker_{n}.downstream_cx_total:"))
                && let Some(v) = line.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok())
            {
                *slot += v;
            }
        }
    }
    Ok(per)
}

/// Whether `r` is the 429 of `limit` (of `kind`): `Retry-After` whole seconds, -32005.
fn refused_by(r: &Reply, limit: &str, kind: &str) -> anyhow::Result<bool> {
    if r.status != 429 {
        return Ok(false);
    }
    let retry: u64 = r
        .header("retry-after")
        .parse()
        .with_context(|| format!("Retry-After of {}", r.text()))?;
    anyhow::ensure!(retry >= 1, "Retry-After {retry}");
    let body: Value = serde_json::from_slice(&r.body)?;
    anyhow::ensure!(body["error"]["code"] == -32005, "{body}");
    anyhow::ensure!(
        body["error"]["data"]["limit"] == limit && body["error"]["data"]["kind"] == kind,
        "{body}"
    );
    anyhow::ensure!(
        body["error"]["data"]["retryAfterSeconds"] == retry,
        "{body}"
    );
    Ok(true)
}

fn tool_calls(upstream: &RmcpServer) -> usize {
    upstream
        .seen()
        .iter()
        .filter(|s| s.rpc_method.as_deref() == Some("tools/call"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_budget_of_n_admits_exactly_n_of_k_times_n_concurrent_calls() -> anyhow::Result<()> {
    // N per hour: no token comes back while the test runs, however slow the machine.
    const N: usize = 20;
    const K: usize = 4;
    let (envoy, upstream, _gate) = gateway(json!({"concurrency": [], "rates": [
        {"name": "budget", "by": ["principal", "tool"], "requests": N, "per_seconds": 3600}
    ]}))
    .await?;
    let url = envoy.url("/servers/team/mcp");
    // Every call on its own connection, all at once: the kernel spreads them over both
    // workers' sockets.
    let calls = (0..K * N).map(|i| {
        let url = url.clone();
        async move {
            post(
                &url,
                tools_call(i as i64, "primary__echo", json!({"message": "hi"})),
                &[],
            )
            .await
        }
    });
    let replies = futures::future::try_join_all(calls).await?;
    let mut admitted = 0;
    for r in &replies {
        if r.status == 200 {
            let v: Value = serde_json::from_slice(&r.body)?;
            anyhow::ensure!(v["result"]["content"][0]["text"] == "hi", "{v}");
            admitted += 1;
        } else if !refused_by(r, "budget", "rate")? {
            bail!("neither admitted nor limited: {} {}", r.status, r.text());
        }
    }
    assert_eq!(admitted, N, "exactly the budget was admitted");
    assert_eq!(tool_calls(&upstream), N, "and only it reached the upstream");
    let workers = connections_per_worker(&envoy).await?;
    assert!(
        workers.iter().all(|&n| n > 0),
        "both workers served connections: {workers:?}"
    );
    let samples = parse_prometheus(&envoy.prometheus().await?)?;
    assert_eq!(
        sample(
            &samples,
            "mcpgw_limited_total",
            &[("mcp_limit", "budget"), ("mcp_limit_kind", "rate")]
        ),
        Some((K * N - N) as f64)
    );
    Ok(())
}

/// Waits (bounded) until `n` `hold` calls have arrived at the upstream in all.
async fn arrived(gate: &Gate, n: usize) -> anyhow::Result<()> {
    for _ in 0..600 {
        if gate.arrived() == n {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{} calls arrived at the upstream, not {n}", gate.arrived())
}

type Held = tokio::task::JoinHandle<anyhow::Result<Reply>>;

/// A `hold` call on its own connection, as a task.
fn hold(url: &str, id: i64) -> Held {
    let url = url.to_owned();
    tokio::spawn(async move { post(&url, tools_call(id, "primary__hold", json!({})), &[]).await })
}

/// Calls `hold` until one is admitted (bounded): a place freed by an ended stream shows up
/// once Envoy has logged that stream.
async fn admitted_hold(url: &str, id: i64, gate: &Gate) -> anyhow::Result<Held> {
    for _ in 0..200 {
        let before = gate.arrived();
        let task = hold(url, id);
        // Admitted: it arrives at the upstream and waits. Refused: it ends with a 429.
        loop {
            if gate.arrived() > before {
                return Ok(task);
            }
            if task.is_finished() {
                let r = task.await??;
                anyhow::ensure!(refused_by(&r, "in-flight", "concurrency")?, "{}", r.text());
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("no place came free")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn places_in_flight_come_back_after_responses_and_client_resets() -> anyhow::Result<()> {
    const MAX: usize = 3;
    let (envoy, _upstream, gate) = gateway(json!({"rates": [], "concurrency": [
        {"name": "in-flight", "by": ["tool"], "max": MAX}
    ]}))
    .await?;
    let url = envoy.url("/servers/team/mcp");
    let mut held: Vec<Held> = (0..MAX as i64).map(|i| hold(&url, i)).collect();
    arrived(&gate, MAX).await?;

    // Full: the next call of the tool is refused; another tool is not limited.
    let r = post(&url, tools_call(10, "primary__hold", json!({})), &[]).await?;
    assert!(
        refused_by(&r, "in-flight", "concurrency")?,
        "{} {}",
        r.status,
        r.text()
    );
    let r = post(
        &url,
        tools_call(11, "primary__echo", json!({"message": "x"})),
        &[],
    )
    .await?;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        gate.arrived(),
        MAX,
        "the refused call never reached the upstream"
    );

    // A response ends: its place comes back, and only its.
    gate.open(1);
    let mut answered = 0;
    while answered == 0 {
        let mut rest = Vec::new();
        for task in held {
            if task.is_finished() {
                let r = task.await??;
                assert_eq!(r.status, 200, "{}", r.text());
                answered += 1;
            } else {
                rest.push(task);
            }
        }
        held = rest;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    held.push(admitted_hold(&url, 20, &gate).await?);
    let r = post(&url, tools_call(21, "primary__hold", json!({})), &[]).await?;
    assert!(refused_by(&r, "in-flight", "concurrency")?, "{}", r.text());

    // A client goes away mid-call: Envoy resets the stream, and its place comes back.
    let gone = held.pop().context("a held call")?;
    gone.abort();
    held.push(admitted_hold(&url, 30, &gate).await?);
    let r = post(&url, tools_call(31, "primary__hold", json!({})), &[]).await?;
    assert!(refused_by(&r, "in-flight", "concurrency")?, "{}", r.text());

    // The reset call may still wait at the upstream: one permit more for it.
    gate.open(MAX + 1);
    for task in held {
        let r = task.await??;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Every place came back, the last release emptying the shared-data slot: it takes
    // places again.
    let again = admitted_hold(&url, 40, &gate).await?;
    gate.open(1);
    let r = again.await??;
    assert_eq!(r.status, 200, "{}", r.text());
    let samples = parse_prometheus(&envoy.prometheus().await?)?;
    let refused = sample(
        &samples,
        "mcpgw_limited_total",
        &[
            ("mcp_limit", "in-flight"),
            ("mcp_limit_kind", "concurrency"),
        ],
    )
    .unwrap_or_default();
    assert!(refused >= 3.0, "{refused}");
    Ok(())
}
