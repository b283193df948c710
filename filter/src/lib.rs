//! The mcpgw proxy-wasm filter: a thin Envoy adapter; every decision is made in `mcpgw-core`.
