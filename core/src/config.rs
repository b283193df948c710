//! The filter's configuration compiled once, in `on_configure`: the [`Snapshot`] validated,
//! its policy turned into lookup sets ([`Gate`]), its catalog indexed ([`Edge`]), with the
//! session key decoded, and its guardrail plugins compiled ([`Guard`]). Every request reads
//! this; nothing in it is parsed per request.

use crate::auth::Access;
use crate::edge::Edge;
use crate::guard::Guard;
use crate::limits::Limiter;
use crate::policy::Gate;
use crate::snapshot::{ConfigError, Snapshot};

/// The compiled configuration every request of a worker shares.
pub struct Config {
    /// The snapshot's version label (logged, so an operator can tell which one runs).
    pub version: String,
    /// Schema version of the snapshot it was compiled from.
    pub schema: u32,
    /// The request policy.
    pub gate: Gate,
    /// The virtual servers, their upstreams, the session key and the relay.
    pub edge: Edge,
    /// The guardrail plugins.
    pub guard: Guard,
    /// The request limits.
    pub limits: Limiter,
    /// Identity: token checks, rules, metadata of the servers that have `auth`.
    pub access: Access,
    /// Some upstream's identity is a token exchange: requests keep the client's token.
    pub exchanges_tokens: bool,
}

impl Config {
    /// Parses and compiles a configuration as Envoy delivers it (JSON or compressed JSON;
    /// empty means the documented defaults).
    pub fn from_bytes(bytes: &[u8]) -> Result<Config, ConfigError> {
        // `from_config` validates; compiling does not need to again.
        Snapshot::from_config(bytes).and_then(Config::compile)
    }

    /// Compiles a validated snapshot: the plugins (with the catalog's tool schemas, before
    /// the catalog moves into the [`Edge`]), then the rest.
    fn compile(mut snapshot: Snapshot) -> Result<Config, ConfigError> {
        let guard = Guard::try_from(&snapshot)?;
        snapshot.plugins = Vec::new();
        Ok(Config::assemble(snapshot, guard))
    }

    fn assemble(mut snapshot: Snapshot, guard: Guard) -> Config {
        // Before the catalog moves into the edge: the servers' `auth` is read from it.
        let access = Access::new(&snapshot);
        let exchanges_tokens = snapshot.upstreams.values().any(|u| {
            matches!(
                u.identity,
                crate::upstream_identity::UpstreamIdentity::TokenExchange(_)
            )
        });
        let edge = Edge::take(&mut snapshot);
        let limits = Limiter::new(&snapshot.limits);
        Config {
            version: snapshot.version.clone(),
            schema: snapshot.schema,
            gate: Gate::new(snapshot),
            edge,
            guard,
            limits,
            access,
            exchanges_tokens,
        }
    }

    /// Number of virtual servers.
    pub fn servers(&self) -> usize {
        self.edge.server_count()
    }

    /// Number of catalog tools over all virtual servers.
    pub fn tools(&self) -> usize {
        self.edge.tool_count()
    }
}

impl TryFrom<Snapshot> for Config {
    type Error = ConfigError;

    fn try_from(snapshot: Snapshot) -> Result<Config, ConfigError> {
        snapshot.validate()?;
        Config::compile(snapshot)
    }
}

impl Default for Config {
    /// The documented defaults: what an empty configuration means.
    fn default() -> Config {
        Config::assemble(Snapshot::default(), Guard::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_compile_and_invalid_snapshots_do_not() {
        let c = Config::default();
        assert_eq!((c.servers(), c.tools()), (0, 0));
        assert_eq!(
            c.gate.max_body_bytes(),
            crate::snapshot::DEFAULT_MAX_BODY_BYTES
        );
        assert!(Config::from_bytes(b"").is_ok());
        assert!(matches!(
            Config::from_bytes(br#"{"policy":{"max_body_bytes":0}}"#),
            Err(ConfigError::FieldInvalid { field, .. }) if field == "policy.max_body_bytes"
        ));
        let mut bad = Snapshot::default();
        bad.policy.list_page_size = 0;
        assert!(Config::try_from(bad).is_err(), "TryFrom validates");
    }
}
