//! Identity and access on the admin API: who is asking ([`Auth::authenticate`]), and what
//! they may do ([`rbac`]).
//!
//! Two credentials are accepted, both as `Authorization: Bearer …`:
//! - **session tokens**: JWTs this control plane signs at `POST /auth/login` (email and
//!   password), ES256 by default ([`jwt`]); the signing key rotates by `kid`, the previous
//!   one still verifying for a grace period; the public keys are at
//!   `/.well-known/jwks.json`;
//! - **API tokens** for machines ([`token`]): opaque, named, scoped, expiring, revocable;
//!   only their hash is stored.
//!
//! Sessions are also signed after a login through an OpenID provider ([`oidc`]).
//!
//! Rights are read from the store on every request (roles, memberships, token scopes and
//! revocation), so a change counts from the next request.

pub mod jwt;
pub mod oidc;
pub mod password;
pub mod rbac;
pub mod token;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, RwLock};

use crate::crypto::SecretBox;
use crate::store::identity::{KeyRecord, TokenRecord, User};
use crate::store::{Store, StoreError};
use jwt::{Algorithm, Claims, JwtError};
use password::{Hasher, PasswordParams, Verified};
use rbac::{Credential, Principal, Role};
use token::EmptyScopes;

/// The audience of session tokens.
pub const AUDIENCE: &str = "mcpgw-api";
/// HKDF label of the key that seals stored ES256 private keys.
const SIGNING_KEYS_LABEL: &str = "mcpgw/jwt-signing-keys/v1";
/// HKDF label prefix of HS256 keys (the `kid` follows).
const HS256_LABEL: &str = "mcpgw/jwt-hs256/v1/";
/// Clock skew tolerated on `exp`, `nbf` and `iat`.
const LEEWAY_SECS: i64 = 30;
/// Name of the token a `--dev` start writes for its admin.
pub const DEV_TOKEN_NAME: &str = "dev-admin";
/// Email of the admin a `--dev` start creates when none is configured.
pub const DEV_ADMIN_EMAIL: &str = "admin@mcpgw.local";

/// How session tokens are made.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// Signing algorithm.
    pub algorithm: Algorithm,
    /// For RS256: the PKCS#8 PEM file of the private key.
    pub rsa_key_file: Option<PathBuf>,
    /// `iss`.
    pub issuer: String,
    /// Lifetime of a session token.
    pub session_ttl: Duration,
    /// How long a retired key still verifies (at least `session_ttl`).
    pub key_grace: Duration,
}

impl Default for JwtSettings {
    fn default() -> Self {
        JwtSettings {
            algorithm: Algorithm::Es256,
            rsa_key_file: None,
            issuer: "mcpgw".into(),
            session_ttl: Duration::from_secs(8 * 3600),
            key_grace: Duration::from_secs(24 * 3600),
        }
    }
}

/// The first platform admin, from the environment.
#[derive(Clone)]
pub struct BootstrapAdmin {
    /// Email.
    pub email: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for BootstrapAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapAdmin")
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

/// Settings of authentication and authorization.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// `/metrics` without a credential.
    pub metrics_open: bool,
    /// Session tokens.
    pub jwt: JwtSettings,
    /// Argon2id parameters of new password hashes.
    pub password: PasswordParams,
    /// Failed logins in a row before an email is locked out.
    pub max_login_failures: u32,
    /// How long a lockout lasts.
    pub lockout: Duration,
    /// What an empty token scope list means.
    pub empty_scopes: EmptyScopes,
    /// The admin to create at start if missing.
    pub bootstrap: Option<BootstrapAdmin>,
    /// Dev mode: mint an admin API token at start (and write it here, 0600, if set).
    pub dev_token: Option<Option<PathBuf>>,
    /// OpenID providers users may log in through, by name ([`oidc`]).
    pub oidc_providers: std::collections::BTreeMap<String, oidc::ProviderConfig>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            metrics_open: false,
            jwt: JwtSettings::default(),
            password: PasswordParams::default(),
            max_login_failures: 5,
            lockout: Duration::from_secs(900),
            empty_scopes: EmptyScopes::Deny,
            bootstrap: None,
            dev_token: None,
            oidc_providers: Default::default(),
        }
    }
}

