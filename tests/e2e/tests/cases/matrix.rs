//! The test matrix of issue 12: the same client scenarios, run by the official Python SDK
//! client (`tests/py/peer_client.py`) against an official Python SDK server
//! (`tests/py/peer_server.py`), in both protocol eras (2025-11-25 with sessions and
//! 2026-07-28), first directly, then through an mcpgw virtual server (a real Envoy with the
//! filter) whose catalog is the peer's own, namespaced `peer__{name}` as the control plane
//! federates it. The client normalizes what may legitimately differ through a gateway (the
//! name prefix, session ids, list order, cache lifetimes), so each scenario's document must
//! be identical on both paths.
//!
//! What a virtual server cannot do yet is listed in [`KNOWN_GAPS`], each entry asserted to
//! still differ today: when the gateway learns a feature, this test fails and names the
//! entry to remove. That table is the checklist of issue 12.
//!
//! By hand: `.venv/bin/python tests/py/peer_server.py 0` prints its URL;
//! `.venv/bin/python tests/py/peer_client.py URL --era 2026-07-28` prints the document
//! (`--scenario NAME` to pick, `--prefix peer__` through a virtual server, `--verbose` for
//! tracebacks). `--nocapture` shows the matrix this test walks.

use std::net::SocketAddr;

use anyhow::Context;
use serde_json::{Value, json};

use super::support::{artifacts, assert_rows, truncate};
use mcpgw_e2e::{Artifacts, Envoy, EnvoyConfig, PythonPeer, PythonPeerMode, run_peer_client};

/// The protocol eras of the matrix: the last session era and the stateless one.
const ERAS: [&str; 2] = ["2025-11-25", "2026-07-28"];

/// Every scenario of `peer_client.py`, in its order.
const SCENARIOS: [&str; 12] = [
    "connect",
    "catalog",
    "tools",
    "logging",
    "sampling",
    "elicitation-form",
    "elicitation-url",
    "roots",
    "progress",
    "resources",
    "prompts",
    "completion",
];

/// Scenarios whose tool needs the client's input: a server-to-client request mid-call in
/// the 2025 era, an `input_required` result answered by exactly one retry in 2026-07-28.
const INTERACTIVE: [&str; 4] = ["sampling", "elicitation-form", "elicitation-url", "roots"];

/// What a virtual server does not pass yet, as (era, scenario, why): the lead's checklist for
/// issue 12. Every entry is asserted to still differ from the direct result (a failure or
/// a different document); an entry that starts passing fails the test until it is removed
/// here. Every scenario not listed must give the identical document through the gateway.
const KNOWN_GAPS: &[(&str, &str, &str)] = &[];

/// The prefix the virtual server's catalog gives the peer's tools and prompts.
const PREFIX: &str = "peer__";

/// Session key of the virtual server (32 bytes, base64): the peer is stateful in the 2025
/// era, so the gateway must hold an upstream session per client session.
const KEY: &str = "bWNwZ3ctZTJlLW1hdHJpeC1rZXktMzItYnl0ZXMhISE=";

/// Seconds a scenario may take (a gap may hang until then; direct ones take milliseconds).
const SCENARIO_TIMEOUT: &str = "10";

fn scenario<'a>(doc: &'a Value, name: &str) -> &'a Value {
    &doc["scenarios"][name]
}

/// What the peer answers each scenario, by JSON pointer into the scenario's `result`: the
/// direct run must show the peer's real answers, not merely "ok".
fn expected() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "connect",
            "/capabilities",
            json!(["completions", "logging", "prompts", "resources", "tools"]),
        ),
        ("catalog", "/tools/0/name", json!("add")),
        ("catalog", "/tools/7/name", json!("sample")),
        ("catalog", "/prompts/0/name", json!("greet")),
        ("catalog", "/resources/0/uri", json!("peer://greeting")),
        (
            "catalog",
            "/resourceTemplates/0/uriTemplate",
            json!("peer://items/{name}"),
        ),
        (
            "tools",
            "/echo/content/0/text",
            json!("through the matrix é"),
        ),
        ("tools", "/add/structuredContent/result", json!(42)),
        ("logging", "/messages/0/level", json!("info")),
        ("logging", "/messages/1/level", json!("warning")),
        ("logging", "/messages/2/level", json!("error")),
        ("logging", "/messages/3", Value::Null),
        (
            "sampling",
            "/requests/0/method",
            json!("sampling/createMessage"),
        ),
        (
            "sampling",
            "/result/content/0/text",
            json!("peer-model wrote: an answer about 1 message(s)"),
        ),
        ("elicitation-form", "/requests/0/mode", json!("form")),
        (
            "elicitation-form",
            "/result/content/0/text",
            json!("Ada is 36"),
        ),
        ("elicitation-url", "/requests/0/mode", json!("url")),
        (
            "elicitation-url",
            "/result/content/0/text",
            json!("url elicitation accept"),
        ),
        ("roots", "/requests/0/method", json!("roots/list")),
        (
            "roots",
            "/result/content/0/text",
            json!("peer-root=file:///srv/peer-root"),
        ),
        ("progress", "/progress/2/progress", json!(3.0)),
        ("progress", "/progress/2/message", json!("step 3 of 3")),
        (
            "resources",
            "/greeting/contents/0/text",
            json!("Hello from the peer"),
        ),
        ("resources", "/item/contents/0/text", json!("item apple")),
        (
            "prompts",
            "/messages/0/content/text",
            json!("Hello, Ada! Nice to meet you."),
        ),
        (
            "completion",
            "/prompt/completion/values",
            json!(["Ada", "Alan"]),
        ),
        (
            "completion",
            "/template/completion/values",
            json!(["apple", "apricot"]),
        ),
    ]
}

