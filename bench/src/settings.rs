//! What one run measures, read from `MCPGW_*` environment variables (through a lookup
//! function, so tests never touch the process environment).

use crate::variant::Variant;
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Settings of one benchmark run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The Envoy binary (`MCPGW_ENVOY`, default `.venv/bin/envoy`).
    pub envoy: PathBuf,
    /// The mcpgw filter (`MCPGW_WASM`, default the release build of `mcpgw-filter`).
    pub mcpgw_wasm: PathBuf,
    /// The floor filter (`MCPGW_BENCH_FLOOR_WASM`, default the release build of
    /// `mcpgw-bench-floor`).
    pub floor_wasm: PathBuf,
    /// Variants to measure (`MCPGW_BENCH_VARIANTS`, comma-separated names from
    /// [`Variant::ALL`]; default all).
    pub variants: Vec<Variant>,
    /// Measured rounds; each round measures every variant once (`MCPGW_BENCH_ROUNDS`, 5).
    pub rounds: u32,
    /// Measured time per variant and round (`MCPGW_BENCH_SECONDS`, 10).
    pub measure: Duration,
    /// Unmeasured load before each measurement (`MCPGW_BENCH_WARMUP_SECONDS`, 2).
    pub warmup: Duration,
    /// Concurrent keep-alive connections of the closed-loop client
    /// (`MCPGW_BENCH_CONNECTIONS`, 32).
    pub connections: usize,
    /// Pin Envoy and the driver to separate cores with `taskset` (`MCPGW_BENCH_PIN`, 1).
    pub pin: bool,
    /// Scheduling priority of Envoy and the driver (`MCPGW_BENCH_NICE`, default 0 =
    /// unchanged; negative values need root). On a machine shared with builds, a negative
    /// value keeps them from stealing the measured cores' time.
    pub nice: i32,
    /// Markdown file whose benchmark section is replaced (`MCPGW_BENCH_OUTPUT`, default
    /// `docs/benchmarks.md`; `-` writes nothing).
    pub output: Option<PathBuf>,
    /// The command that produced the run, for the report (`MCPGW_BENCH_COMMAND`).
    pub command: String,
}

/// Default measured seconds per variant and round.
pub const DEFAULT_SECONDS: f64 = 10.0;
/// Default warmup seconds per variant and round.
pub const DEFAULT_WARMUP_SECONDS: f64 = 2.0;
/// Default rounds.
pub const DEFAULT_ROUNDS: u32 = 5;
/// Default client connections.
pub const DEFAULT_CONNECTIONS: usize = 32;

/// Variables that change what is measured; the report shows the ones that are set.
const KNOBS: [&str; 7] = [
    "MCPGW_BENCH_VARIANTS",
    "MCPGW_BENCH_ROUNDS",
    "MCPGW_BENCH_SECONDS",
    "MCPGW_BENCH_WARMUP_SECONDS",
    "MCPGW_BENCH_CONNECTIONS",
    "MCPGW_BENCH_PIN",
    "MCPGW_BENCH_NICE",
];

impl Settings {
    /// Reads the settings; `root` is the workspace root the default paths hang off.
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
        root: &Path,
    ) -> anyhow::Result<Settings> {
        let get = |key: &str| get(key).filter(|v| !v.trim().is_empty());
        let path =
            |key: &str, default: &str| get(key).map_or_else(|| root.join(default), PathBuf::from);
        let variants = match get("MCPGW_BENCH_VARIANTS") {
            None => Variant::ALL.to_vec(),
            Some(list) => {
                let mut variants = Vec::new();
                for name in list.split(',').filter(|n| !n.trim().is_empty()) {
                    let v: Variant = name.parse().context("MCPGW_BENCH_VARIANTS")?;
                    if !variants.contains(&v) {
                        variants.push(v);
                    }
                }
                if variants.is_empty() {
                    bail!("MCPGW_BENCH_VARIANTS names no variant");
                }
                variants
            }
        };
        let rounds = number(
            get("MCPGW_BENCH_ROUNDS"),
            "MCPGW_BENCH_ROUNDS",
            DEFAULT_ROUNDS,
        )?;
        let connections = number(
            get("MCPGW_BENCH_CONNECTIONS"),
            "MCPGW_BENCH_CONNECTIONS",
            DEFAULT_CONNECTIONS,
        )?;
        if rounds == 0 || connections == 0 {
            bail!("MCPGW_BENCH_ROUNDS and MCPGW_BENCH_CONNECTIONS must be at least 1");
        }
        let measure = seconds(
            get("MCPGW_BENCH_SECONDS"),
            "MCPGW_BENCH_SECONDS",
            DEFAULT_SECONDS,
        )?;
        if measure.is_zero() {
            bail!("MCPGW_BENCH_SECONDS must be greater than 0");
        }
        let warmup = seconds(
            get("MCPGW_BENCH_WARMUP_SECONDS"),
            "MCPGW_BENCH_WARMUP_SECONDS",
            DEFAULT_WARMUP_SECONDS,
        )?;
        let pin = match get("MCPGW_BENCH_PIN").as_deref().map(str::trim) {
            None | Some("1" | "true" | "yes") => true,
            Some("0" | "false" | "no") => false,
            Some(other) => bail!("MCPGW_BENCH_PIN: expected 0 or 1, got `{other}`"),
        };
        let nice: i32 = number(get("MCPGW_BENCH_NICE"), "MCPGW_BENCH_NICE", 0)?;
        if !(-20..=19).contains(&nice) {
            bail!("MCPGW_BENCH_NICE must be between -20 and 19, got {nice}");
        }
        let output = match get("MCPGW_BENCH_OUTPUT") {
            Some(v) if v.trim() == "-" => None,
            Some(v) => Some(PathBuf::from(v)),
            None => Some(root.join("docs/benchmarks.md")),
        };
        let base = get("MCPGW_BENCH_COMMAND")
            .unwrap_or_else(|| "cargo run --release -p mcpgw-bench".into());
        // Knobs the command already spells out are not repeated.
        let knobs: Vec<String> = KNOBS
            .iter()
            .filter(|k| !base.contains(&format!("{k}=")))
            .filter_map(|k| get(k).map(|v| format!("{k}={}", v.trim())))
            .collect();
        let command = if knobs.is_empty() {
            base
        } else {
            format!("{} {base}", knobs.join(" "))
        };
        Ok(Settings {
            envoy: path("MCPGW_ENVOY", ".venv/bin/envoy"),
            mcpgw_wasm: path(
                "MCPGW_WASM",
                "target/wasm32-wasip1/release/mcpgw_filter.wasm",
            ),
            floor_wasm: path(
                "MCPGW_BENCH_FLOOR_WASM",
                "target/wasm32-wasip1/release/mcpgw_bench_floor.wasm",
            ),
            variants,
            rounds,
            measure,
            warmup,
            connections,
            pin,
            nice,
            output,
            command,
        })
    }
}

