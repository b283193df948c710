//! The limits stage of the exchange: rates and calls in flight at a virtual server, shared
//! by every exchange on one Envoy's shared data (every worker), refused with 429.

use super::*;

/// The test catalog with `limits`.
fn limited(limits: Value) -> Rc<Config> {
    config(json!({ "limits": limits }))
}

/// A call of `tool` at s1 through a new exchange on `table`, at `now` (seconds).
fn call_at(table: &Table, cfg: &Rc<Config>, tool: &str, now: u64) -> (Exchange, Step, Recorder) {
    let mut host = Recorder::on(table);
    host.now = now;
    let mut x = Exchange::new(Rc::clone(cfg));
    let step = x.on_request_head(&post_head("/servers/s1/mcp", &[]), false, &mut host);
    assert_eq!(step, Step::ReadBody);
    let body = call(9, tool).into_bytes();
    let step = x.on_request_body(
        body.len(),
        true,
        |start, len| body.get(start..start + len).map(<[u8]>::to_vec),
        &mut host,
    );
    (x, step, host)
}

fn is_forward(step: &Step) -> bool {
    matches!(step, Step::Forward(_))
}

/// Asserts `step` is the 429 of `limit` (of `kind`) with `Retry-After: retry`.
fn assert_limited(step: &Step, host: &Recorder, limit: &str, kind: &str, retry: u64) {
    let (status, body) = reply_of(step);
    assert_eq!(status, 429, "{body}");
    let Step::Reply(r) = step else { unreachable!() };
    assert_eq!(header(r, "retry-after"), Some(retry.to_string().as_str()));
    assert_eq!(body["id"], 9);
    assert_eq!(body["error"]["code"], -32005);
    assert_eq!(
        body["error"]["data"],
        json!({"limit": limit, "kind": kind, "retryAfterSeconds": retry})
    );
    assert!(
        body["error"]["message"].as_str().unwrap().contains(limit),
        "{body}"
    );
    assert_eq!(host.rejected, ["rate_limited"]);
    assert_eq!(host.limited, [(limit.to_owned(), kind.to_owned())]);
}

#[test]
fn the_default_rate_admits_exactly_its_budget_across_workers_and_refills() {
    let cfg = limited(json!({"default": {"concurrency": []}}));
    let table = Table::default();
    // Two workers' exchanges on one Envoy's shared data, interleaved.
    let admitted = (0..150)
        .filter(|_| is_forward(&call_at(&table, &cfg, "a__t0", NOW).1))
        .count();
    assert_eq!(admitted, 100, "100 per minute per principal and tool");
    let (_, step, host) = call_at(&table, &cfg, "a__t0", NOW);
    assert_limited(&step, &host, "calls-per-principal-per-tool", "rate", 1);
    // Another tool has its own budget.
    assert!(is_forward(&call_at(&table, &cfg, "b__same", NOW).1));
    // 100 per minute is a token every 600 ms: one second later, one more.
    assert!(is_forward(&call_at(&table, &cfg, "a__t0", NOW + 1).1));
    assert!(!is_forward(&call_at(&table, &cfg, "a__t0", NOW + 1).1));
}

#[test]
fn a_refusal_names_the_limit_and_says_when_to_retry() {
    let cfg = limited(json!({"servers": {"s1": {"concurrency": [], "rates": [
        {"name": "hourly", "by": ["server"], "requests": 2, "per_seconds": 3600}
    ]}}}));
    let table = Table::default();
    assert!(is_forward(&call_at(&table, &cfg, "a__t0", NOW).1));
    assert!(is_forward(&call_at(&table, &cfg, "b__same", NOW).1));
    let (x, step, host) = call_at(&table, &cfg, "a__t0", NOW);
    // A token every 1800 s.
    assert_limited(&step, &host, "hourly", "rate", 1800);
    assert_eq!(x.response_body_need(), BodyNeed::Nothing, "own reply");
    // Keyed by server: a list is counted too.
    let (_, step, _) = post_on(&table, &cfg, "/servers/s1/mcp", &[], &list(3));
    assert_eq!(reply_of(&step).0, 429);
}

fn list(id: u32) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"}).to_string()
}

#[test]
fn names_outside_the_catalog_and_requests_without_a_tool_spend_nothing() {
    let cfg = limited(json!({"default": {}}));
    let table = Table::default();
    for _ in 0..3 {
        let (_, step, _) = call_at(&table, &cfg, "made-up", NOW);
        assert_ne!(reply_of(&step).0, 429);
        let (_, step, _) = post_on(&table, &cfg, "/servers/s1/mcp", &[], &list(3));
        assert_eq!(reply_of(&step).0, 200);
    }
    assert!(table.borrow().is_empty(), "no shared data written");
    // The passthrough path has no virtual server and no limits.
    let (_, step, _) = post_on(&table, &cfg, "/mcp", &[], &call(1, "echo"));
    assert!(is_forward(&step));
    assert!(table.borrow().is_empty());
}

