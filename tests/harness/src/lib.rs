//! The harness the end-to-end tests, the benchmarks and the control plane's integration
//! tests share: where Envoy, the filter and the peers are ([`Artifacts`]), ports and work
//! dirs, child processes killed on drop ([`ChildGuard`]), Envoy bootstraps (static or ADS)
//! and a real Envoy watched through its admin interface ([`Envoy`]).

pub mod admin;
pub mod artifacts;
pub mod bootstrap;
pub mod envoy;
pub mod pki;
pub mod ports;
pub mod process;
pub mod workdir;

pub use artifacts::Artifacts;
pub use envoy::{Envoy, Launch};
pub use process::ChildGuard;
pub use workdir::Workdir;

/// Installs rustls' ring provider for this process (idempotent). Needed before building any
/// HTTP client when the workspace build unifies reqwest with `rustls-no-provider`; a no-op
/// otherwise.
pub fn init_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
