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
use mcpgw_e2e::{
    Artifacts, Envoy, EnvoyConfig, GuardService, PythonPeer, PythonPeerMode, run_peer_client,
};

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

/// Every version the peer speaks, as discovery lists them.
const BOTH_ERAS: [&str; 4] = ["2026-07-28", "2025-11-25", "2025-06-18", "2025-03-26"];

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
fn snapshot(catalog: &Value, peer: SocketAddr, versions: &[&str]) -> anyhow::Result<String> {
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
        "upstreams": {"peer": {"cluster": "upstream", "path": "/mcp", "authority": peer.to_string(),
                               "protocol_versions": versions}},
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

/// Runs every scenario in both eras directly against `peer` and through `through`, and
/// compares them cell by cell: the table to print, and what fails (a scenario that fails
/// directly, differs through the gateway without being in `known_gaps`, or is listed there
/// and no longer differs).
async fn compare(
    a: &Artifacts,
    peer: &str,
    through: &str,
    known_gaps: &[(&str, &str, &str)],
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let mut failures = Vec::new();
    let mut table = vec![format!("{:<12} {:<18} {}", "era", "scenario", "gateway")];
    for era in ERAS {
        let direct = run(a, peer, era, None).await?;
        let gateway = run(a, through, era, Some(PREFIX)).await?;
        for name in SCENARIOS {
            let (d, g) = (scenario(&direct, name), scenario(&gateway, name));
            let outcome = cell(d, g);
            let gap = known_gaps.iter().find(|(e, s, _)| *e == era && *s == name);
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
    Ok((table, failures))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virtual_server_gives_what_its_upstream_gives_scenario_by_scenario() -> anyhow::Result<()>
{
    let a = artifacts();
    let peer = PythonPeer::start(&a, PythonPeerMode::Stateful).await?;
    let catalog = run_peer_client(&a, &peer.mcp_url(), ERAS[0], &["--dump-catalog"]).await?;
    // The peer speaks both eras (what discovery finds): each client is served in its own.
    let config = snapshot(&catalog, peer.addr, &BOTH_ERAS)?;
    let envoy = Envoy::start(&a, &EnvoyConfig::with_filter(&config, peer.addr)).await?;
    let through = envoy.url("/servers/matrix/mcp");
    let (table, failures) = compare(&a, &peer.mcp_url(), &through, KNOWN_GAPS).await?;
    println!("{}", table.join("\n"));
    assert_rows(failures);
    Ok(())
}

/// Guardrails asked outside the gateway sit between the client and every answer, yet take
/// nothing away: with an `external` plugin on every pre and post hook (the reference
/// service, passing everything these scenarios send), each scenario gives the document it
/// gives directly. In the 2025 era a tool's request to the client (sampling, elicitation,
/// roots) travels on the call's event stream before the result: the stream cannot be held
/// until it ends, or the call never ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_guardrails_on_every_hook_take_nothing_from_any_scenario() -> anyhow::Result<()> {
    let a = artifacts();
    let guard = GuardService::start(&a, "zz-never-said", "zz_never_named").await?;
    let peer = PythonPeer::start(&a, PythonPeerMode::Stateful).await?;
    let catalog = run_peer_client(&a, &peer.mcp_url(), ERAS[0], &["--dump-catalog"]).await?;
    let mut config: Value = serde_json::from_str(&snapshot(&catalog, peer.addr, &BOTH_ERAS)?)?;
    config["plugins"] = json!([{
        "name": "ext",
        "hooks": ["tool_pre_invoke", "tool_post_invoke", "prompt_pre_fetch",
                  "prompt_post_fetch", "resource_pre_fetch", "resource_post_fetch"],
        "external": {"cluster": "guard", "timeout_ms": 5000, "failure_mode": "closed"}
    }]);
    let envoy = Envoy::start(
        &a,
        &EnvoyConfig::with_filter(&config.to_string(), peer.addr).grpc_cluster("guard", guard.addr),
    )
    .await?;
    let through = envoy.url("/servers/matrix/mcp");
    let (table, mut failures) = compare(&a, &peer.mcp_url(), &through, &[]).await?;
    println!("{}", table.join("\n"));
    // The service was asked, on both sides of the calls, the reads and the prompts.
    let checks = guard.checks();
    for hook in [
        "tool_pre_invoke",
        "tool_post_invoke",
        "prompt_post_fetch",
        "resource_post_fetch",
    ] {
        // The service logs the proto's enum names.
        let logged = format!("HOOK_{}", hook.to_ascii_uppercase());
        if !checks.iter().any(|c| c["hook"] == logged.as_str()) {
            failures.push(format!("the service was never asked at {hook}: {checks:?}"));
        }
    }
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

/// Scenarios a virtual server carries across the eras unchanged: a client of one era in
/// front of an upstream the gateway must speak the other era to.
const BRIDGED: [&str; 8] = [
    "connect",
    "catalog",
    "tools",
    "logging",
    "progress",
    "resources",
    "prompts",
    "completion",
];

/// MCP's error for a request that needs a client capability the request did not declare.
const MISSING_CLIENT_CAPABILITY: i64 = -32021;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_one_era_in_front_of_an_upstream_of_the_other_is_bridged() -> anyhow::Result<()>
{
    let a = artifacts();
    let peer = PythonPeer::start(&a, PythonPeerMode::Stateful).await?;
    let catalog = run_peer_client(&a, &peer.mcp_url(), ERAS[0], &["--dump-catalog"]).await?;
    let mut failures = Vec::new();
    let mut table = vec![format!(
        "{:<12} {:<18} {}",
        "client era", "scenario", "gateway"
    )];
    // The peer speaks both eras; the snapshot says it speaks only the other one, so the
    // gateway must bridge (as it does for an upstream discovery found to speak only that).
    for (era, upstream) in [(ERAS[1], ERAS[0]), (ERAS[0], ERAS[1])] {
        let config = snapshot(&catalog, peer.addr, &[upstream])?;
        let envoy = Envoy::start(&a, &EnvoyConfig::with_filter(&config, peer.addr)).await?;
        let direct = run(&a, &peer.mcp_url(), era, None).await?;
        let gateway = run(&a, &envoy.url("/servers/matrix/mcp"), era, Some(PREFIX)).await?;
        for name in SCENARIOS {
            let (d, g) = (scenario(&direct, name), scenario(&gateway, name));
            let outcome = cell(d, g);
            table.push(format!(
                "{era:<12} {name:<18} {outcome}{}",
                failure_summary(g)
            ));
            if BRIDGED.contains(&name) && outcome != "same" {
                failures.push(format!(
                    "{era} client, {upstream} upstream: {name} {outcome}:\n    direct:  {}\n    gateway: {}",
                    truncate(&d.to_string(), 1500),
                    truncate(&g.to_string(), 1500)
                ));
            }
            // What needs the client mid-call is not declared upstream on a bridged call:
            // the upstream answers the defined error for a missing client capability.
            if !BRIDGED.contains(&name) && g["error"]["code"] != MISSING_CLIENT_CAPABILITY {
                failures.push(format!(
                    "{era} client, {upstream} upstream: {name} should fail with {MISSING_CLIENT_CAPABILITY}: {}",
                    truncate(&g.to_string(), 1500)
                ));
            }
        }
    }
    println!("{}", table.join("\n"));
    assert_rows(failures);
    Ok(())
}

/// A 2026-07-28 `tools/call` of `name` with the envelope (declaring URL elicitation) and the
/// headers that era requires; `params` adds to the call's params.
async fn modern_call(
    url: &str,
    id: i64,
    name: &str,
    params: Value,
) -> anyhow::Result<(u16, Value)> {
    let mut p = json!({"name": name, "arguments": {}, "_meta": {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"url": {}}},
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"}
    }});
    if let (Some(p), Value::Object(more)) = (p.as_object_mut(), params) {
        p.extend(more);
    }
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": p});
    let reply = super::support::post(
        url,
        body.to_string(),
        &[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", name),
        ],
    )
    .await?;
    Ok((reply.status, reply.response(&json!(id))?))
}

/// The input-required round trip by hand: the upstream's `requestState` reaches the client
/// unchanged, a retry carrying it intact completes, and one whose state was tampered with
/// is refused exactly as the upstream refuses it directly.
async fn request_state_rounds(url: &str, name: &str) -> anyhow::Result<Value> {
    let (status, first) = modern_call(url, 1, name, json!({})).await?;
    let result = &first["result"];
    let state = result["requestState"]
        .as_str()
        .with_context(|| format!("no requestState in {status} {first}"))?
        .to_owned();
    let answers = json!({"open_url": {"action": "accept"}});
    let mut tampered = state.clone().into_bytes();
    if let Some(last) = tampered.last_mut() {
        *last = if *last == b'A' { b'B' } else { b'A' };
    }
    let tampered = String::from_utf8(tampered)?;
    let (bad_status, bad) = modern_call(
        url,
        2,
        name,
        json!({"inputResponses": answers, "requestState": tampered}),
    )
    .await?;
    let (good_status, good) = modern_call(
        url,
        3,
        name,
        json!({"inputResponses": answers, "requestState": state}),
    )
    .await?;
    Ok(json!({
        "first": [status, result["resultType"], result["inputRequests"]],
        "tampered": [bad_status, bad["error"]],
        "retried": [good_status, good["result"]["content"]],
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_request_state_is_refused_through_a_virtual_server_as_directly()
-> anyhow::Result<()> {
    let a = artifacts();
    let peer = PythonPeer::start(&a, PythonPeerMode::Stateful).await?;
    let catalog = run_peer_client(&a, &peer.mcp_url(), ERAS[0], &["--dump-catalog"]).await?;
    let config = snapshot(&catalog, peer.addr, &BOTH_ERAS)?;
    let envoy = Envoy::start(&a, &EnvoyConfig::with_filter(&config, peer.addr)).await?;
    let direct = request_state_rounds(&peer.mcp_url(), "open_url").await?;
    let through = request_state_rounds(
        &envoy.url("/servers/matrix/mcp"),
        &format!("{PREFIX}open_url"),
    )
    .await?;
    assert_eq!(direct["first"][1], "input_required", "{direct}");
    assert_eq!(direct["tampered"][0], 400, "{direct}");
    assert_eq!(direct["tampered"][1]["code"], -32602, "{direct}");
    assert_eq!(
        direct["tampered"][1]["data"]["reason"], "invalid_request_state",
        "{direct}"
    );
    assert_eq!(direct["retried"][0], 200, "{direct}");
    assert_eq!(
        direct["retried"][1][0]["text"], "url elicitation accept",
        "{direct}"
    );
    assert_eq!(
        through, direct,
        "the same rounds through the virtual server"
    );
    Ok(())
}

/// Reads `response`'s event stream until its first JSON-RPC message.
async fn first_event(mut response: reqwest::Response) -> anyhow::Result<Value> {
    let mut text = String::new();
    let read = async {
        while let Some(chunk) = response.chunk().await? {
            // SSE lines may end in CRLF (the Python SDK's do).
            text.push_str(&String::from_utf8_lossy(&chunk).replace("\r\n", "\n"));
            if let Some(first) = super::support::sse_messages(
                text.rsplit_once("\n\n").map_or("", |(whole, _)| whole),
            )?
            .into_iter()
            .next()
            {
                return Ok(first);
            }
        }
        anyhow::bail!("the stream ended before any message: {text:?}")
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .context("no message on the stream within 10 s")?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2026_listen_reaches_a_lone_2026_upstream_without_a_relay() -> anyhow::Result<()> {
    let a = artifacts();
    let peer = PythonPeer::start(&a, PythonPeerMode::Stateful).await?;
    let catalog = run_peer_client(&a, &peer.mcp_url(), ERAS[0], &["--dump-catalog"]).await?;
    let config = snapshot(&catalog, peer.addr, &[ERAS[1]])?;
    let envoy = Envoy::start(&a, &EnvoyConfig::with_filter(&config, peer.addr)).await?;
    let listen = |url: String| {
        let body = json!({"jsonrpc": "2.0", "id": "sub-7", "method": "subscriptions/listen", "params": {
        "notifications": {"toolsListChanged": true, "resourceSubscriptions": ["peer://greeting"]},
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"}
        }}});
        super::support::http()
            .post(url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "subscriptions/listen")
            .body(body.to_string())
            .send()
    };
    let mut acks = Vec::new();
    for url in [peer.mcp_url(), envoy.url("/servers/matrix/mcp")] {
        let response = listen(url.clone()).await?;
        anyhow::ensure!(response.status() == 200, "{url}: {}", response.status());
        acks.push(first_event(response).await.with_context(|| url.clone())?);
    }
    assert_eq!(
        acks[0]["method"], "notifications/subscriptions/acknowledged",
        "{}",
        acks[0]
    );
    assert_eq!(
        acks[0]["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        "sub-7"
    );
    assert_eq!(
        acks[1], acks[0],
        "the upstream's acknowledgement, unchanged"
    );
    Ok(())
}
