//! Request limits at the edge: rates (token buckets) and calls in flight, per virtual
//! server, keyed by any combination of principal, team, server, method and tool.
//!
//! Local limits live in the Envoy's shared data ([`store`]), so all its workers spend one
//! budget, exactly: every change is a compare-and-swap. Global limits are checked against a
//! rate-limit service that speaks Envoy's `envoy.service.ratelimit.v3`
//! ([`ratelimit`]), so every Envoy spends one budget; their descriptors are built from the
//! same keys.
//!
//! The [`Limiter`] is compiled once from the snapshot's `limits`; a request asks it to
//! [`admit`](Limiter::admit) what it is ([`Subject`]) and gets what it holds ([`Held`]:
//! tokens to give back if a later limit refuses it, leases to release when its stream ends)
//! or the limit that refused it ([`Limited`]).

pub mod bucket;
pub mod ratelimit;
pub mod store;

use std::rc::Rc;

use crate::fasthash::NameMap;
use crate::snapshot::limits::{
    ConcurrencyLimit, FailureMode, KeyPart, Limits, RateLimit, RateLimitService, ServerLimits,
};
use bucket::Shape;
use store::{Acquire, Ids, Key, LeaseId, Store, Take};

/// The key part of a request without a principal.
pub const ANONYMOUS: &str = "anonymous";
/// The key part of a principal without a team.
pub const NO_TEAM: &str = "none";
/// The `method` key part of a local budget for a method MCP does not define and the limit
/// does not name: a client's made-up method names share one budget instead of each making
/// a shared-data entry of its own.
pub const OTHER_METHOD: &str = "(other)";

/// What a request is, for its limits: names from the validated request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Subject<'a> {
    /// The authenticated principal (none yet: identity comes with the auth stage).
    pub principal: Option<&'a str>,
    /// The principal's team.
    pub team: Option<&'a str>,
    /// The virtual server.
    pub server: &'a str,
    /// The JSON-RPC method.
    pub method: &'a str,
    /// The tool of a `tools/call`, as the virtual server names it.
    pub tool: Option<&'a str>,
}

impl<'a> Subject<'a> {
    /// The value of `part` (`None`: the request has none, and a limit keyed by it does not
    /// apply).
    pub fn part(&self, part: KeyPart) -> Option<&'a str> {
        match part {
            KeyPart::Principal => Some(self.principal.unwrap_or(ANONYMOUS)),
            KeyPart::Team => Some(self.team.unwrap_or(NO_TEAM)),
            KeyPart::Server => Some(self.server),
            KeyPart::Method => Some(self.method),
            KeyPart::Tool => self.tool,
        }
    }

    /// The value of `part` in a local budget's key: as [`Subject::part`], but a method
    /// neither MCP nor `named` knows is [`OTHER_METHOD`].
    fn local_part(&self, part: KeyPart, named: &[String]) -> Option<&'a str> {
        if part == KeyPart::Method
            && !crate::mcp::METHODS.iter().any(|m| m.name == self.method)
            && !named.iter().any(|m| m == self.method)
        {
            return Some(OTHER_METHOD);
        }
        self.part(part)
    }
}

/// Which kind of limit refused a request (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A local rate.
    Rate,
    /// Calls in flight.
    Concurrency,
    /// A global rate, by the rate-limit service.
    Global,
}

impl Kind {
    /// Its label.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Rate => "rate",
            Kind::Concurrency => "concurrency",
            Kind::Global => "global",
        }
    }
}

/// The limit that refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: Kind,
    /// Seconds until a retry may pass (`Retry-After`), at least 1.
    pub retry_after: u64,
    /// What it allows, for the error message (`100 requests per 60 s`).
    pub allows: String,
}

/// A rate compiled.
#[derive(Debug, Clone)]
struct Rate {
    name: String,
    /// Its budgets' key prefix ([`Key::prefix`]).
    prefix: String,
    by: Vec<KeyPart>,
    methods: Vec<String>,
    shape: Shape,
    cost: u32,
    requests: u32,
    per_seconds: u32,
    global: bool,
}

