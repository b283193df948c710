-- Identity and access: users, teams (a personal one per user, and the `global` team that owns
-- everything registered before teams existed), role grants, invitations, API tokens (only a
-- hash of each secret), the control plane's JWT signing keys (private parts sealed), revoked
-- session JWTs, login failures per email, and the owner and visibility of registry items.
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    full_name TEXT,
    password_hash TEXT,
    active BIGINT NOT NULL DEFAULT 1,
    password_changed_at TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE teams (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT,
    personal BIGINT NOT NULL DEFAULT 0,
    created_by TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
INSERT INTO teams (id, name, description, personal, created_at, updated_at)
VALUES ('global', 'global', 'Owns what was registered before teams existed', 0,
        '1970-01-01T00:00:00.000Z', '1970-01-01T00:00:00.000Z');

-- A role in a team (team_admin, developer or viewer); a personal team has its user as team_admin.
CREATE TABLE team_members (
    team_id TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX team_members_user ON team_members (user_id);

-- Roles at global scope (platform_admin, or any role over every team).
CREATE TABLE user_roles (
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (user_id, role)
);

CREATE TABLE team_invitations (
    id TEXT PRIMARY KEY,
    team_id TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    email TEXT NOT NULL,
    role TEXT NOT NULL,
    invited_by TEXT,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    UNIQUE (team_id, email)
);

CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    scopes TEXT NOT NULL,
    expires_at TEXT,
    revoked_at TEXT,
    last_used_at TEXT,
    created_at TEXT NOT NULL,
    UNIQUE (user_id, name)
);

CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    alg TEXT NOT NULL,
    sealed_key TEXT,
    public_jwk TEXT,
    created_at TEXT NOT NULL,
    retired_at TEXT
);

CREATE TABLE revoked_jwts (
    jti TEXT PRIMARY KEY,
    expires_at TEXT NOT NULL
);

CREATE TABLE login_failures (
    email TEXT PRIMARY KEY,
    failures BIGINT NOT NULL DEFAULT 0,
    locked_until TEXT,
    updated_at TEXT NOT NULL
);

-- Owner and visibility (private, team, public) of registry items. Discovered catalog items
-- (gateway_id set) follow their gateway; these columns count for hand-made ones.
ALTER TABLE gateways ADD COLUMN owner_team TEXT NOT NULL DEFAULT 'global';
ALTER TABLE gateways ADD COLUMN owner_user TEXT;
ALTER TABLE gateways ADD COLUMN visibility TEXT NOT NULL DEFAULT 'team';
ALTER TABLE tools ADD COLUMN owner_team TEXT NOT NULL DEFAULT 'global';
ALTER TABLE tools ADD COLUMN owner_user TEXT;
ALTER TABLE tools ADD COLUMN visibility TEXT NOT NULL DEFAULT 'team';
ALTER TABLE resources ADD COLUMN owner_team TEXT NOT NULL DEFAULT 'global';
ALTER TABLE resources ADD COLUMN owner_user TEXT;
ALTER TABLE resources ADD COLUMN visibility TEXT NOT NULL DEFAULT 'team';
ALTER TABLE prompts ADD COLUMN owner_team TEXT NOT NULL DEFAULT 'global';
ALTER TABLE prompts ADD COLUMN owner_user TEXT;
ALTER TABLE prompts ADD COLUMN visibility TEXT NOT NULL DEFAULT 'team';
ALTER TABLE servers ADD COLUMN owner_team TEXT NOT NULL DEFAULT 'global';
ALTER TABLE servers ADD COLUMN owner_user TEXT;
ALTER TABLE servers ADD COLUMN visibility TEXT NOT NULL DEFAULT 'team';
