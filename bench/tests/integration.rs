//! Smoke tests of the benchmark driver against real peers: the in-crate upstream, real
//! Envoy (`MCPGW_ENVOY` or `.venv/bin/envoy`), the real mcpgw filter (`MCPGW_WASM`, built by
//! `make wasm`) and the floor filter (built here when missing). No timing assertions:
//! they check that every variant serves the benchmark request (the edge ones included:
//! the list answered by the filter without the upstream, the call renamed on its way
//! there) and that the report is written.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step is a failed test

use mcpgw_bench::report::{SECTION_BEGIN, SECTION_END};
use mcpgw_bench::upstream::{RESULT_BODY, Served, Upstream};
use mcpgw_bench::variant::Variant;
use mcpgw_bench::{catalog, load};
use mcpgw_harness::Artifacts;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The floor filter's `.wasm`: the `make bench` build if present, else built here into a
/// target directory of its own (so this nested cargo never waits on the outer one's lock).
fn floor_wasm() -> PathBuf {
    let root = workspace_root();
    let built = root.join("target/wasm32-wasip1/release/mcpgw_bench_floor.wasm");
    if built.exists() {
        return built;
    }
    let target_dir = root.join("target/bench-floor");
    let status = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "-p",
            "mcpgw-bench-floor",
            "--target",
            "wasm32-wasip1",
            "--target-dir",
        ])
        .arg(&target_dir)
        .status()
        .expect("cannot run cargo to build the floor filter");
    assert!(
        status.success(),
        "building the floor filter for wasm32-wasip1 failed: {status}"
    );
    target_dir.join("wasm32-wasip1/release/mcpgw_bench_floor.wasm")
}

/// Envoy: `MCPGW_ENVOY`, else the virtualenv's.
fn envoy() -> PathBuf {
    Artifacts::from_env().envoy().unwrap().to_owned()
}

/// The mcpgw filter: `MCPGW_WASM`, else the `make wasm` build.
fn mcpgw_wasm() -> PathBuf {
    Artifacts::from_env().wasm().unwrap().to_owned()
}

/// Runs a benchmark driver to its end; its stdout. Fails the test, with both outputs, if
/// the driver fails.
fn run_ok(mut command: Command) -> String {
    let run = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "{:?} failed:\n{stdout}\n{}",
        command.get_program(),
        String::from_utf8_lossy(&run.stderr)
    );
    stdout
}

#[test]
fn the_load_generator_drives_the_upstream_directly() {
    let upstream = Upstream::start().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let call = Variant::Plain.workload();
    let interval = runtime
        .block_on(load::drive(
            upstream.addr(),
            &call,
            &bytes::Bytes::from_static(RESULT_BODY.as_bytes()),
            4,
            Duration::from_millis(300),
        ))
        .unwrap();
    assert!(interval.completed > 0);
    assert_eq!(
        upstream.served(),
        Served {
            calls: interval.completed,
            ..Served::default()
        },
        "every completed request reached the upstream once"
    );

    // The upstream answers a list with the catalog's page, and refuses what the filter
    // should have rewritten (a namespaced name, the virtual server's path).
    let list = runtime
        .block_on(load::probe(upstream.addr(), &Variant::PlainList.workload()))
        .unwrap();
    assert_eq!(list, (200, catalog::list_page()));
    for unrouted in [Variant::EdgeList, Variant::EdgeCall] {
        let (status, _) = runtime
            .block_on(load::probe(upstream.addr(), &unrouted.workload()))
            .unwrap();
        assert_eq!(status, 400, "{unrouted}");
    }
    let namespaced = load::Workload::new(
        load::MCP_PATH,
        load::tools_call_body(catalog::NAMESPACED_CALLED_TOOL),
    );
    let (status, _) = runtime
        .block_on(load::probe(upstream.addr(), &namespaced))
        .unwrap();
    assert_eq!(status, 400);
    assert_eq!(upstream.served().refused, 3);
}

