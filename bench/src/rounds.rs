//! One benchmark run: start the upstream and one Envoy per variant, then measure the
//! variants in alternating rounds.

use crate::envoy::{self, Envoy, Modules};
use crate::load::{self, Interval};
use crate::machine;
use crate::settings::Settings;
use crate::upstream::Upstream;
use crate::variant::Variant;
use anyhow::{Context, anyhow, bail};
use hdrhistogram::Histogram;

/// What one variant measured over all rounds.
#[derive(Debug, Clone)]
pub struct VariantResult {
    /// The variant.
    pub variant: Variant,
    /// Requests per second, one per round, in round order.
    pub rates: Vec<f64>,
    /// Latencies of all measured requests of all rounds, in nanoseconds.
    pub latency_ns: Histogram<u64>,
    /// Envoy's resident memory after the first warmup, in bytes.
    pub rss_bytes: u64,
    /// Envoy's CPU use while measured, as a fraction of one core, one per round.
    pub envoy_cpu: Vec<f64>,
    /// The driver's (load generator + upstream) CPU use while measured, one per round.
    pub driver_cpu: Vec<f64>,
    /// For the mcpgw variant: `mcpgw_requests_total` summed after the run (proof the
    /// filter parsed and counted every request).
    pub filter_requests: Option<u64>,
    /// Requests completed in measured intervals.
    pub measured_requests: u64,
}

/// Context of the run, for the report.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// When the run ended.
    pub date: String,
    /// Online CPUs.
    pub cpus: usize,
    /// CPU model.
    pub cpu_model: String,
    /// Kernel release.
    pub kernel: String,
    /// `envoy --version`.
    pub envoy_version: String,
    /// How processes were placed on cores.
    pub placement: String,
    /// Size in bytes of each wasm module measured.
    pub wasm_sizes: Vec<(Variant, u64)>,
    /// Load averages when the measurement started and when it ended: anything well above
    /// the two busy cores of the benchmark means other work competed for the CPUs.
    pub load_average: (String, String),
    /// Requests the upstream answered in total (warmups included).
    pub upstream_served: u64,
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// One result per variant, in the order of the settings.
    pub results: Vec<VariantResult>,
    /// Where and how it ran.
    pub context: RunContext,
}

