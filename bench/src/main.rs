//! `mcpgw-bench`: runs the side-by-side Envoy benchmark, prints the table and rewrites the
//! benchmark's section of `docs/benchmarks.md`. Settings come from `MCPGW_*` variables
//! (see `settings.rs`); `make bench` builds everything and runs it.

use anyhow::Context;
use mcpgw_bench::{identity, report, rounds, settings::Settings};
use std::path::Path;

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("bench crate has no parent directory")?;
    let settings = Settings::from_lookup(|k| std::env::var(k).ok(), root)?;
    let fresh = settings
        .variants
        .contains(&mcpgw_bench::variant::Variant::EdgeCallAuthFresh);
    if settings.variants.iter().any(|v| v.sends_token()) {
        identity::prepare(&mcpgw_harness::Artifacts::from_env(), fresh)?;
    }
    eprintln!(
        "mcpgw-bench: {} rounds × {:?} × {:.1} s (+{:.1} s warmup), {} connections",
        settings.rounds,
        settings
            .variants
            .iter()
            .map(|v| v.name())
            .collect::<Vec<_>>(),
        settings.measure.as_secs_f64(),
        settings.warmup.as_secs_f64(),
        settings.connections
    );
    let outcome = rounds::run(&settings, |line| eprintln!("{line}"))?;
    println!("{}", report::table(&outcome));
    if let Some(path) = &settings.output {
        report::write_section(path, &report::section(&outcome, &settings))?;
    }
    Ok(())
}
