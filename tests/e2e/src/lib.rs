//! End-to-end harness for mcpgw: a real Envoy with the filter `.wasm`, real MCP servers
//! (the reference `server-everything` and an in-process `rmcp` server), all on 127.0.0.1
//! with ephemeral ports, every child process killed on drop.

pub mod artifacts;
pub mod envoy;
pub mod ports;
pub mod process;
pub mod upstream;
pub mod workdir;

pub use artifacts::Artifacts;
pub use envoy::{Envoy, EnvoyConfig};
pub use upstream::everything::ServerEverything;
pub use upstream::rmcp::{RmcpServer, RmcpServerMode};
