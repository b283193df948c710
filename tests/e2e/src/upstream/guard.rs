//! The reference external guardrail `tests/py/guard_service.py`: a gRPC server (Python
//! grpcio) implementing `mcpgw.guard.v1.Guardrail` from the repository's .proto. It denies
//! arguments carrying a word, redacts `secret-…` arguments, masks a result field and
//! `secret-…` words in results, and sleeps when an argument asks it to (see the script).

use std::net::SocketAddr;
use std::process::Command;

use serde_json::Value;

use crate::artifacts::Artifacts;
use crate::ports::wait_until;
use crate::process::ChildGuard;
use crate::upstream::python::STARTUP_TIMEOUT;
use crate::workdir::Workdir;

/// A running `guard_service.py`; killed on drop.
#[derive(Debug)]
pub struct GuardService {
    child: ChildGuard,
    /// Where it serves gRPC (plaintext HTTP/2 on 127.0.0.1).
    pub addr: SocketAddr,
    log: std::path::PathBuf,
    _dir: Workdir,
}

impl GuardService {
    /// Starts it, denying arguments that carry `deny_word` and masking result members
    /// named `mask_field`; waits for the port it reports.
    pub async fn start(
        artifacts: &Artifacts,
        deny_word: &str,
        mask_field: &str,
    ) -> anyhow::Result<Self> {
        let script = artifacts.repo_file("tests/py/guard_service.py")?;
        let proto = artifacts.repo_file("proto")?;
        let dir = Workdir::new("guard-service")?;
        let log = dir.file("out.log");
        let mut cmd = Command::new(artifacts.python()?);
        cmd.arg(script)
            .arg(proto)
            .args(["--deny", deny_word, "--mask", mask_field]);
        let mut child = ChildGuard::spawn("guard_service.py", cmd, &log)?;
        let found = {
            let c = &mut child;
            let log = log.clone();
            wait_until(
                STARTUP_TIMEOUT,
                || c.exited().map(|s| format!("exited with {s}")),
                || {
                    let log = log.clone();
                    async move { reported_port(&std::fs::read_to_string(log).ok()?) }
                },
            )
            .await
        };
        match found {
            Ok(port) => Ok(Self {
                child,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                log,
                _dir: dir,
            }),
            Err(why) => Err(child.failure(&format!("never reported its port: {why}"))),
        }
    }

    /// Every check it answered so far, in order (`plugin`, `hook`, `method`, `server`,
    /// `name`, `subject`, `request_id`, `verdict`).
    pub fn checks(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("verdict").is_some())
            .collect()
    }

    /// Stops it (a service that is down).
    pub fn stop(&mut self) {
        self.child.kill();
    }
}

/// The port in the `{"port": N}` line the service prints when it serves.
fn reported_port(log: &str) -> Option<u16> {
    log.lines().find_map(|l| {
        let v: Value = serde_json::from_str(l.trim()).ok()?;
        u16::try_from(v.get("port")?.as_u64()?).ok()
    })
}
