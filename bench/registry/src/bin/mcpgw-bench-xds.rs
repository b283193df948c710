//! `mcpgw-bench-xds`: push convergence — how long one registry write through the API takes
//! to reach, and be ACKed by, 1, 100 and 1,000 ADS clients, with a 10,000-tool catalog;
//! and what the control plane spends doing it.
//!
//! This process runs the control plane (`mcpgw::serve`, SQLite, xDS on 127.0.0.1:0) with
//! the registry `mcpgw_bench_registry::setup` populates. The simulated Envoys run in a
//! child process (this binary, `clients` mode), so that the CPU and memory measured here
//! are the control plane's and not the clients' receive buffers: each client is its own
//! HTTP/2 connection and ADS stream with a distinct node id, subscribes as Envoy does
//! (clusters and listeners by wildcard, then the route configuration and the ECDS filter
//! configuration the listener names), and ACKs every response. The child reports every
//! ACK on stdout with its wall-clock time (both processes share the clock).
//!
//! Each round renames one tool through `PUT /tools/{id}` and waits until every client has
//! ACKed the resulting version of every resource type that changed (the ECDS filter
//! configuration, which carries the whole catalog).
//!
//! Knobs (environment): `MCPGW_BENCH_XDS_CLIENTS` (state of the world, `1,100,1000`),
//! `MCPGW_BENCH_XDS_DELTA_CLIENTS` (delta, `100`; empty for none), `MCPGW_BENCH_ROUNDS`
//! (3), `MCPGW_BENCH_XDS_TIMEOUT_S` (300: per wait), `MCPGW_BENCH_XDS_MIN_AVAILABLE_MIB`
//! (1536: a variant is stopped when the machine's `MemAvailable` falls below it),
//! `MCPGW_BENCH_REGISTRY_GATEWAYS` (100), `MCPGW_BENCH_REGISTRY_TOOLS` (100),
//! `MCPGW_BENCH_OUTPUT` (`docs/benchmarks.md`, `-` for none), `MCPGW_BENCH_COMMAND`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::protobuf::{Any, StringValue};
use mcpgw::xds::{AdsServer, TypeUrl};
use mcpgw_bench_registry::{Backend, Shape, env_or, memory, memory_of, setup};
use prost::Message as _;
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::UnboundedReceiverStream;

const SECTION_BEGIN: &str = "<!-- mcpgw-bench:xds:begin -->";
const SECTION_END: &str = "<!-- mcpgw-bench:xds:end -->";
/// The clients' limit on one gRPC message (tonic's default, 4 MiB, is below one ECDS
/// response with 10,000 tools).
const MAX_MESSAGE: usize = 256 << 20;
/// The types Envoy subscribes to with the mcpgw bootstrap.
const SUBSCRIBED: [TypeUrl; 4] = [
    TypeUrl::Cluster,
    TypeUrl::Listener,
    TypeUrl::RouteConfiguration,
    TypeUrl::ExtensionConfig,
];

/// State of the world or delta ADS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Sotw,
    Delta,
}

impl Protocol {
    fn label(self) -> &'static str {
        match self {
            Protocol::Sotw => "sotw",
            Protocol::Delta => "delta",
        }
    }

    fn parse(s: &str) -> anyhow::Result<Protocol> {
        match s {
            "sotw" => Ok(Protocol::Sotw),
            "delta" => Ok(Protocol::Delta),
            _ => bail!("unknown protocol {s:?} (sotw, delta)"),
        }
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if args.get(1).map(String::as_str) == Some("clients") {
        let [_, _, addr, n, protocol, prefix] = args.as_slice() else {
            bail!("usage: mcpgw-bench-xds clients <xds addr> <n> <sotw|delta> <node prefix>");
        };
        let n: usize = n.parse().context("client count")?;
        let protocol = Protocol::parse(protocol)?;
        return rt.block_on(clients(addr.clone(), n, protocol, prefix.clone()));
    }
    rt.block_on(run(Knobs::from_env()?))
}

// --- the clients (child process) -----------------------------------------------------

