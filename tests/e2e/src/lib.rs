//! End-to-end harness for mcpgw: a real Envoy with the filter `.wasm`, real MCP servers
//! (the reference `server-everything`, an in-process `rmcp` server, a Python SDK server),
//! all on 127.0.0.1 with ephemeral ports, every child process killed on drop. Processes,
//! ports, work dirs and Envoy itself come from the shared `mcpgw-harness` crate.

pub mod envoy;
pub mod identity;
pub mod standalone;
pub mod upstream;

pub use mcpgw_harness::{Artifacts, artifacts, init_tls, ports, process, workdir};

pub use envoy::{Envoy, EnvoyConfig};
pub use upstream::everything::ServerEverything;
pub use upstream::guard::GuardService;
pub use upstream::python::{PythonPeer, PythonPeerMode, run_peer_client};
pub use upstream::rmcp::{Gate, RmcpServer, RmcpServerMode, Seen};
