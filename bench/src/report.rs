//! The results table (terminal) and the section of `docs/benchmarks.md`.

use crate::catalog;
use crate::rounds::{Outcome, VariantResult};
use crate::settings::Settings;
use crate::variant::Variant;
use std::fmt::Write;

/// Marks the start of the section this benchmark owns in `docs/benchmarks.md`.
pub const SECTION_BEGIN: &str = "<!-- mcpgw-bench:envoy-filters:begin -->";
/// Marks its end.
pub const SECTION_END: &str = "<!-- mcpgw-bench:envoy-filters:end -->";

/// The target for the mcpgw filter, as a ratio to plain Envoy's requests/s.
pub const MCPGW_TARGET_RATIO: f64 = 0.82;

/// Plain Envoy must use at least this share of its core for the run to compare filter
/// cost: below it, something else (other processes, scheduler wake-up latency) limited
/// throughput and the ratios measure that instead.
pub const MIN_ENVOY_CPU_PCT: f64 = 80.0;

/// Why the run does not measure the filters, if it does not: plain Envoy was not the
/// bottleneck.
pub fn invalidity(rows: &[Row], load_average: &str, cpus: usize) -> Option<String> {
    let plain = rows.iter().find(|r| r.variant == Variant::Plain)?;
    (plain.envoy_cpu_pct < MIN_ENVOY_CPU_PCT).then(|| {
        format!(
            "NOT A VALID MEASUREMENT OF THE FILTERS: plain Envoy used only {:.0}% of its core \
             (it must be near 100% for the ratios to compare filter cost; threshold \
             {MIN_ENVOY_CPU_PCT:.0}%), load average {load_average} on {cpus} CPUs: other work \
             held the CPUs and scheduler wake-up delays, not the filters, set the pace. Rerun \
             on a quiet machine.",
            plain.envoy_cpu_pct
        )
    })
}

/// Median of `values` (0 when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One summarized table row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Variant.
    pub variant: Variant,
    /// Median requests/s across rounds.
    pub rate: f64,
    /// Ratio of `rate` to its baseline's ([`Variant::baseline`]: plain Envoy sending the
    /// same request); None when the baseline was not measured.
    pub ratio: Option<f64>,
    /// p50 latency over all rounds, ms.
    pub p50_ms: f64,
    /// p99 latency over all rounds, ms.
    pub p99_ms: f64,
    /// Envoy RSS after warmup, MiB.
    pub rss_mib: f64,
    /// Median Envoy CPU use, % of one core.
    pub envoy_cpu_pct: f64,
    /// Median driver CPU use, % of one core.
    pub driver_cpu_pct: f64,
    /// Response body size, bytes.
    pub response_bytes: usize,
    /// Requests the upstream answered per request completed under load (0 or 1).
    pub upstream_per_request: f64,
}

impl Row {
    /// Envoy CPU time per request, µs (its core's share over requests/s).
    pub fn envoy_us_per_request(&self) -> f64 {
        if self.rate > 0.0 {
            self.envoy_cpu_pct / 100.0 / self.rate * 1e6
        } else {
            0.0
        }
    }
}

/// Summarizes each variant's rounds.
pub fn rows(results: &[VariantResult]) -> Vec<Row> {
    let rate_of = |v: Variant| {
        results
            .iter()
            .find(|r| r.variant == v)
            .map(|r| median(&r.rates))
    };
    results
        .iter()
        .map(|r| {
            let rate = median(&r.rates);
            Row {
                variant: r.variant,
                rate,
                ratio: rate_of(r.variant.baseline())
                    .filter(|p| *p > 0.0)
                    .map(|p| rate / p),
                p50_ms: r.latency_ns.value_at_quantile(0.5) as f64 / 1e6,
                p99_ms: r.latency_ns.value_at_quantile(0.99) as f64 / 1e6,
                rss_mib: r.rss_bytes as f64 / (1024.0 * 1024.0),
                envoy_cpu_pct: median(&r.envoy_cpu) * 100.0,
                driver_cpu_pct: median(&r.driver_cpu) * 100.0,
                response_bytes: r.response_bytes,
                upstream_per_request: r.upstream.total() as f64 / (r.loaded_requests.max(1) as f64),
            }
        })
        .collect()
}

fn ratio_text(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "n/a".into(), |r| format!("{r:.2}×"))
}

