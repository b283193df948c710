//! What every Envoy runs, derived from the registry: the filter's
//! [`Snapshot`](mcpgw_core::snapshot::Snapshot) turned into
//! the xDS resources of one MCP listener, and the task that keeps them current.
//!
//! The translation ([`resources`]) is pure: a snapshot, how the edge reaches each of its
//! upstreams ([`EdgeUpstream`]: checked addresses, path, credentials) and a few
//! [`EdgeSettings`] in, a [`ResourceSet`](crate::xds::ResourceSet) out — the same for every
//! node. It yields:
//!
//! - Listener [`LISTENER`]: a connection limit, then an HTTP connection manager whose
//!   routes come over RDS and whose mcpgw filter comes over ECDS, then the router. Before
//!   any filter runs, the route header, the relay's headers ([`INTERNAL_HEADERS`]) and the
//!   verified-token header ([`IDENTITY_HEADERS`]) are stripped from the client's request:
//!   only the filter may pick a cluster, only the relay route speaks for the edge, only
//!   `jwt_authn` vouches for a token. Envoy's `jwt_authn` runs before the mcpgw filter,
//!   its configuration (the issuers and their keys) over ECDS too. Header, request and
//!   idle timeouts.
//! - RouteConfiguration [`ROUTES`]: the route header present → that cluster (GET streams
//!   without a deadline but with an idle limit, everything else with a deadline); the relay
//!   route adds the relay's secret and the client's address; anything else the filter let
//!   through unrouted → 404 with a JSON-RPC error.
//! - One Cluster per upstream gateway: static endpoints (the addresses the control plane
//!   resolved and checked, [`resolve`](checked_addresses)), TLS on the name, explicit
//!   circuit breakers, and upstream HTTP filters that replace the client's credentials
//!   with the gateway's own ([`upstream_access`]) on every request, routed or dispatched
//!   by the filter.
//! - TypedExtensionConfig [`FILTER`]: the wasm filter, its plugin configuration the snapshot
//!   JSON. Its `vm_config` never changes, so a new catalog re-runs `on_configure` in the
//!   running VM instead of starting a new one. No secret is in it. The module is a file on
//!   the Envoy's host, or a URL with its sha256 ([`RemoteModule`]) that Envoy downloads
//!   through the cluster [`WASM_CLUSTER`] (sent too) and runs only if the digest matches.
//! - TypedExtensionConfig [`JWT_FILTER`]: `jwt_authn` with one provider per issuer with keys
//!   ([`jwt_authn`]), so a key rotation reaches kept-alive connections.
//!
//! Upstream clusters are named by [`ClusterNaming`]: the control plane's own names, or
//! Istio's `outbound|PORT||HOST`, so that an Istio gateway (which takes only the filter's
//! configuration from here, manifests/istio) routes to the clusters istiod gives it.
//!
//! [`Publisher`] rebuilds the snapshot after every registry change (debounced), translates
//! it and publishes the result to the xDS server; a failed build is logged and counted and
//! the last good set keeps being served (none before the first: xDS then answers nothing).

#![warn(missing_docs)]

mod issuers;
mod jwt;
mod publish;
mod resolve;
mod translate;
mod upstream;

pub use issuers::{
    IssuerKeys, KeyError, MIN_REFRESH_INTERVAL, REFRESH_INTERVAL, RefreshError, Refreshed,
    fetch_jwks, fetch_keys, key_client, max_age, refresh_interval,
};
pub use jwt::{JWT_CACHE_SIZE, JWT_FILTER, PAYLOAD_HEADER, jwt_authn, jwt_authn_filter};
pub use publish::{Built, DEBOUNCE, Edge, EdgeInputs, PublishError, Publisher, record};
pub use resolve::{
    AddressError, EdgeResolver, RESOLVE_TIMEOUT, Resolver, SystemResolver, check_address,
    checked_addresses,
};
pub use translate::*;
pub use upstream::{
    IDENTITY_ISSUER, Secret, SecretPair, TokenEndpoint, UpstreamAccess, UpstreamTarget,
    identity_header, token_cluster_name, upstream_access,
};

/// The xDS listener's TLS, read from the files of `tls` (PEM): the control plane's
/// certificate and key, and the CA that Envoys' client certificates must chain to.
pub fn xds_tls(tls: &crate::config::ServerTls) -> anyhow::Result<crate::xds::XdsTls> {
    use anyhow::Context as _;
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))
    };
    Ok(crate::xds::XdsTls {
        cert_pem: read("TLS certificate (tls_cert)", &tls.cert)?,
        key_pem: read("TLS key (tls_key)", &tls.key)?,
        client_ca_pem: read("client CA bundle (tls_client_ca)", &tls.client_ca)?,
    })
}

#[cfg(test)]
mod tests;
