//! The standalone edge: the same cases, with Envoy as the standalone Kubernetes overlay runs
//! it. `MCPGW_E2E_EDGE=standalone` ([`EdgeMode`]) makes [`crate::Envoy::start`] start a real
//! control plane (`mcpgw serve`, SQLite, `MCPGW_BIN`) holding the registry the case's
//! filter configuration describes, and an Envoy started from
//! `manifests/standalone/envoy-bootstrap.yaml` (the ConfigMap `mcpgw-envoy-bootstrap`, which
//! kustomize's `configMapGenerator` ships byte for byte) that gets its listener, routes,
//! clusters and filter configuration over ADS with mutual TLS from it.
//!
//! What differs between a pod and this machine is substituted in the bootstrap, nothing
//! else: the `mcpgw-xds` Service's DNS name and port (the control plane's xDS address on
//! 127.0.0.1), the admin port (9901 → ephemeral: tests run side by side) and the mount
//! directory of the Secret `mcpgw-envoy-tls` (`/etc/mcpgw/tls/` → a directory holding
//! certificates made by the `openssl` CLI under the Secret's key names). The control plane
//! runs with the overlay's `mcpgw.toml` (the ConfigMap `mcpgw-config`), likewise pointed
//! at this machine ([`manifest_control_plane_config`]).
//!
//! The registry is the case's snapshot read back as an operator would have written it:
//! each upstream a gateway (`POST /gateways` at the address of the cluster it names, so
//! the control plane discovers it), each virtual server a server over the discovered
//! items the snapshot lists (`POST /servers`), the snapshot's `policy` the control plane's
//! `--edge-policy` file, its local limits `PUT /limits/…`. A virtual server's id is the
//! control plane's, not the snapshot's key: [`crate::Envoy::url`] maps `/servers/{key}/…`
//! to it. The passthrough path (`/mcp`: the static default route's cluster, and those the
//! route header reaches) is the control plane's `--edge-passthrough` gateway and gateways
//! `tool_routes` names ([`passthrough`]); the snapshot's guardrail plugins are
//! `PUT /plugins/{name}`, an external one's gRPC cluster its `target` ([`plugins`]).
//! Issuers, revocations and authorization policies are translated by [`identity`], session
//! lifetimes (control-plane flags) by [`sessions`]. A configuration the registry cannot
//! express, or that this harness does not translate (static routes that rewrite paths, gRPC
//! clusters no plugin names, HTTP filters other than the `jwt_authn` the control plane
//! generates, cluster credentials, upstream identities), is refused with the reason: such
//! cases are not run in this mode (the Makefile's `E2E_STANDALONE_CASES` lists those that
//! are).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow, bail, ensure};
use mcpgw_harness::ports::wait_until;
use mcpgw_harness::{ChildGuard, Launch, Workdir};
use serde_json::{Value, json};

use crate::artifacts::Artifacts;
use crate::envoy::EnvoyConfig;

mod identity;
mod passthrough;
mod plugins;
mod sessions;

/// Environment variable that picks the [`EdgeMode`].
pub const EDGE_MODE_VAR: &str = "MCPGW_E2E_EDGE";

/// How the cases' Envoy is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeMode {
    /// A static bootstrap the harness writes with the filter configuration inline (default).
    Static,
    /// The standalone overlay's ADS-only bootstrap following a real control plane.
    Standalone,
}

impl EdgeMode {
    /// From [`EDGE_MODE_VAR`]: unset, empty or `static`, or `standalone`.
    pub fn from_env() -> anyhow::Result<EdgeMode> {
        match std::env::var(EDGE_MODE_VAR).as_deref() {
            Err(_) | Ok("" | "static") => Ok(EdgeMode::Static),
            Ok("standalone") => Ok(EdgeMode::Standalone),
            Ok(other) => bail!("{EDGE_MODE_VAR}={other:?}: expected `static` or `standalone`"),
        }
    }
}

/// The overlay's bootstrap, relative to the repository root.
pub const BOOTSTRAP: &str = "manifests/standalone/envoy-bootstrap.yaml";
/// The node id in [`BOOTSTRAP`] (a pod overrides it with `--service-node $(POD_NAME)`).
pub const NODE: &str = "mcpgw-envoy-0";
/// The name of the MCP listener the control plane sends.
pub const LISTENER: &str = "mcpgw";
/// The ECDS type, whose acked version is the registry version the filter runs.
const ECDS: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
/// Every type the control plane sends to its own Envoys.
const TYPES: [&str; 4] = [
    "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "type.googleapis.com/envoy.config.listener.v3.Listener",
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
    ECDS,
];
/// How long the control plane may take to start and Envoy to converge on the registry.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(120);

