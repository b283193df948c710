//! `make bench`: Envoy with no filter, the native MCP filter, a wasm floor filter and the
//! mcpgw filter, measured side by side against the same fast upstream in one run; and, in
//! the same rounds, a virtual server served by the mcpgw filter (`tools/list` answered at
//! the edge, `tools/call` routed) against plain Envoy forwarding the same requests.
//!
//! Each variant is its own Envoy (`--concurrency 1`, pinned to one core when `taskset`
//! exists); the upstream and the closed-loop load generator share the other core. Rounds
//! alternate the variants, so drift on a shared machine (other builds, thermal) hits all
//! of them alike; the table reports ratios to plain Envoy, which are what carries over to
//! another machine.

pub mod catalog;
pub mod envoy;
pub mod identity;
pub mod instructions;
pub mod load;
pub mod machine;
pub mod policy_set;
pub mod report;
pub mod rounds;
pub mod settings;
pub mod upstream;
pub mod variant;
