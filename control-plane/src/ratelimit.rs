//! The rate-limit service: Envoy's `envoy.service.ratelimit.v3.RateLimitService` on Redis,
//! which the filters ask about the limits marked `global` (docs/control-plane.md), so every
//! Envoy of a fleet spends one budget.
//!
//! It needs no configuration of its own: each descriptor the filter sends carries its limit
//! (`limit`: requests per unit) and its cost (`hits_addend`). A descriptor without a limit
//! is not limited, as in Envoy's reference service. Budgets are fixed windows: the first
//! hit of a descriptor creates its Redis counter with the unit as its time to live, and
//! every hit adds its cost to it in the same Lua script (`INCRBY`, then `PEXPIRE` if the
//! counter has no expiry yet), so Redis applies each hit whole and in one order: of any
//! number of concurrent hits on a budget of N, exactly N pass. A hit refused still counts,
//! as in Envoy's reference service: a client that keeps trying keeps its window full.
//!
//! Redis is reached lazily, through a connection manager that reconnects: while it is
//! down the service answers `UNAVAILABLE`, and each filter applies its failure mode.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::envoy::r#type::v3::RateLimitUnit;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::xds::XdsTls;

/// Default of the service's listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:18002";
/// Default Redis URL.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Prefix of the service's Redis keys.
pub const KEY_PREFIX: &str = "mcpgw:rl:";
/// How long a Redis command may take before the check fails (`UNAVAILABLE`).
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Adds a hit to a fixed-window counter: `KEYS[1]` the counter, `ARGV[1]` the cost,
/// `ARGV[2]` the window in milliseconds. Returns the count and the window's milliseconds
/// left.
const HIT: &str = r"
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  ttl = tonumber(ARGV[2])
end
return {n, ttl}
";

/// Seconds of an Envoy `RateLimitUnit` (`None`: unknown). The override's enum
/// (`envoy.type.v3.RateLimitUnit`) and the answer's share these numbers.
fn unit_seconds(unit: i32) -> Option<u64> {
    match RateLimitUnit::try_from(unit).ok()? {
        RateLimitUnit::Second => Some(1),
        RateLimitUnit::Minute => Some(60),
        RateLimitUnit::Hour => Some(3600),
        RateLimitUnit::Day => Some(86_400),
        RateLimitUnit::Month => Some(30 * 86_400),
        RateLimitUnit::Year => Some(365 * 86_400),
        RateLimitUnit::Unknown => None,
    }
}

/// One descriptor's budget: its Redis key, limit, window and this request's hits.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Budget {
    key: String,
    limit: u32,
    unit: i32,
    window_ms: u64,
    hits: u64,
}

/// The budget of descriptor `d` in `domain` (`None`: it carries no usable limit).
fn budget(domain: &str, d: &RateLimitDescriptor, request_hits: u32) -> Option<Budget> {
    let limit = d.limit.as_ref()?;
    let seconds = unit_seconds(limit.unit)?;
    // JSON: an unambiguous encoding of whatever the entries hold.
    let mut parts = vec![domain.to_owned(), seconds.to_string()];
    for e in &d.entries {
        parts.push(e.key.clone());
        parts.push(e.value.clone());
    }
    let hits = match &d.hits_addend {
        Some(h) => h.value,
        None if request_hits > 0 => u64::from(request_hits),
        None => 1,
    };
    Some(Budget {
        key: format!("{KEY_PREFIX}{}", serde_json::to_string(&parts).ok()?),
        limit: limit.requests_per_unit,
        unit: limit.unit,
        window_ms: seconds * 1000,
        hits,
    })
}

/// The service. Cheap to clone.
#[derive(Clone)]
pub struct RedisRateLimiter {
    client: redis::Client,
    manager: std::sync::Arc<tokio::sync::OnceCell<redis::aio::ConnectionManager>>,
}

impl std::fmt::Debug for RedisRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRateLimiter").finish_non_exhaustive()
    }
}