/// A concurrency limit compiled.
#[derive(Debug, Clone)]
struct Concurrency {
    name: String,
    /// Its budgets' key prefix ([`Key::prefix`]).
    prefix: String,
    by: Vec<KeyPart>,
    max: u32,
    hold_ms: u64,
}

/// The limits of one virtual server (or the default ones), compiled.
#[derive(Debug, Clone)]
struct Scope {
    rates: Vec<Rate>,
    concurrency: Vec<Concurrency>,
}

impl Scope {
    /// `id` (a virtual server's, or [`DEFAULT_SCOPE`]) goes into its budgets' keys, so
    /// limits of the same name in different scopes have their own.
    fn new(id: &str, l: &ServerLimits) -> Scope {
        Scope {
            rates: l.rates.iter().map(|r| Rate::new(id, r)).collect(),
            concurrency: l
                .concurrency
                .iter()
                .map(|c| Concurrency::new(id, c))
                .collect(),
        }
    }
}

impl Rate {
    fn new(scope: &str, r: &RateLimit) -> Rate {
        Rate {
            name: r.name.clone(),
            prefix: Key::prefix(store::RATE_PREFIX, scope, &r.name),
            by: r.by.clone(),
            methods: r.methods.clone(),
            shape: Shape::new(r.requests, r.per_seconds, r.burst.unwrap_or(r.requests)),
            cost: r.cost,
            requests: r.requests,
            per_seconds: r.per_seconds,
            global: r.global,
        }
    }

    fn allows(&self) -> String {
        format!("{} requests per {} s", self.requests, self.per_seconds)
    }

    fn counts(&self, s: &Subject<'_>) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m == s.method)
    }
}

impl Concurrency {
    fn new(scope: &str, c: &ConcurrencyLimit) -> Concurrency {
        Concurrency {
            name: c.name.clone(),
            prefix: Key::prefix(store::LEASE_PREFIX, scope, &c.name),
            by: c.by.clone(),
            max: c.max,
            hold_ms: u64::from(c.hold_seconds) * 1000,
        }
    }
}

/// The shared-data key of the budget under `prefix` (a limit's, [`Key::prefix`]) keyed
/// `by` for `s` (`None`: a part is missing); `named`: the methods the limit names.
fn key(prefix: &str, by: &[KeyPart], named: &[String], s: &Subject<'_>) -> Option<Key> {
    let mut extra = 0;
    for part in by {
        extra += s.local_part(*part, named)?.len() + 8;
    }
    let mut k = Key::start(prefix, extra);
    for part in by {
        k.part(tag(*part), s.local_part(*part, named)?);
    }
    Some(k)
}

/// A key part's one-letter tag in a budget's key.
fn tag(part: KeyPart) -> char {
    match part {
        KeyPart::Principal => 'p',
        KeyPart::Team => 'e',
        KeyPart::Server => 's',
        KeyPart::Method => 'm',
        KeyPart::Tool => 't',
    }
}

/// The rate-limit service, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// The Envoy cluster.
    pub cluster: String,
    /// The descriptors' domain.
    pub domain: String,
    /// Milliseconds to wait.
    pub timeout_ms: u64,
    /// What an unanswered check means.
    pub failure_mode: FailureMode,
}

impl From<&RateLimitService> for Service {
    fn from(s: &RateLimitService) -> Service {
        Service {
            cluster: s.cluster.clone(),
            domain: s.domain.clone(),
            timeout_ms: u64::from(s.timeout_ms),
            failure_mode: s.failure_mode,
        }
    }
}

/// Tokens taken from a bucket, given back if a later limit refuses the request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Taken {
    key: Key,
    shape: Shape,
    units: u64,
}

/// A place held among a key's calls in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    key: Key,
    id: LeaseId,
}