#[test]
fn calls_in_flight_hold_their_place_until_the_response_or_stream_ends() {
    let cfg = limited(json!({"default": {"rates": [], "concurrency": [
        {"name": "two-per-tool", "by": ["tool"], "max": 2}
    ]}}));
    let table = Table::default();
    let (mut first, step, _) = call_at(&table, &cfg, "a__t0", NOW);
    assert!(is_forward(&step));
    let (mut second, step, mut host2) = call_at(&table, &cfg, "a__t0", NOW);
    assert!(is_forward(&step));
    let (_, step, host) = call_at(&table, &cfg, "a__t0", NOW);
    assert_limited(&step, &host, "two-per-tool", "concurrency", 1);
    assert!(
        is_forward(&call_at(&table, &cfg, "b__same", NOW).1),
        "per tool"
    );
    // The first call's response ends: its place goes.
    let mut host1 = Recorder::on(&table);
    first.on_response_head();
    first.on_response_body(
        b"{\"jsonrpc\":\"2.0\",\"id\":9,\"result\":{}}",
        true,
        &mut host1,
    );
    let (mut third, step, _) = call_at(&table, &cfg, "a__t0", NOW);
    assert!(is_forward(&step));
    assert!(!is_forward(&call_at(&table, &cfg, "a__t0", NOW).1));
    // The stream's end (the log) after the response's releases nothing more.
    first.on_stream_end(&mut host1);
    assert!(!is_forward(&call_at(&table, &cfg, "a__t0", NOW).1));
    // The second is reset before any response: its stream's end releases it, once.
    second.on_stream_end(&mut host2);
    second.on_stream_end(&mut host2);
    let (_, step, _) = call_at(&table, &cfg, "a__t0", NOW);
    assert!(is_forward(&step));
    assert!(!is_forward(&call_at(&table, &cfg, "a__t0", NOW).1));
    third.on_stream_end(&mut host2);
    assert!(is_forward(&call_at(&table, &cfg, "a__t0", NOW).1));
}

#[test]
fn a_place_not_released_expires_after_its_hold() {
    let cfg = limited(json!({"default": {"rates": [], "concurrency": [
        {"name": "one", "by": ["tool"], "max": 1, "hold_seconds": 30}
    ]}}));
    let table = Table::default();
    // A worker that died with its call in flight never releases it.
    assert!(is_forward(&call_at(&table, &cfg, "a__t0", NOW).1));
    assert!(!is_forward(&call_at(&table, &cfg, "a__t0", NOW + 29).1));
    assert!(is_forward(&call_at(&table, &cfg, "a__t0", NOW + 30).1));
}

/// A host whose shared-data writes each lose once to another worker's call first.
struct Racing {
    inner: Recorder,
    cfg: Rc<Config>,
    races: usize,
}

impl Host for Racing {
    fn count_request(&mut self, method: &str, tool: ToolLabel<'_>) {
        self.inner.count_request(method, tool);
    }
    fn count_response(&mut self, method: &str, tool: ToolLabel<'_>, error: bool) {
        self.inner.count_response(method, tool, error);
    }
    fn count_rejected(&mut self, reason: Reason) {
        self.inner.count_rejected(reason);
    }
    fn count_internal_error(&mut self) {
        self.inner.count_internal_error();
    }
    fn count_limited(&mut self, limit: &str, kind: &str) {
        self.inner.count_limited(limit, kind);
    }
    fn warn(&mut self, message: &str) {
        self.inner.warn(message);
    }
    fn now(&self) -> u64 {
        self.inner.now()
    }
    fn random(&mut self, out: &mut [u8]) -> bool {
        self.inner.random(out)
    }
    fn shared_get(&mut self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.inner.shared_get(key)
    }
    fn shared_set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        if self.races > 0 {
            self.races -= 1;
            // Another worker's call lands between this one's read and write.
            let (_, step, _) = call_at(&self.inner.table, &self.cfg, "a__t0", NOW);
            assert!(is_forward(&step));
        }
        self.inner.shared_set(key, value, cas)
    }
}

#[test]
fn writes_that_lose_to_another_worker_are_retried_and_count_exactly() {
    let cfg = limited(json!({"default": {"rates": [
        {"name": "five", "by": ["tool"], "requests": 5, "per_seconds": 3600}
    ], "concurrency": [{"name": "in-flight", "by": ["tool"], "max": 5}]}}));
    let table = Table::default();
    let mut host = Racing {
        inner: Recorder::on(&table),
        cfg: Rc::clone(&cfg),
        races: 3,
    };
    let mut x = Exchange::new(Rc::clone(&cfg));
    x.on_request_head(&post_head("/servers/s1/mcp", &[]), false, &mut host);
    let body = call(9, "a__t0").into_bytes();
    let step = x.on_request_body(
        body.len(),
        true,
        |start, len| body.get(start..start + len).map(<[u8]>::to_vec),
        &mut host,
    );
    assert!(is_forward(&step), "{step:?}");
    assert_eq!(host.races, 0, "three writes lost and were retried");
    // Three other calls and this one hold places and tokens: one more of each is left.
    assert!(is_forward(&call_at(&table, &cfg, "a__t0", NOW).1));
    let (_, step, host) = call_at(&table, &cfg, "a__t0", NOW);
    assert_limited(&step, &host, "in-flight", "concurrency", 1);
    x.on_stream_end(&mut Recorder::on(&table));
    let (_, step, host) = call_at(&table, &cfg, "a__t0", NOW);
    assert_limited(&step, &host, "five", "rate", 720);
}