/// Runs the benchmark; `progress` gets one line per measured interval.
pub fn run(settings: &Settings, mut progress: impl FnMut(&str)) -> anyhow::Result<Outcome> {
    let modules = Modules {
        mcpgw: settings.mcpgw_wasm.clone(),
        floor: settings.floor_wasm.clone(),
    };
    let mut wasm_sizes = Vec::new();
    for (variant, path, how) in [
        (
            Variant::Floor,
            &modules.floor,
            "cargo build --release -p mcpgw-bench-floor --target wasm32-wasip1",
        ),
        (Variant::Mcpgw, &modules.mcpgw, "make wasm"),
    ] {
        if settings.variants.contains(&variant) {
            let meta = std::fs::metadata(path).with_context(|| {
                format!(
                    "wasm module for `{variant}` not found at {} (build it: {how})",
                    path.display()
                )
            })?;
            wasm_sizes.push((variant, meta.len()));
        }
    }
    let envoy_version = envoy::version(&settings.envoy).with_context(|| {
        format!(
            "Envoy not usable at {} (run `make deps`)",
            settings.envoy.display()
        )
    })?;

    let cpus = machine::cpus();
    let (envoy_cpu, placement) = if !settings.pin {
        (None, "no pinning (MCPGW_BENCH_PIN=0)".to_string())
    } else if cpus < 2 || !machine::has_taskset() {
        (None, "no pinning (needs 2 CPUs and taskset)".to_string())
    } else {
        // Before any thread starts, so the upstream and client threads inherit core 1.
        machine::pin_self(1)?;
        (
            Some(0),
            "Envoy on CPU 0; load generator and upstream on CPU 1 (taskset)".to_string(),
        )
    };

    let placement = if settings.nice != 0 {
        // Also before any thread starts: threads inherit the nice value of their creator.
        machine::renice_self(settings.nice)?;
        format!("{placement}; Envoy and driver at nice {}", settings.nice)
    } else {
        placement
    };

    let upstream = Upstream::start()?;
    let mut envoys = Vec::new();
    for &variant in &settings.variants {
        let config = envoy::bootstrap(variant, upstream.addr(), &modules);
        envoys.push(Envoy::start(
            &settings.envoy,
            variant.name(),
            &config,
            envoy_cpu,
            settings.nice,
        )?);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("client runtime")?;
    let body = load::tools_call_body();
    let ticks = machine::ticks_per_second() as f64;
    let me = std::process::id();

    let load_before = machine::load_average();
    let mut results: Vec<VariantResult> = Vec::new();
    for &variant in &settings.variants {
        results.push(VariantResult {
            variant,
            rates: Vec::new(),
            latency_ns: load::new_histogram()?,
            rss_bytes: 0,
            envoy_cpu: Vec::new(),
            driver_cpu: Vec::new(),
            filter_requests: None,
            measured_requests: 0,
        });
    }
    let n = settings.variants.len();
    for round in 0..settings.rounds as usize {
        // Rotate the order every round so no variant always runs first (or right after
        // another one's warmup).
        for i in (0..n).map(|k| (k + round) % n) {
            let (envoy, result) = (&envoys[i], &mut results[i]);
            let variant = result.variant;
            let addr = envoy.listener();
            let fail =
                |e: anyhow::Error| anyhow!("{e:#}\nEnvoy log ({variant}):\n{}", envoy.log_tail());
            if !settings.warmup.is_zero() {
                runtime
                    .block_on(load::drive(
                        addr,
                        body.clone(),
                        settings.connections,
                        settings.warmup,
                    ))
                    .with_context(|| format!("warmup of `{variant}`"))
                    .map_err(fail)?;
            }
            if round == 0 {
                result.rss_bytes = machine::rss_bytes(envoy.pid())?;
            }
            let (envoy_before, me_before) =
                (machine::cpu_ticks(envoy.pid())?, machine::cpu_ticks(me)?);
            let interval: Interval = runtime
                .block_on(load::drive(
                    addr,
                    body.clone(),
                    settings.connections,
                    settings.measure,
                ))
                .with_context(|| format!("round {} of `{variant}`", round + 1))
                .map_err(fail)?;
            let (envoy_after, me_after) =
                (machine::cpu_ticks(envoy.pid())?, machine::cpu_ticks(me)?);
            let secs = interval.elapsed.as_secs_f64();
            result
                .envoy_cpu
                .push((envoy_after - envoy_before) as f64 / ticks / secs);
            result
                .driver_cpu
                .push((me_after - me_before) as f64 / ticks / secs);
            result.rates.push(interval.rate());
            result.measured_requests += interval.completed;
            result
                .latency_ns
                .add(&interval.latency_ns)
                .map_err(|e| anyhow!("merging histograms: {e}"))?;
            progress(&format!(
                "round {}/{} {variant:>6}: {:>8.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms",
                round + 1,
                settings.rounds,
                interval.rate(),
                interval.latency_ns.value_at_quantile(0.5) as f64 / 1e6,
                interval.latency_ns.value_at_quantile(0.99) as f64 / 1e6,
            ));
        }
    }
    for (envoy, result) in envoys.iter().zip(results.iter_mut()) {
        if result.variant == Variant::Mcpgw {
            let counted = envoy.counter_sum("mcpgw_requests_total")?;
            if counted < result.measured_requests {
                bail!(
                    "the mcpgw filter counted {counted} requests in mcpgw_requests_total, fewer than the {} measured: \
                     metrics are not on, or requests bypassed the filter",
                    result.measured_requests
                );
            }
            result.filter_requests = Some(counted);
        }
    }
    drop(envoys);
    Ok(Outcome {
        results,
        context: RunContext {
            date: machine::utc_now(),
            cpus,
            cpu_model: machine::cpu_model(),
            kernel: machine::kernel(),
            envoy_version,
            placement,
            wasm_sizes,
            load_average: (load_before, machine::load_average()),
            upstream_served: upstream.served(),
        },
    })
}
