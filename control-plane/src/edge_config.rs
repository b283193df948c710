//! What every Envoy runs, derived from the registry: the filter's
//! [`Snapshot`](mcpgw_core::snapshot::Snapshot) turned into
//! the xDS resources of one MCP listener, and the task that keeps them current.
//!
//! The translation ([`resources`]) is pure: a snapshot, the network endpoint of each of its
//! upstreams and a few [`EdgeSettings`] in, a [`ResourceSet`] out — the same for every node.
//! It yields:
//!
//! - Listener [`LISTENER`]: an HTTP connection manager whose routes come over RDS and whose
//!   mcpgw filter comes over ECDS, then the router. Before any filter runs, the route
//!   header is stripped from the client's request: only the filter may pick a cluster.
//! - RouteConfiguration [`ROUTES`]: the route header present → that cluster; anything else
//!   the filter let through unrouted → 404 with a JSON-RPC error.
//! - One Cluster per upstream gateway.
//! - TypedExtensionConfig [`FILTER`]: the wasm filter, its plugin configuration the snapshot
//!   JSON. Its `vm_config` never changes, so a new catalog re-runs `on_configure` in the
//!   running VM instead of starting a new one.
//!
//! [`Publisher`] rebuilds the snapshot after every registry change (debounced), translates
//! it and publishes the result to the xDS server; a failed build is logged and counted and
//! the last good set keeps being served.

#![warn(missing_docs)]

mod publish;
mod translate;

pub use publish::{Edge, PublishError, Publisher, record};
pub use translate::{
    ControlPlaneTls, DEFAULT_ENVOY_LISTEN, DEFAULT_FILTER_WASM, DEFAULT_UPSTREAM_CA_FILE,
    EdgeError, EdgeSettings, Endpoints, FILTER, LISTENER, RELAY_CLUSTER, ROUTES, UpstreamEndpoint,
    endpoints, resources,
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
