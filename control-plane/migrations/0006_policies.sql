-- What the edge enforces besides the catalog, managed through /issuers, /policies, /limits
-- and /plugins: one row per item, its settings as JSON in the schema of the filter
-- snapshot's own types (mcpgw_core::snapshot::auth::Issuer, auth::ServerAuth,
-- limits::ServerLimits, plugins::Plugin), checked with the filter's own validation before
-- they are written.
--   kind 'issuer': name = the issuer's name (its jwt_authn provider name)
--   kind 'policy': name = the virtual server id
--   kind 'limits': name = the virtual server id, or 'default' (every server without its own)
--   kind 'plugin': name = the plugin name
CREATE TABLE edge_policies (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (kind, name)
);