/// A global limit the rate-limit service must check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// The limit's name (also the descriptor's first entry, `limit`).
    pub name: String,
    /// `(key, value)` entries: `limit` then each key part.
    pub entries: Vec<(&'static str, String)>,
    /// Requests per unit, sent as the descriptor's limit override.
    pub requests: u32,
    /// The unit, in seconds (1, 60, 3600 or 86400).
    pub per_seconds: u32,
    /// Hits this request adds.
    pub cost: u32,
}

/// What an admitted request holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    taken: Vec<Taken>,
    /// Leases to release when the request's stream ends.
    pub leases: Vec<Lease>,
    /// Global limits still to check.
    pub global: Vec<Descriptor>,
    /// When it was admitted (milliseconds).
    at: u64,
}

impl Held {
    /// Whether it holds nothing and has nothing left to check.
    pub fn is_empty(&self) -> bool {
        self.taken.is_empty() && self.leases.is_empty() && self.global.is_empty()
    }

    /// When it was admitted (milliseconds): a time to release its leases at without asking
    /// the host's clock again (a release drops the leases expired by then with its own,
    /// and leaves later ones to the next write).
    pub fn admitted_at(&self) -> u64 {
        self.at
    }
}

/// The limits of a snapshot, compiled.
#[derive(Debug, Clone, Default)]
pub struct Limiter {
    default: Option<Scope>,
    servers: NameMap<Scope>,
    service: Option<Service>,
    /// Lease ids of this worker (shared by clones: two never give out the same).
    ids: Rc<Ids>,
}

/// The scope id of the default limits (no virtual server id is empty).
const DEFAULT_SCOPE: &str = "";

impl Limiter {
    /// Compiles checked limits (see [`Limits::check`]).
    pub fn new(limits: &Limits) -> Limiter {
        Limiter {
            default: limits
                .default
                .as_ref()
                .map(|d| Scope::new(DEFAULT_SCOPE, d)),
            servers: limits
                .servers
                .iter()
                .map(|(id, l)| (id.clone(), Scope::new(id, l)))
                .collect(),
            service: limits.service.as_ref().map(Service::from),
            ids: Rc::default(),
        }
    }

    /// Whether any virtual server has limits.
    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.servers.is_empty()
    }

    /// The rate-limit service.
    pub fn service(&self) -> Option<&Service> {
        self.service.as_ref()
    }

    fn scope(&self, server: &str) -> Option<&Scope> {
        self.servers.get(server).or(self.default.as_ref())
    }

    /// Admits `subject` at `now` (milliseconds) under its server's local limits: takes a
    /// lease on each concurrency limit, then tokens from each rate; lists the global limits
    /// left to check. A refusal gives back what was taken.
    pub fn admit(
        &self,
        subject: &Subject<'_>,
        now: u64,
        store: &mut impl Store,
    ) -> Result<Held, Limited> {
        let mut held = Held {
            at: now,
            ..Held::default()
        };
        let Some(scope) = self.scope(subject.server) else {
            return Ok(held);
        };
        // One id for every lease of the request, taken when the first is.
        let mut id = None;
        for c in &scope.concurrency {
            let Some(key) = key(&c.prefix, &c.by, &[], subject) else {
                continue;
            };
            if id.is_none() {
                id = self.ids.next(store);
            }
            let got = match id {
                Some(id) => store::acquire(store, key.as_str(), id, c.max, now, now + c.hold_ms),
                None => Acquire::Contended,
            };
            let refused = match (got, id) {
                (Acquire::Held, Some(id)) => {
                    held.leases.push(Lease { key, id });
                    continue;
                }
                _ => Limited {
                    name: c.name.clone(),
                    kind: Kind::Concurrency,
                    retry_after: 1,
                    allows: format!("{} calls in flight", c.max),
                },
            };
            self.release(&mut held, now, store);
            return Err(refused);
        }
        for r in &scope.rates {
            if !r.counts(subject) {
                continue;
            }
            if r.global {
                // Global limits skip what lacks a part, as local ones do.
                if r.by.iter().all(|p| subject.part(*p).is_some()) {
                    held.global.push(descriptor(r, subject));
                }
                continue;
            }
            let Some(key) = key(&r.prefix, &r.by, &r.methods, subject) else {
                continue;
            };
            let units = r.shape.units(r.cost);
            let wait = match store::take(store, key.as_str(), &r.shape, units, now) {
                Take::Taken => {
                    held.taken.push(Taken {
                        key,
                        shape: r.shape,
                        units,
                    });
                    continue;
                }
                Take::Short(ms) => ms,
                Take::Contended => 1000,
            };
            self.release(&mut held, now, store);
            return Err(Limited {
                name: r.name.clone(),
                kind: Kind::Rate,
                retry_after: bucket::retry_after_secs(wait),
                allows: r.allows(),
            });
        }
        Ok(held)
    }

    /// Gives back the tokens `held` took and releases its leases (a request refused after
    /// it was admitted locally). Idempotent: what it gave back is gone from `held`.
    pub fn release(&self, held: &mut Held, now: u64, store: &mut impl Store) {
        for t in std::mem::take(&mut held.taken) {
            store::refund(store, t.key.as_str(), &t.shape, t.units, now);
        }
        self.end(held, now, store);
    }

    /// Releases `held`'s leases (its stream ended): its tokens stay spent. Idempotent.
    pub fn end(&self, held: &mut Held, now: u64, store: &mut impl Store) {
        for l in std::mem::take(&mut held.leases) {
            store::release(store, l.key.as_str(), l.id, now);
        }
        held.taken.clear();
    }
}