/// Why a request or a login was refused. The client learns the class, never the detail.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No credential.
    #[error("no credential")]
    Missing,
    /// A credential that is malformed, expired, revoked, or of a disabled user.
    #[error("invalid credential: {0}")]
    Invalid(String),
    /// Wrong email or password.
    #[error("wrong email or password")]
    BadLogin,
    /// Too many failed logins.
    #[error("locked until {0}")]
    Locked(chrono::DateTime<chrono::Utc>),
    /// An API token used from an address outside its ranges.
    #[error("token not accepted from this address")]
    Address,
    /// Bad input.
    #[error("{}: {}", .0.field, .0.reason)]
    Field(crate::model::FieldInvalid),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A key could not be made or used.
    #[error("signing keys: {0}")]
    Keys(String),
    /// The request conflicts with the configuration.
    #[error("{0}")]
    Conflict(String),
}

impl From<crate::model::FieldInvalid> for AuthError {
    fn from(e: crate::model::FieldInvalid) -> Self {
        AuthError::Field(e)
    }
}

/// A signed-in session.
#[derive(Debug, Clone)]
pub struct Session {
    /// The JWT.
    pub token: String,
    /// Its expiry (seconds since the epoch).
    pub expires_at: i64,
    /// The user.
    pub user: User,
}

struct Keyring {
    current: Arc<jwt::Key>,
    accepted: HashMap<String, Arc<jwt::Key>>,
    /// When it was read from the store.
    loaded: std::time::Instant,
}

/// How old the keyring may be when a session is signed: another replica may have rotated,
/// and signing with a retired key would cut the session short.
const KEYRING_MAX_AGE: Duration = Duration::from_secs(60);

/// The authentication service: keys, password hasher, lockout, token checks.
pub struct Auth {
    store: Store,
    secrets: SecretBox,
    settings: AuthSettings,
    hasher: Hasher,
    keys: RwLock<Keyring>,
    /// When the keyring was last reloaded for an unknown `kid` (another replica rotated).
    reloaded: Mutex<std::time::Instant>,
    /// Login through OpenID providers.
    oidc: oidc::Oidc,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// Emails are compared in lower case.
pub fn normalize_email(raw: &str) -> Result<String, crate::model::FieldInvalid> {
    let e = raw.trim().to_lowercase();
    let ok = e.len() <= 254
        && e.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && !domain.is_empty() && !domain.contains('@')
        })
        && !e.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(e)
    } else {
        Err(crate::model::FieldInvalid::new(
            "email",
            "must be an email address (local@domain, at most 254 characters)",
        ))
    }
}

impl Auth {
    /// Loads (or makes) the signing keys, creates the bootstrap admin if missing, and in dev
    /// mode mints an admin API token (returned, and written to its file if one is set).
    pub async fn start(
        store: Store,
        secrets: SecretBox,
        settings: AuthSettings,
    ) -> Result<(Arc<Auth>, Option<String>), AuthError> {
        let hasher = Hasher::new(settings.password);
        let keys = load_keyring(&store, &secrets, &settings.jwt, false).await?;
        let oidc = oidc::Oidc::new(&settings.oidc_providers).map_err(AuthError::Keys)?;
        let auth = Arc::new(Auth {
            store,
            secrets,
            settings,
            hasher,
            keys: RwLock::new(keys),
            reloaded: Mutex::new(std::time::Instant::now()),
            oidc,
        });
        if let Some(b) = auth.settings.bootstrap.clone() {
            auth.bootstrap_admin(&b).await?;
        }
        let dev_token = match auth.settings.dev_token.clone() {
            Some(file) => Some(auth.dev_admin_token(file.as_deref()).await?),
            None => None,
        };
        if auth.store.count_platform_admins().await? == 0 {
            tracing::warn!(
                "no platform admin exists: the admin API refuses everyone until one is created \
                 (MCPGW_ADMIN_EMAIL with MCPGW_ADMIN_PASSWORD_FILE, or `mcpgw admin create`)"
            );
        }
        Ok((auth, dev_token))
    }

