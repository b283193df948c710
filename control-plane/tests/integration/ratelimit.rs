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