#[test]
fn one_short_round_of_every_variant_writes_the_report() {
    let (envoy, wasm) = (envoy(), mcpgw_wasm());
    let dir = std::env::temp_dir().join(format!("mcpgw-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let output = dir.join("benchmarks.md");
    std::fs::write(&output, "# Benchmarks\n\nKept as is.\n").unwrap();

    let mut command = Command::new(env!("CARGO_BIN_EXE_mcpgw-bench"));
    command
        .env("MCPGW_ENVOY", &envoy)
        .env("MCPGW_WASM", &wasm)
        .env("MCPGW_BENCH_FLOOR_WASM", floor_wasm())
        .env("MCPGW_BENCH_ROUNDS", "1")
        .env("MCPGW_BENCH_SECONDS", "1")
        .env("MCPGW_BENCH_WARMUP_SECONDS", "0.2")
        .env("MCPGW_BENCH_CONNECTIONS", "4")
        .env("MCPGW_BENCH_PIN", "0")
        .env("MCPGW_BENCH_OUTPUT", &output)
        .env_remove("MCPGW_BENCH_VARIANTS");
    let stdout = run_ok(command);

    for variant in Variant::ALL {
        assert!(
            stdout
                .lines()
                .any(|l| l.split_whitespace().next() == Some(variant.name())),
            "no `{variant}` row in:\n{stdout}"
        );
    }
    let doc = std::fs::read_to_string(&output).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(doc.starts_with("# Benchmarks\n\nKept as is.\n"), "{doc}");
    assert!(
        doc.contains(SECTION_BEGIN) && doc.contains(SECTION_END),
        "{doc}"
    );
    for needle in [
        "| plain |",
        "| native |",
        "| floor |",
        "| mcpgw |",
        "`mcpgw` filter `.wasm`:",
        "mcpgw_requests_total",
        "| plain-list |",
        "| edge-list |",
        "| mcpgw-list |",
        "| plain-call |",
        "| edge-call |",
        "edge-list ÷ plain-list:",
        "edge-call ÷ plain-call:",
        "mcpgw-list ÷ plain-list:",
        "`mcpgw_requests_total` after the run (`mcpgw-list`)",
        "- `edge-list`: the upstream answered 0 `tools/list` and 0 `tools/call`",
        "`mcpgw_requests_total` after the run (`edge-call`)",
    ] {
        assert!(doc.contains(needle), "`{needle}` missing from:\n{doc}");
    }
}

/// Instructions per request under callgrind, a few requests per variant: every variant
/// answers correctly under valgrind, each count is read from callgrind's dump, and the
/// section is written. Counts are deterministic, so one property holds whatever the
/// machine: Envoy running a filter executes more instructions per request than Envoy
/// without one.
#[test]
fn instructions_per_request_are_counted_under_callgrind() {
    let dir = std::env::temp_dir().join(format!("mcpgw-bench-instr-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let output = dir.join("benchmarks.md");
    std::fs::write(&output, "# Benchmarks\n").unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_mcpgw-bench-instructions"));
    command
        .env("MCPGW_ENVOY", envoy())
        .env("MCPGW_WASM", mcpgw_wasm())
        .env("MCPGW_BENCH_FLOOR_WASM", floor_wasm())
        .env("MCPGW_BENCH_VARIANTS", "plain,floor,mcpgw")
        .env("MCPGW_BENCH_INSTR_WARMUP", "20")
        .env("MCPGW_BENCH_INSTR_REQUESTS", "20")
        .env("MCPGW_BENCH_INSTR_REPEATS", "2")
        .env("MCPGW_BENCH_OUTPUT", &output);
    run_ok(command);
    let doc = std::fs::read_to_string(&output).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        doc.contains(mcpgw_bench::instructions::BEGIN_MARKER)
            && doc.contains(mcpgw_bench::instructions::END_MARKER),
        "{doc}"
    );
    // `| variant | instructions per request | …`
    let count = |variant: &str| -> f64 {
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| {variant} |")))
            .unwrap_or_else(|| panic!("no `{variant}` row in:\n{doc}"));
        row.split('|').nth(2).unwrap().trim().parse().unwrap()
    };
    let (plain, floor, mcpgw) = (count("plain"), count("floor"), count("mcpgw"));
    assert!(plain > 10_000.0, "plain Envoy counted {plain} per request");
    assert!(floor > plain && mcpgw > plain, "{doc}");
    assert!(doc.contains("mcpgw over the floor:"), "{doc}");
}
