//! The registry store: SQLite (default) or PostgreSQL through sqlx's `Any` driver.
//!
//! Every write runs in one transaction that also bumps `registry_meta.version`, so the
//! registry version a reader sees always matches the rows it sees, and a snapshot builder
//! can tell cheaply whether anything changed (`registry_version()` or `subscribe()`).
//!
//! Queries are written once, with `$N` placeholders (both backends accept them), 0/1
//! integers for booleans and RFC 3339 text for timestamps; that keeps the `Any` value
//! mapping trivial. SQLite allows one writer at a time; instead of letting deferred
//! transactions race for the write lock (and fail with `SQLITE_BUSY` on upgrade) writers
//! queue on an in-process mutex. PostgreSQL writers run concurrently; lost updates are
//! caught by the optimistic `version` column and duplicate names by UNIQUE constraints.
//!
//! Rows are parsed into the domain types (`crate::model`) here, once. A row that does not
//! parse (written by hand, by an older version with looser rules, or damaged) is skipped by
//! every list with a warning and the `mcpgw_store_rows_skipped_total` metric: one bad row
//! degrades one entry, never a whole list or a snapshot build.

mod catalog;
mod gateways;
pub mod identity;
pub mod k8s;
pub mod oidc;
pub mod pins;
pub mod policies;
mod servers;

use std::sync::Arc;

use base64::Engine as _;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sqlx::any::{AnyArguments, AnyPoolOptions, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, AnyPool, Row, Transaction};
use tokio::sync::{Mutex, MutexGuard, watch};

pub(crate) use catalog::{insert_item, item_id_by_name, update_item_tx, validate_uri};
pub use gateways::HealthTransition;

pub use crate::model::{Discovered, DiscoveredItem, NewServer, ServerPatch};
use crate::model::{FieldInvalid, ListFilter, Page, Tags};

/// Largest page a list returns.
pub const MAX_PAGE_SIZE: u32 = 500;
/// Page size when the client does not ask for one.
pub const DEFAULT_PAGE_SIZE: u32 = 50;

/// Errors of the store, classified so the API can pick a status.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such row.
    #[error("{kind} {id} not found")]
    NotFound {
        /// Kind label.
        kind: &'static str,
        /// Requested id.
        id: String,
    },
    /// A unique name is taken.
    #[error("a {kind} named {name:?} already exists")]
    Duplicate {
        /// Kind label.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// The row changed since the caller read it.
    #[error(
        "{kind} {id} was modified concurrently (expected version {expected}, current {current})"
    )]
    VersionConflict {
        /// Kind label.
        kind: &'static str,
        /// Row id.
        id: String,
        /// Version the caller expected.
        expected: i64,
        /// Version in the store.
        current: i64,
    },
    /// A field is invalid.
    #[error("{field}: {reason}")]
    Invalid {
        /// Field name (JSON path).
        field: String,
        /// Why.
        reason: String,
    },
    /// Members of a virtual server that names them as their upstreams do expose the same
    /// name: one entry per colliding item, naming both.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    NameCollisions(Vec<FieldInvalid>),
    /// Stored data could not be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// Stored credentials do not open for their gateway and origin.
    #[error(transparent)]
    Sealed(#[from] crate::crypto::CryptoError),
    /// Database failure.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl From<FieldInvalid> for StoreError {
    fn from(e: FieldInvalid) -> Self {
        StoreError::Invalid {
            field: e.field,
            reason: e.reason,
        }
    }
}

impl StoreError {
    /// Shorthand for [`StoreError::Invalid`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Low-cardinality label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "not_found",
            Self::Duplicate { .. } => "duplicate",
            Self::VersionConflict { .. } => "version_conflict",
            Self::Invalid { .. } => "invalid",
            Self::NameCollisions(_) => "name_collision",
            Self::Corrupt(_) => "corrupt",
            Self::Sealed(_) => "sealed",
            Self::Database(_) => "database",
        }
    }
}

/// Which database the store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

impl Backend {
    /// Picks the backend from a URL scheme.
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else {
            Err(StoreError::invalid(
                "database_url",
                "must start with sqlite:, postgres:// or postgresql://",
            ))
        }
    }
}

