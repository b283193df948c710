-- mcpgw registry, schema 1 (SQLite and PostgreSQL alike). Booleans are 0/1 BIGINTs and timestamps RFC 3339
-- text so that the same queries run unchanged on both backends through sqlx's Any driver.
CREATE TABLE registry_meta (
    id BIGINT PRIMARY KEY,
    version BIGINT NOT NULL
);
INSERT INTO registry_meta (id, version) VALUES (1, 0);

CREATE TABLE gateways (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    url TEXT NOT NULL,
    transport TEXT NOT NULL,
    description TEXT,
    tags TEXT NOT NULL DEFAULT '[]',
    enabled BIGINT NOT NULL DEFAULT 1,
    reachable BIGINT NOT NULL DEFAULT 1,
    auth_type TEXT NOT NULL DEFAULT 'none',
    auth_sealed TEXT,
    capabilities TEXT,
    server_info TEXT,
    protocol_version TEXT,
    last_seen TEXT,
    last_error TEXT,
    consecutive_failures BIGINT NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    version BIGINT NOT NULL DEFAULT 1
);

CREATE TABLE tools (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    original_name TEXT NOT NULL,
    gateway_id TEXT REFERENCES gateways(id) ON DELETE CASCADE,
    uri TEXT,
    description TEXT,
    spec TEXT NOT NULL DEFAULT '{}',
    tags TEXT NOT NULL DEFAULT '[]',
    enabled BIGINT NOT NULL DEFAULT 1,
    reachable BIGINT NOT NULL DEFAULT 1,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    version BIGINT NOT NULL DEFAULT 1
);
CREATE INDEX tools_gateway ON tools (gateway_id);

CREATE TABLE resources (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    original_name TEXT NOT NULL,
    gateway_id TEXT REFERENCES gateways(id) ON DELETE CASCADE,
    uri TEXT,
    description TEXT,
    spec TEXT NOT NULL DEFAULT '{}',
    tags TEXT NOT NULL DEFAULT '[]',
    enabled BIGINT NOT NULL DEFAULT 1,
    reachable BIGINT NOT NULL DEFAULT 1,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    version BIGINT NOT NULL DEFAULT 1
);
CREATE INDEX resources_gateway ON resources (gateway_id);

CREATE TABLE prompts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    original_name TEXT NOT NULL,
    gateway_id TEXT REFERENCES gateways(id) ON DELETE CASCADE,
    uri TEXT,
    description TEXT,
    spec TEXT NOT NULL DEFAULT '{}',
    tags TEXT NOT NULL DEFAULT '[]',
    enabled BIGINT NOT NULL DEFAULT 1,
    reachable BIGINT NOT NULL DEFAULT 1,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    version BIGINT NOT NULL DEFAULT 1
);
CREATE INDEX prompts_gateway ON prompts (gateway_id);

CREATE TABLE servers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT,
    icon TEXT,
    tags TEXT NOT NULL DEFAULT '[]',
    enabled BIGINT NOT NULL DEFAULT 1,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    version BIGINT NOT NULL DEFAULT 1
);

CREATE TABLE server_tools (
    server_id TEXT NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    item_id TEXT NOT NULL REFERENCES tools(id) ON DELETE CASCADE,
    PRIMARY KEY (server_id, item_id)
);
CREATE TABLE server_resources (
    server_id TEXT NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    item_id TEXT NOT NULL REFERENCES resources(id) ON DELETE CASCADE,
    PRIMARY KEY (server_id, item_id)
);
CREATE TABLE server_prompts (
    server_id TEXT NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    item_id TEXT NOT NULL REFERENCES prompts(id) ON DELETE CASCADE,
    PRIMARY KEY (server_id, item_id)
);
