//! End-to-end harness for mcpgw: a real Envoy with the filter `.wasm`, real MCP servers
//! (the reference `server-everything`, an in-process `rmcp` server, a Python SDK server),
//! all on 127.0.0.1 with ephemeral ports, every child process killed on drop.

pub mod artifacts;
pub mod envoy;
pub mod ports;
pub mod process;
pub mod upstream;
pub mod workdir;

pub use artifacts::Artifacts;
pub use envoy::{Envoy, EnvoyConfig};
pub use upstream::everything::ServerEverything;
pub use upstream::python::{PythonPeer, PythonPeerMode, run_peer_client};
pub use upstream::rmcp::{RmcpServer, RmcpServerMode, Seen};

/// Installs rustls' ring provider for this process (idempotent). Needed before building any
/// HTTP client when the workspace build unifies reqwest with `rustls-no-provider`; a no-op
/// otherwise.
pub fn init_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
