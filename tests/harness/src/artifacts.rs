//! Where the harness finds Envoy, the filter, Python and the npm peers.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Paths of the external artifacts the end-to-end tests run.
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// Repository root.
    pub repo: PathBuf,
    /// Envoy binary (`MCPGW_ENVOY`, default `<repo>/.venv/bin/envoy`).
    pub envoy: PathBuf,
    /// Filter module (`MCPGW_WASM`, default the release `wasm32-wasip1` build).
    pub wasm: PathBuf,
    /// Python with the `mcp` SDK (`MCPGW_PYTHON`, default `<repo>/.venv/bin/python`).
    pub python: PathBuf,
    /// npm peers (`MCPGW_NODE_MODULES`, default `<repo>/tests/node/node_modules`).
    pub node_modules: PathBuf,
}

impl Artifacts {
    /// Resolves every path from the environment or its default; does not check existence.
    pub fn from_env() -> Self {
        // Every test and tool starts here, before any HTTP client exists.
        crate::init_tls();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .canonicalize()
            .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."));
        let pick = |var: &str, default: PathBuf| {
            std::env::var_os(var)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or(default)
        };
        Self {
            envoy: pick("MCPGW_ENVOY", repo.join(".venv/bin/envoy")),
            wasm: pick(
                "MCPGW_WASM",
                repo.join("target/wasm32-wasip1/release/mcpgw_filter.wasm"),
            ),
            python: pick("MCPGW_PYTHON", repo.join(".venv/bin/python")),
            node_modules: pick("MCPGW_NODE_MODULES", repo.join("tests/node/node_modules")),
            repo,
        }
    }

    /// The Envoy binary, or an error telling how to install it.
    pub fn envoy(&self) -> anyhow::Result<&Path> {
        require(&self.envoy, "Envoy (run `make deps`, or set MCPGW_ENVOY)")
    }

    /// The filter module, or an error telling how to build it.
    pub fn wasm(&self) -> anyhow::Result<&Path> {
        require(
            &self.wasm,
            "the mcpgw filter (run `make wasm`, or set MCPGW_WASM)",
        )
    }

    /// The virtualenv's Python, or an error telling how to install it.
    pub fn python(&self) -> anyhow::Result<&Path> {
        require(
            &self.python,
            "the test virtualenv (run `make deps`, or set MCPGW_PYTHON)",
        )
    }

    /// The entry point of `@modelcontextprotocol/server-everything`.
    pub fn server_everything(&self) -> anyhow::Result<PathBuf> {
        let entry = self
            .node_modules
            .join("@modelcontextprotocol/server-everything/dist/index.js");
        require(
            &entry,
            "server-everything (run `make deps`, or set MCPGW_NODE_MODULES)",
        )?;
        Ok(entry)
    }

    /// A file in the repository, which must exist.
    pub fn repo_file(&self, rel: &str) -> anyhow::Result<PathBuf> {
        let p = self.repo.join(rel);
        require(&p, rel)?;
        p.canonicalize()
            .with_context(|| format!("canonicalize {}", p.display()))
    }
}

fn require<'a>(path: &'a Path, what: &str) -> anyhow::Result<&'a Path> {
    if !path.exists() {
        bail!("{what}: {} does not exist", path.display());
    }
    Ok(path)
}