/// The overlay's bootstrap pointed at `xds` (the control plane), an ephemeral admin port
/// and the certificate files in `tls_dir` (named as the Secret names them). Fails when the
/// file no longer has what is substituted.
pub fn manifest_bootstrap(
    artifacts: &Artifacts,
    xds: SocketAddr,
    tls_dir: &Path,
) -> anyhow::Result<String> {
    let path = artifacts.repo_file(BOOTSTRAP)?;
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let (service, admin, files) = (
        "address: mcpgw-xds.mcpgw.svc.cluster.local, port_value: 18000 }",
        "port_value: 9901 }",
        "/etc/mcpgw/tls/",
    );
    ensure!(
        [service, admin, files, &format!("id: {NODE} ")]
            .iter()
            .all(|s| text.contains(s)),
        "{BOOTSTRAP} no longer has the Service address, admin port, Secret mount and node id the harness substitutes"
    );
    Ok(text
        .replace(
            service,
            &format!("address: {}, port_value: {} }}", xds.ip(), xds.port()),
        )
        .replace(admin, "port_value: 0 }")
        .replace(files, &format!("{}/", tls_dir.display())))
}

/// The `mcpgw` binary (`MCPGW_BIN`, default `<repo>/target/debug/mcpgw`).
fn mcpgw_binary(artifacts: &Artifacts) -> anyhow::Result<PathBuf> {
    let bin = std::env::var_os("MCPGW_BIN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| artifacts.repo.join("target/debug/mcpgw"));
    ensure!(
        bin.exists(),
        "the control plane binary {} does not exist (cargo build -p mcpgw --bin mcpgw, or set MCPGW_BIN)",
        bin.display()
    );
    Ok(bin)
}

/// A distinct `--base-id` per Envoy of this process (the pod runs Envoy with hot restart
/// enabled, as here): 64 000 + pid % 1000, plus one per Envoy started.
fn base_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    64_000 + std::process::id() % 1000 + NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A CA, the control plane's certificate (DNS `mcpgw-control-plane`, as the bootstrap's
/// SNI and SAN check want, and IP 127.0.0.1) and the Envoy's client certificate, by the
/// `openssl` CLI, in two directories named after the Secrets they stand for and holding
/// their keys as cert-manager names them (`ca.crt`, `tls.crt`, `tls.key`):
/// `mcpgw-xds-tls/` (the control plane's) and `mcpgw-envoy-tls/` (the Envoy's).
fn make_pki(dir: &Path) -> anyhow::Result<()> {
    mcpgw_harness::pki::issue(dir, "mcpgw-e2e-ca", "mcpgw-control-plane")?;
    for (secret, leaf) in [(XDS_SECRET, "server"), (ENVOY_SECRET, "envoy")] {
        let to = dir.join(secret);
        std::fs::create_dir_all(&to)?;
        std::fs::copy(dir.join("ca.pem"), to.join("ca.crt"))?;
        std::fs::copy(dir.join(format!("{leaf}.pem")), to.join("tls.crt"))?;
        std::fs::copy(dir.join(format!("{leaf}.key")), to.join("tls.key"))?;
    }
    Ok(())
}

/// The control plane's Secret (mounted at `/etc/mcpgw/tls` in its pod).
const XDS_SECRET: &str = "mcpgw-xds-tls";
/// The Envoy's Secret (mounted at `/etc/mcpgw/tls` in its pod).
const ENVOY_SECRET: &str = "mcpgw-envoy-tls";
/// The overlay's control-plane configuration (the ConfigMap `mcpgw-config`).
pub const CONTROL_PLANE_CONFIG: &str = "manifests/standalone/mcpgw.toml";

/// Where the control plane of one case listens, and what it reads.
struct Placement<'a> {
    api: SocketAddr,
    xds: SocketAddr,
    envoy: SocketAddr,
    wasm: &'a Path,
    /// Holds [`XDS_SECRET`] and [`ENVOY_SECRET`].
    pki: &'a Path,
}

