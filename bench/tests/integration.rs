//! Smoke tests of the benchmark driver against real peers (no timing assertions).

use mcpgw_bench::{load, upstream::Upstream};
use std::time::Duration;

#[test]
fn the_load_generator_drives_the_upstream_directly() {
    let upstream = Upstream::start().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let interval = runtime
        .block_on(load::drive(
            upstream.addr(),
            load::tools_call_body(),
            4,
            Duration::from_millis(500),
        ))
        .unwrap();
    let h = &interval.latency_ns;
    eprintln!(
        "direct: {:.0} req/s, n {} p50 {} p90 {} p99 {} max {} ns",
        interval.rate(),
        h.len(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.max()
    );
    assert!(interval.completed > 0);
    assert_eq!(upstream.served(), interval.completed);
}