/// Runs every scenario in `era` against `url` (through a virtual server when `prefix`).
async fn run(a: &Artifacts, url: &str, era: &str, prefix: Option<&str>) -> anyhow::Result<Value> {
    let mut extra = vec!["--timeout", SCENARIO_TIMEOUT];
    if let Some(p) = prefix {
        extra.extend(["--prefix", p]);
    }
    run_peer_client(a, url, era, &extra).await
}

/// Checks one direct run: every scenario passes with the peer's own answers, and the
/// interactive ones took the era's path (no retry in 2025, one `input_required` round in
/// 2026-07-28).
fn check_direct(era: &str, doc: &Value) -> Vec<String> {
    let mut failures = Vec::new();
    for name in SCENARIOS {
        let s = scenario(doc, name);
        if s["ok"] != true {
            failures.push(format!("{era} {name} fails directly: {s}"));
            continue;
        }
        let retries = u64::from(era == "2026-07-28" && INTERACTIVE.contains(&name));
        if s["inputRequiredRetries"] != retries {
            failures.push(format!(
                "{era} {name}: {} input_required retries (want {retries})",
                s["inputRequiredRetries"]
            ));
        }
    }
    let connected = &scenario(doc, "connect")["result"]["protocolVersion"];
    if connected != era {
        failures.push(format!("{era} connect negotiated {connected}"));
    }
    for (name, pointer, want) in expected() {
        let got = scenario(doc, name)["result"]
            .pointer(pointer)
            .cloned()
            .unwrap_or(Value::Null);
        if got != want {
            failures.push(format!("{era} {name} {pointer}: {got} (want {want})"));
        }
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_peers_pass_every_scenario_directly_in_both_eras() -> anyhow::Result<()> {
    let a = artifacts();
    let peer = PythonPeer::start(&a, PythonPeerMode::Stateful).await?;
    let mut failures = Vec::new();
    for era in ERAS {
        let doc = run(&a, &peer.mcp_url(), era, None).await?;
        failures.extend(check_direct(era, &doc));
    }
    if !failures.is_empty() {
        failures.push(format!(
            "peer log tail:\n{}",
            mcpgw_e2e::process::tail(&peer.log(), 30)
        ));
    }
    assert_rows(failures);
    Ok(())
}

/// The virtual server's snapshot: the peer's catalog as its `--dump-catalog` lists it, tools
/// and prompts renamed `peer__{name}` (resources and templates keep their URIs), as the
/// control plane federates an upstream; sessions on, so the filter opens an upstream session
/// per client session; a page size of 3, so the SDK client follows cursors.
fn snapshot(catalog: &Value, peer: SocketAddr) -> anyhow::Result<String> {
    let items = |key: &str| -> anyhow::Result<Vec<Value>> {
        catalog[key]
            .as_array()
            .cloned()
            .with_context(|| format!("no {key} in the catalog dump: {catalog}"))
    };
    let renamed = |key: &str| -> anyhow::Result<Vec<Value>> {
        items(key)?
            .into_iter()
            .map(|mut item| {
                let name = item["name"]
                    .as_str()
                    .with_context(|| format!("{key} item without a name: {item}"))?
                    .to_owned();
                let public = format!("{PREFIX}{name}");
                item["name"] = json!(public);
                Ok(json!({"name": public, "upstream": "peer", "upstream_name": name, "item": item}))
            })
            .collect()
    };
    let by_uri = |key: &str, uri: &str| -> anyhow::Result<Vec<Value>> {
        items(key)?
            .into_iter()
            .map(|item| {
                let uri = item[uri]
                    .as_str()
                    .with_context(|| format!("{key} item without {uri}: {item}"))?
                    .to_owned();
                Ok(json!({"name": uri, "upstream": "peer", "upstream_name": uri, "item": item}))
            })
            .collect()
    };
    Ok(json!({
        "version": "matrix-1",
        "policy": {"list_page_size": 3},
        // The peer checks `Host` (DNS-rebinding protection on loopback): the filter's own
        // calls must name it, not the cluster.
        // The peer speaks both eras (what discovery would find): each client is served in its own.
        "upstreams": {"peer": {"cluster": "upstream", "path": "/mcp", "authority": peer.to_string(),
                               "protocol_versions": ["2026-07-28", "2025-11-25", "2025-06-18", "2025-03-26"]}},
        "servers": {"matrix": {
            "name": "Matrix", "version": "1",
            "tools": renamed("tools")?,
            "resources": by_uri("resources", "uri")?,
            "resource_templates": by_uri("resourceTemplates", "uriTemplate")?,
            "prompts": renamed("prompts")?,
        }},
        "session": {"keys": [KEY]},
    })
    .to_string())
}

/// For a failed scenario, its error and what the client's callbacks saw before it.
fn failure_summary(doc: &Value) -> String {
    if doc["ok"] == true {
        return String::new();
    }
    let e = &doc["error"];
    let seen: Vec<String> = doc["observed"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| format!("{} {k}", v.as_array().map_or(0, Vec::len)))
                .collect()
        })
        .unwrap_or_default();
    format!(
        ": {} {} {}{}",
        e["type"].as_str().unwrap_or_default(),
        e["code"],
        truncate(e["message"].as_str().unwrap_or_default(), 90),
        if seen.is_empty() {
            String::new()
        } else {
            format!(" (seen first: {})", seen.join(", "))
        }
    )
}

