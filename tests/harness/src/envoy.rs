//! A real Envoy: started from a bootstrap on ephemeral ports (`--concurrency 1` unless
//! told otherwise), watched
//! through its admin interface, killed on drop, and quoting the tail of its log when it
//! fails.

use std::ffi::OsString;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};

use crate::admin;
use crate::ports::wait_until;
use crate::process::ChildGuard;
use crate::workdir::{Workdir, unique_id};

/// How long Envoy may take to become ready: V8 compiles the wasm module when a filter first
/// loads, and under valgrind everything is fifty times slower.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// How to run one Envoy.
#[derive(Debug)]
pub struct Launch {
    binary: PathBuf,
    name: String,
    log_level: String,
    base_id: Option<u32>,
    wrapper: Vec<OsString>,
    dir: Option<Workdir>,
    workers: u32,
}

impl Launch {
    /// Envoy `binary` at log level `info`, hot restart disabled (so that concurrent Envoys
    /// share no memory region), in a fresh work dir.
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            name: "envoy".to_owned(),
            log_level: "info".to_owned(),
            base_id: None,
            wrapper: Vec::new(),
            dir: None,
            workers: 1,
        }
    }

    /// `--concurrency n`: worker threads (each with its own filter VM).
    pub fn workers(mut self, n: u32) -> Self {
        self.workers = n.max(1);
        self
    }

    /// Names it in its work dir and in error messages.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    /// `--log-level`.
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_owned();
        self
    }

    /// `--base-id id` instead of `--disable-hot-restart`.
    pub fn base_id(mut self, id: u32) -> Self {
        self.base_id = Some(id);
        self
    }

    /// Runs Envoy as the last arguments of `argv` (`nice`, `taskset`, `valgrind`), which must
    /// exec it, so that [`Envoy::pid`] is the process running Envoy.
    pub fn wrapper(mut self, argv: Vec<OsString>) -> Self {
        self.wrapper = argv;
        self
    }

    /// Uses `dir` as its work dir (for a wrapper that writes there).
    pub fn dir(mut self, dir: Workdir) -> Self {
        self.dir = Some(dir);
        self
    }

    /// Writes `bootstrap` into the work dir and starts Envoy with its output in `envoy.log`
    /// there and its admin address written to `admin.addr`.
    fn spawn(self, bootstrap: &str) -> anyhow::Result<(ChildGuard, Workdir)> {
        let dir = match self.dir {
            Some(dir) => dir,
            None => Workdir::new(&self.name)?,
        };
        // Envoy picks the parser by extension; YAML would read JSON too, but not always
        // the same way (yaml-cpp and JSON disagree on some escapes).
        let config = dir.file(if bootstrap.trim_start().starts_with('{') {
            "bootstrap.json"
        } else {
            "bootstrap.yaml"
        });
        std::fs::write(&config, bootstrap)
            .with_context(|| format!("writing {}", config.display()))?;
        if !self.binary.exists() {
            bail!(
                "Envoy not found at {} (run `make deps`, or set MCPGW_ENVOY)",
                self.binary.display()
            );
        }
        let mut argv = self.wrapper;
        argv.push(self.binary.into());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .arg("-c")
            .arg(&config)
            .arg("--concurrency")
            .arg(self.workers.to_string())
            .args(["--log-level", &self.log_level])
            .arg("--admin-address-path")
            .arg(dir.file("admin.addr"));
        match self.base_id {
            Some(id) => cmd.arg("--base-id").arg(id.to_string()),
            None => cmd.arg("--disable-hot-restart"),
        };
        let child = ChildGuard::spawn(&self.name, cmd, &dir.file("envoy.log"))?;
        Ok((child, dir))
    }
}

/// A running Envoy; killed on drop, its work dir removed.
#[derive(Debug)]
pub struct Envoy {
    child: ChildGuard,
    dir: Workdir,
    /// Address of the admin interface.
    pub admin: SocketAddr,
}

impl Envoy {
    /// Starts Envoy and returns once its admin interface is up: its listeners may come
    /// later (over xDS); see [`Envoy::listener`]. Fails with its log tail if it exits first.
    pub async fn spawn(launch: Launch, bootstrap: &str) -> anyhow::Result<Envoy> {
        let (mut child, dir) = launch.spawn(bootstrap)?;
        let admin_path = dir.file("admin.addr");
        let admin = {
            let c = &mut child;
            wait_until(
                READY_TIMEOUT,
                || c.exited().map(|s| format!("exited with {s}")),
                || {
                    let p = admin_path.clone();
                    async move { admin_address(&p) }
                },
            )
            .await
        };
        match admin {
            Ok(admin) => Ok(Envoy { child, dir, admin }),
            Err(why) => Err(child.failure(&format!("admin address never written: {why}"))),
        }
    }

