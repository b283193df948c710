//! `mcpgw issuers|policies|limits|plugins`: what the edge enforces besides the catalog
//! (`api::policies`). Each has `list`, `get NAME`, `set NAME -f FILE` (the settings as JSON
//! or YAML, `-` for stdin: the `spec` a `get` shows) and `rm NAME`. Policies and limits are
//! named by their virtual server (id or name); `limits` also takes `default`. Issuers also
//! have `refresh NAME`: fetch the issuer's keys now and publish them to the edge.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::Value;

use super::{ApiArgs, Client, print};

/// The verbs of each kind.
#[derive(Debug, Subcommand)]
pub enum EdgeCmd {
    /// List them.
    List,
    /// Show one.
    Get {
        /// Issuer or plugin name; virtual server id or name (`default` for the default
        /// limits).
        name: String,
    },
    /// Create or replace one from a file (JSON or YAML; `-` reads stdin).
    Set {
        /// Issuer or plugin name; virtual server id or name (`default` for the default
        /// limits).
        name: String,
        /// The settings.
        #[arg(short = 'f', long)]
        file: PathBuf,
    },
    /// Issuers only: fetch the issuer's keys now (a new key was published, or tokens name
    /// an unknown `kid`) and publish them to the edge; at most once per 30 s per issuer.
    Refresh {
        /// Issuer name.
        name: String,
    },
    /// Delete one.
    Rm {
        /// Issuer or plugin name; virtual server id or name (`default` for the default
        /// limits).
        name: String,
    },
}

/// The kinds, by their API path.
#[derive(Debug, Clone, Copy)]
pub enum EdgeKind {
    /// `/issuers`.
    Issuers,
    /// `/policies`.
    Policies,
    /// `/limits`.
    Limits,
    /// `/plugins`.
    Plugins,
}

impl EdgeKind {
    fn path(self) -> &'static str {
        match self {
            EdgeKind::Issuers => "/issuers",
            EdgeKind::Policies => "/policies",
            EdgeKind::Limits => "/limits",
            EdgeKind::Plugins => "/plugins",
        }
    }

    /// Whether items are named by virtual server.
    fn by_server(self) -> bool {
        matches!(self, EdgeKind::Policies | EdgeKind::Limits)
    }
}

const COLS: &[(&str, &str)] = &[("NAME", "name"), ("UPDATED", "updated_at")];
const REFRESH_COLS: &[(&str, &str)] = &[
    ("ISSUER", "issuer"),
    ("KIDS", "kids"),
    ("CHANGED", "changed"),
    ("NEXT_REFRESH_S", "next_refresh_seconds"),
];

impl Client {
    async fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.put(format!("{}{path}", self.base)).json(body))
            .await
    }
}

/// Reads a JSON or YAML document (`-`: stdin).
fn read_doc(file: &PathBuf) -> anyhow::Result<Value> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading stdin")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    match serde_json::from_str(&text) {
        Ok(v) => Ok(v),
        Err(_) => serde_yaml_ng::from_str(&text)
            .with_context(|| format!("{} is neither JSON nor YAML", file.display())),
    }
}

/// Runs one verb on one kind.
pub async fn run(kind: EdgeKind, api: &ApiArgs, cmd: EdgeCmd) -> anyhow::Result<()> {
    let c = Client::new(api)?;
    let item = |name: &str| {
        let c = &c;
        let name = name.to_owned();
        async move {
            if kind.by_server() && !(matches!(kind, EdgeKind::Limits) && name == "default") {
                let id = c.resolve("/servers", &name).await?;
                Ok::<_, anyhow::Error>(format!("{}/{id}", kind.path()))
            } else {
                Ok(format!("{}/{name}", kind.path()))
            }
        }
    };
    match cmd {
        EdgeCmd::List => {
            let v = c.get(kind.path()).await?;
            print(api.output, &v["items"], COLS)
        }
        EdgeCmd::Get { name } => {
            let v = c.get(&item(&name).await?).await?;
            print(api.output, &v, COLS)
        }
        EdgeCmd::Set { name, file } => {
            let doc = read_doc(&file)?;
            let v = c.put(&item(&name).await?, &doc).await?;
            print(api.output, &v, COLS)
        }
        EdgeCmd::Refresh { name } => {
            if !matches!(kind, EdgeKind::Issuers) {
                anyhow::bail!("refresh applies to issuers only");
            }
            let path = format!("{}/refresh", item(&name).await?);
            let v = c.post(&path, &serde_json::json!({})).await?;
            print(api.output, &v, REFRESH_COLS)
        }
        EdgeCmd::Rm { name } => {
            let path = item(&name).await?;
            c.delete(&path).await?;
            println!("deleted {}", path.trim_start_matches('/'));
            Ok(())
        }
    }
}
