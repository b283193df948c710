//! The test matrix's upstream `tests/py/peer_server.py`: an MCP server written with the
//! official Python SDK (`mcp` 2.x) that speaks 2025-11-25 (with sessions, unless stateless)
//! and 2026-07-28 on one streamable HTTP endpoint, `/mcp`. Its tools call back into the
//! client (sampling, elicitation, roots), log and report progress; see the script's
//! docstring for the catalog.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use crate::artifacts::Artifacts;
use crate::ports::wait_until;
use crate::process::ChildGuard;
use crate::workdir::Workdir;

/// How long Python may take to import the SDK and bind (generous: CI machines are busy).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);

/// How the peer serves the 2025 era (the 2026-07-28 era is stateless either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PythonPeerMode {
    /// Sessions (`Mcp-Session-Id`): server-to-client requests work mid-call.
    Stateful,
    /// No sessions: every request stands alone, so sampling, elicitation and roots fail.
    Stateless,
}

/// A running `peer_server.py`; killed on drop.
#[derive(Debug)]
pub struct PythonPeer {
    child: ChildGuard,
    /// Where it listens (127.0.0.1, a port it picked itself).
    pub addr: SocketAddr,
    _dir: Workdir,
}

impl PythonPeer {
    /// Starts it on port 0 and waits for the URL it prints once it accepts connections
    /// (no port race: the peer binds first and reports what it got). Fails with its output
    /// tail if it exits or never reports.
    pub async fn start(artifacts: &Artifacts, mode: PythonPeerMode) -> anyhow::Result<Self> {
        let script = artifacts.repo_file("tests/py/peer_server.py")?;
        let dir = Workdir::new("python-peer")?;
        let mut cmd = Command::new(artifacts.python()?);
        cmd.arg(script).arg("0");
        if mode == PythonPeerMode::Stateless {
            cmd.arg("--stateless");
        }
        let mut child = ChildGuard::spawn("peer_server.py", cmd, &dir.file("out.log"))?;
        let found = {
            let c = &mut child;
            let log = dir.file("out.log");
            wait_until(
                STARTUP_TIMEOUT,
                || c.exited().map(|s| format!("exited with {s}")),
                || {
                    let log = log.clone();
                    async move { reported_addr(&std::fs::read_to_string(log).ok()?) }
                },
            )
            .await
        };
        match found {
            Ok(addr) => Ok(Self {
                child,
                addr,
                _dir: dir,
            }),
            Err(why) => Err(child.failure(&format!("never reported its URL: {why}"))),
        }
    }

    /// `http://<addr>/mcp`.
    pub fn mcp_url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// Its output so far (the SDK's and uvicorn's logs).
    pub fn log(&self) -> String {
        self.child.log()
    }
}

/// The address in the `http://127.0.0.1:<port>/mcp` line the peer prints when ready.
fn reported_addr(log: &str) -> Option<SocketAddr> {
    log.lines().find_map(|l| {
        l.trim()
            .strip_prefix("http://")?
            .strip_suffix("/mcp")?
            .parse()
            .ok()
    })
}

/// Runs `tests/py/peer_client.py` against `url` in `era` (`2025-11-25` or `2026-07-28`)
/// with `extra` arguments (`--prefix`, `--scenario`, `--timeout`, `--dump-catalog`) and
/// returns the JSON document it prints. Fails only if the client itself cannot run:
/// scenarios that fail are reported inside the document.
pub async fn run_peer_client(
    artifacts: &Artifacts,
    url: &str,
    era: &str,
    extra: &[&str],
) -> anyhow::Result<serde_json::Value> {
    let script = artifacts.repo_file("tests/py/peer_client.py")?;
    let out = tokio::process::Command::new(artifacts.python()?)
        .arg(script)
        .args([url, "--era", era])
        .args(extra)
        .kill_on_drop(true)
        .output()
        .await
        .context("run peer_client.py")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        anyhow::bail!(
            "peer_client.py {era} {url} failed ({}):\n{}\n{}",
            out.status,
            stdout,
            crate::process::tail(&String::from_utf8_lossy(&out.stderr), 40)
        );
    }
    serde_json::from_str(stdout.trim())
        .with_context(|| format!("peer_client.py printed no JSON document: {stdout}"))
}

#[cfg(test)]
mod tests {
    use super::reported_addr;

    #[test]
    fn the_ready_line_gives_the_address() {
        let log = "StreamableHTTP session manager started\nhttp://127.0.0.1:4242/mcp\n";
        assert_eq!(reported_addr(log), Some(([127, 0, 0, 1], 4242).into()));
        assert_eq!(reported_addr("http://127.0.0.1:/mcp\nstarting"), None);
    }
}