/// The overlay's `mcpgw.toml` with what a pod's Services, image and mounts provide
/// replaced by this machine's: listen addresses on 127.0.0.1 (the Envoy's listener
/// included), the filter module's path, the two Secrets' mount directories. The session
/// relay and the rate-limit service are turned off (and their advertised Service names
/// dropped): the cases' snapshots have neither, and the rate-limit service needs Redis.
/// Fails when a key it substitutes is missing.
fn manifest_control_plane_config(text: &str, at: &Placement<'_>) -> anyhow::Result<String> {
    let secret = |name: &str, file: &str| at.pki.join(name).join(file).display().to_string();
    let set: BTreeMap<&str, Option<String>> = BTreeMap::from([
        ("listen", Some(at.api.to_string())),
        ("xds_listen", Some(at.xds.to_string())),
        ("relay_listen", Some("off".to_owned())),
        ("relay_advertise", None),
        ("ratelimit_listen", Some("off".to_owned())),
        ("ratelimit_advertise", None),
        ("envoy_listen", Some(at.envoy.to_string())),
        ("filter_wasm", Some(at.wasm.display().to_string())),
        ("tls_cert", Some(secret(XDS_SECRET, "tls.crt"))),
        ("tls_key", Some(secret(XDS_SECRET, "tls.key"))),
        ("tls_client_ca", Some(secret(XDS_SECRET, "ca.crt"))),
        ("envoy_tls_ca", Some(secret(ENVOY_SECRET, "ca.crt"))),
        ("envoy_tls_cert", Some(secret(ENVOY_SECRET, "tls.crt"))),
        ("envoy_tls_key", Some(secret(ENVOY_SECRET, "tls.key"))),
    ]);
    let mut seen = Vec::new();
    let mut out = String::new();
    for line in text.lines() {
        let key = line.split_once('=').map(|(k, _)| k.trim());
        match key.and_then(|k| set.get_key_value(k)) {
            Some((key, value)) => {
                seen.push(*key);
                if let Some(value) = value {
                    out.push_str(&format!("{key} = {}\n", Value::String(value.clone())));
                }
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    let missing: Vec<&&str> = set.keys().filter(|k| !seen.contains(k)).collect();
    ensure!(
        missing.is_empty(),
        "{CONTROL_PLANE_CONFIG} no longer sets {missing:?}, which the harness substitutes"
    );
    Ok(out)
}

/// One gateway to register: the snapshot's upstream key and the URL of its cluster.
#[derive(Debug, Clone, PartialEq)]
struct GatewayPlan {
    name: String,
    url: String,
}

/// One virtual server to create: its snapshot key, its name, and its items as
/// `(upstream key, the upstream's own name or URI)`.
#[derive(Debug, Clone, PartialEq)]
struct ServerPlan {
    key: String,
    name: String,
    naming: &'static str,
    allowed_origins: Vec<String>,
    tools: Vec<(String, String)>,
    resources: Vec<(String, String)>,
    prompts: Vec<(String, String)>,
}

/// The registry a case's Envoy configuration describes.
#[derive(Debug, Clone, PartialEq)]
struct RegistryPlan {
    /// The snapshot's `policy`, for `--edge-policy`.
    policy: Value,
    /// Limits by server key, and `default` (the snapshot's `limits`).
    limits: BTreeMap<String, Value>,
    gateways: Vec<GatewayPlan>,
    servers: Vec<ServerPlan>,
    /// The gateway `/mcp` goes to (`--edge-passthrough`).
    passthrough: String,
    /// `PUT /plugins/{name}` bodies.
    plugins: Vec<Value>,
    /// Issuers, revocations and policies ([`identity`]).
    identity: identity::IdentityPlan,
    /// `mcpgw serve` flags: the session lifetimes ([`sessions`]).
    flags: Vec<String>,
}

/// Reads the registry out of `config`; an error says what the registry cannot express.
fn plan(config: &EnvoyConfig) -> anyhow::Result<RegistryPlan> {
    let text = config.filter_config.as_deref().unwrap_or("").trim();
    let snapshot: Value = if text.is_empty() {
        json!({})
    } else {
        serde_json::from_str(text).context("the filter configuration is not JSON")?
    };
    let doc = snapshot
        .as_object()
        .ok_or_else(|| anyhow!("the filter configuration is not a JSON object"))?;
    for key in doc.keys() {
        match key.as_str() {
            "version" | "schema" | "policy" | "upstreams" | "servers" | "plugins" | "auth" => {}
            // The control plane derives the session key from its own encryption key; the
            // lifetimes are its flags.
            "session" => {}
            // Local limits are the registry's own (`PUT /limits/…`); the rate-limit service
            // is the control plane's, not a registry entry.
            "limits" => {
                for key in doc["limits"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k)
                {
                    ensure!(
                        key == "servers" || key == "default",
                        "limits.{key}: the rate-limit service is a control-plane setting"
                    );
                }
            }
            other => bail!("`{other}` is not translated into the registry by this harness"),
        }
    }
    let no_servers = serde_json::Map::new();
    let servers = doc
        .get("servers")
        .and_then(Value::as_object)
        .unwrap_or(&no_servers);
    let identity = identity::plan(doc, config)?;
    let flags = sessions::control_plane_flags(doc.get("session").unwrap_or(&Value::Null))?;
    for route in &config.routes {
        ensure!(
            route.prefix == "/" && route.prefix_rewrite.is_none() && route.header.is_some(),
            "static route {route:?}: the control plane's routes follow the filter's route header, and its one passthrough endpoint is `/mcp` (no path mounts another upstream)"
        );
    }
    // The operator's edge policy, verbatim but for `tool_routes` naming gateways.
    let mut policy = doc.get("policy").cloned().unwrap_or_else(|| json!({}));
    let cluster_addr = |name: &str| -> anyhow::Result<SocketAddr> {
        let c = config
            .clusters
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| anyhow!("upstream cluster {name:?} is not in the Envoy config"))?;
        ensure!(
            c.headers.is_none(),
            "cluster {name:?} sets credentials: upstream credentials are gateway settings"
        );
        Ok(c.addr)
    };
    let mut gateways = Vec::new();
    for (key, up) in doc
        .get("upstreams")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        for field in up.as_object().into_iter().flatten().map(|(k, _)| k) {
            if field == "identity" {
                return Err(identity::upstream_identity(key, &up[field]));
            }
            ensure!(
                matches!(
                    field.as_str(),
                    "cluster" | "path" | "authority" | "protocol_versions"
                ),
                "upstream {key}: `{field}` is not translated into the registry"
            );
        }
        let cluster = up["cluster"]
            .as_str()
            .ok_or_else(|| anyhow!("upstream {key} names no cluster"))?;
        let path = up["path"].as_str().unwrap_or("/mcp");
        gateways.push(GatewayPlan {
            name: key.clone(),
            url: format!("http://{}{path}", cluster_addr(cluster)?),
        });
    }
    let pass = passthrough::plan(config, doc, &gateways, &mut policy)?;
    gateways.extend(pass.gateways);
    let plugins = plugins::plan(config, doc)?;
    let mut planned = Vec::new();
    for (key, server) in servers {
        for field in server.as_object().into_iter().flatten().map(|(k, _)| k) {
            ensure!(
                matches!(
                    field.as_str(),
                    "name"
                        | "version"
                        | "tools"
                        | "resources"
                        | "resource_templates"
                        | "prompts"
                        | "allowed_origins"
                        | "auth"
                ),
                "server {key}: `{field}` is not translated into the registry"
            );
        }
        let entries = |kind: &str| -> Vec<(String, String, String)> {
            server[kind]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    let s = |f: &str| e[f].as_str().unwrap_or_default().to_owned();
                    (s("name"), s("upstream"), s("upstream_name"))
                })
                .collect()
        };
        let (tools, prompts) = (entries("tools"), entries("prompts"));
        let resources: Vec<_> = entries("resources")
            .into_iter()
            .chain(entries("resource_templates"))
            .collect();
        let named = tools.iter().chain(&prompts);
        let naming = if named.clone().all(|(n, _, own)| n == own) {
            "upstream"
        } else if named
            .clone()
            .all(|(n, up, own)| *n == format!("{up}__{own}"))
        {
            "prefixed"
        } else {
            bail!(
                "server {key}: names the control plane would not give (neither `upstream__name` nor the upstream's own)"
            )
        };
        let pairs =
            |v: Vec<(String, String, String)>| v.into_iter().map(|(_, u, o)| (u, o)).collect();
        planned.push(ServerPlan {
            key: key.clone(),
            name: server["name"].as_str().unwrap_or(key).to_owned(),
            naming,
            allowed_origins: server["allowed_origins"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|o| o.as_str().map(str::to_owned))
                .collect(),
            tools: pairs(tools),
            resources: pairs(resources),
            prompts: pairs(prompts),
        });
    }
    let mut limits: BTreeMap<String, Value> = doc
        .get("limits")
        .and_then(|l| l.get("servers"))
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(default) = doc.get("limits").and_then(|l| l.get("default")) {
        limits.insert("default".to_owned(), default.clone());
    }
    for key in limits.keys() {
        ensure!(
            key == "default" || servers.contains_key(key),
            "limits for {key}, which is no virtual server"
        );
    }
    Ok(RegistryPlan {
        policy,
        limits,
        gateways,
        servers: planned,
        passthrough: pass.gateway,
        plugins,
        identity,
        flags,
    })
}

