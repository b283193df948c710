//! Host-independent logic of the mcpgw MCP gateway: everything the Envoy filter decides,
//! as plain functions that compile natively and to `wasm32-wasip1`.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod auth;
pub mod catalog;
pub mod config;
pub mod edge;
pub mod exchange;
pub mod fasthash;
pub mod guard;
pub mod header_map;
pub mod jsonrpc;
pub mod limits;
pub mod mcp;
pub mod metrics;
pub mod mirror;
pub mod origin;
pub mod policy;
pub mod reason;
pub mod session;
pub mod snapshot;
pub mod sniff;
pub mod sse;
pub mod subscription;
pub mod trace;
pub mod upstream_identity;