/// Runs `n` ADS clients until stdin closes; one line per ACK on stdout:
/// `ack <client> <type label> <version> <unix ns> <response bytes>`.
async fn clients(addr: String, n: usize, protocol: Protocol, prefix: String) -> anyhow::Result<()> {
    let (events, mut lines) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        let mut out = tokio::io::BufWriter::new(tokio::io::stdout());
        while let Some(line) = lines.recv().await {
            out.write_all(line.as_bytes()).await?;
            if lines.is_empty() {
                out.flush().await?;
            }
        }
        out.flush().await
    });
    // Connect in bounded waves: a thousand simultaneous handshakes would only measure the
    // accept backlog.
    let connecting = Arc::new(Semaphore::new(64));
    for i in 0..n {
        let (addr, events, connecting) = (addr.clone(), events.clone(), connecting.clone());
        let node = format!("{prefix}-{i:04}");
        tokio::spawn(async move {
            let outcome = match protocol {
                Protocol::Sotw => sotw_client(&addr, i, node, &events, &connecting).await,
                Protocol::Delta => delta_client(&addr, i, node, &events, &connecting).await,
            };
            let msg = match outcome {
                Ok(()) => "stream ended by the server".to_owned(),
                Err(e) => format!("{e:#}"),
            };
            let _ = events.send(format!("error {i} {}\n", msg.replace('\n', " ")));
        });
    }
    // The parent closes stdin when it is done with us.
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    let _ = events.send(format!("mem {}\n", memory().1));
    drop(events);
    // Client tasks still hold senders; give the writer a moment, then leave.
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    std::process::exit(0);
}

async fn channel(addr: &str, connecting: &Semaphore) -> anyhow::Result<tonic::transport::Channel> {
    let _permit = connecting.acquire().await?;
    Ok(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(30))
            .connect()
            .await?,
    )
}

fn node(id: String) -> Option<Node> {
    Some(Node {
        id,
        cluster: "mcpgw-bench".into(),
        ..Default::default()
    })
}

/// The route configurations and ECDS resources a listener names, as Envoy finds them.
fn referenced<'a>(
    listeners: impl Iterator<Item = &'a Any>,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let (mut routes, mut filters) = (BTreeSet::new(), BTreeSet::new());
    for any in listeners {
        let listener = Listener::decode(any.value.as_slice())?;
        for chain in &listener.filter_chains {
            for f in &chain.filters {
                let Some(filter::ConfigType::TypedConfig(cfg)) = &f.config_type else {
                    continue;
                };
                if !cfg.type_url.ends_with("HttpConnectionManager") {
                    continue;
                }
                let hcm = HttpConnectionManager::decode(cfg.value.as_slice())?;
                if let Some(http_connection_manager::RouteSpecifier::Rds(rds)) =
                    &hcm.route_specifier
                {
                    routes.insert(rds.route_config_name.clone());
                }
                for hf in &hcm.http_filters {
                    if let Some(http_filter::ConfigType::ConfigDiscovery(_)) = &hf.config_type {
                        filters.insert(hf.name.clone());
                    }
                }
            }
        }
    }
    Ok((routes.into_iter().collect(), filters.into_iter().collect()))
}

fn label_of(type_url: &str) -> &'static str {
    type_url.parse::<TypeUrl>().map_or("other", TypeUrl::label)
}

async fn sotw_client(
    addr: &str,
    i: usize,
    node_id: String,
    events: &mpsc::UnboundedSender<String>,
    connecting: &Semaphore,
) -> anyhow::Result<()> {
    let mut client = AggregatedDiscoveryServiceClient::new(channel(addr, connecting).await?)
        .max_decoding_message_size(MAX_MESSAGE);
    let (tx, rx) = mpsc::unbounded_channel();
    let request = |t: TypeUrl| DiscoveryRequest {
        type_url: t.as_str().to_owned(),
        ..Default::default()
    };
    tx.send(DiscoveryRequest {
        node: node(node_id),
        ..request(TypeUrl::Cluster)
    })?;
    tx.send(request(TypeUrl::Listener))?;
    let mut stream = client
        .stream_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut names: HashMap<String, Vec<String>> = HashMap::new();
    while let Some(r) = stream.message().await? {
        let bytes = r.encoded_len();
        let mut follow = Vec::new();
        if r.type_url == TypeUrl::Listener.as_str() {
            let (routes, filters) = referenced(r.resources.iter())?;
            for (t, want) in [
                (TypeUrl::RouteConfiguration, routes),
                (TypeUrl::ExtensionConfig, filters),
            ] {
                if names.get(t.as_str()) != Some(&want) {
                    names.insert(t.as_str().to_owned(), want.clone());
                    follow.push(DiscoveryRequest {
                        resource_names: want,
                        ..request(t)
                    });
                }
            }
        }
        tx.send(DiscoveryRequest {
            type_url: r.type_url.clone(),
            version_info: r.version_info.clone(),
            response_nonce: r.nonce.clone(),
            resource_names: names.get(&r.type_url).cloned().unwrap_or_default(),
            ..Default::default()
        })?;
        events.send(format!(
            "ack {i} {} {} {} {bytes}\n",
            label_of(&r.type_url),
            r.version_info,
            now_ns()
        ))?;
        drop(r);
        for f in follow {
            tx.send(f)?;
        }
    }
    Ok(())
}

