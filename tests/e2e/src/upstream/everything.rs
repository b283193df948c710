//! The reference server `@modelcontextprotocol/server-everything` in streamable HTTP mode
//! (`PORT=<n> node dist/index.js streamableHttp`, serving `/mcp`).

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use crate::artifacts::Artifacts;
use crate::ports::{accepts, free_port, wait_until};
use crate::process::ChildGuard;
use crate::workdir::Workdir;

/// How long node may take to start it (generous: CI machines are small and busy).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);

/// A running server-everything; killed on drop.
#[derive(Debug)]
pub struct ServerEverything {
    child: ChildGuard,
    /// Where it listens (it binds all interfaces; the tests use loopback only).
    pub addr: SocketAddr,
    _dir: Workdir,
}

impl ServerEverything {
    /// Starts it on a free port (retrying if the port was taken meanwhile) and waits until
    /// it accepts connections. Fails with its output tail if it cannot start.
    pub async fn start(artifacts: &Artifacts) -> anyhow::Result<Self> {
        let entry = artifacts.server_everything()?;
        let mut last = None;
        for _ in 0..5 {
            let dir = Workdir::new("everything")?;
            let port = free_port()?;
            let mut cmd = Command::new("node");
            cmd.arg(&entry)
                .arg("streamableHttp")
                .env("PORT", port.to_string());
            let mut child =
                ChildGuard::spawn("server-everything (node)", cmd, &dir.file("out.log"))?;
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let up = {
                let c = &mut child;
                wait_until(
                    STARTUP_TIMEOUT,
                    || c.exited().map(|s| format!("exited with {s}")),
                    || async move { accepts(addr).then_some(()) },
                )
                .await
            };
            match up {
                Ok(()) => {
                    return Ok(Self {
                        child,
                        addr,
                        _dir: dir,
                    });
                }
                Err(why) => {
                    let in_use = child.log().contains("EADDRINUSE")
                        || child.log().contains("already in use");
                    let err = child.failure(&format!("did not start: {why}"));
                    if !in_use {
                        return Err(err);
                    }
                    last = Some(err);
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("server-everything did not start")))
    }

    /// `http://<addr>/mcp`.
    pub fn mcp_url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// Its output so far.
    pub fn log(&self) -> String {
        self.child.log()
    }
}