/// A control plane holding a case's registry, and what the Envoy following it needs.
#[derive(Debug)]
pub struct Standalone {
    cp: ChildGuard,
    /// The control plane's admin API (`http://127.0.0.1:PORT`).
    pub api: String,
    /// Its xDS address.
    pub xds: SocketAddr,
    /// Virtual server ids by the snapshot's key.
    pub servers: BTreeMap<String, String>,
    admin: reqwest::Client,
    /// The `--base-id` of the Envoy following it.
    base_id: Option<u32>,
    // Last: the data directory and the certificates outlive the control plane.
    dir: Workdir,
}

impl Drop for Standalone {
    /// Envoy (dropped before this: [`crate::Envoy`] holds it first) is killed, so it never
    /// removes the shared-memory region hot restart made: remove it here.
    fn drop(&mut self) {
        if let Some(id) = self.base_id {
            let _ = std::fs::remove_file(format!("/dev/shm/envoy_shared_memory_{}", id * 10));
        }
    }
}

impl Standalone {
    /// Starts the control plane for `config` and registers its registry; then the Envoy of
    /// the overlay, following it, once it has acked the registry and bound the listener.
    pub async fn start(
        artifacts: &Artifacts,
        config: &EnvoyConfig,
        workers: u32,
    ) -> anyhow::Result<(Standalone, mcpgw_harness::Envoy, SocketAddr)> {
        let plan = plan(config).context("this case cannot run in standalone mode")?;
        let mut cp =
            Standalone::control_plane(artifacts, &plan.policy, &plan.passthrough, &plan.flags)
                .await?;
        cp.register(&plan).await?;
        cp.put_plugins(&plan.plugins).await?;
        let bootstrap = manifest_bootstrap(artifacts, cp.xds, &cp.dir.path().join(ENVOY_SECRET))?;
        let id = base_id();
        cp.base_id = Some(id);
        let launch = Launch::new(artifacts.envoy()?)
            .name("envoy-standalone")
            .workers(workers)
            .base_id(id);
        let mut envoy = mcpgw_harness::Envoy::spawn(launch, &bootstrap).await?;
        let version = cp.registry_version().await?;
        let (http, nodes) = (cp.admin.clone(), format!("{}/xds/nodes", cp.api));
        envoy
            .wait(
                &format!("{NODE} to ack registry version {version}"),
                CONVERGE_TIMEOUT,
                || {
                    let (http, nodes, version) = (http.clone(), nodes.clone(), version.clone());
                    async move { acked(&http, &nodes, &version).await }
                },
            )
            .await
            .and_then(|acked| acked.map_err(|nack| anyhow!("{NODE} refused: {nack}")))
            .map_err(|e| e.context(format!("control plane log:\n{}", cp.cp.log_tail(30))))?;
        identity::check_jwt_authn(&envoy, config).await?;
        let listener = envoy.listener(LISTENER).await?;
        Ok((cp, envoy, listener))
    }