/// One schema change. Both backends run the same file: the schema sticks to what SQLite and
/// PostgreSQL spell alike (TEXT, BIGINT, `ALTER TABLE … ADD COLUMN … DEFAULT`), and the
/// queries bind `$N` placeholders through sqlx's `Any` driver. Should a statement ever need
/// two spellings, that migration would get an optional `postgres: Option<&str>` override
/// beside `sql`, picked in `Store::migrate` by backend: one file per change either way, not a
/// second directory of copies that drift apart.
struct Migration {
    version: i64,
    description: &'static str,
    sql: &'static str,
}

/// Embedded migrations (`control-plane/migrations/`), applied in order on start.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "registry",
        sql: include_str!("../migrations/0001_registry.sql"),
    },
    Migration {
        version: 2,
        description: "gateway collisions",
        sql: include_str!("../migrations/0002_gateway_collisions.sql"),
    },
    Migration {
        version: 3,
        description: "gateway skipped items",
        sql: include_str!("../migrations/0003_gateway_skipped.sql"),
    },
    Migration {
        version: 4,
        description: "server naming and origins, gateway protocol versions",
        sql: include_str!("../migrations/0004_server_exposure.sql"),
    },
    Migration {
        version: 5,
        description: "identity and access",
        sql: include_str!("../migrations/0005_identity.sql"),
    },
    Migration {
        version: 6,
        description: "issuers, server policies, limits and plugins",
        sql: include_str!("../migrations/0006_policies.sql"),
    },
    Migration {
        version: 7,
        description: "tool pins",
        sql: include_str!("../migrations/0007_tool_pins.sql"),
    },
    Migration {
        version: 8,
        description: "gateway upstream identity",
        sql: include_str!("../migrations/0008_upstream_identity.sql"),
    },
    Migration {
        version: 9,
        description: "login through OpenID Connect providers",
        sql: include_str!("../migrations/0009_oidc_logins.sql"),
    },
    Migration {
        version: 10,
        description: "objects owned by Kubernetes resources",
        sql: include_str!("../migrations/0010_k8s_owner.sql"),
    },
];

/// The store's metrics (`mcpgw_store_*`).
#[derive(Debug, Clone, Default)]
pub struct StoreMetrics {
    rows_skipped: Family<Vec<(String, String)>, Counter>,
    /// Tool-definition changes waiting for an admin (registry-wide).
    tool_changes_pending: prometheus_client::metrics::gauge::Gauge,
    /// Tool-definition changes held, approved and rejected.
    tool_changes: Family<Vec<(String, String)>, Counter>,
}

impl StoreMetrics {
    /// Registers the store's metrics.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "store_rows_skipped",
            "Stored rows that did not parse and were left out of a read, by table",
            self.rows_skipped.clone(),
        );
        registry.register(
            "tool_changes_pending",
            "Tool-definition changes (changed pinned tools, held new tools) waiting for an admin",
            self.tool_changes_pending.clone(),
        );
        registry.register(
            "tool_changes",
            "Tool-definition changes by event: held (at discovery), approved, rejected",
            self.tool_changes.clone(),
        );
    }

    /// Counts a tool-definition change event (`held`, `approved`, `rejected`).
    pub fn tool_change(&self, event: &str) {
        self.tool_changes
            .get_or_create(&vec![("event".to_owned(), event.to_owned())])
            .inc();
    }

    /// Sets the pending tool-definition changes gauge.
    pub fn set_pending_changes(&self, n: i64) {
        self.tool_changes_pending.set(n);
    }

    /// Pending tool-definition changes, as last counted (tests, diagnostics).
    pub fn pending_changes(&self) -> i64 {
        self.tool_changes_pending.get()
    }

    /// Rows of `table` skipped so far (tests, diagnostics).
    pub fn rows_skipped(&self, table: &str) -> u64 {
        self.rows_skipped
            .get_or_create(&vec![("table".to_owned(), table.to_owned())])
            .get()
    }
}

