-- Login through OpenID Connect providers: pending logins (one row per authorization request or
-- CLI handoff code, single use, minutes long; state and code are stored as hashes), the link of
-- a provider's subject to a user, and the team memberships and global roles a provider's group mapping gave (so a
-- later login can take back what a removed group gave, and never what was granted by hand).
CREATE TABLE oidc_logins (
    login_key TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    nonce TEXT NOT NULL,
    code_verifier TEXT NOT NULL,
    return_to TEXT,
    client_challenge TEXT,
    user_id TEXT REFERENCES users(id) ON DELETE CASCADE,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);

CREATE TABLE oidc_identities (
    provider TEXT NOT NULL,
    subject TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at TEXT NOT NULL,
    last_login_at TEXT NOT NULL,
    PRIMARY KEY (provider, subject)
);
CREATE INDEX oidc_identities_user ON oidc_identities (user_id);

-- team_id '' is a role at global scope.
CREATE TABLE oidc_mapped_grants (
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    provider TEXT NOT NULL,
    team_id TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (user_id, provider, team_id)
);
