//! The addresses Envoys connect to for each upstream: resolved and checked by the control
//! plane with the SSRF policy, then given to Envoy as static endpoints.
//!
//! Envoy resolving the name itself (`STRICT_DNS`) would re-resolve every few seconds
//! past the guard: a name that answered a public address when it was registered could
//! answer 127.0.0.1 or 169.254.169.254 a minute later (DNS rebinding). So the control
//! plane resolves, checks every address, and re-does both on an interval
//! ([`EdgeSettings::resolve_interval`](super::EdgeSettings::resolve_interval)); a change
//! is a new resource set. TLS (SNI, certificate names) and `:authority` stay on the name.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::config::SsrfPolicy;

/// How long one name may take to resolve.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Resolves host names. A trait so tests can answer what a rebinding attacker would.
pub trait Resolver: Send + Sync + 'static {
    /// The addresses of `host` (a name, never an IP literal).
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> BoxFuture<'a, std::io::Result<Vec<IpAddr>>>;
}

/// The system's resolver (`getaddrinfo` through Tokio).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> BoxFuture<'a, std::io::Result<Vec<IpAddr>>> {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host, port)).await?;
            Ok(addrs.map(|a: SocketAddr| a.ip()).collect())
        })
    }
}

/// The resolver the publisher uses, as a setting: compared by identity.
#[derive(Clone)]
pub struct EdgeResolver(pub Arc<dyn Resolver>);

impl EdgeResolver {
    /// Wraps a resolver.
    pub fn new(resolver: impl Resolver) -> EdgeResolver {
        EdgeResolver(Arc::new(resolver))
    }
}

/// The one system resolver every default shares (so two default settings compare equal).
static SYSTEM: std::sync::LazyLock<Arc<dyn Resolver>> =
    std::sync::LazyLock::new(|| Arc::new(SystemResolver));

impl Default for EdgeResolver {
    fn default() -> Self {
        EdgeResolver(SYSTEM.clone())
    }
}

impl fmt::Debug for EdgeResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EdgeResolver(..)")
    }
}

impl PartialEq for EdgeResolver {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for EdgeResolver {}

/// Why an upstream has no address Envoy may use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The name does not resolve (or not in time), and no earlier answer is known.
    #[error("{host} does not resolve: {reason}")]
    Unresolvable {
        /// The name.
        host: String,
        /// Why.
        reason: String,
    },
    /// The name resolves to an address the SSRF policy forbids.
    #[error("{0}")]
    Forbidden(String),
}

/// Checks one address with the federation's SSRF policy.
///
/// The guard's public entry point takes a URL; given an IP literal it classifies the
/// address without resolving anything, so the control plane's one classifier decides for
/// the edge too. (Its error text names the address and the flag that would allow it.)
pub async fn check_address(ip: IpAddr, policy: SsrfPolicy) -> Result<(), AddressError> {
    let url = match ip {
        IpAddr::V4(v4) => format!("http://{v4}/"),
        IpAddr::V6(v6) => format!("http://[{v6}]/"),
    };
    let url = crate::model::UpstreamUrl::parse(&url)
        .map_err(|e| AddressError::Forbidden(e.to_string()))?;
    crate::federation::check_upstream_url(&url, policy, RESOLVE_TIMEOUT)
        .await
        .map(|_| ())
        .map_err(|e| AddressError::Forbidden(e.to_string()))
}

/// The checked addresses of `host` (an IP literal is its own address): every address
/// must pass the policy, else none is used.
pub async fn checked_addresses(
    resolver: &dyn Resolver,
    host: &str,
    port: u16,
    policy: SsrfPolicy,
) -> Result<Vec<IpAddr>, AddressError> {
    let mut addrs = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => match tokio::time::timeout(RESOLVE_TIMEOUT, resolver.resolve(host, port)).await {
            Err(_) => {
                return Err(AddressError::Unresolvable {
                    host: host.to_owned(),
                    reason: format!("no answer within {RESOLVE_TIMEOUT:?}"),
                });
            }
            Ok(Err(e)) => {
                return Err(AddressError::Unresolvable {
                    host: host.to_owned(),
                    reason: e.to_string(),
                });
            }
            Ok(Ok(a)) => a,
        },
    };
    if addrs.is_empty() {
        return Err(AddressError::Unresolvable {
            host: host.to_owned(),
            reason: "no addresses".into(),
        });
    }
    for ip in &addrs {
        check_address(*ip, policy).await.map_err(|e| match e {
            AddressError::Forbidden(reason) => {
                AddressError::Forbidden(format!("{host} resolves to {ip}: {reason}"))
            }
            other => other,
        })?;
    }
    addrs.sort();
    addrs.dedup();
    Ok(addrs)
}