async fn delta_client(
    addr: &str,
    i: usize,
    node_id: String,
    events: &mpsc::UnboundedSender<String>,
    connecting: &Semaphore,
) -> anyhow::Result<()> {
    let mut client = AggregatedDiscoveryServiceClient::new(channel(addr, connecting).await?)
        .max_decoding_message_size(MAX_MESSAGE);
    let (tx, rx) = mpsc::unbounded_channel();
    let request = |t: TypeUrl| DeltaDiscoveryRequest {
        type_url: t.as_str().to_owned(),
        ..Default::default()
    };
    tx.send(DeltaDiscoveryRequest {
        node: node(node_id),
        ..request(TypeUrl::Cluster)
    })?;
    tx.send(request(TypeUrl::Listener))?;
    let mut stream = client
        .delta_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut names: HashMap<String, Vec<String>> = HashMap::new();
    while let Some(r) = stream.message().await? {
        let bytes = r.encoded_len();
        let mut follow = Vec::new();
        if r.type_url == TypeUrl::Listener.as_str() {
            let (routes, filters) =
                referenced(r.resources.iter().filter_map(|w| w.resource.as_ref()))?;
            for (t, want) in [
                (TypeUrl::RouteConfiguration, routes),
                (TypeUrl::ExtensionConfig, filters),
            ] {
                let had = names.get(t.as_str()).cloned().unwrap_or_default();
                if had != want {
                    names.insert(t.as_str().to_owned(), want.clone());
                    follow.push(DeltaDiscoveryRequest {
                        resource_names_subscribe: want
                            .iter()
                            .filter(|n| !had.contains(n))
                            .cloned()
                            .collect(),
                        resource_names_unsubscribe: had
                            .iter()
                            .filter(|n| !want.contains(n))
                            .cloned()
                            .collect(),
                        ..request(t)
                    });
                }
            }
        }
        tx.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        })?;
        events.send(format!(
            "ack {i} {} {} {} {bytes}\n",
            label_of(&r.type_url),
            r.system_version_info,
            now_ns()
        ))?;
        drop(r);
        for f in follow {
            tx.send(f)?;
        }
    }
    Ok(())
}

// --- the benchmark (this process: the control plane) ----------------------------------

struct Knobs {
    variants: Vec<(Protocol, usize)>,
    rounds: usize,
    timeout: Duration,
    min_available_mib: u64,
    shape: Shape,
    output: String,
    command: String,
}

fn counts(name: &str, default: &str) -> anyhow::Result<Vec<usize>> {
    env_or(name, default.to_owned())?
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| format!("{name}: {s:?} is not a client count"))
        })
        .collect()
}

impl Knobs {
    fn from_env() -> anyhow::Result<Knobs> {
        let mut variants: Vec<(Protocol, usize)> = counts("MCPGW_BENCH_XDS_CLIENTS", "1,100,1000")?
            .into_iter()
            .map(|n| (Protocol::Sotw, n))
            .collect();
        variants.extend(
            counts("MCPGW_BENCH_XDS_DELTA_CLIENTS", "100")?
                .into_iter()
                .map(|n| (Protocol::Delta, n)),
        );
        // Smallest first: memory the allocator keeps after a large variant would otherwise
        // show up in the smaller ones after it.
        variants.sort_by_key(|(_, n)| *n);
        let k = Knobs {
            variants,
            rounds: env_or("MCPGW_BENCH_ROUNDS", 3)?,
            timeout: Duration::from_secs(env_or("MCPGW_BENCH_XDS_TIMEOUT_S", 300)?),
            min_available_mib: env_or("MCPGW_BENCH_XDS_MIN_AVAILABLE_MIB", 1536)?,
            shape: Shape {
                gateways: env_or("MCPGW_BENCH_REGISTRY_GATEWAYS", 100)?,
                tools: env_or("MCPGW_BENCH_REGISTRY_TOOLS", 100)?,
            },
            output: env_or("MCPGW_BENCH_OUTPUT", "docs/benchmarks.md".to_owned())?,
            command: env_or(
                "MCPGW_BENCH_COMMAND",
                "./target/release/mcpgw-bench-xds".to_owned(),
            )?,
        };
        if k.rounds == 0 || k.shape.gateways == 0 || k.shape.tools == 0 {
            bail!("rounds, gateways and tools must be at least 1");
        }
        Ok(k)
    }
}

/// What the child reported.
enum Event {
    Ack {
        client: usize,
        label: String,
        version: String,
        at_ns: u128,
        bytes: u64,
    },
    Error(usize, String),
    Mem(u64),
}