/// How one cell of the matrix came out.
fn cell(direct: &Value, gateway: &Value) -> &'static str {
    if direct["ok"] != true {
        "direct fails"
    } else if direct == gateway {
        "same"
    } else if gateway["ok"] == true {
        "differs"
    } else {
        "fails"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virtual_server_gives_what_its_upstream_gives_scenario_by_scenario() -> anyhow::Result<()>
{
    let a = artifacts();
    let peer = PythonPeer::start(&a, PythonPeerMode::Stateful).await?;
    let catalog = run_peer_client(&a, &peer.mcp_url(), ERAS[0], &["--dump-catalog"]).await?;
    let config = snapshot(&catalog, peer.addr)?;
    let envoy = Envoy::start(&a, &EnvoyConfig::with_filter(&config, peer.addr)).await?;
    let through = envoy.url("/servers/matrix/mcp");
    let mut failures = Vec::new();
    let mut table = vec![format!("{:<12} {:<18} {}", "era", "scenario", "gateway")];
    for era in ERAS {
        let direct = run(&a, &peer.mcp_url(), era, None).await?;
        let gateway = run(&a, &through, era, Some(PREFIX)).await?;
        for name in SCENARIOS {
            let (d, g) = (scenario(&direct, name), scenario(&gateway, name));
            let outcome = cell(d, g);
            let gap = KNOWN_GAPS.iter().find(|(e, s, _)| *e == era && *s == name);
            table.push(format!(
                "{era:<12} {name:<18} {outcome}{}{}",
                if gap.is_some() { " (known gap)" } else { "" },
                failure_summary(g)
            ));
            match (outcome, gap) {
                ("direct fails", _) => failures.push(format!("{era} {name} fails directly: {d}")),
                ("same", None) | ("differs" | "fails", Some(_)) => {}
                ("same", Some((_, _, why))) => failures.push(format!(
                    "{era} {name} now works through the gateway: remove ({era:?}, {name:?}, {why:?}) from KNOWN_GAPS"
                )),
                _ => failures.push(format!(
                    "{era} {name} {outcome} through the gateway:\n    direct:  {}\n    gateway: {}",
                    truncate(&d.to_string(), 1500),
                    truncate(&g.to_string(), 1500)
                )),
            }
        }
    }
    println!("{}", table.join("\n"));
    assert_rows(failures);
    Ok(())
}

#[test]
fn known_gaps_name_real_cells_once_with_a_reason() {
    let mut failures = Vec::new();
    for (i, (era, name, why)) in KNOWN_GAPS.iter().enumerate() {
        if !ERAS.contains(era) || !SCENARIOS.contains(name) || why.trim().is_empty() {
            failures.push(format!("KNOWN_GAPS[{i}] = ({era:?}, {name:?}, {why:?})"));
        }
        if KNOWN_GAPS[..i]
            .iter()
            .any(|(e, s, _)| e == era && s == name)
        {
            failures.push(format!("KNOWN_GAPS[{i}]: ({era:?}, {name:?}) twice"));
        }
    }
    assert_rows(failures);
}