fn number<T: std::str::FromStr>(value: Option<String>, key: &str, default: T) -> anyhow::Result<T> {
    match value {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .ok()
            .with_context(|| format!("{key}: `{v}` is not a whole number")),
    }
}

fn seconds(value: Option<String>, key: &str, default: f64) -> anyhow::Result<Duration> {
    let secs = match value {
        None => default,
        Some(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .with_context(|| format!("{key}: `{v}` is not a number"))?,
    };
    Duration::try_from_secs_f64(secs)
        .with_context(|| format!("{key}: {secs} is not a valid duration"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> anyhow::Result<Settings> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| vars.get(k).cloned(), Path::new("/repo"))
    }

    #[test]
    fn defaults() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.variants, Variant::ALL.to_vec());
        assert_eq!((s.rounds, s.connections, s.pin), (5, 32, true));
        assert_eq!(s.measure, Duration::from_secs(10));
        assert_eq!(s.envoy, PathBuf::from("/repo/.venv/bin/envoy"));
        assert_eq!(s.output, Some(PathBuf::from("/repo/docs/benchmarks.md")));
        assert_eq!(s.command, "cargo run --release -p mcpgw-bench");
    }

    #[test]
    fn overrides_show_in_the_command() {
        let s = settings(&[
            ("MCPGW_BENCH_VARIANTS", "mcpgw, plain,mcpgw"),
            ("MCPGW_BENCH_SECONDS", "0.5"),
            ("MCPGW_BENCH_OUTPUT", "-"),
            ("MCPGW_BENCH_COMMAND", "make bench"),
        ])
        .unwrap();
        assert_eq!(s.variants, vec![Variant::Mcpgw, Variant::Plain]);
        assert_eq!(s.measure, Duration::from_millis(500));
        assert_eq!(s.output, None);
        assert_eq!(
            s.command,
            "MCPGW_BENCH_VARIANTS=mcpgw, plain,mcpgw MCPGW_BENCH_SECONDS=0.5 make bench"
        );
    }

    #[test]
    fn knobs_the_command_names_are_not_repeated() {
        let s = settings(&[
            ("MCPGW_BENCH_ROUNDS", "3"),
            ("MCPGW_BENCH_SECONDS", "6"),
            ("MCPGW_BENCH_CONNECTIONS", "16"),
            (
                "MCPGW_BENCH_COMMAND",
                "MCPGW_BENCH_ROUNDS=3 MCPGW_BENCH_SECONDS=6 make bench-envoy",
            ),
        ])
        .unwrap();
        assert_eq!(
            s.command,
            "MCPGW_BENCH_CONNECTIONS=16 MCPGW_BENCH_ROUNDS=3 MCPGW_BENCH_SECONDS=6 make bench-envoy"
        );
    }

    #[test]
    fn edge_variants_are_selectable() {
        let s = settings(&[("MCPGW_BENCH_VARIANTS", "plain-list,edge-list")]).unwrap();
        assert_eq!(s.variants, vec![Variant::PlainList, Variant::EdgeList]);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let cases = [
            ("MCPGW_BENCH_VARIANTS", "plain,nginx"),
            ("MCPGW_BENCH_ROUNDS", "five"),
            ("MCPGW_BENCH_ROUNDS", "0"),
            ("MCPGW_BENCH_SECONDS", "-1"),
            ("MCPGW_BENCH_PIN", "maybe"),
            ("MCPGW_BENCH_NICE", "-30"),
        ];
        for (key, value) in cases {
            let err = format!("{:#}", settings(&[(key, value)]).unwrap_err());
            assert!(err.contains(key), "{key}={value}: {err}");
        }
    }
}
