//! Shared test plumbing: databases (SQLite temp dir, PostgreSQL schema per test), an
//! in-process control plane on port 0, an HTTP client, and process guards.

use std::net::SocketAddr;
use std::time::Duration;

use mcpgw::config::Settings;
use mcpgw::federation::Federation;
use mcpgw::store::Store;
use serde_json::Value;
use std::sync::Arc;
use tokio::sync::oneshot;

/// PostgreSQL of the development and CI machines (trust auth).
pub fn pg_base_url() -> String {
    std::env::var("MCPGW_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A database for one test; dropped (schema or directory) afterwards.
pub enum TestDb {
    /// SQLite file in a temp dir (kept alive with the database, removed on drop).
    Sqlite(#[allow(dead_code)] tempfile::TempDir, String),
    /// PostgreSQL schema.
    Postgres { schema: String, url: String },
}

impl TestDb {
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/mcpgw.db?mode=rwc", dir.path().display());
        TestDb::Sqlite(dir, url)
    }

    pub async fn postgres() -> TestDb {
        sqlx::any::install_default_drivers();
        let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
        let base = pg_base_url();
        let mut conn = match <sqlx::AnyConnection as sqlx::Connection>::connect(&base).await {
            Ok(c) => c,
            Err(e) => panic!(
                "PostgreSQL is required at {base} (start it with `.ci/run` or pg_ctlcluster): {e}"
            ),
        };
        sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut conn)
            .await
            .expect("create schema");
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        TestDb::Postgres { schema, url }
    }

    pub fn url(&self) -> &str {
        match self {
            TestDb::Sqlite(_, u) => u,
            TestDb::Postgres { url, .. } => url,
        }
    }

    pub async fn store(&self) -> Store {
        Store::connect(self.url()).await.expect("store connects")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let TestDb::Postgres { schema, .. } = self {
            let schema = schema.clone();
            // Drop runs inside the test's runtime; use a separate thread and runtime.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    if let Ok(mut c) =
                        <sqlx::AnyConnection as sqlx::Connection>::connect(&pg_base_url()).await
                    {
                        let _ = sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                            .execute(&mut c)
                            .await;
                    }
                });
            })
            .join();
        }
    }
}

/// Both backends, for tests that must pass on each.
pub async fn both_backends() -> Vec<(&'static str, TestDb)> {
    vec![
        ("sqlite", TestDb::sqlite()),
        ("postgres", TestDb::postgres().await),
    ]
}

/// Test settings: loopback upstreams allowed, short timeouts, no background health loop
/// unless a test asks for one.
pub fn settings(db: &TestDb) -> Settings {
    let mut s = Settings::for_database(db.url());
    s.federation.ssrf.allow_loopback = true;
    s.federation.timeout = Duration::from_secs(3);
    s.federation.health_interval = Duration::from_secs(3600);
    s.federation.resync_interval = None;
    s
}

/// An in-process control plane serving on 127.0.0.1:0.
pub struct TestCp {
    pub addr: SocketAddr,
    /// Where the xDS server listens, if enabled.
    pub xds_addr: Option<SocketAddr>,
    pub relay_addr: Option<SocketAddr>,
    pub store: Store,
    pub federation: Arc<Federation>,
    /// Sends the dev admin token (the admin API needs a credential).
    pub http: reqwest::Client,
    /// The platform-admin API token a dev-mode start mints.
    pub token: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestCp {
    pub async fn start(settings: Settings) -> TestCp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind port 0");
        TestCp::start_on(settings, listener).await
    }

    /// Serves on `listener` (bound by the test: settings that name the API's own URL, such
    /// as an OpenID callback, need its port first).
    pub async fn start_on(settings: Settings, listener: tokio::net::TcpListener) -> TestCp {
        mcpgw::tls::install_crypto_provider();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(mcpgw::serve(
            settings,
            listener,
            async move {
                let _ = stop_rx.await;
            },
            move |cp| {
                let _ = ready_tx.send(cp);
            },
        ));
        let cp = match ready_rx.await {
            Ok(cp) => cp,
            Err(_) => panic!("control plane did not start: {:?}", task.await),
        };
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = &cp.dev_token {
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {t}").parse().expect("header value"),
            );
        }
        TestCp {
            addr: cp.addr,
            xds_addr: cp.xds_addr,
            relay_addr: cp.relay_addr,
            store: cp.store,
            federation: cp.federation,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .default_headers(headers)
                .build()
                .expect("client"),
            token: cp.dev_token,
            stop: Some(stop_tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn call(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let resp = req.send().await.expect("request reaches the API");
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let bytes = resp.bytes().await.expect("body");
        let v = if bytes.is_empty() {
            Value::Null
        } else if ct.contains("json") {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!("invalid JSON ({e}): {}", String::from_utf8_lossy(&bytes))
            })
        } else {
            Value::String(String::from_utf8_lossy(&bytes).into_owned())
        };
        if status >= 400 {
            assert!(
                ct.starts_with("application/problem+json"),
                "error {status} without problem+json ({ct}): {v}"
            );
        }
        (status, v)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(self.http.get(self.url(path))).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(self.http.post(self.url(path)).json(&body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(self.http.put(self.url(path)).json(&body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        // Body-less state changes say they come from a program (see `api::cross_site`).
        self.call(
            self.http
                .delete(self.url(path))
                .header(mcpgw::api::cross_site::REQUEST_HEADER, "1"),
        )
        .await
    }

    /// `GET /snapshot` once it is built from the current registry version (the publisher
    /// rebuilds shortly after each change).
    pub async fn current_snapshot(&self) -> Value {
        eventually(
            "the snapshot of the current registry",
            Duration::from_secs(30),
            || async {
                let (_, registry) = self.get("/registry").await;
                let (s, snap) = self.get("/snapshot").await;
                let want = registry["registry_version"].as_i64()?.to_string();
                (s == 200 && snap["version"].as_str() == Some(want.as_str())).then_some(snap)
            },
        )
        .await
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let r = tokio::time::timeout(Duration::from_secs(30), t).await;
            assert!(
                matches!(r, Ok(Ok(Ok(())))),
                "graceful shutdown failed: {r:?}"
            );
        }
    }
}

impl Drop for TestCp {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// A child process killed on drop.
pub struct ChildGuard(pub Option<tokio::process::Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.start_kill();
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    mcpgw_harness::ports::free_port().expect("free port")
}

/// Polls `f` every 100 ms until it returns Some, up to `limit`; panics with `what` otherwise.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let every = Duration::from_millis(100);
    match mcpgw_harness::ports::poll(every, limit, || None, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}