    /// `mcpgw serve` configured by the overlay's `mcpgw.toml`
    /// ([`manifest_control_plane_config`]), with what the Deployment takes from Secrets
    /// replaced by `--dev` (its fixed encryption key, an admin token in the data directory)
    /// and SQLite in a fresh data directory; loopback upstreams allowed (the cases' peers
    /// listen on 127.0.0.1), `policy` as the edge policy, no periodic resync. Returns once
    /// its admin API is ready.
    async fn control_plane(
        artifacts: &Artifacts,
        policy: &Value,
        passthrough: &str,
        flags: &[String],
    ) -> anyhow::Result<Standalone> {
        let bin = mcpgw_binary(artifacts)?;
        let dir = Workdir::new("standalone")?;
        make_pki(dir.path())?;
        let policy_file = dir.file("edge-policy.json");
        std::fs::write(&policy_file, serde_json::to_vec(policy)?)?;
        let data = dir.file("data");
        let wasm = artifacts.wasm()?.canonicalize()?;
        // Port 0 everywhere: the control plane logs what it bound, Envoy's admin reports its
        // listener, and no port is picked while another test could take it.
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let (api, xds, envoy) = (any, any, any);
        let overlay = artifacts.repo_file(CONTROL_PLANE_CONFIG)?;
        let toml = manifest_control_plane_config(
            &std::fs::read_to_string(&overlay)
                .with_context(|| format!("reading {}", overlay.display()))?,
            &Placement {
                api,
                xds,
                envoy,
                wasm: &wasm,
                pki: dir.path(),
            },
        )?;
        let config_file = dir.file("mcpgw.toml");
        std::fs::write(&config_file, toml)?;
        let mut cmd = Command::new(&bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_file)
            .args(["--dev", "--allow-loopback-upstreams", "--data-dir"])
            .arg(&data)
            .args(["--resync-interval", "0"])
            // The overlay's format too; said again because the bound addresses are read
            // from the log.
            .args(["--log-format", "json"])
            .arg("--edge-policy")
            .arg(&policy_file)
            .args(["--edge-passthrough", passthrough])
            .args(flags)
            .env_remove("DATABASE_URL")
            .env_remove("MCPGW_ENCRYPTION_KEY")
            .env_remove("MCPGW_CONFIG");
        let mut child = ChildGuard::spawn("mcpgw serve", cmd, &dir.file("mcpgw.log"))?;
        let bound = {
            let c = &mut child;
            let log = dir.file("mcpgw.log");
            wait_until(
                CONVERGE_TIMEOUT,
                || c.exited().map(|s| format!("exited with {s}")),
                || {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    let found = listening(&text, "admin API listening")
                        .zip(listening(&text, "xDS server listening"));
                    async move { found }
                },
            )
            .await
        };
        let (api, xds) = match bound {
            Ok(bound) => bound,
            Err(why) => return Err(child.failure(&format!("never listened: {why}"))),
        };
        let api = format!("http://{api}");
        let plain = reqwest::Client::builder().no_proxy().build()?;
        let ready = {
            let (c, url) = (&mut child, format!("{api}/ready"));
            wait_until(
                CONVERGE_TIMEOUT,
                || c.exited().map(|s| format!("exited with {s}")),
                || {
                    let (plain, url) = (plain.clone(), url.clone());
                    async move {
                        let r = plain.get(&url).send().await.ok()?;
                        r.status().is_success().then_some(())
                    }
                },
            )
            .await
        };
        if let Err(why) = ready {
            return Err(child.failure(&format!("admin API never ready: {why}")));
        }
        // `--dev` writes a platform-admin API token into the data directory.
        let token = std::fs::read_to_string(data.join("admin.token"))
            .context("reading the admin token `mcpgw serve --dev` writes")?;
        let admin = reqwest::Client::builder()
            .no_proxy()
            .default_headers(reqwest::header::HeaderMap::from_iter([(
                reqwest::header::AUTHORIZATION,
                reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))?,
            )]))
            .build()?;
        Ok(Standalone {
            cp: child,
            api,
            xds,
            servers: BTreeMap::new(),
            admin,
            base_id: None,
            dir,
        })
    }

    /// Sends one admin request; the JSON answer, which must have status `want`.
    async fn call(
        &mut self,
        req: reqwest::RequestBuilder,
        want: u16,
        what: &str,
    ) -> anyhow::Result<Value> {
        let r = req.send().await.with_context(|| what.to_owned())?;
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if status != want {
            return Err(self
                .cp
                .failure(&format!("{what}: status {status} (want {want}): {body}")));
        }
        Ok(body)
    }

    /// Registers the gateways (the control plane discovers their items) and creates the
    /// virtual servers over the items the snapshot lists.
    async fn register(&mut self, plan: &RegistryPlan) -> anyhow::Result<()> {
        // (upstream key, kind, the upstream's own name or URI) → item id
        let mut items: BTreeMap<(String, &str, String), String> = BTreeMap::new();
        for g in &plan.gateways {
            let req = self
                .admin
                .post(format!("{}/gateways", self.api))
                .json(&json!({"name": g.name, "url": g.url}));
            let created = self
                .call(req, 201, &format!("POST /gateways {}", g.name))
                .await?;
            let id = created["gateway"]["id"]
                .as_str()
                .ok_or_else(|| anyhow!("no gateway id in {created}"))?
                .to_owned();
            for kind in ["tools", "resources", "prompts"] {
                let req = self
                    .admin
                    .get(format!("{}/{kind}?gateway_id={id}&limit=500", self.api));
                let listed = self.call(req, 200, &format!("GET /{kind}")).await?;
                for item in listed["items"].as_array().into_iter().flatten() {
                    let own = item["uri"]
                        .as_str()
                        .filter(|_| kind == "resources")
                        .or(item["original_name"].as_str())
                        .unwrap_or_default();
                    if let Some(item_id) = item["id"].as_str() {
                        items.insert((g.name.clone(), kind, own.to_owned()), item_id.to_owned());
                    }
                }
            }
        }
        for s in &plan.servers {
            let ids = |kind: &'static str, wanted: &[(String, String)]| {
                wanted
                    .iter()
                    .map(|(up, own)| {
                        items
                            .get(&(up.clone(), kind, own.clone()))
                            .cloned()
                            .ok_or_else(|| {
                                anyhow!(
                                    "server {}: upstream {up} has no {kind} item {own:?}",
                                    s.key
                                )
                            })
                    })
                    .collect::<anyhow::Result<Vec<String>>>()
            };
            let body = json!({
                "name": s.name,
                "naming": s.naming,
                "allowed_origins": s.allowed_origins,
                "associated_tools": ids("tools", &s.tools)?,
                "associated_resources": ids("resources", &s.resources)?,
                "associated_prompts": ids("prompts", &s.prompts)?,
            });
            let req = self.admin.post(format!("{}/servers", self.api)).json(&body);
            let created = self
                .call(req, 201, &format!("POST /servers {}", s.key))
                .await?;
            let id = created["id"]
                .as_str()
                .ok_or_else(|| anyhow!("no server id in {created}"))?;
            self.servers.insert(s.key.clone(), id.to_owned());
        }
        for (key, limits) in &plan.limits {
            let id = self
                .servers
                .get(key)
                .cloned()
                .unwrap_or_else(|| key.clone());
            let req = self
                .admin
                .put(format!("{}/limits/{id}", self.api))
                .json(limits);
            self.call(req, 201, &format!("PUT /limits/{key}")).await?;
        }
        identity::register(self, &plan.identity).await
    }

    /// The registry version now (what the filter's configuration is labelled with).
    async fn registry_version(&mut self) -> anyhow::Result<String> {
        let req = self.admin.get(format!("{}/registry", self.api));
        let v = self.call(req, 200, "GET /registry").await?;
        v["registry_version"]
            .as_i64()
            .map(|v| v.to_string())
            .ok_or_else(|| anyhow!("no registry_version in {v}"))
    }

    /// `path` with a snapshot's server key (`/servers/{key}/…`) replaced by the control
    /// plane's id for it; any other path unchanged.
    pub fn path(&self, path: &str) -> String {
        server_path(&self.servers, path)
    }

    /// The control plane's log so far.
    pub fn log(&self) -> String {
        self.cp.log()
    }
}

