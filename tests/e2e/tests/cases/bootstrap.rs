//! The static example bootstraps in `envoy/` pass `envoy --mode validate`, and so does the
//! bootstrap the harness generates.

use std::process::Command;

use super::support::artifacts;
use mcpgw_e2e::EnvoyConfig;

/// How the examples refer to the filter.
const EXAMPLE_WASM: &str = "target/wasm32-wasip1/release/mcpgw_filter.wasm";

#[test]
fn example_bootstraps_validate() -> anyhow::Result<()> {
    let a = artifacts();
    let mut files: Vec<_> = std::fs::read_dir(a.repo.join("envoy"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no envoy/*.yaml examples");
    let dir = mcpgw_e2e::workdir::Workdir::new("examples")?;
    let mut failures = Vec::new();
    for example in &files {
        // The examples name the filter relative to the repo root; validate them against the
        // module under test (MCPGW_WASM), which may live elsewhere.
        let text = std::fs::read_to_string(example)?;
        // Bootstraps that configure the filter themselves must load it from the documented
        // path; the ADS-only bootstrap gets its filter config over xDS.
        if text.contains("envoy.filters.http.wasm") {
            assert!(
                text.contains(EXAMPLE_WASM),
                "{} does not load {EXAMPLE_WASM}",
                example.display()
            );
        }
        let file = dir.file(&example.file_name().unwrap_or_default().to_string_lossy());
        std::fs::write(
            &file,
            text.replace(EXAMPLE_WASM, &a.wasm()?.display().to_string()),
        )?;
        let out = Command::new(a.envoy()?)
            .current_dir(&a.repo)
            .args(["--mode", "validate", "--base-id"])
            .arg(mcpgw_e2e::workdir::unique_id().to_string())
            .arg("-c")
            .arg(file)
            .output()?;
        if !out.status.success() {
            failures.push(format!(
                "{}: {}\n{}",
                example.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .rev()
                    .take(15)
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "invalid example bootstraps:\n{}",
        failures.join("\n")
    );
    Ok(())
}

#[test]
fn generated_bootstrap_validates() -> anyhow::Result<()> {
    let a = artifacts();
    let dir = mcpgw_e2e::workdir::Workdir::new("validate")?;
    let file = dir.file("bootstrap.json");
    let config = EnvoyConfig::with_filter(
        r#"{"policy":{"tool_routes":{"x":"second"}}}"#,
        ([127, 0, 0, 1], 9).into(),
    )
    .cluster("second", ([127, 0, 0, 1], 10).into())
    .route_on_header("x-mcpgw-cluster", "second", "second")
    .mount("/other/mcp", "second");
    std::fs::write(
        &file,
        serde_json::to_vec_pretty(&config.bootstrap(a.wasm()?)?)?,
    )?;
    let (status, out) = mcpgw_e2e::Envoy::validate(&a, &file)?;
    assert!(status.success(), "generated bootstrap invalid:\n{out}");
    Ok(())
}
