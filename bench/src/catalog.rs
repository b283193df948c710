//! The virtual server of the edge comparison: 100 tools, held both by the mcpgw filter's
//! snapshot (answered at the edge) and by the upstream (answered after the round trip).
//!
//! Both sides serve the same list item bytes, so `plain-list` and `edge-list` return the
//! same page; only who answers it differs.

use anyhow::{Context, bail, ensure};
use bytes::Bytes;

/// Tools in the catalog, all on one page.
pub const TOOLS: usize = 100;
/// `policy.list_page_size` of the snapshot: one page holds every tool.
pub const PAGE_SIZE: usize = 100;
/// Id of the virtual server (its endpoint is [`ENDPOINT`]) and of its one upstream, which
/// is also the namespace prefix of its tools.
pub const SERVER_ID: &str = "bench";
/// The virtual server's MCP endpoint.
pub const ENDPOINT: &str = "/servers/bench/mcp";
/// The upstream's own name for the tool the benchmark calls.
pub const CALLED_TOOL: &str = "echo";
/// The name clients of the virtual server call it by (namespaced).
pub const NAMESPACED_CALLED_TOOL: &str = "bench__echo";
/// The upstream's MCP path, which the filter rewrites `:path` to.
pub const UPSTREAM_PATH: &str = crate::load::MCP_PATH;

/// The upstream's own tool names: [`CALLED_TOOL`] first, then `tool_01` … `tool_99`.
pub fn upstream_names() -> Vec<String> {
    (0..TOOLS)
        .map(|i| {
            if i == 0 {
                CALLED_TOOL.to_string()
            } else {
                format!("tool_{i:02}")
            }
        })
        .collect()
}

/// The namespaced name of upstream tool `name`, as the virtual server lists it.
pub fn namespaced(name: &str) -> String {
    format!("{SERVER_ID}__{name}")
}

/// The `tools/list` entries, as the control plane renders them (compact JSON, name first):
/// a description and a two-property input schema, 200–300 bytes each.
pub fn items() -> Vec<String> {
    upstream_names()
        .iter()
        .enumerate()
        .map(|(i, name)| {
            format!(
                r#"{{"name":"{}","description":"Benchmark tool {i} of {TOOLS}: returns the message, repeated as asked.","inputSchema":{{"type":"object","properties":{{"message":{{"type":"string","description":"Text to return"}},"repeat":{{"type":"integer","minimum":1,"maximum":10}}}},"required":["message"]}}}}"#,
                namespaced(name)
            )
        })
        .collect()
}

/// The mcpgw filter's snapshot (JSON): virtual server [`SERVER_ID`] with every tool of
/// [`items`], owned by one upstream reached through Envoy cluster `cluster` at
/// [`UPSTREAM_PATH`]. Written as text rather than built as a `serde_json::Value` so each
/// item keeps the exact bytes the upstream serves.
pub fn snapshot(cluster: &str) -> String {
    snapshot_with(cluster, "")
}

/// The limits of the `limit-local` variant: never refusing, but every call counted.
pub const LOCAL_LIMITS: &str = r#"{"default":{"rates":[{"name":"bench","by":["principal","tool"],"requests":1000000,"per_seconds":1}],"concurrency":[{"name":"bench-in-flight","by":["tool"],"max":1000000}]}}"#;

/// [`LOCAL_LIMITS`]' rate alone.
pub const LOCAL_RATE: &str = r#"{"default":{"rates":[{"name":"bench","by":["principal","tool"],"requests":1000000,"per_seconds":1}],"concurrency":[]}}"#;

/// [`LOCAL_LIMITS`]' limit on calls in flight alone.
pub const LOCAL_FLIGHT: &str = r#"{"default":{"rates":[],"concurrency":[{"name":"bench-in-flight","by":["tool"],"max":1000000}]}}"#;

/// [`snapshot`] with the virtual server under [`LOCAL_LIMITS`].
pub fn limited_snapshot(cluster: &str) -> String {
    snapshot_under(cluster, LOCAL_LIMITS)
}

