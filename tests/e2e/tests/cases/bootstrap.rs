//! The static example bootstraps in `envoy/` pass `envoy --mode validate`, and so does the
//! bootstrap the harness generates.

use std::process::Command;

use super::support::artifacts;
use mcpgw_e2e::EnvoyConfig;

#[test]
fn example_bootstraps_validate() -> anyhow::Result<()> {
    let a = artifacts();
    a.wasm()?; // the examples load the filter from target/ (relative to the repo root)
    let mut files: Vec<_> = std::fs::read_dir(a.repo.join("envoy"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no envoy/*.yaml examples");
    let mut failures = Vec::new();
    for file in &files {
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
                file.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).lines().rev().take(15).collect::<Vec<_>>().join("\n")
            ));
        }
    }
    assert!(failures.is_empty(), "invalid example bootstraps:\n{}", failures.join("\n"));
    Ok(())
}

#[test]
fn generated_bootstrap_validates() -> anyhow::Result<()> {
    let a = artifacts();
    let dir = mcpgw_e2e::workdir::Workdir::new("validate")?;
    let file = dir.file("bootstrap.json");
    let config = EnvoyConfig::with_filter(r#"{"policy":{"tool_routes":{"x":"second"}}}"#, ([127, 0, 0, 1], 9).into())
        .cluster("second", ([127, 0, 0, 1], 10).into())
        .route_on_header("x-mcpgw-cluster", "second", "second")
        .mount("/other/mcp", "second");
    std::fs::write(&file, serde_json::to_vec_pretty(&config.bootstrap(a.wasm()?)?)?)?;
    let (status, out) = mcpgw_e2e::Envoy::validate(&a, &file)?;
    assert!(status.success(), "generated bootstrap invalid:\n{out}");
    Ok(())
}