impl RedisRateLimiter {
    /// A service counting in the Redis at `url` (not contacted until the first check).
    pub fn new(url: &str) -> anyhow::Result<Self> {
        Ok(Self {
            client: redis::Client::open(url)
                .map_err(|e| anyhow::anyhow!("redis URL {url:?}: {e}"))?,
            manager: Default::default(),
        })
    }

    async fn connection(&self) -> Result<redis::aio::ConnectionManager, redis::RedisError> {
        let client = self.client.clone();
        self.manager
            .get_or_try_init(|| async move { client.get_connection_manager().await })
            .await
            .cloned()
    }

    /// Answers one request: every descriptor with a limit is counted.
    pub async fn check(
        &self,
        request: &RateLimitRequest,
    ) -> Result<RateLimitResponse, tonic::Status> {
        let budgets: Vec<Option<Budget>> = request
            .descriptors
            .iter()
            .map(|d| budget(&request.domain, d, request.hits_addend))
            .collect();
        let counted: Vec<&Budget> = budgets.iter().flatten().collect();
        let counts: Vec<(u64, i64)> = if counted.is_empty() {
            Vec::new()
        } else {
            let unavailable = |e: &dyn std::fmt::Display| {
                tracing::warn!(error = %e, "rate-limit service: redis unavailable");
                tonic::Status::unavailable(format!("redis: {e}"))
            };
            let mut conn = self.connection().await.map_err(|e| unavailable(&e))?;
            let mut pipe = redis::pipe();
            // EVAL with the script's text: a few hundred bytes a hit, and nothing to reload
            // when Redis restarts and forgets its script cache (EVALSHA would be refused).
            for b in &counted {
                pipe.cmd("EVAL")
                    .arg(HIT)
                    .arg(1)
                    .arg(&b.key)
                    .arg(b.hits)
                    .arg(b.window_ms);
            }
            let run = pipe.query_async::<Vec<(u64, i64)>>(&mut conn);
            match tokio::time::timeout(REDIS_TIMEOUT, run).await {
                Ok(Ok(counts)) => counts,
                Ok(Err(e)) => return Err(unavailable(&e)),
                Err(_) => return Err(unavailable(&"timed out")),
            }
        };
        let mut counts = counts.into_iter();
        let mut over = false;
        let statuses = budgets
            .iter()
            .map(|b| {
                let Some(b) = b else {
                    return DescriptorStatus {
                        code: Code::Ok as i32,
                        ..DescriptorStatus::default()
                    };
                };
                let (count, ttl_ms) = counts.next().unwrap_or((0, 0));
                let is_over = count > u64::from(b.limit);
                over |= is_over;
                DescriptorStatus {
                    code: if is_over { Code::OverLimit } else { Code::Ok } as i32,
                    current_limit: Some(RateLimit {
                        name: String::new(),
                        requests_per_unit: b.limit,
                        unit: b.unit,
                    }),
                    limit_remaining: u32::try_from(u64::from(b.limit).saturating_sub(count))
                        .unwrap_or(u32::MAX),
                    // Whole seconds, rounded up: a client that waits this long finds a
                    // new window.
                    duration_until_reset: Some(prost_types_duration(
                        u64::try_from(ttl_ms.max(0)).unwrap_or(0).div_ceil(1000),
                    )),
                    ..DescriptorStatus::default()
                }
            })
            .collect();
        Ok(RateLimitResponse {
            overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
            statuses,
            ..RateLimitResponse::default()
        })
    }
}

fn prost_types_duration(seconds: u64) -> envoy_types::pb::google::protobuf::Duration {
    envoy_types::pb::google::protobuf::Duration {
        seconds: i64::try_from(seconds).unwrap_or(i64::MAX),
        nanos: 0,
    }
}

#[tonic::async_trait]
impl RateLimitService for RedisRateLimiter {
    async fn should_rate_limit(
        &self,
        request: tonic::Request<RateLimitRequest>,
    ) -> Result<tonic::Response<RateLimitResponse>, tonic::Status> {
        self.check(request.get_ref())
            .await
            .map(tonic::Response::new)
    }
}

