//! `mcpgw-bench-registry`: the control plane with a 10,000-tool registry.
//!
//! One run sets up a registry of `GATEWAYS × TOOLS` federated tools (plus resources,
//! prompts and virtual servers) on each backend (SQLite, PostgreSQL), serves the admin API
//! for each in this process, and then measures in alternating rounds, side by side:
//!
//! - building the full snapshot: reading the registry, assembling it, serializing it to
//!   the JSON every Envoy receives, and parsing that JSON as the filter does;
//! - a change: one tool updated through the API, then the snapshot rebuilt;
//! - `GET /tools` paginated through the whole catalog (limit 50 and 500), per page;
//! - the process's memory (the control planes are the bulk of it).
//!
//! Knobs (environment): `MCPGW_BENCH_REGISTRY_GATEWAYS` (100),
//! `MCPGW_BENCH_REGISTRY_TOOLS` (per gateway, 100), `MCPGW_BENCH_ROUNDS` (5),
//! `MCPGW_BENCH_REGISTRY_BACKENDS` (`sqlite,postgres`), `MCPGW_TEST_PG_URL`,
//! `MCPGW_BENCH_OUTPUT` (`docs/benchmarks.md`, `-` for none), `MCPGW_BENCH_COMMAND`.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use mcpgw::snapshot::{RegistryView, assemble};
use mcpgw_bench_registry::{Backend, Bed, Shape, env_or, memory, setup};
use mcpgw_core::snapshot::{Policy, Snapshot};
use serde_json::{Value, json};

const SECTION_BEGIN: &str = "<!-- mcpgw-bench:registry:begin -->";
const SECTION_END: &str = "<!-- mcpgw-bench:registry:end -->";

struct Knobs {
    gateways: usize,
    tools: usize,
    rounds: usize,
    backends: Vec<String>,
    pg_url: String,
    output: String,
    command: String,
}

impl Knobs {
    fn from_env() -> anyhow::Result<Knobs> {
        let k = Knobs {
            gateways: env_or("MCPGW_BENCH_REGISTRY_GATEWAYS", 100)?,
            tools: env_or("MCPGW_BENCH_REGISTRY_TOOLS", 100)?,
            rounds: env_or("MCPGW_BENCH_ROUNDS", 5)?,
            backends: env_or(
                "MCPGW_BENCH_REGISTRY_BACKENDS",
                "sqlite,postgres".to_owned(),
            )?
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
            pg_url: env_or(
                "MCPGW_TEST_PG_URL",
                "postgres://postgres@127.0.0.1:5432/test".to_owned(),
            )?,
            output: env_or("MCPGW_BENCH_OUTPUT", "docs/benchmarks.md".to_owned())?,
            command: env_or(
                "MCPGW_BENCH_COMMAND",
                "./target/release/mcpgw-bench-registry".to_owned(),
            )?,
        };
        if k.gateways == 0 || k.tools == 0 || k.rounds == 0 {
            bail!("gateways, tools and rounds must be at least 1");
        }
        for b in &k.backends {
            if b != "sqlite" && b != "postgres" {
                bail!("MCPGW_BENCH_REGISTRY_BACKENDS: unknown backend {b:?} (sqlite, postgres)");
            }
        }
        Ok(k)
    }
}

#[derive(Default)]
struct Samples {
    read: Vec<f64>,
    assemble: Vec<f64>,
    serialize: Vec<f64>,
    parse: Vec<f64>,
    change: Vec<f64>,
    snapshot_bytes: usize,
    tools_in_snapshot: usize,
    list_50: Option<Histogram<u64>>,
    list_500: Option<Histogram<u64>>,
    walk_50: Vec<f64>,
    walk_500: Vec<f64>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
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

async fn measure_snapshot(bed: &Bed, s: &mut Samples) -> anyhow::Result<()> {
    let t = Instant::now();
    let view = RegistryView::read(&bed.store).await?;
    s.read.push(ms(t.elapsed()));
    let t = Instant::now();
    let snap = assemble(&view, &inputs(&view))?;
    s.assemble.push(ms(t.elapsed()));
    let t = Instant::now();
    let json = serde_json::to_vec(&snap)?;
    s.serialize.push(ms(t.elapsed()));
    let t = Instant::now();
    let parsed = Snapshot::from_json(&json).map_err(|e| anyhow::anyhow!("{e}"))?;
    s.parse.push(ms(t.elapsed()));
    if parsed != snap {
        bail!(
            "{}: the snapshot does not survive its own JSON",
            bed.backend
        );
    }
    s.snapshot_bytes = json.len();
    s.tools_in_snapshot = snap
        .servers
        .values()
        .map(|v| v.tools.len())
        .max()
        .unwrap_or(0);
    Ok(())
}

async fn measure_change(bed: &Bed, http: &reqwest::Client, round: usize) -> anyhow::Result<f64> {
    let t = Instant::now();
    let r = http
        .put(format!("http://{}/tools/{}", bed.addr, bed.first_tool))
        .bearer_auth(&bed.token)
        .json(&json!({"name": format!("renamed_in_round_{round}")}))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!(
            "{}: PUT /tools: {} {}",
            bed.backend,
            r.status(),
            r.text().await?
        );
    }
    let view = RegistryView::read(&bed.store).await?;
    let snap = assemble(&view, &inputs(&view))?;
    let elapsed = ms(t.elapsed());
    let changed = snap.servers.values().any(|v| {
        v.tools
            .iter()
            .any(|e| e.name == format!("renamed_in_round_{round}"))
    });
    if !changed {
        bail!("{}: the rebuilt snapshot misses the change", bed.backend);
    }
    Ok(elapsed)
}

