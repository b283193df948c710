//! Upstream MCP servers the gateway sits in front of.

pub mod everything;
pub mod guard;
pub mod python;
pub mod rmcp;