fn parse_event(line: &str) -> Option<Event> {
    let mut f = line.split(' ');
    match f.next()? {
        "ack" => Some(Event::Ack {
            client: f.next()?.parse().ok()?,
            label: f.next()?.to_owned(),
            version: f.next()?.to_owned(),
            at_ns: f.next()?.parse().ok()?,
            bytes: f.next()?.parse().ok()?,
        }),
        "error" => {
            let client = f.next()?.parse().ok()?;
            Some(Event::Error(client, f.collect::<Vec<_>>().join(" ")))
        }
        "mem" => Some(Event::Mem(f.next()?.parse().ok()?)),
        _ => None,
    }
}

/// One update as the clients saw it.
struct Round {
    /// Write sent → the API answered.
    write_ms: f64,
    /// Write sent → the new resource set reached the xDS server (rebuild + debounces).
    publish_ms: f64,
    /// Per client: write sent → its last ACK of the new version.
    latencies_ms: Vec<f64>,
    /// Per client: bytes of the responses carrying the new version.
    bytes: Vec<u64>,
    /// Types that changed.
    changed: Vec<&'static str>,
    /// Control-plane process CPU from the write until the last ACK.
    cp_cpu_s: f64,
    /// Client process CPU over the same span.
    clients_cpu_s: f64,
    /// Control-plane `VmHWM` during the round (reset before the write), KiB.
    cp_peak_kib: u64,
    /// Control-plane `VmRSS` before the write, KiB.
    cp_rss_before_kib: u64,
}

/// One protocol × client count.
struct VariantResult {
    protocol: Protocol,
    clients: usize,
    initial_s: Option<f64>,
    initial_cp_peak_kib: u64,
    rounds: Vec<Round>,
    /// Why the variant stopped early, if it did.
    failure: Option<String>,
    clients_peak_kib: u64,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn mem_available_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(u64::MAX, |kib| kib / 1024)
}

/// Resets this process's `VmHWM` to its current RSS (`clear_refs` 5).
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn cpu_s(pid: u32) -> f64 {
    mcpgw_bench::machine::cpu_ticks(pid).unwrap_or(0) as f64
        / mcpgw_bench::machine::ticks_per_second() as f64
}

/// The child and what it reports.
struct Clients {
    child: tokio::process::Child,
    pid: u32,
    events: mpsc::UnboundedReceiver<Event>,
    stdin: Option<tokio::process::ChildStdin>,
    /// When the deadline and the machine's memory were last checked.
    checked: Instant,
}

impl Clients {
    fn spawn(xds: std::net::SocketAddr, n: usize, protocol: Protocol) -> anyhow::Result<Clients> {
        let exe = std::env::current_exe()?;
        let mut child = tokio::process::Command::new(exe)
            .args([
                "clients",
                &xds.to_string(),
                &n.to_string(),
                protocol.label(),
                &format!("bench-{}-{n}", protocol.label()),
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the client process")?;
        let pid = child.id().context("client process id")?;
        let stdout = child.stdout.take().context("client stdout")?;
        let stdin = child.stdin.take();
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(e) = parse_event(&line)
                    && tx.send(e).is_err()
                {
                    return;
                }
            }
        });
        Ok(Clients {
            child,
            pid,
            events,
            stdin,
            checked: Instant::now(),
        })
    }

    /// The next event, or why waiting must stop (checked at least every 100 ms, also
    /// while events keep coming).
    async fn next(&mut self, deadline: Instant, min_available_mib: u64) -> Result<Event, String> {
        loop {
            if self.checked.elapsed() >= Duration::from_millis(100) {
                self.checked = Instant::now();
                if Instant::now() > deadline {
                    return Err("timeout".to_owned());
                }
                let avail = mem_available_mib();
                if avail < min_available_mib {
                    return Err(format!(
                        "the machine's MemAvailable fell to {avail} MiB (bound {min_available_mib} MiB)"
                    ));
                }
            }
            let tick = tokio::time::sleep(Duration::from_millis(100));
            tokio::select! {
                e = self.events.recv() => return e.ok_or_else(|| "the client process exited".to_owned()),
                _ = tick => {}
            }
        }
    }

    /// Closes stdin, collects the child's peak memory and waits for it to exit.
    async fn finish(mut self) -> u64 {
        drop(self.stdin.take());
        let mut peak = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Ok(e) = self.next(deadline, 0).await {
            if let Event::Mem(kib) = e {
                peak = kib;
                break;
            }
        }
        let _ = self.child.kill().await;
        peak
    }
}

