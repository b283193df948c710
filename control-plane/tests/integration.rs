//! All integration tests of the control plane, in one binary (one link step).
//! They need PostgreSQL on 127.0.0.1:5432 (database `test`) and, for the reference
//! server, `make deps` (node + @modelcontextprotocol/server-everything).

#![allow(clippy::unwrap_used)]

mod integration {
    pub mod envoy;
    pub mod harness;
    pub mod upstream;

    mod api;
    mod cli;
    mod concurrency;
    mod edge_identity;
    mod edge_xds;
    mod eras;
    mod exposure;
    mod federation;
    mod identity;
    mod k8s;
    mod oidc;
    mod openapi;
    mod pinning;
    mod policies;
    mod ratelimit;
    mod rules;
    mod serving;
    mod store;
    mod token_exchange;
    mod transfer;
    mod upstream_identity;
    mod xds;
}