/// The test catalog with a global limit of `requests` per minute keyed by tool (and a
/// local one of 1000 per hour), checked with failure mode `mode`.
fn global(requests: u32, mode: &str) -> Rc<Config> {
    limited(json!({
        "service": {"cluster": "rls", "domain": "edge", "timeout_ms": 40, "failure_mode": mode},
        "default": {"concurrency": [{"name": "in-flight", "by": ["tool"], "max": 1}], "rates": [
            {"name": "local", "by": ["tool"], "requests": 1000, "per_seconds": 3600},
            {"name": "shared", "by": ["principal", "tool"], "requests": requests, "per_seconds": 60, "global": true, "cost": 2}
        ]}
    }))
}

/// A `RateLimitResponse`: overall `code`, and one status of `code` resetting in `reset` s.
fn rls_answer(code: u8, reset: u8) -> Vec<u8> {
    vec![0x08, code, 0x12, 6, 0x08, code, 0x22, 2, 0x08, reset]
}

/// Units left in the bucket of the local limit of tool a__t0 (the one bucket).
fn local_units(table: &Table) -> Option<u64> {
    let t = table.borrow();
    let (value, _) = t
        .iter()
        .find(|(k, _)| k.starts_with(crate::limits::store::RATE_PREFIX))?
        .1
        .clone();
    value
        .get(0..8)
        .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
}

#[test]
fn global_limits_are_asked_of_the_service_after_the_local_ones() {
    let cfg = global(5, "allow");
    let table = Table::default();
    let (mut x, step, mut host) = call_at(&table, &cfg, "a__t0", NOW);
    let Step::Check(check) = step else {
        panic!("expected a check, got {step:?}")
    };
    assert_eq!(
        (
            check.cluster.as_str(),
            check.service,
            check.method,
            check.timeout_ms
        ),
        (
            "rls",
            "envoy.service.ratelimit.v3.RateLimitService",
            "ShouldRateLimit",
            40
        )
    );
    let descriptor = crate::limits::Descriptor {
        name: "shared".into(),
        entries: vec![
            ("limit", "shared".into()),
            ("principal", "anonymous".into()),
            ("tool", "a__t0".into()),
        ],
        requests: 5,
        per_seconds: 60,
        cost: 2,
    };
    assert_eq!(
        check.message,
        crate::limits::ratelimit::request("edge", &[descriptor])
    );
    let spent = local_units(&table).unwrap();
    // While it waits, a second call of the tool finds its one place in flight taken.
    let (_, step, _) = call_at(&table, &cfg, "a__t0", NOW);
    assert_eq!(reply_of(&step).0, 429);
    // The service admits it: the call is routed as any other.
    host.now = NOW + 1;
    let step = x.on_check_answer(Some(&rls_answer(1, 0)), &mut host);
    let f = forward_of(step);
    assert_eq!(set(&f, Header::Route), Some(Some("ca")));
    assert_eq!(host.limit_service, [(1000, "ok".to_owned())]);
    assert_eq!(
        x.on_check_answer(None, &mut host),
        Step::Wait,
        "answered once"
    );
    x.on_stream_end(&mut host);

    // Over the limit: 429 naming the global limit, Retry-After from the window's reset,
    // and what the local limits took is given back.
    let (mut x, step, mut host) = call_at(&table, &cfg, "a__t0", NOW);
    assert!(matches!(step, Step::Check(_)));
    let before = local_units(&table).unwrap();
    assert!(before < spent);
    let step = x.on_check_answer(Some(&rls_answer(2, 42)), &mut host);
    assert_limited(&step, &host, "shared", "global", 42);
    assert_eq!(host.limit_service, [(0, "over_limit".to_owned())]);
    assert!(
        local_units(&table).unwrap() > before,
        "local token refunded"
    );
    // Its place in flight too: the next call is asked about at once.
    let (_, step, _) = call_at(&table, &cfg, "a__t0", NOW);
    assert!(matches!(step, Step::Check(_)));
}

#[test]
fn an_unanswered_check_follows_the_failure_mode() {
    for (mode, admitted) in [("allow", true), ("deny", false)] {
        let cfg = global(5, mode);
        let table = Table::default();
        let (mut x, step, mut host) = call_at(&table, &cfg, "a__t0", NOW);
        assert!(matches!(step, Step::Check(_)), "{mode}");
        let step = x.on_check_answer(None, &mut host);
        assert_eq!(is_forward(&step), admitted, "{mode}: {step:?}");
        assert_eq!(host.limit_service, [(0, "failed".to_owned())], "{mode}");
        if !admitted {
            assert_limited(&step, &host, "shared", "global", 1);
        }
        // Garbage counts as no answer.
        let (mut x, _, mut host) = call_at(&table, &cfg, "b__same", NOW);
        let step = x.on_check_answer(Some(&[0x08]), &mut host);
        assert_eq!(is_forward(&step), admitted, "{mode}: {step:?}");
    }
}