/// Handle to the registry database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    write_lock: Option<Arc<Mutex<()>>>,
    version_tx: Arc<watch::Sender<i64>>,
    metrics: StoreMetrics,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// A write transaction; `commit` bumps the registry version in the same transaction.
pub(crate) struct WriteTx<'a> {
    tx: Transaction<'static, Any>,
    store: &'a Store,
    _guard: Option<MutexGuard<'a, ()>>,
}

impl WriteTx<'_> {
    /// The transaction's connection.
    pub(crate) fn conn(&mut self) -> &mut sqlx::AnyConnection {
        &mut self.tx
    }

    /// Bumps the registry version and commits; returns the new version.
    pub(crate) async fn commit(mut self) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "UPDATE registry_meta SET version = version + 1 WHERE id = 1 RETURNING version",
        )
        .fetch_one(&mut *self.tx)
        .await?;
        let version: i64 = row.try_get("version")?;
        self.tx.commit().await?;
        self.store.version_tx.send_replace(version);
        Ok(version)
    }

    /// Commits without bumping the version (bookkeeping that no snapshot contains).
    pub(crate) async fn commit_quiet(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }
}

/// Creates the SQLite data directory readable by this user only (0700), and tightens an
/// existing one that group or others can read: it holds the registry, whose sealed
/// credentials are only as safe as the key, and the key is not the only thing to protect.
pub fn prepare_data_dir(dir: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        tighten(dir, 0o700)?;
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)?;
    Ok(())
}

/// Sets `path`'s mode to `mode` if group or others have any access, with a warning.
#[cfg(unix)]
fn tighten(path: &std::path::Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let current = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if current & 0o077 != 0 {
        match std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
            Ok(()) => tracing::warn!(
                path = %path.display(),
                was = format!("{current:o}"),
                now = format!("{mode:o}"),
                "tightened the permissions of the registry's files"
            ),
            Err(e) => tracing::warn!(
                path = %path.display(),
                mode = format!("{current:o}"),
                error = %e,
                "the registry's files are readable by others and cannot be tightened"
            ),
        }
    }
    Ok(())
}