/// Serves `service` on `listener` (with client certificates when `tls` is set, like xDS)
/// until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    service: RedisRateLimiter,
    tls: Option<XdsTls>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(addr = ?addr, tls = tls.is_some(), "rate-limit service listening");
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &tls {
        builder = builder.tls_config(
            ServerTlsConfig::new()
                .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
                .client_ca_root(Certificate::from_pem(&tls.client_ca_pem))
                .timeout(Duration::from_secs(10)),
        )?;
    }
    builder
        .add_service(RateLimitServiceServer::new(service))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
        Entry, RateLimitOverride,
    };
    use envoy_types::pb::envoy::r#type::v3::RateLimitUnit as Unit;

    fn descriptor(limit: Option<(u32, Unit)>, hits: Option<u64>) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: vec![
                Entry {
                    key: "limit".into(),
                    value: "g".into(),
                },
                Entry {
                    key: "tool".into(),
                    value: "a:b".into(),
                },
            ],
            limit: limit.map(|(n, unit)| RateLimitOverride {
                requests_per_unit: n,
                unit: unit as i32,
            }),
            hits_addend: hits.map(|value| envoy_types::pb::google::protobuf::UInt64Value { value }),
            ..RateLimitDescriptor::default()
        }
    }

    #[test]
    fn budgets_come_from_the_descriptor() {
        let b = budget("d", &descriptor(Some((5, Unit::Minute)), Some(3)), 0).unwrap();
        assert_eq!(b.key, r#"mcpgw:rl:["d","60","limit","g","tool","a:b"]"#);
        assert_eq!((b.limit, b.window_ms, b.hits), (5, 60_000, 3));
        let b = budget("d", &descriptor(Some((5, Unit::Day)), None), 4).unwrap();
        assert_eq!((b.window_ms, b.hits), (86_400_000, 4), "the request's hits");
        let b = budget("d", &descriptor(Some((5, Unit::Second)), None), 0).unwrap();
        assert_eq!(b.hits, 1);
        assert_eq!(budget("d", &descriptor(None, None), 0), None, "no limit");
        assert_eq!(
            budget("d", &descriptor(Some((5, Unit::Unknown)), None), 0),
            None
        );
    }

    /// The filter's hand-written encoding decodes as the generated types read it.
    #[test]
    fn the_filters_request_is_what_the_generated_types_read() {
        use prost::Message as _;
        let d = mcpgw_core::limits::Descriptor {
            name: "g".into(),
            entries: vec![("limit", "g".into()), ("tool", "a:b".into())],
            requests: 5,
            per_seconds: 60,
            cost: 3,
        };
        let bytes = mcpgw_core::limits::ratelimit::request("edge", &[d]);
        let r = RateLimitRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(r.domain, "edge");
        assert_eq!(
            r.descriptors,
            [descriptor(Some((5, Unit::Minute)), Some(3))]
        );
        // And what the service answers reads back in the filter.
        let answer = RateLimitResponse {
            overall_code: Code::OverLimit as i32,
            statuses: vec![
                DescriptorStatus {
                    code: Code::Ok as i32,
                    ..DescriptorStatus::default()
                },
                DescriptorStatus {
                    code: Code::OverLimit as i32,
                    current_limit: Some(RateLimit {
                        name: "x".into(),
                        requests_per_unit: 5,
                        unit: Unit::Minute as i32,
                    }),
                    limit_remaining: 0,
                    duration_until_reset: Some(prost_types_duration(17)),
                    ..DescriptorStatus::default()
                },
            ],
            ..RateLimitResponse::default()
        };
        let read = mcpgw_core::limits::ratelimit::answer(&answer.encode_to_vec()).unwrap();
        assert!(read.over_limit);
        assert_eq!(read.statuses, [(false, 0), (true, 17)]);
    }
}