/// The descriptor of global rate `r` for `s`.
fn descriptor(r: &Rate, s: &Subject<'_>) -> Descriptor {
    let mut entries = vec![("limit", r.name.clone())];
    entries.extend(
        r.by.iter()
            .filter_map(|p| Some((p.as_str(), s.part(*p)?.to_owned()))),
    );
    Descriptor {
        name: r.name.clone(),
        entries,
        requests: r.requests,
        per_seconds: r.per_seconds,
        cost: r.cost,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

    use super::store::tests::FakeShared;
    use super::*;

    fn limiter(doc: &str) -> Limiter {
        let limits: Limits = serde_json::from_str(doc).unwrap();
        limits.check(|id| id == "s1" || id == "s2").unwrap();
        Limiter::new(&limits)
    }

    fn call<'a>(principal: Option<&'a str>, tool: &'a str) -> Subject<'a> {
        Subject {
            principal,
            team: None,
            server: "s1",
            method: "tools/call",
            tool: Some(tool),
        }
    }

    #[test]
    fn defaults_are_per_principal_and_tool_and_skip_what_lacks_a_tool() {
        let l = limiter(r#"{"default":{"concurrency":[]}}"#);
        let mut s = FakeShared::default();
        for _ in 0..100 {
            l.admit(&call(None, "a__t0"), 0, &mut s).unwrap();
        }
        let refused = l.admit(&call(None, "a__t0"), 0, &mut s).unwrap_err();
        assert_eq!(refused.name, "calls-per-principal-per-tool");
        assert_eq!(refused.kind, Kind::Rate);
        assert_eq!(refused.retry_after, 1, "600 ms rounded up");
        assert_eq!(refused.allows, "100 requests per 60 s");
        // Another tool, another principal: their own budgets.
        l.admit(&call(None, "a__t1"), 0, &mut s).unwrap();
        l.admit(&call(Some("alice"), "a__t0"), 0, &mut s).unwrap();
        // `anonymous` is the principal of a request without one.
        l.admit(&call(Some(ANONYMOUS), "a__t0"), 0, &mut s)
            .unwrap_err();
        // Keyed by tool: a list has none.
        let list = Subject {
            method: "tools/list",
            tool: None,
            ..call(None, "")
        };
        for _ in 0..200 {
            assert!(l.admit(&list, 0, &mut s).unwrap().is_empty());
        }
        // The bucket refills: a token every 600 ms.
        l.admit(&call(None, "a__t0"), 600, &mut s).unwrap();
        l.admit(&call(None, "a__t0"), 600, &mut s).unwrap_err();
    }

    #[test]
    fn a_refusal_gives_back_what_earlier_limits_took() {
        let l = limiter(
            r#"{"servers":{"s1":{"concurrency":[],"rates":[
                {"name":"wide","by":["server"],"requests":10,"per_seconds":60},
                {"name":"narrow","by":["tool"],"requests":2,"per_seconds":3600,"methods":["tools/call"]}]}}}"#,
        );
        let mut s = FakeShared::default();
        for _ in 0..2 {
            l.admit(&call(None, "x"), 0, &mut s).unwrap();
        }
        for _ in 0..5 {
            let r = l.admit(&call(None, "x"), 0, &mut s).unwrap_err();
            assert_eq!(r.name, "narrow");
            assert_eq!(r.retry_after, 1800);
        }
        // `wide` lost only the two admitted: eight more of it for other tools.
        for i in 0..8 {
            l.admit(&call(None, &format!("t{i}")), 0, &mut s).unwrap();
        }
        let r = l.admit(&call(None, "t9"), 0, &mut s).unwrap_err();
        assert_eq!(r.name, "wide");
        // s2 has no entry and there is no default: nothing limits it.
        let other = Subject {
            server: "s2",
            ..call(None, "x")
        };
        assert!(l.admit(&other, 0, &mut s).unwrap().is_empty());
    }

    #[test]
    fn in_flight_calls_hold_places_until_their_end() {
        let l = limiter(
            r#"{"default":{"rates":[],"concurrency":[{"name":"c","by":["tool"],"max":2,"hold_seconds":60}]}}"#,
        );
        let mut s = FakeShared::default();
        let mut a = l.admit(&call(None, "x"), 0, &mut s).unwrap();
        let mut b = l.admit(&call(None, "x"), 0, &mut s).unwrap();
        let r = l.admit(&call(None, "x"), 0, &mut s).unwrap_err();
        assert_eq!(
            (r.name.as_str(), r.kind, r.retry_after),
            ("c", Kind::Concurrency, 1)
        );
        l.admit(&call(None, "y"), 0, &mut s).unwrap();
        l.end(&mut a, 10, &mut s);
        l.end(&mut a, 10, &mut s);
        let mut c = l.admit(&call(None, "x"), 10, &mut s).unwrap();
        l.admit(&call(None, "x"), 10, &mut s).unwrap_err();
        // b's place goes when its hold is over, released or not.
        l.admit(&call(None, "x"), 60_000, &mut s).unwrap();
        l.end(&mut b, 60_001, &mut s);
        l.end(&mut c, 60_001, &mut s);
    }

    #[test]
    fn a_rate_refusal_releases_the_leases_taken_first() {
        let l = limiter(
            r#"{"default":{"rates":[{"name":"r","by":["tool"],"requests":1,"per_seconds":60}],
                "concurrency":[{"name":"c","by":["tool"],"max":1}]}}"#,
        );
        let mut s = FakeShared::default();
        let mut first = l.admit(&call(None, "x"), 0, &mut s).unwrap();
        l.end(&mut first, 0, &mut s);
        let r = l.admit(&call(None, "x"), 0, &mut s).unwrap_err();
        assert_eq!(r.name, "r");
        let c = Key::prefix(store::LEASE_PREFIX, DEFAULT_SCOPE, "c");
        let k = key(&c, &[KeyPart::Tool], &[], &call(None, "x")).unwrap();
        assert_eq!(store::in_flight(&mut s, k.as_str(), 0), 0);
    }

    #[test]
    fn every_budget_has_a_key_of_its_own_and_a_call_costs_four_host_calls() {
        let l = limiter(
            r#"{"servers":{"s1":{"rates":[{"name":"r","by":["principal","tool"],"requests":1,"per_seconds":60}],
                "concurrency":[{"name":"c","by":["tool"],"max":5}]},
              "s2":{"rates":[{"name":"r","by":["principal","tool"],"requests":1,"per_seconds":60}],"concurrency":[]}}}"#,
        );
        let mut s = FakeShared::default();
        // The worker registers once.
        l.end(
            &mut l.admit(&call(None, "x"), 0, &mut s).unwrap(),
            0,
            &mut s,
        );
        let (gets, sets) = (s.gets, s.sets);
        let mut held = l.admit(&call(Some("ab"), "x"), 0, &mut s).unwrap();
        assert_eq!((s.gets - gets, s.sets - sets), (2, 2), "a lease, a bucket");
        l.end(&mut held, 0, &mut s);
        assert_eq!((s.gets - gets, s.sets - sets), (3, 3), "and the release");
        // A principal and tool whose bytes run together differently, and the same names
        // on another server: budgets of their own.
        l.admit(&call(Some("a"), "bx"), 0, &mut s).unwrap();
        let other = Subject {
            server: "s2",
            ..call(Some("ab"), "x")
        };
        l.admit(&other, 0, &mut s).unwrap();
        l.admit(&other, 0, &mut s).unwrap_err();
        l.admit(&call(Some("ab"), "x"), 0, &mut s).unwrap_err();
        let mut keys: Vec<&str> = s.values.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "mcpgw.lim.c2:s11:ct1:x",
                "mcpgw.lim.c2:s11:ct2:bx",
                "mcpgw.lim.r2:s11:rp1:at2:bx",
                "mcpgw.lim.r2:s11:rp2:abt1:x",
                "mcpgw.lim.r2:s11:rp9:anonymoust1:x",
                "mcpgw.lim.r2:s21:rp2:abt1:x",
                "mcpgw.lim.workers",
            ]
        );
    }

    #[test]
    fn made_up_methods_share_one_budget() {
        let l = limiter(
            r#"{"default":{"concurrency":[],"rates":[
                {"name":"x","by":["method"],"requests":1,"per_seconds":60,"methods":["x/custom"]},
                {"name":"m","by":["method"],"requests":3,"per_seconds":60}]}}"#,
        );
        let mut s = FakeShared::default();
        let with = |method| Subject {
            method,
            ..call(None, "t")
        };
        // `x` names x/custom: its own budget there; `m` does not: the made-up methods' one.
        l.admit(&with("x/custom"), 0, &mut s).unwrap();
        assert_eq!(l.admit(&with("x/custom"), 0, &mut s).unwrap_err().name, "x");
        l.admit(&with("made/up1"), 0, &mut s).unwrap();
        l.admit(&with("made/up2"), 0, &mut s).unwrap();
        assert_eq!(l.admit(&with("made/up3"), 0, &mut s).unwrap_err().name, "m");
        // MCP's methods keep budgets of their own.
        l.admit(&with("tools/call"), 0, &mut s).unwrap();
        l.admit(&with("tools/list"), 0, &mut s).unwrap();
        assert!(s.values.contains_key("mcpgw.lim.r0:1:mm7:(other)"));
        assert!(s.values.contains_key("mcpgw.lim.r0:1:xm8:x/custom"));
        assert!(s.values.contains_key("mcpgw.lim.r0:1:mm10:tools/call"));
        assert!(!s.values.keys().any(|k| k.contains("made")));
    }

    #[test]
    fn global_limits_become_descriptors() {
        let l = limiter(
            r#"{"service":{"cluster":"rls"},"servers":{"s1":{"concurrency":[],"rates":[
                {"name":"g","by":["principal","team","tool"],"requests":5,"per_seconds":60,"global":true,"cost":2}]}}}"#,
        );
        let mut s = FakeShared::default();
        let held = l.admit(&call(Some("bob"), "x"), 0, &mut s).unwrap();
        assert_eq!(
            held.global,
            [Descriptor {
                name: "g".into(),
                entries: vec![
                    ("limit", "g".into()),
                    ("principal", "bob".into()),
                    ("team", "none".into()),
                    ("tool", "x".into())
                ],
                requests: 5,
                per_seconds: 60,
                cost: 2,
            }]
        );
        assert!(s.values.is_empty(), "nothing counted locally");
        assert_eq!(l.service().unwrap().timeout_ms, 250);
    }
}
