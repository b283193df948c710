//! Host-independent logic of the mcpgw MCP gateway: everything the Envoy filter decides,
//! as plain functions that compile natively and to `wasm32-wasip1`.

pub mod snapshot;