    /// The settings.
    pub fn settings(&self) -> &AuthSettings {
        &self.settings
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The password hasher.
    pub fn hasher(&self) -> &Hasher {
        &self.hasher
    }

    /// Login through OpenID providers.
    pub fn oidc(&self) -> &oidc::Oidc {
        &self.oidc
    }

    async fn bootstrap_admin(&self, b: &BootstrapAdmin) -> Result<(), AuthError> {
        let email = normalize_email(&b.email)?;
        if self.store.find_user_login(&email).await?.is_some() {
            tracing::info!(%email, "bootstrap admin exists; left as it is");
            return Ok(());
        }
        let hash = self
            .hasher
            .hash(&b.password)
            .await
            .map_err(|e| crate::model::FieldInvalid::new("admin_password", e.to_string()))?;
        match self
            .store
            .create_user(&email, None, Some(&hash), &[Role::PlatformAdmin])
            .await
        {
            Ok(_) => {
                tracing::info!(%email, "created the bootstrap platform admin");
                Ok(())
            }
            // Another replica created it meanwhile.
            Err(StoreError::Duplicate { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn dev_admin_token(&self, file: Option<&std::path::Path>) -> Result<String, AuthError> {
        let email = match &self.settings.bootstrap {
            Some(b) => normalize_email(&b.email)?,
            None => DEV_ADMIN_EMAIL.to_owned(),
        };
        let user = match self.store.find_user_login(&email).await? {
            Some(u) => u.user,
            None => match self
                .store
                .create_user(&email, Some("dev admin"), None, &[Role::PlatformAdmin])
                .await
            {
                Ok(u) => u,
                Err(StoreError::Duplicate { .. }) => self
                    .store
                    .find_user_login(&email)
                    .await?
                    .map(|u| u.user)
                    .ok_or_else(|| AuthError::Keys("dev admin vanished".into()))?,
                Err(e) => return Err(e.into()),
            },
        };
        self.store
            .revoke_tokens_named(&user.id, DEV_TOKEN_NAME)
            .await?;
        let scopes = token::Scopes {
            permissions: vec!["*".into()],
            teams: vec!["*".into()],
            servers: vec!["*".into()],
            ip_ranges: vec![],
        };
        let expires = chrono::Utc::now() + chrono::Duration::days(30);
        let (_, secret) = self
            .create_token(&user, DEV_TOKEN_NAME, &scopes, Some(expires))
            .await?;
        if let Some(path) = file {
            write_private(path, &format!("{secret}\n"))
                .map_err(|e| AuthError::Keys(format!("writing {}: {e}", path.display())))?;
            tracing::warn!(
                path = %path.display(),
                email = %user.email,
                "dev mode: a platform-admin API token was written here (mode 0600)"
            );
        }
        Ok(secret)
    }

    /// Stores a new API token for `user`; returns its record and the secret (shown once).
    pub async fn create_token(
        &self,
        user: &User,
        name: &str,
        scopes: &token::Scopes,
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<(TokenRecord, String), AuthError> {
        scopes.parse(self.settings.empty_scopes)?;
        let secret = token::generate().map_err(|_| AuthError::Keys("no randomness".into()))?;
        let json = serde_json::to_string(scopes).map_err(|e| AuthError::Keys(e.to_string()))?;
        let record = self
            .store
            .create_token(
                &user.id,
                name,
                &token::hash(&secret),
                &json,
                expires_at.map(rfc3339).as_deref(),
            )
            .await?;
        Ok((record, secret))
    }

    /// Who a bearer credential belongs to, with what it may do.
    pub async fn authenticate(
        &self,
        bearer: &str,
        ip: Option<IpAddr>,
    ) -> Result<Principal, AuthError> {
        let bearer = bearer.trim();
        if bearer.is_empty() {
            return Err(AuthError::Missing);
        }
        if token::is_api_token(bearer) {
            self.authenticate_token(bearer, ip).await
        } else {
            self.authenticate_jwt(bearer).await
        }
    }

    async fn principal(
        &self,
        user_id: &str,
        scope: Option<rbac::TokenScope>,
        credential: Credential,
    ) -> Result<Principal, AuthError> {
        let user = match self.store.get_user(user_id).await {
            Ok(u) => u,
            Err(StoreError::NotFound { .. }) => {
                return Err(AuthError::Invalid("user deleted".into()));
            }
            Err(e) => return Err(e.into()),
        };
        if !user.active {
            return Err(AuthError::Invalid("user disabled".into()));
        }
        // A password change ends the sessions signed before it.
        if let Credential::Session { iat, .. } = &credential
            && let Some(changed) = user.password_changed_at.as_deref().and_then(parse_time)
            && *iat < changed.timestamp()
        {
            return Err(AuthError::Invalid(
                "session older than the last password change".into(),
            ));
        }
        Ok(Principal {
            grants: self.store.grants(&user.id).await?,
            user_id: user.id,
            email: user.email,
            personal_team: user.personal_team,
            token: scope,
            credential,
        })
    }

    async fn authenticate_token(
        &self,
        secret: &str,
        ip: Option<IpAddr>,
    ) -> Result<Principal, AuthError> {
        let record = self
            .store
            .find_token_by_hash(&token::hash(secret))
            .await?
            .ok_or_else(|| AuthError::Invalid("unknown API token".into()))?;
        if record.revoked_at.is_some() {
            return Err(AuthError::Invalid("API token revoked".into()));
        }
        let now = chrono::Utc::now();
        if record
            .expires_at
            .as_deref()
            .and_then(parse_time)
            .is_some_and(|e| e <= now)
        {
            return Err(AuthError::Invalid("API token expired".into()));
        }
        let scopes: token::Scopes = serde_json::from_str(&record.scopes)
            .map_err(|e| AuthError::Invalid(format!("stored scopes: {e}")))?;
        let scope = scopes
            .parse(self.settings.empty_scopes)
            .map_err(|e| AuthError::Invalid(format!("stored scopes: {}", e.reason)))?;
        if !scope.admits(ip) {
            return Err(AuthError::Address);
        }
        // Last use to the minute: one write a minute per busy token, not one per request.
        let minute = now.format("%Y-%m-%dT%H:%M").to_string();
        if record
            .last_used_at
            .as_deref()
            .is_none_or(|t| !t.starts_with(&minute))
            && let Err(e) = self.store.touch_token(&record.id, &rfc3339(now)).await
        {
            tracing::warn!(error = %e, "recording a token's use failed");
        }
        self.principal(
            &record.user_id,
            Some(scope),
            Credential::ApiToken { id: record.id },
        )
        .await
    }

    async fn key_for(&self, kid: &str) -> Option<Arc<jwt::Key>> {
        if let Some(k) = self.keys.read().await.accepted.get(kid) {
            return Some(k.clone());
        }
        // Maybe another replica rotated: reload, at most once a second.
        {
            let mut last = self.reloaded.lock().await;
            if last.elapsed() < Duration::from_secs(1) {
                return None;
            }
            *last = std::time::Instant::now();
        }
        match load_keyring(&self.store, &self.secrets, &self.settings.jwt, false).await {
            Ok(ring) => {
                let k = ring.accepted.get(kid).cloned();
                *self.keys.write().await = ring;
                k
            }
            Err(e) => {
                tracing::warn!(error = %e, "reloading the signing keys failed");
                None
            }
        }
    }

    async fn authenticate_jwt(&self, token: &str) -> Result<Principal, AuthError> {
        let invalid = |e: JwtError| AuthError::Invalid(e.to_string());
        let kid = jwt::kid_of(token).map_err(invalid)?;
        let key = self
            .key_for(&kid)
            .await
            .ok_or(AuthError::Invalid("unknown key id".into()))?;
        let claims = jwt::verify(
            token,
            &key,
            &jwt::Expect {
                issuer: &self.settings.jwt.issuer,
                audience: AUDIENCE,
                now: unix_now(),
                leeway: LEEWAY_SECS,
            },
        )
        .map_err(invalid)?;
        if self.store.jwt_revoked(&claims.jti).await? {
            return Err(AuthError::Invalid("session revoked".into()));
        }
        self.principal(
            &claims.sub,
            None,
            Credential::Session {
                jti: claims.jti,
                iat: claims.iat,
                exp: claims.exp,
            },
        )
        .await
    }

    /// Signs a session token for `user`.
    pub async fn issue_session(&self, user: &User) -> Result<Session, AuthError> {
        let now = unix_now();
        let ttl = i64::try_from(self.settings.jwt.session_ttl.as_secs()).unwrap_or(i64::MAX);
        let teams = self
            .store
            .list_teams(Some(&user.id))
            .await?
            .into_iter()
            .map(|t| t.id)
            .collect();
        let claims = Claims {
            iss: self.settings.jwt.issuer.clone(),
            sub: user.id.clone(),
            aud: AUDIENCE.into(),
            exp: now.saturating_add(ttl),
            nbf: now,
            iat: now,
            jti: crate::store::new_id(),
            email: user.email.clone(),
            teams,
        };
        if self.keys.read().await.loaded.elapsed() > KEYRING_MAX_AGE {
            match load_keyring(&self.store, &self.secrets, &self.settings.jwt, false).await {
                Ok(ring) => *self.keys.write().await = ring,
                Err(e) => tracing::warn!(error = %e, "reloading the signing keys failed"),
            }
        }
        let key = self.keys.read().await.current.clone();
        let token = jwt::sign(&key, &claims).map_err(|e| AuthError::Keys(e.to_string()))?;
        Ok(Session {
            token,
            expires_at: claims.exp,
            user: user.clone(),
        })
    }

    /// Checks email and password (with lockout), rehashes when the parameters changed,
    /// and signs a session token.
    pub async fn login(&self, email: &str, password: &str) -> Result<Session, AuthError> {
        let email = normalize_email(email)?;
        if let Some(until) = self.store.locked_until(&email).await? {
            return Err(AuthError::Locked(
                parse_time(&until).unwrap_or_else(chrono::Utc::now),
            ));
        }
        let found = self.store.find_user_login(&email).await?;
        let verdict = self
            .hasher
            .verify_and_upgrade(
                password,
                found.as_ref().and_then(|u| u.password_hash.as_deref()),
            )
            .await;
        let login = match (found, verdict) {
            (Some(u), Verified::Yes) => u,
            (Some(u), Verified::Rehashed(h)) => {
                self.store.set_password_hash(&u.user.id, &h).await?;
                tracing::info!(email = %u.user.email, "password rehashed with the current parameters");
                u
            }
            _ => {
                let until = chrono::Utc::now()
                    + chrono::Duration::from_std(self.settings.lockout)
                        .unwrap_or(chrono::Duration::minutes(15));
                let locked = self
                    .store
                    .record_login_failure(&email, self.settings.max_login_failures, &rfc3339(until))
                    .await?;
                if locked.is_some() {
                    tracing::warn!(%email, "login locked after repeated failures");
                    return Err(AuthError::Locked(until));
                }
                return Err(AuthError::BadLogin);
            }
        };
        if !login.user.active {
            return Err(AuthError::BadLogin);
        }
        self.store.clear_login_failures(&email).await?;
        self.issue_session(&login.user).await
    }

    /// Changes a user's password after checking the current one.
    pub async fn change_password(
        &self,
        user: &User,
        current: &str,
        new: &str,
    ) -> Result<(), AuthError> {
        let stored = self.store.password_hash(&user.id).await?;
        if stored.is_some() && self.hasher.verify(current, stored.as_deref()).await == Verified::No
        {
            return Err(AuthError::Field(crate::model::FieldInvalid::new(
                "current_password",
                "is not the current password",
            )));
        }
        if current == new {
            return Err(AuthError::Field(crate::model::FieldInvalid::new(
                "new_password",
                "must differ from the current password",
            )));
        }
        let hash = self
            .hasher
            .hash(new)
            .await
            .map_err(|e| crate::model::FieldInvalid::new("new_password", e.to_string()))?;
        self.store.set_password_hash(&user.id, &hash).await?;
        Ok(())
    }

    /// Revokes a session token until its expiry.
    pub async fn logout(&self, jti: &str, exp: i64) -> Result<(), AuthError> {
        let until = chrono::DateTime::from_timestamp(exp, 0).unwrap_or_else(chrono::Utc::now);
        self.store.revoke_jwt(jti, &rfc3339(until)).await?;
        Ok(())
    }

    /// The public keys that verify session tokens (JWKS). HS256 keys are not published.
    pub async fn jwks(&self) -> serde_json::Value {
        let ring = self.keys.read().await;
        let mut keys: Vec<(&String, &Arc<jwt::Key>)> = ring.accepted.iter().collect();
        keys.sort_by_key(|(kid, _)| *kid);
        let keys: Vec<serde_json::Value> = keys
            .iter()
            .filter_map(|(kid, k)| k.verifier.jwk(kid, k.alg))
            .collect();
        serde_json::json!({ "keys": keys })
    }

    /// The current signing key's id.
    pub async fn current_kid(&self) -> String {
        self.keys.read().await.current.kid.clone()
    }

    /// Makes a new signing key current; the previous one verifies for the grace period.
    pub async fn rotate_keys(&self) -> Result<String, AuthError> {
        if self.settings.jwt.algorithm == Algorithm::Rs256 {
            return Err(AuthError::Conflict(
                "the RS256 key comes from jwt_rsa_key_file: rotate it by replacing the file and restarting (the previous key keeps verifying for the grace period)".into(),
            ));
        }
        let ring = load_keyring(&self.store, &self.secrets, &self.settings.jwt, true).await?;
        let kid = ring.current.kid.clone();
        *self.keys.write().await = ring;
        tracing::info!(%kid, "signing key rotated");
        Ok(kid)
    }
}

/// Writes `text` to `path`, readable by its owner only.
pub fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        // An existing file keeps its mode through open(): tighten it.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(text.as_bytes())
    }
    #[cfg(not(unix))]
    {
        std::fs::write(path, text)
    }
}

/// A new key record (and its signing half) for `alg`.
fn new_key(
    secrets: &SecretBox,
    settings: &JwtSettings,
) -> Result<(KeyRecord, jwt::Key), AuthError> {
    let keys = |e: JwtError| AuthError::Keys(e.to_string());
    let created_at = crate::store::now();
    match settings.algorithm {
        Algorithm::Es256 => {
            let kid = crate::store::new_id();
            let pkcs8 = jwt::generate_ec_pkcs8().map_err(keys)?;
            let (signer, verifier) = jwt::ec_signer(&pkcs8).map_err(keys)?;
            let sealed = secrets
                .seal_for(SIGNING_KEYS_LABEL, kid.as_bytes(), &pkcs8)
                .map_err(|e| AuthError::Keys(e.to_string()))?;
            let jwk = verifier.jwk(&kid, Algorithm::Es256).map(|j| j.to_string());
            Ok((
                KeyRecord {
                    kid: kid.clone(),
                    alg: "ES256".into(),
                    sealed_key: Some(sealed),
                    public_jwk: jwk,
                    created_at,
                    retired_at: None,
                },
                jwt::Key {
                    kid,
                    alg: Algorithm::Es256,
                    signer: Some(signer),
                    verifier,
                },
            ))
        }
        Algorithm::Hs256 => {
            let kid = crate::store::new_id();
            let secret = secrets.derive(&format!("{HS256_LABEL}{kid}"));
            Ok((
                KeyRecord {
                    kid: kid.clone(),
                    alg: "HS256".into(),
                    sealed_key: None,
                    public_jwk: None,
                    created_at,
                    retired_at: None,
                },
                jwt::Key {
                    kid,
                    alg: Algorithm::Hs256,
                    signer: Some(jwt::Signer::Hmac(jwt::hmac_key(&secret))),
                    verifier: jwt::Verifier::Hmac(jwt::hmac_key(&secret)),
                },
            ))
        }
        Algorithm::Rs256 => {
            let (kid, signer, verifier) = rsa_from_file(settings)?;
            let jwk = verifier.jwk(&kid, Algorithm::Rs256).map(|j| j.to_string());
            Ok((
                KeyRecord {
                    kid: kid.clone(),
                    alg: "RS256".into(),
                    sealed_key: None,
                    public_jwk: jwk,
                    created_at,
                    retired_at: None,
                },
                jwt::Key {
                    kid,
                    alg: Algorithm::Rs256,
                    signer: Some(signer),
                    verifier,
                },
            ))
        }
    }
}

/// The RS256 key of the configured file; its `kid` is a digest of the public key, so the
/// same file gives the same `kid` on every replica and restart.
fn rsa_from_file(
    settings: &JwtSettings,
) -> Result<(String, jwt::Signer, jwt::Verifier), AuthError> {
    let path = settings
        .rsa_key_file
        .as_ref()
        .ok_or_else(|| AuthError::Keys("RS256 needs jwt_rsa_key_file".into()))?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| AuthError::Keys(format!("{}: {e}", path.display())))?;
    let der = jwt::pem_block(&text, "PRIVATE KEY").ok_or_else(|| {
        AuthError::Keys(format!(
            "{}: no PKCS#8 PEM block (-----BEGIN PRIVATE KEY-----)",
            path.display()
        ))
    })?;
    let (signer, verifier) =
        jwt::rsa_signer(&der).map_err(|e| AuthError::Keys(format!("{}: {e}", path.display())))?;
    let jwt::Verifier::Rsa { n, e } = &verifier else {
        return Err(AuthError::Keys("not an RSA key".into()));
    };
    let mut material = n.clone();
    material.extend(e);
    let kid = format!(
        "rs-{}",
        &token::hash(&String::from_utf8_lossy(&material))[..16]
    );
    Ok((kid, signer, verifier))
}

/// The key a stored record verifies with (and signs with, when it has a private half).
fn key_from_record(
    secrets: &SecretBox,
    settings: &JwtSettings,
    r: &KeyRecord,
) -> Result<jwt::Key, AuthError> {
    let alg = Algorithm::parse(&r.alg)
        .ok_or_else(|| AuthError::Keys(format!("key {}: unknown alg {}", r.kid, r.alg)))?;
    let keys = |e: JwtError| AuthError::Keys(format!("key {}: {e}", r.kid));
    match alg {
        Algorithm::Hs256 => {
            let secret = secrets.derive(&format!("{HS256_LABEL}{}", r.kid));
            Ok(jwt::Key {
                kid: r.kid.clone(),
                alg,
                signer: Some(jwt::Signer::Hmac(jwt::hmac_key(&secret))),
                verifier: jwt::Verifier::Hmac(jwt::hmac_key(&secret)),
            })
        }
        Algorithm::Es256 => {
            let sealed = r
                .sealed_key
                .as_deref()
                .ok_or_else(|| AuthError::Keys(format!("key {}: no private key", r.kid)))?;
            // A key sealed with a previous encryption key still verifies; `load_keyring`
            // has already replaced it as the signing key.
            let (pkcs8, _previous) = secrets
                .open_for(SIGNING_KEYS_LABEL, r.kid.as_bytes(), sealed)
                .map_err(|e| AuthError::Keys(format!("key {}: {e}", r.kid)))?;
            let (signer, verifier) = jwt::ec_signer(&pkcs8).map_err(keys)?;
            Ok(jwt::Key {
                kid: r.kid.clone(),
                alg,
                signer: Some(signer),
                verifier,
            })
        }
        Algorithm::Rs256 => {
            // The private half lives in the file, and only for the current key.
            let file = rsa_from_file(settings)
                .ok()
                .filter(|(kid, ..)| *kid == r.kid);
            match file {
                Some((kid, signer, verifier)) => Ok(jwt::Key {
                    kid,
                    alg,
                    signer: Some(signer),
                    verifier,
                }),
                None => {
                    let jwk: serde_json::Value =
                        serde_json::from_str(r.public_jwk.as_deref().unwrap_or("null"))
                            .map_err(|e| AuthError::Keys(format!("key {}: {e}", r.kid)))?;
                    Ok(jwt::Key {
                        kid: r.kid.clone(),
                        alg,
                        signer: None,
                        verifier: jwt::Verifier::from_jwk(&jwk).map_err(keys)?,
                    })
                }
            }
        }
    }
}

/// Loads the keyring: the newest unretired key of the configured algorithm signs; it and
/// every key retired less than `key_grace` ago verify. Makes (and stores) a new key when
/// there is none of that algorithm, when the RS256 file changed, or when `rotate`.
async fn load_keyring(
    store: &Store,
    secrets: &SecretBox,
    settings: &JwtSettings,
    rotate: bool,
) -> Result<Keyring, AuthError> {
    let grace = chrono::Duration::from_std(settings.key_grace).unwrap_or(chrono::Duration::days(1));
    let forget_before = rfc3339(chrono::Utc::now() - grace);
    let records = store.signing_keys().await?;
    let wanted = settings.algorithm.as_str();
    let file_kid = match settings.algorithm {
        Algorithm::Rs256 => Some(rsa_from_file(settings)?.0),
        _ => None,
    };
    let current = records.iter().find(|r| {
        r.retired_at.is_none() && r.alg == wanted && file_kid.as_ref().is_none_or(|k| *k == r.kid)
    });
    // A current key that no longer opens with the current encryption key (sealed before a
    // rotation of MCPGW_ENCRYPTION_KEY) is replaced; it still verifies while a previous key
    // opens it.
    let current = current.filter(|r| match &r.sealed_key {
        Some(sealed) => matches!(
            secrets.open_for(SIGNING_KEYS_LABEL, r.kid.as_bytes(), sealed),
            Ok((_, false))
        ),
        None => true,
    });
    let fresh = match (current, rotate) {
        (Some(_), false) => None,
        _ => {
            let (record, key) = new_key(secrets, settings)?;
            store.rotate_signing_key(&record, &forget_before).await?;
            Some(key)
        }
    };
    let records = if fresh.is_some() {
        store.signing_keys().await?
    } else {
        records
    };
    let mut accepted = HashMap::new();
    let mut current_key = None;
    for r in &records {
        let live = r.retired_at.is_none()
            || r.retired_at
                .as_deref()
                .is_some_and(|t| t >= forget_before.as_str());
        if !live {
            continue;
        }
        let key = match (&fresh, r.retired_at.is_none()) {
            (Some(f), _) if f.kid == r.kid => continue,
            _ => match key_from_record(secrets, settings, r) {
                Ok(k) => Arc::new(k),
                Err(e) => {
                    tracing::warn!(kid = %r.kid, error = %e, "a stored signing key is unusable; skipped");
                    continue;
                }
            },
        };
        if current_key.is_none()
            && r.retired_at.is_none()
            && r.alg == wanted
            && key.signer.is_some()
        {
            current_key = Some(key.clone());
        }
        accepted.insert(r.kid.clone(), key);
    }
    if let Some(f) = fresh {
        let f = Arc::new(f);
        accepted.insert(f.kid.clone(), f.clone());
        current_key = Some(f);
    }
    let current = current_key.ok_or_else(|| {
        AuthError::Keys("no usable signing key (sealed with another encryption key?)".into())
    })?;
    Ok(Keyring {
        current,
        accepted,
        loaded: std::time::Instant::now(),
    })
}
