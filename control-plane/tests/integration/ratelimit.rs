//! The rate-limit service on a real Redis (127.0.0.1:6379): a budget of N admits exactly N
//! of many concurrent hits from several clients, descriptors without a limit pass, and a
//! Redis that cannot be reached is UNAVAILABLE (the filters' failure mode then decides).

use std::net::SocketAddr;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::r#type::v3::RateLimitUnit;
use mcpgw::ratelimit::{DEFAULT_REDIS_URL, RedisRateLimiter, serve};
use tokio::net::TcpListener;

/// Serves the service on 127.0.0.1:0 against `redis`; stops when the returned sender drops.
async fn service(redis: &str) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let limiter = RedisRateLimiter::new(redis).unwrap();
    tokio::spawn(serve(listener, limiter, None, async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// One descriptor of `tool` in a budget of `limit` per hour costing `cost`.
fn request(domain: &str, tool: &str, limit: Option<u32>, cost: u64) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.to_owned(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![
                Entry {
                    key: "limit".into(),
                    value: "shared".into(),
                },
                Entry {
                    key: "tool".into(),
                    value: tool.into(),
                },
            ],
            limit: limit.map(|n| RateLimitOverride {
                requests_per_unit: n,
                unit: RateLimitUnit::Hour as i32,
            }),
            hits_addend: Some(envoy_types::pb::google::protobuf::UInt64Value { value: cost }),
            ..RateLimitDescriptor::default()
        }],
        hits_addend: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_budget_of_n_admits_exactly_n_of_many_concurrent_hits() {
    const N: usize = 25;
    const K: usize = 4;
    let (addr, _stop) = service(DEFAULT_REDIS_URL).await;
    // A domain of its own: runs never share a window.
    let domain = format!("test-{}", uuid::Uuid::new_v4());
    // Several clients, each its own HTTP/2 connection, all hitting one budget at once.
    let mut clients = Vec::new();
    for _ in 0..K {
        clients.push(
            RateLimitServiceClient::connect(format!("http://{addr}"))
                .await
                .unwrap(),
        );
    }
    let hits = (0..K * N).map(|i| {
        let mut client = clients[i % K].clone();
        let request = request(&domain, "a__t0", Some(N as u32), 1);
        async move {
            client
                .should_rate_limit(request)
                .await
                .unwrap()
                .into_inner()
        }
    });
    let answers = futures::future::join_all(hits).await;
    let ok = answers
        .iter()
        .filter(|a| a.overall_code == Code::Ok as i32)
        .count();
    assert_eq!(ok, N, "exactly the budget");
    for a in &answers {
        let s = &a.statuses[0];
        assert_eq!(s.code, a.overall_code);
        assert_eq!(
            s.current_limit.as_ref().unwrap().requests_per_unit,
            N as u32
        );
        let reset = s.duration_until_reset.as_ref().unwrap().seconds;
        assert!((1..=3600).contains(&reset), "{reset}");
    }
    // Another key of the same limit has its own budget; a cost spends several.
    let mut client = clients[0].clone();
    let a = client
        .should_rate_limit(request(&domain, "b__t1", Some(3), 2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (a.overall_code, a.statuses[0].limit_remaining),
        (Code::Ok as i32, 1)
    );
    let a = client
        .should_rate_limit(request(&domain, "b__t1", Some(3), 2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.overall_code, Code::OverLimit as i32);
    // A descriptor without a limit is not limited (and costs Redis nothing).
    for _ in 0..3 {
        let a = client
            .should_rate_limit(request(&domain, "c", None, 1))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(a.overall_code, Code::Ok as i32);
    }
}

#[tokio::test]
async fn an_unreachable_redis_is_unavailable() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let (addr, _stop) = service(&format!("redis://127.0.0.1:{port}")).await;
    let mut client = RateLimitServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let err = client
        .should_rate_limit(request("d", "t", Some(1), 1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
}

/// The mcpgw filter at virtual server `s` (tool `u__echo` of upstream cluster `up`) with
/// one global limit of `n` per hour, checked against cluster `rls` in `domain`.
fn envoy_bootstrap(upstream: SocketAddr, rls: SocketAddr, domain: &str, n: usize) -> String {
    use mcpgw_harness::bootstrap::{StaticBootstrap, static_cluster, wasm_filter};
    let snapshot = serde_json::json!({
        "upstreams": {"u": {"cluster": "up", "path": "/mcp"}},
        "servers": {"s": {"name": "S", "tools": [{"name": "u__echo", "upstream": "u",
            "upstream_name": "echo", "item": {"name": "u__echo", "inputSchema": {"type": "object"}}}]}},
        "limits": {
            "service": {"cluster": "rls", "domain": domain, "timeout_ms": 5000, "failure_mode": "deny"},
            "servers": {"s": {"concurrency": [], "rates": [
                {"name": "shared", "by": ["tool"], "requests": n, "per_seconds": 3600, "global": true}
            ]}}
        }
    });
    let wasm = mcpgw_harness::Artifacts::from_env();
    let wasm = wasm.wasm().unwrap();
    let mut rls_cluster = static_cluster("rls", rls, "2s");
    rls_cluster["typed_extension_protocol_options"] = serde_json::json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}
        }
    });
    let route = |cluster: &str| {
        serde_json::json!({"match": {"prefix": "/", "headers": [{"name": "x-mcpgw-cluster",
            "string_match": {"exact": cluster}}]}, "route": {"cluster": cluster, "timeout": "0s"}})
    };
    StaticBootstrap {
        http_filters: vec![wasm_filter("mcpgw", &snapshot.to_string(), wasm)],
        routes: vec![route("up")],
        clusters: vec![static_cluster("up", upstream, "2s"), rls_cluster],
        buffer_limit: None,
        stream_idle_timeout: None,
    }
    .to_json()
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_envoys_spend_one_global_budget_exactly() {
    const N: usize = 12;
    const K: usize = 4;
    let (rls, stop) = service(DEFAULT_REDIS_URL).await;
    let upstream = super::upstream::TestUpstream::with_tools(&["echo"]);
    let running = upstream.serve_stateless(0).await;
    let domain = format!("e2e-{}", uuid::Uuid::new_v4());
    let bootstrap = envoy_bootstrap(running.addr, rls, &domain, N);
    let mut envoys = Vec::new();
    for _ in 0..2 {
        let mut envoy =
            super::envoy::Envoy::spawn(&bootstrap, mcpgw_harness::workdir::unique_id()).await;
        let listener = envoy.listener(mcpgw_harness::bootstrap::LISTENER).await;
        envoys.push((envoy, listener));
    }
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let call = |listener: SocketAddr, id: usize| {
        let http = http.clone();
        async move {
            let body = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                "params": {"name": "u__echo", "arguments": {}}});
            let r = http
                .post(format!("http://{listener}/servers/s/mcp"))
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: serde_json::Value = r.json().await.unwrap();
            (status, retry, body)
        }
    };
    // K×N calls at once, alternating between the two Envoys.
    let calls = (0..K * N).map(|i| call(envoys[i % 2].1, i));
    let answers = futures::future::join_all(calls).await;
    let admitted: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 200).collect();
    assert_eq!(
        admitted.len(),
        N,
        "exactly the global budget, over both Envoys"
    );
    for (status, retry, body) in &answers {
        if *status == 200 {
            assert!(body.get("result").is_some(), "{body}");
            continue;
        }
        assert_eq!(*status, 429, "{body}");
        assert_eq!(body["error"]["code"], -32005, "{body}");
        assert_eq!(body["error"]["data"]["limit"], "shared", "{body}");
        assert_eq!(body["error"]["data"]["kind"], "global", "{body}");
        let retry: u64 = retry.as_deref().unwrap().parse().unwrap();
        assert!((1..=3600).contains(&retry), "{retry}");
    }
    // With the service gone, failure mode `deny` refuses.
    drop(stop);
    let (status, _, body) = call(envoys[0].1, 999).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["data"]["kind"], "global", "{body}");
    running.stop().await;
}
