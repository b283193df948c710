//! A real Envoy for tests: started from a bootstrap text on ephemeral ports, killed on
//! drop, with waits that fail with the tail of its log.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Generous: CI machines are busy, and V8 compiles a wasm module when a filter first loads.
pub const WAIT: Duration = Duration::from_secs(30);

/// `rel` under the repository root.
pub fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}

/// The project's Envoy, or `MCPGW_ENVOY`.
pub fn envoy_binary() -> PathBuf {
    let path =
        std::env::var_os("MCPGW_ENVOY").map_or_else(|| repo_path(".venv/bin/envoy"), PathBuf::from);
    assert!(
        path.exists(),
        "Envoy not found at {} (run `make deps`, or set MCPGW_ENVOY)",
        path.display()
    );
    path
}

/// A running Envoy; killed on drop.
pub struct Envoy {
    pub child: tokio::process::Child,
    pub admin: SocketAddr,
    dir: tempfile::TempDir,
    pub http: reqwest::Client,
}

impl Envoy {
    /// Starts Envoy (`--concurrency 1`) with the bootstrap `text` and shared-memory base id
    /// `base_id` (distinct for Envoys running at the same time), once its admin address is
    /// known.
    pub async fn spawn(text: &str, base_id: u32) -> Envoy {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bootstrap.yaml");
        std::fs::write(&path, text).unwrap();
        let log = std::fs::File::create(dir.path().join("envoy.log")).unwrap();
        let admin_path = dir.path().join("admin.addr");
        let child = tokio::process::Command::new(envoy_binary())
            .arg("-c")
            .arg(&path)
            .args(["--concurrency", "1", "--log-level", "info", "--base-id"])
            .arg(base_id.to_string())
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut envoy = Envoy {
            child,
            admin: "127.0.0.1:0".parse().unwrap(),
            dir,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        };
        envoy.admin = envoy
            .wait("admin address", || {
                let p = admin_path.clone();
                async move { std::fs::read_to_string(p).ok()?.trim().parse().ok() }
            })
            .await;
        envoy
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    /// Polls `probe` until it yields; fails with Envoy's log if it exits or takes too long.
    pub async fn wait<T, F, Fut>(&mut self, what: &str, mut probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(v) = probe().await {
                return v;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "Envoy exited ({status}) waiting for {what}:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; Envoy log (tail):\n{}",
                tail(&self.log(), 60)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The address Envoy bound for the listener named `name`.
    pub async fn listener(&mut self, name: &str) -> SocketAddr {
        let url = format!("http://{}/listeners?format=json", self.admin);
        let http = self.http.clone();
        self.wait(&format!("listener {name}"), || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let v: Value = http.get(&url).send().await.ok()?.json().await.ok()?;
                let l = v["listener_statuses"]
                    .as_array()?
                    .iter()
                    .find(|l| l["name"] == name)?;
                let sa = &l["local_address"]["socket_address"];
                let port = u16::try_from(sa["port_value"].as_u64()?).ok()?;
                Some(SocketAddr::new(sa["address"].as_str()?.parse().ok()?, port))
            }
        })
        .await
    }

    /// Waits until Envoy's config dump does (or does not) mention `needle`.
    pub async fn dump_mentions(&mut self, needle: &str, present: bool) {
        let (http, url) = (
            self.http.clone(),
            format!("http://{}/config_dump", self.admin),
        );
        self.wait(
            &format!(
                "config_dump to {}mention {needle}",
                if present { "" } else { "stop to " }
            ),
            || {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    let dump = http.get(&url).send().await.ok()?.text().await.ok()?;
                    (dump.contains(needle) == present).then_some(())
                }
            },
        )
        .await;
    }
}

pub fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
