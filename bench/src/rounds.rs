//! One benchmark run: start the upstream and one Envoy per variant, then measure the
//! variants in alternating rounds.

use crate::catalog;
use crate::envoy::{self, Envoy, Modules};
use crate::load::{self, Interval};
use crate::machine;
use crate::settings::Settings;
use crate::upstream::{self, Served, Upstream};
use crate::variant::Variant;
use anyhow::{Context, anyhow, bail, ensure};
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
    /// For variants running the mcpgw filter: `mcpgw_requests_total` summed after the run
    /// (proof the filter parsed and counted every request).
    pub filter_requests: Option<u64>,
    /// Requests completed in measured intervals.
    pub measured_requests: u64,
    /// Requests completed under load, warmups included.
    pub loaded_requests: u64,
    /// What the upstream answered while this variant was under load (warmups included):
    /// nothing for `edge-list`, one answer per request for every other variant.
    pub upstream: Served,
    /// Size of the (verified, then required) response body.
    pub response_bytes: usize,
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
    /// Size in bytes of each wasm module loaded, by filter (`floor`, `mcpgw`).
    pub wasm_sizes: Vec<(&'static str, u64)>,
    /// Load averages when the measurement started and when it ended: anything well above
    /// the two busy cores of the benchmark means other work competed for the CPUs.
    pub load_average: (String, String),
    /// Requests the upstream answered in total (probes and warmups included).
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
    for (filter, path, how, used) in [
        (
            "floor",
            &modules.floor,
            "cargo build --release -p mcpgw-bench-floor --target wasm32-wasip1",
            settings.variants.contains(&Variant::Floor),
        ),
        (
            "mcpgw",
            &modules.mcpgw,
            "make wasm",
            settings.variants.iter().any(|v| v.runs_mcpgw()),
        ),
    ] {
        if used {
            let meta = std::fs::metadata(path).with_context(|| {
                format!(
                    "wasm module `{filter}` not found at {} (build it: {how})",
                    path.display()
                )
            })?;
            wasm_sizes.push((filter, meta.len()));
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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("client runtime")?;
    let mut envoys = Vec::new();
    for &variant in &settings.variants {
        let config = envoy::bootstrap(variant, upstream.addr(), &modules).to_string();
        envoys.push(runtime.block_on(Envoy::start(
            &settings.envoy,
            variant.name(),
            &config,
            envoy_cpu,
            settings.nice,
        ))?);
    }
    // One verified answer per variant before any load; under load every answer must equal it.
    let mut workloads = Vec::new();
    for (envoy, &variant) in envoys.iter().zip(&settings.variants) {
        let workload = variant.workload();
        let answer = runtime
            .block_on(load::probe(envoy.listener(), &workload))
            .and_then(|(status, answer)| verify_answer(variant, status, &answer).map(|()| answer))
            .with_context(|| format!("probe of `{variant}`"))
            .map_err(|e| anyhow!("{e:#}\nEnvoy log ({variant}):\n{}", envoy.log_tail()))?;
        workloads.push((workload, answer));
    }
    let ticks = machine::ticks_per_second() as f64;
    let me = std::process::id();

    let load_before = machine::load_average();
    let mut results: Vec<VariantResult> = Vec::new();
    for (&variant, (_, answer)) in settings.variants.iter().zip(&workloads) {
        results.push(VariantResult {
            variant,
            rates: Vec::new(),
            latency_ns: load::new_histogram()?,
            rss_bytes: 0,
            envoy_cpu: Vec::new(),
            driver_cpu: Vec::new(),
            filter_requests: None,
            measured_requests: 0,
            loaded_requests: 0,
            upstream: Served::default(),
            response_bytes: answer.len(),
        });
    }
    let n = settings.variants.len();
    for round in 0..settings.rounds as usize {
        // Rotate the order every round so no variant always runs first (or right after
        // another one's warmup).
        for i in (0..n).map(|k| (k + round) % n) {
            let (envoy, result) = (&envoys[i], &mut results[i]);
            let (workload, expected) = &workloads[i];
            let variant = result.variant;
            let addr = envoy.listener();
            let fail =
                |e: anyhow::Error| anyhow!("{e:#}\nEnvoy log ({variant}):\n{}", envoy.log_tail());
            let upstream_before = upstream.served();
            let mut loaded = 0;
            if !settings.warmup.is_zero() {
                loaded += runtime
                    .block_on(load::drive(
                        addr,
                        workload,
                        expected,
                        settings.connections,
                        settings.warmup,
                    ))
                    .with_context(|| format!("warmup of `{variant}`"))
                    .map_err(fail)?
                    .completed;
            }
            if round == 0 {
                result.rss_bytes = machine::rss_bytes(envoy.pid())?;
            }
            let (envoy_before, me_before) =
                (machine::cpu_ticks(envoy.pid())?, machine::cpu_ticks(me)?);
            let interval: Interval = runtime
                .block_on(load::drive(
                    addr,
                    workload,
                    expected,
                    settings.connections,
                    settings.measure,
                ))
                .with_context(|| format!("round {} of `{variant}`", round + 1))
                .map_err(fail)?;
            let (envoy_after, me_after) =
                (machine::cpu_ticks(envoy.pid())?, machine::cpu_ticks(me)?);
            loaded += interval.completed;
            let answered = upstream.served().since(&upstream_before);
            check_upstream(variant, loaded, answered)
                .with_context(|| format!("round {} of `{variant}`", round + 1))?;
            result.loaded_requests += loaded;
            result.upstream.lists += answered.lists;
            result.upstream.calls += answered.calls;
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
                "round {}/{} {variant:>10}: {:>8.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms",
                round + 1,
                settings.rounds,
                interval.rate(),
                interval.latency_ns.value_at_quantile(0.5) as f64 / 1e6,
                interval.latency_ns.value_at_quantile(0.99) as f64 / 1e6,
            ));
        }
    }
    for (envoy, result) in envoys.iter().zip(results.iter_mut()) {
        if result.variant.runs_mcpgw() {
            let counted = runtime.block_on(envoy.counter_sum("mcpgw_requests_total"))?;
            if counted < result.measured_requests {
                bail!(
                    "the mcpgw filter of `{}` counted {counted} requests in mcpgw_requests_total, fewer than the {} measured: \
                     metrics are not on, or requests bypassed the filter",
                    result.variant,
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
            upstream_served: upstream.served().total(),
        },
    })
}

/// Checks the probe's answer for `variant` before any load: HTTP 200 and, for a list, the
/// catalog's whole page; for a call, the upstream's result passed through unchanged.
pub fn verify_answer(variant: Variant, status: u16, body: &[u8]) -> anyhow::Result<()> {
    ensure!(
        status == 200,
        "HTTP {status} (body: {})",
        String::from_utf8_lossy(&body[..body.len().min(300)])
    );
    if variant.lists() {
        catalog::verify_list_page(body)
    } else {
        ensure!(
            body == upstream::RESULT_BODY.as_bytes(),
            "the call's answer is not the upstream's result: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
        Ok(())
    }
}

/// Checks what the upstream answered while `variant` completed `sent` requests: nothing
/// for `edge-list` (the filter answered every list), otherwise exactly one list or one
/// call of `echo` per request (for `edge-call`: the filter renamed `bench__echo`, else
/// the upstream would have refused it).
pub fn check_upstream(variant: Variant, sent: u64, answered: Served) -> anyhow::Result<()> {
    let expected = match (variant.reaches_upstream(), variant.lists()) {
        (false, _) => Served::default(),
        (true, true) => Served {
            lists: sent,
            ..Served::default()
        },
        (true, false) => Served {
            calls: sent,
            ..Served::default()
        },
    };
    ensure!(
        answered == expected,
        "the upstream answered {answered:?} while `{variant}` completed {sent} requests; expected {expected:?}"
    );
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn upstream_answers_must_match_the_variant() {
        let served = |lists, calls| Served {
            lists,
            calls,
            refused: 0,
        };
        let cases = [
            ("edge answers lists", Variant::EdgeList, served(0, 0), true),
            (
                "edge list leaked upstream",
                Variant::EdgeList,
                served(1, 0),
                false,
            ),
            (
                "plain forwards lists",
                Variant::PlainList,
                served(10, 0),
                true,
            ),
            (
                "the filter forwards lists it does not answer",
                Variant::McpgwList,
                served(10, 0),
                true,
            ),
            (
                "a list went missing",
                Variant::PlainList,
                served(9, 0),
                false,
            ),
            ("edge routes calls", Variant::EdgeCall, served(0, 10), true),
            (
                "edge call became a list",
                Variant::EdgeCall,
                served(10, 0),
                false,
            ),
            ("mcpgw forwards calls", Variant::Mcpgw, served(0, 10), true),
            ("plain call", Variant::PlainCall, served(0, 10), true),
        ];
        for (name, variant, answered, ok) in cases {
            let sent = if variant.reaches_upstream() { 10 } else { 7 };
            assert_eq!(
                check_upstream(variant, sent, answered).is_ok(),
                ok,
                "{name}"
            );
        }
    }

    #[test]
    fn probe_answers_are_verified() {
        let result = upstream::RESULT_BODY.as_bytes();
        let page = catalog::list_page();
        assert!(verify_answer(Variant::EdgeCall, 200, result).is_ok());
        assert!(verify_answer(Variant::EdgeCall, 404, result).is_err());
        assert!(verify_answer(Variant::EdgeList, 200, &page).is_ok());
        assert!(verify_answer(Variant::EdgeList, 200, result).is_err());
        assert!(verify_answer(Variant::Mcpgw, 200, &page).is_err());
        let error = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"unknown tool"}}"#;
        assert!(verify_answer(Variant::EdgeCall, 200, error).is_err());
    }
}