/// Creates a SQLite database file 0600 before SQLite does (it would use the umask), and
/// tightens an existing one and its WAL and shared-memory files (SQLite creates those with
/// the database file's mode).
fn secure_sqlite_file(url: &str) -> Result<(), StoreError> {
    use std::str::FromStr as _;
    if url.contains(":memory:") || url.contains("mode=memory") {
        return Ok(());
    }
    let opts = sqlx::sqlite::SqliteConnectOptions::from_str(url)?;
    let path = opts.get_filename().to_path_buf();
    let io = |e: std::io::Error| {
        StoreError::Database(sqlx::Error::Io(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", path.display()),
        )))
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        if !path.exists() && url.contains("mode=rwc") {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map(drop)
                .or_else(|e| match e.kind() {
                    std::io::ErrorKind::AlreadyExists => Ok(()),
                    _ => Err(e),
                })
                .map_err(io)?;
        }
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = path.clone().into_os_string();
            p.push(suffix);
            let p = std::path::PathBuf::from(p);
            if p.exists() {
                tighten(&p, 0o600).map_err(io)?;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (path, io);
    Ok(())
}

impl Store {
    /// Connects to `url` (`sqlite:…` or `postgres://…`) and runs the embedded migrations.
    /// A SQLite file is created (and kept) readable by this user only.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(url)?;
        if backend == Backend::Sqlite {
            secure_sqlite_file(url)?;
        }
        let max = match backend {
            Backend::Sqlite => 4,
            Backend::Postgres => 10,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
            .await?;
        let store = Store {
            pool,
            backend,
            write_lock: (backend == Backend::Sqlite).then(|| Arc::new(Mutex::new(()))),
            version_tx: Arc::new(watch::channel(0).0),
            metrics: StoreMetrics::default(),
        };
        store.migrate().await?;
        store.refresh_pending_changes_gauge().await?;
        let v = store.registry_version().await?;
        store.version_tx.send_replace(v);
        Ok(store)
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The store's metrics.
    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    /// `parsed`, or `None` with a warning and a count when the row did not parse.
    pub(crate) fn keep_parsed<T>(
        &self,
        table: &str,
        row: &AnyRow,
        parsed: Result<T, StoreError>,
    ) -> Option<T> {
        match parsed {
            Ok(v) => Some(v),
            Err(e) => {
                let id: String = row.try_get("id").unwrap_or_default();
                tracing::warn!(table, %id, error = %e, "stored row does not parse; left out");
                self.metrics
                    .rows_skipped
                    .get_or_create(&vec![("table".to_owned(), table.to_owned())])
                    .inc();
                None
            }
        }
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        if self.backend == Backend::Sqlite {
            sqlx::raw_sql("PRAGMA journal_mode = WAL")
                .execute(&self.pool)
                .await?;
        }
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS mcpgw_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL, applied_at TEXT NOT NULL)",
        )
        .execute(&self.pool)
        .await?;
        for m in MIGRATIONS {
            let _guard = match &self.write_lock {
                Some(l) => Some(l.lock().await),
                None => None,
            };
            let mut tx = self.pool.begin().await?;
            if self.backend == Backend::Postgres {
                // Serialize concurrent starters on one database.
                sqlx::Executor::execute(
                    &mut *tx,
                    sqlx::raw_sql("LOCK TABLE mcpgw_migrations IN EXCLUSIVE MODE"),
                )
                .await?;
            }
            let done = sqlx::query("SELECT version FROM mcpgw_migrations WHERE version = $1")
                .bind(m.version)
                .fetch_optional(&mut *tx)
                .await?;
            if done.is_some() {
                continue;
            }
            // Through `Executor` directly: `RawSql::execute` is a generic async fn whose
            // future the compiler cannot prove `Send` for every lifetime (rust#102211).
            sqlx::Executor::execute(&mut *tx, sqlx::raw_sql(m.sql)).await?;
            sqlx::query(
                "INSERT INTO mcpgw_migrations (version, description, applied_at) VALUES ($1, $2, $3)",
            )
            .bind(m.version)
            .bind(m.description)
            .bind(now())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            tracing::info!(
                version = m.version,
                description = m.description,
                "applied migration"
            );
        }
        Ok(())
    }

    /// Checks the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").fetch_one(&self.pool).await?;
        Ok(())
    }

    /// The current registry version.
    pub async fn registry_version(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT version FROM registry_meta WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("version")?)
    }

    /// A receiver that sees every committed registry version (for the snapshot builder).
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.version_tx.subscribe()
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub(crate) async fn begin_write(&self) -> Result<WriteTx<'_>, StoreError> {
        let guard = match &self.write_lock {
            Some(l) => Some(l.lock().await),
            None => None,
        };
        let tx = self.pool.begin().await?;
        Ok(WriteTx {
            tx,
            store: self,
            _guard: guard,
        })
    }
}

// ---- shared helpers -------------------------------------------------------------------

/// Current time, RFC 3339 with milliseconds.
pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// New opaque id (32 hex digits, as ContextForge).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A value bound to a dynamically built query.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Text(String),
    Int(i64),
}

pub(crate) fn bind_all<'q>(
    mut q: Query<'q, Any, AnyArguments<'q>>,
    args: &'q [Arg],
) -> Query<'q, Any, AnyArguments<'q>> {
    for a in args {
        q = match a {
            Arg::Text(s) => q.bind(s.as_str()),
            Arg::Int(i) => q.bind(*i),
        };
    }
    q
}

/// Builds the WHERE/ORDER/LIMIT part of a list query and its arguments.
pub(crate) struct ListSql {
    pub(crate) clauses: Vec<String>,
    pub(crate) args: Vec<Arg>,
    pub(crate) limit: u32,
}