    /// Starts Envoy and returns once admin `/ready` says `LIVE` (for a static bootstrap:
    /// its listeners are bound). Fails with its log tail if it exits or hangs.
    pub async fn start(launch: Launch, bootstrap: &str) -> anyhow::Result<Envoy> {
        let mut envoy = Envoy::spawn(launch, bootstrap).await?;
        let admin = envoy.admin;
        envoy
            .wait("admin /ready to say LIVE", READY_TIMEOUT, || async move {
                live(admin).await.then_some(())
            })
            .await?;
        Ok(envoy)
    }

    /// Starts Envoy with a bootstrap it is expected to reject: its exit status and log.
    /// Fails if it becomes ready instead.
    pub async fn start_rejected(
        launch: Launch,
        bootstrap: &str,
    ) -> anyhow::Result<(ExitStatus, String)> {
        let (mut child, dir) = launch.spawn(bootstrap)?;
        let admin_path = dir.file("admin.addr");
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = child.exited() {
                return Ok((status, child.log()));
            }
            if let Some(admin) = admin_address(&admin_path)
                && live(admin).await
            {
                bail!(
                    "Envoy accepted a config it should reject; log:\n{}",
                    child.log_tail(40)
                );
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(child.failure("neither rejected the config nor became ready"));
            }
            tokio::time::sleep(crate::ports::POLL).await;
        }
    }

    /// `envoy --mode validate -c <bootstrap>`: the exit status and output.
    pub fn validate(binary: &Path, bootstrap: &Path) -> anyhow::Result<(ExitStatus, String)> {
        let out = Command::new(binary)
            .args(["--mode", "validate", "--base-id"])
            .arg(unique_id().to_string())
            .arg("-c")
            .arg(bootstrap)
            .output()
            .context("run envoy --mode validate")?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok((out.status, text))
    }

    /// Polls `probe` until it yields; fails with Envoy's log tail if Envoy exits or
    /// `timeout` passes first.
    pub async fn wait<T, F, Fut>(
        &mut self,
        what: &str,
        timeout: Duration,
        probe: F,
    ) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let child = &mut self.child;
        let found = wait_until(
            timeout,
            || child.exited().map(|s| format!("exited with {s}")),
            probe,
        )
        .await;
        found.map_err(|why| self.child.failure(&format!("waiting for {what}: {why}")))
    }

    /// The address listener `name` is bound to, once it is (waits up to [`READY_TIMEOUT`]).
    pub async fn listener(&mut self, name: &str) -> anyhow::Result<SocketAddr> {
        let admin = self.admin;
        self.wait(&format!("listener {name}"), READY_TIMEOUT, || async move {
            admin::listener(admin, name).await.ok().flatten()
        })
        .await
    }

    /// The listeners it has bound now, by name, in the order admin reports them.
    pub async fn listeners(&self) -> anyhow::Result<Vec<(String, SocketAddr)>> {
        admin::listeners(self.admin).await
    }

    /// GET an admin path: the body, whatever the status.
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<String> {
        Ok(admin::get(self.admin, path).await?.1)
    }

    /// Admin `/stats/prometheus`.
    pub async fn prometheus(&self) -> anyhow::Result<String> {
        self.admin_get("/stats/prometheus").await
    }

    /// The values of the counters whose name contains `filter`, summed.
    pub async fn counter_sum(&self, filter: &str) -> anyhow::Result<u64> {
        let (status, text) = admin::get(self.admin, &format!("/stats?filter={filter}")).await?;
        if status != 200 {
            bail!("admin /stats?filter={filter} answered {status}: {text}");
        }
        Ok(text
            .lines()
            .filter_map(|l| l.rsplit_once(": "))
            .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
            .sum())
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        self.child.log()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.child.log_tail(lines)
    }

    /// `Some(status)` once Envoy has exited (it must not: a crashed filter VM may take it
    /// down).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.exited()
    }

    /// A readable failure: what went wrong, the exit status if any, and the log tail.
    pub fn failure(&mut self, what: &str) -> anyhow::Error {
        self.child.failure(what)
    }

    /// Envoy's pid (a wrapper's, which exec'd Envoy).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its work dir (bootstrap, log, and whatever a wrapper wrote there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// The address Envoy wrote to `path` (`--admin-address-path`), once it has.
fn admin_address(path: &Path) -> Option<SocketAddr> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether admin `/ready` answers 200 `LIVE`.
async fn live(admin: SocketAddr) -> bool {
    matches!(admin::get(admin, "/ready").await, Ok((200, body)) if body.trim() == "LIVE")
}

/// Envoy's version (`envoy --version`), e.g. `…/1.40.0/Clean/RELEASE/BoringSSL`.
pub fn version(binary: &Path) -> anyhow::Result<String> {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.split_once("version:").map(|(_, v)| v.trim().to_string()))
        .ok_or_else(|| anyhow!("no version in `envoy --version` output: {text}"))
}
