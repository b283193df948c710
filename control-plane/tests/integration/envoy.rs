//! A real Envoy for tests: started from a bootstrap text on ephemeral ports, killed on
//! drop, with waits that fail the test with the tail of its log. The process, the admin
//! interface and the bootstraps are the shared harness's (`mcpgw-harness`); this wrapper
//! keeps the tests' names and panics where the harness returns errors.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mcpgw_harness::{Artifacts, Launch};

pub use mcpgw_harness::process::tail;

/// Generous: CI machines are busy, and V8 compiles a wasm module when a filter first loads.
pub const WAIT: Duration = Duration::from_secs(30);

/// `rel` under the repository root.
pub fn repo_path(rel: &str) -> PathBuf {
    Artifacts::from_env().repo.join(rel)
}

/// The project's Envoy, or `MCPGW_ENVOY`.
pub fn envoy_binary() -> PathBuf {
    match Artifacts::from_env().envoy() {
        Ok(path) => path.to_owned(),
        Err(e) => panic!("{e:#}"),
    }
}

/// A running Envoy; killed on drop.
pub struct Envoy {
    envoy: mcpgw_harness::Envoy,
    /// Its admin interface.
    pub admin: SocketAddr,
}

impl Envoy {
    /// Starts Envoy (`--concurrency 1`) with the bootstrap `text` and shared-memory base id
    /// `base_id` (distinct for Envoys running at the same time), once its admin address is
    /// known.
    pub async fn spawn(text: &str, base_id: u32) -> Envoy {
        let launch = Launch::new(envoy_binary()).base_id(base_id);
        let envoy = match mcpgw_harness::Envoy::spawn(launch, text).await {
            Ok(envoy) => envoy,
            Err(e) => panic!("{e:#}"),
        };
        // The tests build HTTP clients next, and have relied on this since Envoy's own
        // client was built here.
        mcpgw::tls::install_crypto_provider();
        Envoy {
            admin: envoy.admin,
            envoy,
        }
    }

    /// Envoy's log so far.
    #[allow(dead_code)] // for a test to print while it is being debugged
    pub fn log(&self) -> String {
        self.envoy.log()
    }

    /// Polls `probe` until it yields; fails with Envoy's log if it exits or takes too long.
    pub async fn wait<T, F, Fut>(&mut self, what: &str, probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        match self.envoy.wait(what, WAIT, probe).await {
            Ok(v) => v,
            Err(e) => panic!("{e:#}"),
        }
    }

    /// The address Envoy bound for the listener named `name`.
    pub async fn listener(&mut self, name: &str) -> SocketAddr {
        let admin = self.admin;
        self.wait(&format!("listener {name}"), || async move {
            mcpgw_harness::admin::listener(admin, name)
                .await
                .ok()
                .flatten()
        })
        .await
    }

    /// Waits until Envoy's config dump does (or does not) mention `needle`.
    pub async fn dump_mentions(&mut self, needle: &str, present: bool) {
        let admin = self.admin;
        let what = format!(
            "config_dump to {}mention {needle}",
            if present { "" } else { "stop to " }
        );
        self.wait(&what, || async move {
            let (status, dump) = mcpgw_harness::admin::get(admin, "/config_dump")
                .await
                .ok()?;
            (status == 200 && dump.contains(needle) == present).then_some(())
        })
        .await;
    }
}

/// The filter module's absolute path, as a generated listener names it.
pub fn filter_wasm_path() -> String {
    match Artifacts::from_env()
        .wasm()
        .and_then(|p| Ok(p.canonicalize()?))
    {
        Ok(path) => path.display().to_string(),
        Err(e) => panic!("{e:#}"),
    }
}

/// What keeps an [`ads_edge`] Envoy fed: send a resource set to push it.
pub struct AdsFeed {
    pub input: tokio::sync::watch::Sender<Option<std::sync::Arc<mcpgw::xds::ResourceSet>>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// An ADS server on an ephemeral loopback port serving `first` (then what the feed is sent),
/// and a real Envoy, node `node`, following it over gRPC.
pub async fn ads_edge(
    first: std::sync::Arc<mcpgw::xds::ResourceSet>,
    node: &str,
    base_id: u32,
) -> (Envoy, AdsFeed) {
    let (input, rx) = tokio::sync::watch::channel(Some(first));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let xds_addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(mcpgw::xds::serve(
        listener,
        mcpgw::xds::AdsServer::new(rx, mcpgw::xds::XdsConfig::default()),
        async {
            let _ = stopped.await;
        },
    ));
    let bootstrap = mcpgw_harness::bootstrap::ads(node, "mcpgw", xds_addr, "GRPC");
    let envoy = Envoy::spawn(&bootstrap.to_string(), base_id).await;
    (envoy, AdsFeed { input, _stop: stop })
}