impl ListSql {
    pub(crate) fn new(q: &ListFilter, with_gateway: bool) -> Result<Self, StoreError> {
        let limit = q.limit.unwrap_or(DEFAULT_PAGE_SIZE);
        if limit == 0 || limit > MAX_PAGE_SIZE {
            return Err(StoreError::invalid(
                "limit",
                format!("must be between 1 and {MAX_PAGE_SIZE}"),
            ));
        }
        let mut s = ListSql {
            clauses: Vec::new(),
            args: Vec::new(),
            limit,
        };
        if let Some(c) = &q.cursor {
            let name = decode_cursor(c)?;
            s.push("name > $", Arg::Text(name));
        }
        if let Some(g) = &q.gateway_id {
            if !with_gateway {
                return Err(StoreError::invalid(
                    "gateway_id",
                    "this list cannot be filtered by gateway",
                ));
            }
            s.push("gateway_id = $", Arg::Text(g.clone()));
        }
        if let Some(e) = q.enabled {
            s.push("enabled = $", Arg::Int(i64::from(e)));
        }
        if let Some(scope) = &q.visible_to
            && let Some(clause) = identity::visible_clause(with_gateway, scope, &mut s.args)
        {
            s.clauses.push(clause);
        }
        if !q.tags.is_empty() {
            let mut ors = Vec::new();
            for t in q.tags.iter() {
                let n = s.args.len() + 1;
                ors.push(format!("tags LIKE ${n} ESCAPE '\\'"));
                let escaped = t.as_str().replace('\\', "\\\\").replace('_', "\\_");
                s.args.push(Arg::Text(format!("%\"{escaped}\"%")));
            }
            s.clauses.push(format!("({})", ors.join(" OR ")));
        }
        Ok(s)
    }

    fn push(&mut self, clause_prefix: &str, arg: Arg) {
        self.args.push(arg);
        self.clauses
            .push(format!("{clause_prefix}{}", self.args.len()));
    }

    /// `WHERE … ORDER BY name LIMIT n+1` (one extra row tells whether a next page exists).
    pub(crate) fn tail(&self) -> String {
        let w = if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        };
        format!("{w} ORDER BY name LIMIT {}", self.limit + 1)
    }

    /// Cuts the extra row, parses the rest (skipping rows that do not parse) and computes
    /// the next cursor from the last row, parsed or not, so a skipped row never ends paging.
    pub(crate) fn page<T>(
        &self,
        mut rows: Vec<AnyRow>,
        mut parse: impl FnMut(&AnyRow) -> Option<T>,
    ) -> Result<Page<T>, StoreError> {
        let next_cursor = if rows.len() > self.limit as usize {
            rows.truncate(self.limit as usize);
            match rows.last() {
                Some(r) => Some(encode_cursor(&r.try_get::<String, _>("name")?)),
                None => None,
            }
        } else {
            None
        };
        let items = rows.iter().filter_map(&mut parse).collect();
        Ok(Page { items, next_cursor })
    }
}

fn encode_cursor(name: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(name.as_bytes())
}

fn decode_cursor(c: &str) -> Result<String, StoreError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c.as_bytes())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| StoreError::invalid("cursor", "not a cursor returned by this API"))
}

/// The tags of a row (a JSON array of tags).
pub(crate) fn parse_tags(row: &AnyRow) -> Result<Tags, StoreError> {
    let raw: String = row.try_get("tags")?;
    let list: Vec<String> =
        serde_json::from_str(&raw).map_err(|e| StoreError::Corrupt(format!("tags: {e}")))?;
    Tags::parse(&list).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(crate) fn parse_json_opt(
    row: &AnyRow,
    col: &str,
) -> Result<Option<serde_json::Value>, StoreError> {
    let raw: Option<String> = row.try_get(col)?;
    raw.map(|s| serde_json::from_str(&s))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
}

pub(crate) fn get_bool(row: &AnyRow, col: &str) -> Result<bool, StoreError> {
    let v: i64 = row.try_get(col)?;
    Ok(v != 0)
}

/// Maps a unique violation to [`StoreError::Duplicate`].
pub(crate) fn map_unique(
    kind: &'static str,
    name: &str,
) -> impl FnOnce(sqlx::Error) -> StoreError + use<> {
    let name = name.to_owned();
    move |e| match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Duplicate { kind, name },
        _ => StoreError::Database(e),
    }
}
