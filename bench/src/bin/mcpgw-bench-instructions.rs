//! `mcpgw-bench-instructions`: counts the instructions Envoy executes per request for each
//! variant under callgrind (see `instructions.rs`), prints the table and rewrites its
//! section of `docs/benchmarks.md`. `make bench-instructions` builds everything and runs it.

use anyhow::Context;
use mcpgw_bench::instructions::{self, Counting};
use mcpgw_bench::{envoy, identity, machine, report, settings::Settings};
use std::path::Path;

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("bench crate has no parent directory")?;
    let lookup = |k: &str| std::env::var(k).ok();
    let settings = Settings::from_lookup(lookup, root)?;
    let counting = Counting::from_lookup(lookup)?;
    let fresh = settings
        .variants
        .contains(&mcpgw_bench::variant::Variant::EdgeCallAuthFresh);
    if settings.variants.iter().any(|v| v.sends_token()) {
        identity::prepare(&mcpgw_harness::Artifacts::from_env(), fresh)?;
    }
    let envoy_version = envoy::version(&settings.envoy)
        .with_context(|| format!("Envoy not usable at {}", settings.envoy.display()))?;
    let valgrind = std::process::Command::new("valgrind")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    eprintln!(
        "mcpgw-bench-instructions: {:?}, {} warmup + {} × {} counted requests each",
        settings
            .variants
            .iter()
            .map(|v| v.name())
            .collect::<Vec<_>>(),
        counting.warmup,
        counting.repeats,
        counting.requests
    );
    let counts = instructions::run(&settings, counting, |line| eprintln!("{line}"))?;
    let head = format!(
        "- Date: {}\n- Machine: {} (nproc {}), Linux {}\n- Envoy: {envoy_version}; {valgrind}\n",
        machine::utc_now(),
        machine::cpu_model(),
        machine::cpus(),
        machine::kernel(),
    );
    let base = lookup("MCPGW_BENCH_COMMAND")
        .unwrap_or_else(|| "./target/release/mcpgw-bench-instructions".into());
    let knobs: Vec<String> = [
        "MCPGW_BENCH_VARIANTS",
        "MCPGW_BENCH_INSTR_WARMUP",
        "MCPGW_BENCH_INSTR_REQUESTS",
        "MCPGW_BENCH_INSTR_REPEATS",
    ]
    .iter()
    .filter_map(|k| lookup(k).map(|v| format!("{k}={}", v.trim())))
    .collect();
    let command = [knobs.join(" "), base].join(" ").trim().to_string();
    let section = instructions::section(&counts, counting, &command, &head);
    println!("{section}");
    if let Some(path) = &settings.output {
        report::write_marked(
            path,
            instructions::BEGIN_MARKER,
            instructions::END_MARKER,
            &section,
        )?;
    }
    Ok(())
}