async fn wait_published(
    ads: &AdsServer,
    at_least: i64,
    timeout: Duration,
) -> anyhow::Result<Arc<mcpgw::xds::ResourceSet>> {
    let deadline = Instant::now() + timeout;
    loop {
        let set = ads.current();
        if let Some(set) = &set
            && set.version().parse::<i64>().unwrap_or(-1) >= at_least
        {
            return Ok(set.clone());
        }
        if Instant::now() > deadline {
            bail!(
                "the xDS server still serves version {:?}, not {at_least}",
                set.as_deref().map(mcpgw::xds::ResourceSet::version)
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn run(knobs: Knobs) -> anyhow::Result<()> {
    mcpgw::tls::install_crypto_provider();
    let total_tools = knobs.shape.gateways * knobs.shape.tools;
    eprintln!(
        "mcpgw-bench-xds: {total_tools} tools, variants {:?}, {} rounds",
        knobs
            .variants
            .iter()
            .map(|(p, n)| format!("{}:{n}", p.label()))
            .collect::<Vec<_>>(),
        knobs.rounds
    );
    let mut bed = setup(&Backend::Sqlite, knobs.shape, true).await?;
    let ads = bed.xds.clone().context("xDS is not enabled")?;
    let xds_addr = bed.xds_addr.context("xDS has no address")?;
    let version = bed.store.registry_version().await?;
    let set = wait_published(&ads, version, Duration::from_secs(120)).await?;
    let ecds = set
        .get(TypeUrl::ExtensionConfig, mcpgw::edge_config::FILTER)
        .context("no ECDS filter configuration")?;
    let ecds_bytes = ecds.body().value.len();
    // The catalog must be in it: decode the filter configuration as the filter does and
    // count the tools of the server that has every tool.
    let snapshot = filter_snapshot(ecds.body())?;
    let largest = snapshot
        .servers
        .values()
        .map(|s| s.tools.len())
        .max()
        .unwrap_or(0);
    if largest < total_tools {
        bail!("the ECDS filter configuration lists {largest} tools, expected {total_tools}");
    }
    let snapshot_json_bytes = serde_json::to_vec(&snapshot)?.len();
    let counts: Vec<(TypeUrl, usize)> = SUBSCRIBED.iter().map(|t| (*t, set.len(*t))).collect();
    eprintln!(
        "registry populated in {:.1} s; ECDS {:.2} MiB (the snapshot's JSON: {:.1} MiB); resources {counts:?}",
        bed.populate.as_secs_f64(),
        ecds_bytes as f64 / 1048576.0,
        snapshot_json_bytes as f64 / 1048576.0
    );
    let cp_rss_idle = memory().0;
    let http = reqwest::Client::builder().no_proxy().build()?;
    let mut results = Vec::new();
    for (protocol, n) in knobs.variants.clone() {
        let r = variant(&knobs, &bed, &ads, xds_addr, &http, protocol, n).await?;
        results.push(r);
        // Let the server notice the disconnections before the next variant.
        let deadline = Instant::now() + Duration::from_secs(30);
        while ads.nodes().iter().any(|s| s.connected_streams > 0) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let report = section(
        &knobs,
        (ecds_bytes, snapshot_json_bytes),
        &counts,
        cp_rss_idle,
        &results,
    );
    println!("{report}");
    bed.stop().await;
    mcpgw_bench_registry::write_report(&knobs.output, SECTION_BEGIN, SECTION_END, &report)?;
    Ok(())
}

async fn variant(
    knobs: &Knobs,
    bed: &mcpgw_bench_registry::Bed,
    ads: &AdsServer,
    xds_addr: std::net::SocketAddr,
    http: &reqwest::Client,
    protocol: Protocol,
    n: usize,
) -> anyhow::Result<VariantResult> {
    let name = format!("{} × {n}", protocol.label());
    eprintln!("{name}: connecting");
    let mut result = VariantResult {
        protocol,
        clients: n,
        initial_s: None,
        initial_cp_peak_kib: 0,
        rounds: Vec::new(),
        failure: None,
        clients_peak_kib: 0,
    };
    let mut clients = Clients::spawn(xds_addr, n, protocol)?;
    reset_peak();
    // Initial sync: every client has ACKed each subscribed type once.
    let started = Instant::now();
    let deadline = started + knobs.timeout;
    let mut synced: Vec<BTreeSet<String>> = vec![BTreeSet::new(); n];
    let mut done = 0;
    while done < n {
        match clients.next(deadline, knobs.min_available_mib).await {
            Ok(Event::Ack { client, label, .. }) if client < n => {
                let before = synced[client].len() == SUBSCRIBED.len();
                synced[client].insert(label);
                if !before && synced[client].len() == SUBSCRIBED.len() {
                    done += 1;
                }
            }
            Ok(Event::Error(client, e)) => {
                result.failure = Some(format!(
                    "client {client} failed during the initial sync: {e}"
                ));
                break;
            }
            Ok(_) => {}
            Err(why) => {
                result.failure = Some(format!(
                    "initial sync: {why} after {:.1} s with {done} of {n} clients synced",
                    started.elapsed().as_secs_f64()
                ));
                break;
            }
        }
    }
    result.initial_cp_peak_kib = memory().1;
    if result.failure.is_some() {
        result.clients_peak_kib = memory_of(&clients.pid.to_string()).1;
        clients.finish().await;
        eprintln!("{name}: {}", result.failure.as_deref().unwrap_or_default());
        return Ok(result);
    }
    result.initial_s = Some(started.elapsed().as_secs_f64());
    eprintln!(
        "{name}: initial sync in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    for round in 0..knobs.rounds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Drain anything late (there should be nothing).
        while let Ok(e) = clients.events.try_recv() {
            if let Event::Error(c, e) = e {
                result.failure = Some(format!("client {c} failed between rounds: {e}"));
            }
        }
        if result.failure.is_some() {
            break;
        }
        match push_round(knobs, bed, ads, http, &mut clients, protocol, n, round).await? {
            Ok(r) => {
                eprintln!(
                    "{name} round {}: published after {:.0} ms, last ACK after {:.0} ms, control plane CPU {:.2} s",
                    round + 1,
                    r.publish_ms,
                    r.latencies_ms.iter().copied().fold(0.0, f64::max),
                    r.cp_cpu_s
                );
                result.rounds.push(r);
            }
            Err(why) => {
                eprintln!("{name} round {}: {why}", round + 1);
                result.failure = Some(format!("round {}: {why}", round + 1));
                break;
            }
        }
    }
    result.clients_peak_kib = memory_of(&clients.pid.to_string()).1;
    let reported = clients.finish().await;
    result.clients_peak_kib = result.clients_peak_kib.max(reported);
    Ok(result)
}

/// The clients' ACKs of one version, per client and type.
struct Converging<'a> {
    target: String,
    changed: &'a BTreeSet<&'static str>,
    per_client: Vec<BTreeMap<String, (u128, u64)>>,
    /// Clients that have ACKed every changed type.
    done: usize,
}

impl Converging<'_> {
    fn record(&mut self, client: usize, label: String, version: &str, at_ns: u128, bytes: u64) {
        if client >= self.per_client.len()
            || version != self.target
            || !self.changed.contains(label.as_str())
        {
            return;
        }
        let c = &mut self.per_client[client];
        let before = c.len() == self.changed.len();
        c.insert(label, (at_ns, bytes));
        if !before && c.len() == self.changed.len() {
            self.done += 1;
        }
    }
}

/// One write and its convergence; `Ok(Err(why))` when it did not converge.
#[allow(clippy::too_many_arguments)]
async fn push_round(
    knobs: &Knobs,
    bed: &mcpgw_bench_registry::Bed,
    ads: &AdsServer,
    http: &reqwest::Client,
    clients: &mut Clients,
    protocol: Protocol,
    n: usize,
    round: usize,
) -> anyhow::Result<Result<Round, String>> {
    let old = ads.current().unwrap_or_default();
    let old_version: i64 = old.version().parse().unwrap_or(0);
    let cp_rss_before_kib = memory().0;
    reset_peak();
    let self_pid = std::process::id();
    let (cp0, cl0) = (cpu_s(self_pid), cpu_s(clients.pid));
    let t0 = Instant::now();
    let t0_ns = now_ns();
    let r = http
        .put(format!("http://{}/tools/{}", bed.addr, bed.first_tool))
        .bearer_auth(&bed.token)
        .json(&json!({"name": format!("xds_{}_{n}_round_{round}", protocol.label())}))
        .send()
        .await?;
    let write_ms = t0.elapsed().as_secs_f64() * 1000.0;
    if !r.status().is_success() {
        bail!("PUT /tools: {} {}", r.status(), r.text().await?);
    }
    // Events may arrive before the new version is seen here: keep them all.
    let mut acks: Vec<(usize, String, String, u128, u64)> = Vec::new();
    let deadline = t0 + knobs.timeout;
    let mut publish_ms = None;
    let mut new = None;
    let poll = tokio::time::interval(Duration::from_millis(2));
    tokio::pin!(poll);
    while new.is_none() {
        tokio::select! {
            _ = poll.tick() => {
                let cur = ads.current();
                if let Some(cur) = cur
                    && cur.version().parse::<i64>().unwrap_or(0) > old_version
                {
                    publish_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
                    new = Some(cur);
                } else if Instant::now() > deadline {
                    return Ok(Err("the new version never reached the xDS server".into()));
                }
            }
            e = clients.events.recv() => match e {
                Some(Event::Ack { client, label, version, at_ns, bytes }) => acks.push((client, label, version, at_ns, bytes)),
                Some(Event::Error(c, e)) => return Ok(Err(format!("client {c} failed: {e}"))),
                Some(Event::Mem(_)) => {}
                None => return Ok(Err("the client process exited".into())),
            }
        }
    }
    let new = new.context("no new set")?;
    let target = new.version().to_owned();
    let diff = new.diff(&old);
    let changed: BTreeSet<&'static str> = diff
        .added
        .iter()
        .chain(&diff.changed)
        .chain(&diff.removed)
        .map(|(t, _)| t.label())
        .collect();
    if changed.is_empty() {
        return Ok(Err(format!("version {target} changed nothing")));
    }
    let mut converging = Converging {
        target: target.clone(),
        changed: &changed,
        per_client: vec![BTreeMap::new(); n],
        done: 0,
    };
    for (c, l, v, at, b) in acks {
        converging.record(c, l, &v, at, b);
    }
    while converging.done < n {
        match clients.next(deadline, knobs.min_available_mib).await {
            Ok(Event::Ack {
                client,
                label,
                version,
                at_ns,
                bytes,
            }) => converging.record(client, label, &version, at_ns, bytes),
            Ok(Event::Error(c, e)) => return Ok(Err(format!("client {c} failed: {e}"))),
            Ok(Event::Mem(_)) => {}
            Err(why) => {
                return Ok(Err(format!(
                    "did not converge: {why} after {:.1} s, {} of {n} clients had ACKed version {target}",
                    t0.elapsed().as_secs_f64(),
                    converging.done
                )));
            }
        }
    }
    let per_client = converging.per_client;
    let (cp1, cl1) = (cpu_s(self_pid), cpu_s(clients.pid));
    let latencies_ms = per_client
        .iter()
        .map(|c| {
            let last = c.values().map(|(at, _)| *at).max().unwrap_or(t0_ns);
            last.saturating_sub(t0_ns) as f64 / 1e6
        })
        .collect();
    let bytes = per_client
        .iter()
        .map(|c| c.values().map(|(_, b)| *b).sum())
        .collect();
    Ok(Ok(Round {
        write_ms,
        publish_ms: publish_ms.unwrap_or(f64::NAN),
        latencies_ms,
        bytes,
        changed: changed.into_iter().collect(),
        cp_cpu_s: cp1 - cp0,
        clients_cpu_s: cl1 - cl0,
        cp_peak_kib: memory().1,
        cp_rss_before_kib,
    }))
}

fn section(
    knobs: &Knobs,
    (ecds_bytes, snapshot_json_bytes): (usize, usize),
    counts: &[(TypeUrl, usize)],
    cp_rss_idle: u64,
    results: &[VariantResult],
) -> String {
    let mib = |kib: u64| kib as f64 / 1024.0;
    let mut s = mcpgw_bench_registry::section_head(
        SECTION_BEGIN,
        &format!(
            "xDS push convergence: one API write to 1, 100 and 1,000 ADS clients, {}-tool catalog",
            knobs.shape.gateways * knobs.shape.tools
        ),
        "mcpgw-bench-xds",
        &knobs.command,
    );
    let _ = writeln!(
        s,
        "- Control plane: `mcpgw::serve` in this process on SQLite, xDS on 127.0.0.1 (one debounce of 100 ms, in the publisher); registry as in the section above ({} gateways × {} tools, ten team servers and one with every tool)",
        knobs.shape.gateways, knobs.shape.tools
    );
    let _ = writeln!(
        s,
        "- Resources served: {}; the ECDS filter configuration (the snapshot with the whole catalog) is {:.2} MiB on the wire (compressed; its JSON is {:.1} MiB)",
        counts
            .iter()
            .map(|(t, n)| format!("{n} {}", t.label()))
            .collect::<Vec<_>>()
            .join(", "),
        ecds_bytes as f64 / 1048576.0,
        snapshot_json_bytes as f64 / 1048576.0
    );
    let _ = writeln!(
        s,
        "- Clients: a child process (this binary) with N tonic ADS clients, each its own HTTP/2 connection and stream with a distinct node id; they subscribe as Envoy does (CDS and LDS wildcard, then the RDS and ECDS names the listener references) and ACK every response. Both processes share the machine's {} cores; CPU and memory below are the control-plane process's unless labelled otherwise",
        mcpgw_bench::machine::cpus()
    );
    let _ = writeln!(
        s,
        "- Each round: `PUT /tools/{{id}}` renames one tool; latency is from sending the write to each client's ACK of the new version of every type that changed; {} rounds per variant, one second apart",
        knobs.rounds
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| protocol | clients | initial sync | write → set at xDS server | write → ACK p50 | p99 | max (last ACK) | push → last ACK | bytes per client per update | control-plane CPU per update | clients' CPU per update | control-plane RSS before → peak during push | clients' peak RSS |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in results {
        let mut lat: Vec<f64> = r
            .rounds
            .iter()
            .flat_map(|x| x.latencies_ms.iter().copied())
            .collect();
        lat.sort_by(f64::total_cmp);
        let publish: Vec<f64> = r.rounds.iter().map(|x| x.publish_ms).collect();
        let push: Vec<f64> = r
            .rounds
            .iter()
            .map(|x| x.latencies_ms.iter().copied().fold(0.0, f64::max) - x.publish_ms)
            .collect();
        let bytes: Vec<f64> = r
            .rounds
            .iter()
            .flat_map(|x| x.bytes.iter().map(|b| *b as f64))
            .collect();
        let cp_cpu: Vec<f64> = r.rounds.iter().map(|x| x.cp_cpu_s).collect();
        let cl_cpu: Vec<f64> = r.rounds.iter().map(|x| x.clients_cpu_s).collect();
        let before = r
            .rounds
            .iter()
            .map(|x| x.cp_rss_before_kib)
            .max()
            .unwrap_or(0);
        let peak = r.rounds.iter().map(|x| x.cp_peak_kib).max().unwrap_or(0);
        let initial = r
            .initial_s
            .map_or_else(|| "—".to_owned(), |v| format!("{v:.2} s"));
        if r.rounds.is_empty() {
            let _ = writeln!(
                s,
                "| {} | {} | {initial} | — | — | — | — | — | — | — | — | — | {:.0} MiB |",
                r.protocol.label(),
                r.clients,
                mib(r.clients_peak_kib)
            );
            continue;
        }
        let _ = writeln!(
            s,
            "| {} | {} | {initial} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.2} MiB | {:.2} s | {:.2} s | {:.0} → {:.0} MiB | {:.0} MiB |",
            r.protocol.label(),
            r.clients,
            median(&publish),
            quantile(&lat, 0.5),
            quantile(&lat, 0.99),
            lat.last().copied().unwrap_or(f64::NAN),
            median(&push),
            median(&bytes) / 1048576.0,
            median(&cp_cpu),
            median(&cl_cpu),
            mib(before),
            mib(peak),
            mib(r.clients_peak_kib),
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "Time to the last ACK per round (write sent → every client has ACKed), and the types the write changed:"
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| protocol | clients | round | write answered | set at xDS server | last ACK | changed | control-plane CPU | control-plane peak RSS |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---|---:|---:|");
    for r in results {
        for (i, x) in r.rounds.iter().enumerate() {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.0} ms | {:.0} ms | {:.0} ms | {} | {:.2} s | {:.0} MiB |",
                r.protocol.label(),
                r.clients,
                i + 1,
                x.write_ms,
                x.publish_ms,
                x.latencies_ms.iter().copied().fold(0.0, f64::max),
                x.changed.join(", "),
                x.cp_cpu_s,
                mib(x.cp_peak_kib),
            );
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "- Control-plane RSS with the registry loaded and no client connected: {:.0} MiB",
        mib(cp_rss_idle)
    );
    for r in results {
        let _ = writeln!(
            s,
            "- {} × {}: peak control-plane RSS during the initial sync {:.0} MiB",
            r.protocol.label(),
            r.clients,
            mib(r.initial_cp_peak_kib)
        );
        if let Some(f) = &r.failure {
            let _ = writeln!(
                s,
                "- **{} × {}: stopped — {f}** (rounds completed: {} of {})",
                r.protocol.label(),
                r.clients,
                r.rounds.len(),
                knobs.rounds
            );
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "How to read it: `write → set at xDS server` is the API write, the publisher's debounce and rebuild (registry read, assemble, translate: see the registry section) — the same for any number of clients. What follows is the push: every stream sends its client the whole ECDS resource again, so bytes pushed per update grow with clients × catalog size. CPU is process CPU time (`/proc/<pid>/stat` utime + stime) from the write to the last ACK; peak RSS is `VmHWM`, reset (`/proc/self/clear_refs`) before each write."
    );
    let _ = writeln!(s, "{SECTION_END}");
    s
}

/// The snapshot inside an ECDS `TypedExtensionConfig`, read as the filter reads it.
fn filter_snapshot(ecds: &Any) -> anyhow::Result<mcpgw_core::snapshot::Snapshot> {
    let config =
        envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig::decode(&ecds.value[..])?;
    let wasm = Wasm::decode(&config.typed_config.context("no typed_config")?.value[..])?;
    let plugin = wasm.config.context("no plugin config")?;
    let text = StringValue::decode(&plugin.configuration.context("no configuration")?.value[..])?;
    mcpgw_core::snapshot::Snapshot::from_config(text.value.as_bytes())
        .map_err(|e| anyhow::anyhow!("{e}"))
}