/// Pages through `GET /tools?limit=…`; returns the per-page latencies (µs) and the walk.
async fn walk(
    bed: &Bed,
    http: &reqwest::Client,
    limit: u32,
    hist: &mut Histogram<u64>,
    expect: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut cursor: Option<String> = None;
    let mut seen = 0usize;
    loop {
        let mut url = format!("http://{}/tools?limit={limit}", bed.addr);
        if let Some(c) = &cursor {
            url.push_str("&cursor=");
            url.push_str(c);
        }
        let t = Instant::now();
        let r = http.get(&url).bearer_auth(&bed.token).send().await?;
        let status = r.status();
        let body: Value = r.json().await?;
        hist.record(t.elapsed().as_micros().max(1) as u64)?;
        if !status.is_success() {
            bail!("{}: GET {url}: {status} {body}", bed.backend);
        }
        seen += body["items"].as_array().map_or(0, Vec::len);
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    if seen != expect {
        bail!("{}: paginated {seen} tools, expected {expect}", bed.backend);
    }
    Ok(ms(started.elapsed()))
}

fn hist() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

fn main() -> anyhow::Result<()> {
    let knobs = Knobs::from_env()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(knobs))
}

async fn run(knobs: Knobs) -> anyhow::Result<()> {
    let total_tools = knobs.gateways * knobs.tools;
    let (rss_start, _) = memory();
    eprintln!(
        "mcpgw-bench-registry: {} gateways × {} tools on {:?}, {} rounds",
        knobs.gateways, knobs.tools, knobs.backends, knobs.rounds
    );
    let mut beds = Vec::new();
    let shape = Shape {
        gateways: knobs.gateways,
        tools: knobs.tools,
    };
    for b in &knobs.backends {
        let backend = match b.as_str() {
            "sqlite" => Backend::Sqlite,
            _ => Backend::Postgres {
                url: knobs.pg_url.clone(),
            },
        };
        let bed = setup(&backend, shape, false).await?;
        eprintln!(
            "{b}: registry populated in {:.1} s",
            bed.populate.as_secs_f64()
        );
        beds.push(bed);
    }
    let http = reqwest::Client::builder().no_proxy().build()?;
    let mut samples: Vec<Samples> = beds.iter().map(|_| Samples::default()).collect();
    for round in 0..knobs.rounds {
        // Alternate the order so neither backend always runs first.
        let mut order: Vec<usize> = (0..beds.len()).collect();
        order.rotate_left(round % beds.len().max(1));
        for i in order {
            let (bed, s) = (&beds[i], &mut samples[i]);
            measure_snapshot(bed, s).await?;
            s.change.push(measure_change(bed, &http, round).await?);
            let mut h50 = s.list_50.take().map_or_else(hist, Ok)?;
            let mut h500 = s.list_500.take().map_or_else(hist, Ok)?;
            s.walk_50
                .push(walk(bed, &http, 50, &mut h50, total_tools).await?);
            s.walk_500
                .push(walk(bed, &http, 500, &mut h500, total_tools).await?);
            s.list_50 = Some(h50);
            s.list_500 = Some(h500);
            eprintln!(
                "round {}/{} {}: snapshot read {:.0} ms + assemble {:.0} ms, list walk {:.0} ms (limit 50)",
                round + 1,
                knobs.rounds,
                bed.backend,
                s.read.last().copied().unwrap_or_default(),
                s.assemble.last().copied().unwrap_or_default(),
                s.walk_50.last().copied().unwrap_or_default(),
            );
        }
    }
    let (rss_end, hwm) = memory();
    let report = section(&knobs, &beds, &samples, rss_start, rss_end, hwm);
    println!("{report}");
    for bed in &mut beds {
        bed.stop().await;
    }
    mcpgw_bench_registry::write_report(&knobs.output, SECTION_BEGIN, SECTION_END, &report)?;
    Ok(())
}

