-- Tool-definition pinning (issue 14): per-gateway policy, the approved definition of each
-- tool (with its hash), and the changes discovery held for review.

CREATE TABLE gateway_pin_policies (
    gateway_id TEXT PRIMARY KEY REFERENCES gateways(id) ON DELETE CASCADE,
    on_change TEXT NOT NULL DEFAULT 'serve-approved',
    new_tools TEXT NOT NULL DEFAULT 'auto-approve',
    first_discovery TEXT NOT NULL DEFAULT 'approve',
    -- 1 once a discovery has been merged under pinning: later tools are "new tools".
    baselined BIGINT NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL
);

CREATE TABLE tool_pins (
    gateway_id TEXT NOT NULL REFERENCES gateways(id) ON DELETE CASCADE,
    original_name TEXT NOT NULL,
    hash TEXT NOT NULL,
    -- The approved item: {"description": ..., "spec": {...}} as the catalog stores them.
    item TEXT NOT NULL,
    -- 1 while a change is pending under the `withhold` policy: left out of snapshots.
    withheld BIGINT NOT NULL DEFAULT 0,
    approved_at TEXT NOT NULL,
    approved_by TEXT,
    PRIMARY KEY (gateway_id, original_name)
);

CREATE TABLE tool_changes (
    id TEXT PRIMARY KEY,
    gateway_id TEXT NOT NULL REFERENCES gateways(id) ON DELETE CASCADE,
    original_name TEXT NOT NULL,
    kind TEXT NOT NULL,
    old_hash TEXT,
    old_item TEXT,
    new_hash TEXT NOT NULL,
    new_item TEXT NOT NULL,
    findings TEXT NOT NULL DEFAULT '[]',
    status TEXT NOT NULL,
    detected_at TEXT NOT NULL,
    decided_at TEXT,
    decided_by TEXT
);

CREATE INDEX tool_changes_by_gateway ON tool_changes (gateway_id, status);