fn server_path(servers: &BTreeMap<String, String>, path: &str) -> String {
    if let Some(rest) = path.strip_prefix("/servers/") {
        let (key, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        if let Some(id) = servers.get(key) {
            return format!("/servers/{id}{tail}");
        }
    }
    path.to_owned()
}

/// `Some(Ok)` once node [`NODE`] has acked every type, the filter at registry `version`;
/// `Some(Err)` with the error detail as soon as it has refused (NACKed) one.
async fn acked(http: &reqwest::Client, url: &str, version: &str) -> Option<Result<(), String>> {
    let nodes: Value = http.get(url).send().await.ok()?.json().await.ok()?;
    let node = nodes.as_array()?.iter().find(|n| n["node_id"] == NODE)?;
    let types = &node["types"];
    if let Some(nack) = TYPES.iter().find(|t| !types[**t]["last_nack"].is_null()) {
        return Some(Err(format!("{nack}: {}", types[*nack]["last_nack"])));
    }
    let all = TYPES.iter().all(|t| types[*t]["version_acked"].is_string());
    (all && types[ECDS]["version_acked"] == version).then_some(Ok(()))
}

/// The address of the control plane's JSON log line whose message is `message` (what
/// `mcpgw serve` bound, port 0 resolved).
fn listening(log: &str, message: &str) -> Option<SocketAddr> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["fields"]["message"] == message)
        .and_then(|l| l["fields"]["addr"].as_str()?.parse().ok())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(snapshot: Value) -> EnvoyConfig {
        EnvoyConfig::with_filter(&snapshot.to_string(), ([127, 0, 0, 1], 7).into())
            .cluster("second", ([127, 0, 0, 1], 8).into())
            .route_on_header("x-mcpgw-cluster", "second", "second")
    }

    #[test]
    fn a_snapshot_with_virtual_servers_becomes_gateways_and_servers() {
        let plan = plan(&config(json!({
            "policy": {"list_page_size": 2},
            "upstreams": {"primary": {"cluster": "upstream", "path": "/mcp"},
                          "second": {"cluster": "second"}},
            "servers": {"team": {"name": "Team", "tools": [
                {"name": "primary__echo", "upstream": "primary", "upstream_name": "echo", "item": {}}],
                "resources": [{"name": "x://r", "upstream": "second", "upstream_name": "x://r", "item": {}}]}},
            "limits": {"servers": {"team": {"concurrency": 1}}, "default": {"concurrency": 2}}
        })))
        .unwrap();
        assert_eq!(plan.policy, json!({"list_page_size": 2}));
        assert_eq!(
            plan.gateways,
            [
                GatewayPlan {
                    name: "primary".into(),
                    url: "http://127.0.0.1:7/mcp".into()
                },
                GatewayPlan {
                    name: "second".into(),
                    url: "http://127.0.0.1:8/mcp".into()
                }
            ]
        );
        let team = &plan.servers[0];
        assert_eq!((team.key.as_str(), team.name.as_str()), ("team", "Team"));
        assert_eq!(team.naming, "prefixed");
        assert_eq!(team.tools, [("primary".into(), "echo".into())]);
        assert_eq!(team.resources, [("second".into(), "x://r".into())]);
        assert_eq!(plan.limits["team"], json!({"concurrency": 1}));
        assert_eq!(plan.limits["default"], json!({"concurrency": 2}));
    }

    #[test]
    fn what_the_registry_cannot_express_is_refused_with_the_reason() {
        let server = json!({"s": {"tools": []}});
        for (snapshot, why) in [
            (
                json!({"plugins": [{"name": "x", "external": {"cluster": "nope"}}]}),
                "no gRPC cluster",
            ),
            (
                json!({"policy": {"tool_routes": {"t": "elsewhere"}}}),
                "no static route reaches",
            ),
            (json!({"relay": {}, "servers": server}), "`relay`"),
            (
                json!({"session": {"idle_seconds": 5}, "servers": server}),
                "--mcp-session-idle takes 60 s",
            ),
        ] {
            let err = format!("{:#}", plan(&config(snapshot.clone())).unwrap_err());
            assert!(err.contains(why), "{snapshot}: {err}");
        }
    }

    #[test]
    fn bound_addresses_are_read_from_the_json_log() {
        let log = concat!(
            r#"{"level":"INFO","fields":{"message":"xDS server listening","addr":"127.0.0.1:41"}}"#,
            "\nnot json\n",
            r#"{"level":"INFO","fields":{"message":"admin API listening","addr":"127.0.0.1:42"}}"#
        );
        assert_eq!(
            listening(log, "admin API listening"),
            Some(([127, 0, 0, 1], 42).into())
        );
        assert_eq!(
            listening(log, "xDS server listening"),
            Some(([127, 0, 0, 1], 41).into())
        );
        assert_eq!(listening(log, "session relay listening"), None);
    }

    #[test]
    fn server_keys_in_paths_become_the_control_planes_ids() {
        let ids = BTreeMap::from([("team".to_owned(), "0af3".to_owned())]);
        for (path, want) in [
            ("/servers/team/mcp", "/servers/0af3/mcp"),
            (
                "/servers/team/message?session_id=x",
                "/servers/0af3/message?session_id=x",
            ),
            ("/servers/other/mcp", "/servers/other/mcp"),
            ("/mcp", "/mcp"),
            (
                "/.well-known/oauth-protected-resource/servers/team/mcp",
                "/.well-known/oauth-protected-resource/servers/team/mcp",
            ),
        ] {
            assert_eq!(server_path(&ids, path), want);
        }
    }

    #[test]
    fn the_overlay_control_plane_config_is_pointed_at_this_machine() {
        let a = Artifacts::from_env();
        let text = std::fs::read_to_string(a.repo_file(CONTROL_PLANE_CONFIG).unwrap()).unwrap();
        let at = Placement {
            api: ([127, 0, 0, 1], 1).into(),
            xds: ([127, 0, 0, 1], 2).into(),
            envoy: ([127, 0, 0, 1], 3).into(),
            wasm: Path::new("/w/f.wasm"),
            pki: Path::new("/p"),
        };
        let out = manifest_control_plane_config(&text, &at).unwrap();
        for line in [
            r#"listen = "127.0.0.1:1""#,
            r#"xds_listen = "127.0.0.1:2""#,
            r#"envoy_listen = "127.0.0.1:3""#,
            r#"relay_listen = "off""#,
            r#"filter_wasm = "/w/f.wasm""#,
            r#"tls_cert = "/p/mcpgw-xds-tls/tls.crt""#,
            r#"envoy_tls_key = "/p/mcpgw-envoy-tls/tls.key""#,
        ] {
            assert!(out.lines().any(|l| l == line), "{line} not in:\n{out}");
        }
        assert!(
            !out.contains("/etc/mcpgw") && !out.contains("svc.cluster.local"),
            "{out}"
        );
        assert!(
            out.contains("log_format = \"json\""),
            "the rest is kept: {out}"
        );
        let err = manifest_control_plane_config("listen = \"x\"\n", &at).unwrap_err();
        assert!(format!("{err}").contains("xds_listen"), "{err}");
    }

    #[test]
    fn the_overlay_bootstrap_is_pointed_at_the_control_plane() {
        let a = Artifacts::from_env();
        let text =
            manifest_bootstrap(&a, ([127, 0, 0, 1], 4321).into(), Path::new("/x/y")).unwrap();
        assert!(
            text.contains("address: 127.0.0.1, port_value: 4321 }"),
            "{text}"
        );
        assert!(text.contains("filename: /x/y/tls.crt"), "{text}");
        assert!(
            !text.contains("9901") && !text.contains("svc.cluster.local"),
            "{text}"
        );
    }
}
