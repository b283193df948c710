//! End-to-end tests of the mcpgw filter: a real Envoy (`MCPGW_ENVOY`) running the freshly
//! built filter (`MCPGW_WASM`) in front of real MCP servers, driven by real MCP clients and
//! raw HTTP. One test binary; the cases live in `cases/`.

mod cases {
    pub mod support;

    mod bad_input;
    mod bootstrap;
    pub mod clients;
    mod config;
    mod edge;
    mod era_bad_input;
    mod guard;
    mod guard_external;
    mod hardening;
    mod hostile;
    mod identity;
    mod limits;
    mod matrix;
    mod metrics;
    mod policy;
    mod routing;
    mod session;
    mod upstream_identity;
}