fn section(
    knobs: &Knobs,
    beds: &[Bed],
    samples: &[Samples],
    rss_start: u64,
    rss_end: u64,
    hwm: u64,
) -> String {
    let mib = |kib: u64| kib as f64 / 1024.0;
    let mut s = mcpgw_bench_registry::section_head(
        SECTION_BEGIN,
        &format!(
            "Control plane: a {}-tool registry",
            knobs.gateways * knobs.tools
        ),
        "mcpgw-bench-registry",
        &knobs.command,
    );
    let _ = writeln!(
        s,
        "- Registry per backend: {} gateways × {} tools (each with a 3-property input schema), 10 resources and 5 prompts per gateway; {} virtual servers of 10 gateways each plus one server with every tool",
        knobs.gateways,
        knobs.tools,
        knobs.gateways.div_ceil(10)
    );
    let _ = writeln!(
        s,
        "- {} rounds, backends alternating; times are medians over rounds, list latencies p50/p99 over every page of every round",
        knobs.rounds
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| backend | populate | snapshot: read | assemble | to JSON | parse (as the filter) | JSON size | write → new snapshot | list p50 / p99 (limit 50) | full walk (limit 50) | list p50 / p99 (limit 500) | full walk (limit 500) |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (bed, x) in beds.iter().zip(samples) {
        let q = |h: &Option<Histogram<u64>>, p: f64| {
            h.as_ref()
                .map_or(f64::NAN, |h| h.value_at_quantile(p) as f64 / 1000.0)
        };
        let _ = writeln!(
            s,
            "| {} | {:.1} s | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.1} MiB | {:.0} ms | {:.1} / {:.1} ms | {:.0} ms | {:.1} / {:.1} ms | {:.0} ms |",
            bed.backend,
            bed.populate.as_secs_f64(),
            median(&x.read),
            median(&x.assemble),
            median(&x.serialize),
            median(&x.parse),
            x.snapshot_bytes as f64 / (1024.0 * 1024.0),
            median(&x.change),
            q(&x.list_50, 0.5),
            q(&x.list_50, 0.99),
            median(&x.walk_50),
            q(&x.list_500, 0.5),
            q(&x.list_500, 0.99),
            median(&x.walk_500),
        );
    }
    if let [a, b] = samples {
        let total = |x: &Samples| median(&x.read) + median(&x.assemble);
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "- {} ÷ {}: snapshot build (read + assemble) {:.2}×, full list walk (limit 50) {:.2}×",
            beds[1].backend,
            beds[0].backend,
            total(b) / total(a),
            median(&b.walk_50) / median(&a.walk_50),
        );
    }
    let _ = writeln!(
        s,
        "- Largest virtual server in the snapshot: {} tools",
        samples.first().map_or(0, |x| x.tools_in_snapshot)
    );
    let _ = writeln!(
        s,
        "- Memory of this process, which hosts every backend's control plane (admin API, store pool, federation) and the benchmark client:"
    );
    let _ = writeln!(s, "  - RSS at start: {:.1} MiB", mib(rss_start));
    let mut prev = rss_start;
    for bed in beds {
        let _ = writeln!(
            s,
            "  - after setting up {} (control plane + populated registry): {:.1} MiB (+{:.1} MiB)",
            bed.backend,
            mib(bed.rss_after_setup),
            mib(bed.rss_after_setup.saturating_sub(prev))
        );
        prev = bed.rss_after_setup;
    }
    let _ = writeln!(
        s,
        "  - at the end: {:.1} MiB; peak (VmHWM, while snapshots were built): {:.1} MiB",
        mib(rss_end),
        mib(hwm)
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "How to read it: `read` is the SQL side (every gateway, item and server row, at one registry version), `assemble` renders every catalog entry as its MCP list item, `to JSON` and `parse` are the cost of shipping that document and of each filter VM loading it. `write → new snapshot` is a `PUT /tools/{{id}}` (a rename) through the API followed by a full rebuild: what a registry change costs before xDS pushes it."
    );
    let _ = writeln!(s, "{SECTION_END}");
    s
}

/// The snapshot inputs of `view`: the default policy, and every gateway the edge can use.
fn inputs(view: &RegistryView) -> mcpgw::snapshot::SnapshotInputs {
    mcpgw::snapshot::SnapshotInputs {
        upstreams: view
            .gateways
            .iter()
            .filter_map(|g| {
                let t = mcpgw::edge_config::UpstreamTarget::parse(g).ok()?;
                Some((
                    g.id.clone(),
                    t.snapshot_entry(mcpgw::snapshot::cluster_name(&g.id), Default::default()),
                ))
            })
            .collect(),
        ..mcpgw::snapshot::SnapshotInputs::new(Policy::default())
    }
}