/// The results as an aligned text table.
pub fn table(outcome: &Outcome) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:>10} {:>7} {:>11} {:>9} {:>9} {:>10} {:>10} {:>11}",
        "variant", "req/s", "ratio", "to", "p50 ms", "p99 ms", "RSS MiB", "Envoy CPU", "driver CPU"
    );
    for row in rows(&outcome.results) {
        let _ = writeln!(
            out,
            "{:<10} {:>10.0} {:>7} {:>11} {:>9.3} {:>9.3} {:>10.1} {:>9.0}% {:>10.0}%",
            row.variant.name(),
            row.rate,
            ratio_text(row.ratio),
            row.variant.baseline().name(),
            row.p50_ms,
            row.p99_ms,
            row.rss_mib,
            row.envoy_cpu_pct,
            row.driver_cpu_pct,
        );
    }
    for (filter, size) in &outcome.context.wasm_sizes {
        let _ = writeln!(out, "{filter} .wasm: {size} bytes");
    }
    let ctx = &outcome.context;
    if let Some(why) = invalidity(&rows(&outcome.results), &ctx.load_average.1, ctx.cpus) {
        let _ = writeln!(out, "\nWARNING: {why}");
    }
    out
}

/// The Markdown section for `docs/benchmarks.md`, markers included.
pub fn section(outcome: &Outcome, settings: &Settings) -> String {
    let ctx = &outcome.context;
    let rows = rows(&outcome.results);
    let (edge_rows, filter_rows): (Vec<&Row>, Vec<&Row>) =
        rows.iter().partition(|r| r.variant.is_edge_comparison());
    let mut s = String::new();
    let _ = writeln!(s, "{SECTION_BEGIN}");
    let _ = writeln!(
        s,
        "## Envoy filters side by side: plain, native MCP, wasm floor, mcpgw; virtual servers at the edge\n"
    );
    let _ = writeln!(
        s,
        "Generated by `mcpgw-bench` (`bench/`); do not edit by hand, rerun it.\n"
    );
    let _ = writeln!(s, "- Command: `{}`", settings.command);
    let _ = writeln!(s, "- Date: {}", ctx.date);
    let _ = writeln!(
        s,
        "- Machine: {} × {} (nproc {}), Linux {}",
        ctx.cpus, ctx.cpu_model, ctx.cpus, ctx.kernel
    );
    let _ = writeln!(s, "- Envoy: {} (`--concurrency 1`)", ctx.envoy_version);
    let _ = writeln!(s, "- Placement: {}", ctx.placement);
    let _ = writeln!(
        s,
        "- Load average (1/5/15 min) at start: {}; at end: {}",
        ctx.load_average.0, ctx.load_average.1
    );
    let _ = writeln!(
        s,
        "- Load: {} keep-alive HTTP/1.1 connections, closed loop; {} rounds × {} variants × {:.1} s measured \
         (after {:.1} s warmup each), variant order rotated every round",
        settings.connections,
        settings.rounds,
        settings.variants.len(),
        settings.measure.as_secs_f64(),
        settings.warmup.as_secs_f64(),
    );
    let _ = writeln!(
        s,
        "- Request: `POST /mcp`, 1024-byte JSON-RPC `tools/call` (tool `echo`), `Content-Type: application/json`, \
         `Accept: application/json, text/event-stream`, `MCP-Protocol-Version: 2025-06-18`; the upstream (hyper, \
         in the driver) answers a canned 200 `application/json` result (the edge comparison's requests are below)"
    );
    let _ = writeln!(
        s,
        "- Every variant's answer is checked once before the load (status, and the result or the whole tool page), \
         and every answer under load must be byte-identical to it\n"
    );
    let invalid = invalidity(&rows, &ctx.load_average.1, ctx.cpus);
    if !filter_rows.is_empty() {
        filters_part(&mut s, &filter_rows, &rows, outcome, invalid.as_deref());
    }
    if !edge_rows.is_empty() {
        edge_part(&mut s, &edge_rows, outcome);
    }
    let _ = writeln!(s, "\nRequests/s per round:\n");
    let _ = writeln!(
        s,
        "| variant | {} |",
        (1..=settings.rounds)
            .map(|r| format!("round {r}"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(s, "|---|{}", "---:|".repeat(settings.rounds as usize));
    for r in &outcome.results {
        let rates: Vec<String> = r.rates.iter().map(|x| format!("{x:.0}")).collect();
        let _ = writeln!(s, "| {} | {} |", r.variant.name(), rates.join(" | "));
    }
    let _ = writeln!(s, "\nVariants:\n");
    for r in &outcome.results {
        let _ = writeln!(s, "- `{}`: {}", r.variant.name(), r.variant.description());
    }
    let _ = writeln!(
        s,
        "\nHow to read it: Envoy CPU near 100% means Envoy's one worker was the bottleneck, which is what the \
         ratios are meant to compare; absolute numbers depend on the machine and on whatever else ran on it, \
         the ratios much less."
    );
    let _ = writeln!(s, "{SECTION_END}");
    s
}

/// The filters' table (every variant compared with `plain`) and its notes.
fn filters_part(
    s: &mut String,
    filter_rows: &[&Row],
    rows: &[Row],
    outcome: &Outcome,
    invalid: Option<&str>,
) {
    let _ = writeln!(
        s,
        "| variant | req/s (median of rounds) | ratio to plain | p50 | p99 | Envoy RSS after warmup | Envoy CPU | driver CPU |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in filter_rows {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {} | {:.3} ms | {:.3} ms | {:.1} MiB | {:.0}% | {:.0}% |",
            row.variant.name(),
            row.rate,
            ratio_text(row.ratio),
            row.p50_ms,
            row.p99_ms,
            row.rss_mib,
            row.envoy_cpu_pct,
            row.driver_cpu_pct,
        );
    }
    let _ = writeln!(s);
    for (filter, size) in &outcome.context.wasm_sizes {
        let _ = writeln!(s, "- `{filter}` filter `.wasm`: {size} bytes");
    }
    let find = |v: Variant| rows.iter().find(|r| r.variant == v);
    if let Some(why) = invalid {
        let _ = writeln!(s, "- **{why}**");
    }
    if let Some(ratio) = find(Variant::Mcpgw).and_then(|row| row.ratio)
        && invalid.is_none()
    {
        let verdict = if ratio >= MCPGW_TARGET_RATIO {
            "meets"
        } else {
            "misses"
        };
        let _ = writeln!(
            s,
            "- mcpgw at {ratio:.2}× plain Envoy {verdict} the target of ≥ {MCPGW_TARGET_RATIO:.2}×"
        );
    }
    if let (Some(native), Some(mcpgw)) = (find(Variant::Native), find(Variant::Mcpgw))
        && native.rate > 0.0
    {
        let _ = writeln!(
            s,
            "- mcpgw vs native C++ MCP filter: {:.2}× its requests/s",
            mcpgw.rate / native.rate
        );
    }
    requests_total_lines(s, outcome, |v| !v.is_edge_comparison());
}

/// `mcpgw_requests_total` of each selected variant that runs the mcpgw filter.
fn requests_total_lines(s: &mut String, outcome: &Outcome, select: impl Fn(Variant) -> bool) {
    for r in outcome.results.iter().filter(|r| select(r.variant)) {
        if let Some(counted) = r.filter_requests {
            let _ = writeln!(
                s,
                "- `mcpgw_requests_total` after the run (`{}`): {counted} (measured requests: {}; the probe and warmups account for the rest)",
                r.variant, r.measured_requests
            );
        }
    }
}

/// The edge comparison: virtual-server variants next to plain Envoy forwarding the same
/// request, with the upstream's share of the requests as proof of who answered.
fn edge_part(s: &mut String, edge_rows: &[&Row], outcome: &Outcome) {
    let items = catalog::items();
    let item_bytes = items.iter().map(String::len).sum::<usize>() / items.len().max(1);
    let _ = writeln!(
        s,
        "\n### Virtual server at the edge vs plain Envoy forwarding to the upstream\n"
    );
    let _ = writeln!(
        s,
        "Same run and rounds as above. Each edge variant is compared with plain Envoy sending the same request \
         to the same in-process upstream (ratio = requests/s ÷ the plain variant's). The mcpgw filter's snapshot \
         holds virtual server `{server}` with {tools} tools (a description and a two-property input schema each, \
         {item_bytes} bytes on average; `policy.list_page_size` {page}, so one page); the upstream serves the same \
         item bytes, so both answer the same page.\n",
        server = catalog::SERVER_ID,
        tools = catalog::TOOLS,
        page = catalog::PAGE_SIZE,
    );
    let _ = writeln!(
        s,
        "- `tools/list`: `{}` ({} bytes), `POST /mcp` (plain-list, and mcpgw-list: the mcpgw filter as in \
         `mcpgw`, which reads the page on its way back) or `POST {}` (edge-list)",
        String::from_utf8_lossy(&catalog::tools_list_body()),
        catalog::tools_list_body().len(),
        catalog::ENDPOINT
    );
    let _ = writeln!(
        s,
        "- `tools/call`: the 1024-byte call above, of `{}` at `/mcp` (plain-call) or of `{}` at `{}` (edge-call: \
         the filter rewrites the name and `:path`); the upstream answers only `tools/call` of `{}` at `/mcp` \
         (anything else gets a 4xx, which stops the run)\n",
        catalog::CALLED_TOOL,
        catalog::NAMESPACED_CALLED_TOOL,
        catalog::ENDPOINT,
        catalog::CALLED_TOOL,
    );
    let _ = writeln!(
        s,
        "- MCP 2026-07-28 `tools/call` (plain-call-2026, edge-call-2026): the same call with that era's \
         envelope in `_meta` (still {} bytes) and headers `MCP-Protocol-Version: {}`, `Mcp-Method`, \
         `Mcp-Name`; the filter checks the headers against the body and rewrites the name in both\n",
        crate::load::CALL_BODY_BYTES,
        crate::load::MODERN_VERSION,
    );
    let _ = writeln!(
        s,
        "| variant | req/s (median of rounds) | ratio to plain, same request | p50 | p99 | response | upstream requests per request | Envoy CPU per request | Envoy RSS after warmup | Envoy CPU | driver CPU |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in edge_rows {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {} | {:.3} ms | {:.3} ms | {} B | {:.2} | {:.1} µs | {:.1} MiB | {:.0}% | {:.0}% |",
            row.variant.name(),
            row.rate,
            ratio_text(row.ratio),
            row.p50_ms,
            row.p99_ms,
            row.response_bytes,
            row.upstream_per_request,
            row.envoy_us_per_request(),
            row.rss_mib,
            row.envoy_cpu_pct,
            row.driver_cpu_pct,
        );
    }
    let _ = writeln!(s);
    let find = |v: Variant| edge_rows.iter().find(|r| r.variant == v);
    for base in edge_rows
        .iter()
        .filter(|r| r.variant.baseline() == r.variant)
    {
        if base.envoy_cpu_pct < MIN_ENVOY_CPU_PCT {
            let _ = writeln!(
                s,
                "- **`{}`: Envoy used only {:.0}% of its core, so the driver (client and upstream on one core) or \
                 other work set its pace, not Envoy; ratios to it compare against that limit**",
                base.variant, base.envoy_cpu_pct
            );
        }
    }
    if let (Some(edge), Some(plain)) = (find(Variant::EdgeList), find(Variant::PlainList))
        && let Some(ratio) = edge.ratio
    {
        let verdict = if ratio > 1.0 && edge.p50_ms < plain.p50_ms {
            "the list answered at the edge beats the round trip to the upstream"
        } else {
            "the list answered at the edge does NOT beat the round trip to the upstream"
        };
        let _ = writeln!(
            s,
            "- edge-list ÷ plain-list: **{ratio:.2}×** requests/s, p50 {:.3} vs {:.3} ms: {verdict}",
            edge.p50_ms, plain.p50_ms
        );
    }
    if let (Some(observed), Some(plain)) = (find(Variant::McpgwList), find(Variant::PlainList))
        && let Some(ratio) = observed.ratio
    {
        let _ = writeln!(
            s,
            "- mcpgw-list ÷ plain-list: **{ratio:.2}×** requests/s; Envoy CPU per request {:.1} µs \
             (the {} B page read by the filter on its way back) vs {:.1} µs (forwarded)",
            observed.envoy_us_per_request(),
            observed.response_bytes,
            plain.envoy_us_per_request()
        );
    }
    if let (Some(edge), Some(plain)) = (find(Variant::EdgeCall), find(Variant::PlainCall))
        && let Some(ratio) = edge.ratio
    {
        let _ = writeln!(
            s,
            "- edge-call ÷ plain-call: **{ratio:.2}×** requests/s, p50 {:.3} vs {:.3} ms; Envoy CPU per \
             request {:.1} µs (routed by the filter) vs {:.1} µs (forwarded)",
            edge.p50_ms,
            plain.p50_ms,
            edge.envoy_us_per_request(),
            plain.envoy_us_per_request()
        );
    }
    if let (Some(edge), Some(plain)) = (
        find(Variant::EdgeCallModern),
        find(Variant::PlainCallModern),
    ) && let Some(ratio) = edge.ratio
    {
        let _ = writeln!(
            s,
            "- edge-call-2026 ÷ plain-call-2026: **{ratio:.2}×** requests/s, p50 {:.3} vs {:.3} ms; \
             Envoy CPU per request {:.1} µs (headers checked, routed by the filter) vs {:.1} µs \
             (forwarded)",
            edge.p50_ms,
            plain.p50_ms,
            edge.envoy_us_per_request(),
            plain.envoy_us_per_request()
        );
    }
    for r in outcome
        .results
        .iter()
        .filter(|r| r.variant.is_edge_comparison())
    {
        let _ = writeln!(
            s,
            "- `{}`: the upstream answered {} `tools/list` and {} `tools/call` of `{}` while it ran {} requests \
             (warmups included)",
            r.variant,
            r.upstream.lists,
            r.upstream.calls,
            catalog::CALLED_TOOL,
            r.loaded_requests
        );
    }
    requests_total_lines(s, outcome, Variant::is_edge_comparison);
}

/// `existing` with this benchmark's section replaced by `section` (appended when absent).
pub fn replace_section(existing: &str, section: &str) -> String {
    replace_marked(existing, SECTION_BEGIN, SECTION_END, section)
}

/// Writes this benchmark's `section` into the document at `path`.
pub fn write_section(path: &std::path::Path, section: &str) -> anyhow::Result<()> {
    write_marked(path, SECTION_BEGIN, SECTION_END, section)
}

/// Writes `section` (which starts and ends with the markers) into the document at `path`,
/// replacing that benchmark's previous section ([`replace_marked`]); a missing document is
/// created.
pub fn write_marked(
    path: &std::path::Path,
    begin_marker: &str,
    end_marker: &str,
    section: &str,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let updated = replace_marked(&existing, begin_marker, end_marker, section);
    std::fs::write(path, updated).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// `existing` with the text from marker `begin` through marker `end` (and the newline
/// after it) replaced by `section`, which starts and ends with those markers; appended
/// when the markers are absent. Each benchmark owns one marked section of a document.
pub fn replace_marked(
    existing: &str,
    begin_marker: &str,
    end_marker: &str,
    section: &str,
) -> String {
    if let (Some(begin), Some(end)) = (existing.find(begin_marker), existing.find(end_marker))
        && begin < end
    {
        let after = &existing[end + end_marker.len()..];
        let after = after.strip_prefix('\n').unwrap_or(after);
        return format!("{}{section}{after}", &existing[..begin]);
    }
    if existing.trim().is_empty() {
        return format!("# mcpgw benchmarks\n\n{section}");
    }
    let sep = if existing.ends_with("\n\n") {
        ""
    } else if existing.ends_with('\n') {
        "\n"
    } else {
        "\n\n"
    };
    format!("{existing}{sep}{section}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_run_where_envoy_idles_is_flagged() {
        let row = |variant, envoy_cpu_pct| Row {
            variant,
            rate: 1.0,
            ratio: Some(1.0),
            p50_ms: 1.0,
            p99_ms: 1.0,
            rss_mib: 1.0,
            envoy_cpu_pct,
            driver_cpu_pct: 1.0,
            response_bytes: 1,
            upstream_per_request: 1.0,
        };
        let busy = [row(Variant::Plain, 7.0), row(Variant::Mcpgw, 7.0)];
        let why = invalidity(&busy, "19.28 17.99 16.27", 2).unwrap();
        assert!(
            why.contains("only 7% of its core") && why.contains("19.28"),
            "{why}"
        );
        assert_eq!(invalidity(&[row(Variant::Plain, 97.0)], "1.0", 2), None);
        // Without plain there is no baseline to judge.
        assert_eq!(invalidity(&[row(Variant::Mcpgw, 5.0)], "1.0", 2), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn section_replacement() {
        let old = format!("# Bench\n\nintro\n\n{SECTION_BEGIN}\nold\n{SECTION_END}\n\n## other\n");
        let new = format!("{SECTION_BEGIN}\nnew\n{SECTION_END}\n");
        assert_eq!(
            replace_section(&old, &new),
            format!("# Bench\n\nintro\n\n{new}\n## other\n")
        );
        assert_eq!(
            replace_section("", &new),
            format!("# mcpgw benchmarks\n\n{new}")
        );
        assert_eq!(replace_section("# B\n", &new), format!("# B\n\n{new}"));
        // Replacing twice is stable.
        let once = replace_section(&old, &new);
        assert_eq!(replace_section(&once, &new), once);
    }
}