/// [`snapshot`] with the virtual server under `limits`.
pub fn snapshot_under(cluster: &str, limits: &str) -> String {
    let plain = snapshot(cluster);
    let open = plain.strip_suffix('}').unwrap_or(&plain);
    format!(r#"{open},"limits":{limits}}}"#)
}

/// [`snapshot`] with its upstream speaking MCP 2026-07-28 (and 2025-06-18).
pub fn modern_snapshot(cluster: &str) -> String {
    snapshot_with(
        cluster,
        r#","protocol_versions":["2026-07-28","2025-06-18"]"#,
    )
}

/// The snapshot, `upstream_extra` added to the upstream's members.
fn snapshot_with(cluster: &str, upstream_extra: &str) -> String {
    let tools: Vec<String> = upstream_names()
        .iter()
        .zip(items())
        .map(|(name, item)| {
            format!(
                r#"{{"name":"{}","upstream":"{SERVER_ID}","upstream_name":"{name}","item":{item}}}"#,
                namespaced(name)
            )
        })
        .collect();
    format!(
        r#"{{"schema":1,"version":"bench","policy":{{"list_page_size":{PAGE_SIZE}}},"upstreams":{{"{SERVER_ID}":{{"cluster":"{cluster}","path":"{UPSTREAM_PATH}"{upstream_extra}}}}},"servers":{{"{SERVER_ID}":{{"name":"Benchmark server","version":"1","tools":[{}]}}}}}}"#,
        tools.join(",")
    )
}

/// The client's `tools/list` request (first page, no cursor).
pub fn tools_list_body() -> Bytes {
    Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#)
}

/// The upstream's answer to [`tools_list_body`]: every item on one page, in the envelope
/// the filter writes too.
pub fn list_page() -> Bytes {
    Bytes::from(format!(
        r#"{{"jsonrpc":"2.0","id":1,"result":{{"tools":[{}]}}}}"#,
        items().join(",")
    ))
}

/// Checks that `body` is a one-page `tools/list` result for request id 1 holding every
/// tool of the catalog, in order.
pub fn verify_list_page(body: &[u8]) -> anyhow::Result<()> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).context("the tools/list answer is not JSON")?;
    if let Some(error) = doc.get("error") {
        bail!("the tools/list answer is a JSON-RPC error: {error}");
    }
    ensure!(doc["id"] == 1, "the tools/list answer has id {}", doc["id"]);
    let tools = doc["result"]["tools"]
        .as_array()
        .context("the tools/list answer has no result.tools array")?;
    ensure!(
        doc["result"].get("nextCursor").is_none(),
        "the tools/list answer has a next page; every tool should fit on one"
    );
    let names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
    let expected: Vec<String> = upstream_names().iter().map(|n| namespaced(n)).collect();
    ensure!(
        names == expected,
        "the tools/list answer lists {} tools ({:?} …), expected the catalog's {TOOLS} ({:?} …)",
        names.len(),
        names.first(),
        expected.first()
    );
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn items_are_small_realistic_tools() {
        let items = items();
        assert_eq!(items.len(), TOOLS);
        for item in &items {
            assert!(
                (200..=300).contains(&item.len()),
                "{} bytes: {item}",
                item.len()
            );
            let v: Value = serde_json::from_str(item).unwrap();
            assert!(v["description"].is_string(), "{item}");
            assert_eq!(v["inputSchema"]["type"], "object", "{item}");
        }
        assert!(items[0].starts_with(r#"{"name":"bench__echo","#));
    }

    #[test]
    fn the_snapshot_holds_every_item_verbatim_and_routes_the_called_tool() {
        let text = snapshot("bench_tools");
        let doc: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["schema"], 1);
        assert_eq!(doc["policy"]["list_page_size"], PAGE_SIZE);
        assert_eq!(doc["upstreams"][SERVER_ID]["cluster"], "bench_tools");
        assert_eq!(doc["upstreams"][SERVER_ID]["path"], UPSTREAM_PATH);
        let tools = doc["servers"][SERVER_ID]["tools"].as_array().unwrap();
        assert_eq!(tools.len(), TOOLS);
        assert_eq!(tools[0]["name"], NAMESPACED_CALLED_TOOL);
        assert_eq!(tools[0]["upstream_name"], CALLED_TOOL);
        for t in tools {
            assert_eq!(t["upstream"], SERVER_ID);
            assert_eq!(t["item"]["name"], t["name"]);
        }
        // The filter serves item bytes as written: the same bytes the upstream serves.
        for item in items() {
            assert!(text.contains(&format!(r#""item":{item}}}"#)));
        }
        // Envoy gets the snapshot inside a single-quoted YAML string.
        assert!(!text.contains('\''));
    }

    #[test]
    fn the_list_page_verifies_and_a_short_or_failed_one_does_not() {
        let page = list_page();
        verify_list_page(&page).unwrap();
        assert!((20_000..=30_000).contains(&page.len()), "{}", page.len());
        let short = format!(
            r#"{{"jsonrpc":"2.0","id":1,"result":{{"tools":[{}]}}}}"#,
            items()[..99].join(",")
        );
        assert!(verify_list_page(short.as_bytes()).is_err());
        let paged = format!(
            r#"{{"jsonrpc":"2.0","id":1,"result":{{"tools":[{}],"nextCursor":"mcpgw:100"}}}}"#,
            items().join(",")
        );
        assert!(verify_list_page(paged.as_bytes()).is_err());
        let error = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"no"}}"#;
        assert!(verify_list_page(error).is_err());
        assert!(verify_list_page(b"not json").is_err());
    }

    #[test]
    fn the_list_request_is_a_first_page_request() {
        let v: Value = serde_json::from_slice(&tools_list_body()).unwrap();
        assert_eq!(v["method"], "tools/list");
        assert!(v["params"].get("cursor").is_none());
    }
}
