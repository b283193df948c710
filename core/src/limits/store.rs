//! Where buckets and in-flight leases live: proxy-wasm shared data, the same compare-and-swap
//! store the session table uses ([`crate::exchange::Host::shared_get`]), so every worker
//! of one Envoy reads and writes one budget.
//!
//! Every budget has a shared-data key of its own: the limit's scope and name and the values
//! of the request's key parts, each written with its length ([`Key`]), so two budgets never
//! share a key and no entry can crowd out another. Its value is fixed-width binary, read
//! without a parser: a bucket is 16 bytes ([`Bucket`]: units left, stamp), a key's calls in
//! flight are one 24-byte record per lease ([`LeaseId`] and deadline). Updates are
//! compare-and-swap on that key and retried on conflict.
//!
//! Shared data cannot delete a key, so a key, once used, keeps its entry: memory is bounded
//! per key (16 bytes for a bucket; for leases, at most the limit's `max` live records and
//! never more than [`MAX_LEASES`]) and keys come only from names the request was validated
//! against (see [`super::Subject`]). A full bucket and no lease read the same as none.
//!
//! Envoy's shared data checks a compare-and-swap token only against a key that exists: a
//! write to an absent key always succeeds. Two workers creating the same key at once could
//! both succeed and one lose its update. So a key is created with a token no key holds
//! ([`CREATE`]): if another worker created it first, the write fails and is retried against
//! what that worker wrote. A key whose value was emptied (its last lease released) is not
//! absent: the host hands back no value for zero bytes, but a token, and that token is what
//! the next write is checked against.

use std::cell::Cell;

use super::bucket::{Bucket, Shape};

/// The shared data limits live in (the host's, in the filter; a fake in tests).
pub trait Store {
    /// A value and its compare-and-swap token (`None`: absent).
    fn get(&mut self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Stores `value` unless the key's token moved past `cas`; `false` when it did.
    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool;
}

/// The token a key is created with: Envoy's tokens count up from 1 across all keys, so an
/// existing key does not hold this one, and the write fails if another worker created it.
pub const CREATE: u32 = u32::MAX;
/// Attempts at one update before giving up (a request then gets 429: a limit never admits
/// what it cannot count).
pub const CAS_ATTEMPTS: usize = 32;
/// Prefix of every shared-data key of the local limits.
pub const PREFIX: &str = "mcpgw.lim.";
/// Prefix of a rate's bucket keys.
pub const RATE_PREFIX: &str = "mcpgw.lim.r";
/// Prefix of a concurrency limit's lease keys.
pub const LEASE_PREFIX: &str = "mcpgw.lim.c";
/// The key of the last worker number given out ([`Ids`]).
pub const WORKERS_KEY: &str = "mcpgw.lim.workers";
/// Most leases one key holds: a call that would hold one more is refused (a limit's `max`
/// is the bound that matters; this one only keeps a value's size in hand).
pub const MAX_LEASES: usize = 1024;

/// Bytes of a stored bucket.
pub const BUCKET_BYTES: usize = 16;
/// Bytes of one stored lease.
pub const LEASE_BYTES: usize = 24;

/// The shared-data key of one budget, built by appending to a limit's prefix.
///
/// Every component is written as `<length>:<bytes>` (a part's name as one letter before
/// it), so different names, or the same bytes split differently between parts, never make
/// the same key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key(String);

impl Key {
    /// The prefix of the budgets of the limit `name` in scope `scope`: rates and
    /// concurrency limits under their own prefixes ([`RATE_PREFIX`], [`LEASE_PREFIX`]).
    pub fn prefix(kind: &str, scope: &str, name: &str) -> String {
        let mut k = Key(String::with_capacity(
            kind.len() + scope.len() + name.len() + 8,
        ));
        k.0.push_str(kind);
        k.push(scope);
        k.push(name);
        k.0
    }

    /// Starts a key from `prefix`, room made for `extra` more bytes.
    pub fn start(prefix: &str, extra: usize) -> Key {
        let mut s = String::with_capacity(prefix.len() + extra);
        s.push_str(prefix);
        Key(s)
    }

    /// Appends a part: its tag, then its value.
    pub fn part(&mut self, tag: char, value: &str) {
        self.0.push(tag);
        self.push(value);
    }

    fn push(&mut self, value: &str) {
        push_decimal(&mut self.0, value.len());
        self.0.push(':');
        self.0.push_str(value);
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Appends `n` in decimal (`format!` costs the formatting machinery on every request).
fn push_decimal(out: &mut String, n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        if let Some(d) = digits.get_mut(at) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || at == 0 {
            break;
        }
    }
    for d in digits.get(at..).unwrap_or_default() {
        out.push(char::from(*d));
    }
}

/// Reads `key`, lets `change` compute the new value (`None`: leave it) and writes it by
/// compare-and-swap, again on conflict; `None` when every attempt lost.
pub fn update<T, V: AsRef<[u8]>>(
    store: &mut impl Store,
    key: &str,
    mut change: impl FnMut(Option<&[u8]>) -> (Option<V>, T),
) -> Option<T> {
    for _ in 0..CAS_ATTEMPTS {
        let (value, cas) = store.get(key);
        let (new, out) = change(value.as_deref());
        let Some(new) = new else {
            return Some(out);
        };
        // Absent is told by the token, not the value: an emptied key reads as no value
        // (the host hands back nothing for zero bytes) but has a token.
        let cas = if cas.is_none() { Some(CREATE) } else { cas };
        if store.set(key, new.as_ref(), cas) {
            return Some(out);
        }
    }
    None
}

/// The little-endian word at byte `at` of `bytes` (0 past its end).
fn word(bytes: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    if let Some(src) = bytes.get(at..at + 8) {
        w.copy_from_slice(src);
    }
    u64::from_le_bytes(w)
}

/// The bucket stored as `value` (`None`: absent, which is full; so is a value of another
/// length, which no build of these keys writes).
fn bucket(value: Option<&[u8]>) -> Option<Bucket> {
    let v = value.filter(|v| v.len() == BUCKET_BYTES)?;
    Some(Bucket {
        units: word(v, 0),
        stamp: word(v, 8),
    })
}

fn bucket_bytes(b: &Bucket) -> [u8; BUCKET_BYTES] {
    let mut out = [0u8; BUCKET_BYTES];
    let (units, stamp) = out.split_at_mut(8);
    units.copy_from_slice(&b.units.to_le_bytes());
    stamp.copy_from_slice(&b.stamp.to_le_bytes());
    out
}

/// What taking from a bucket came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Taken.
    Taken,
    /// Not enough: milliseconds until there is.
    Short(u64),
    /// The key kept changing under every attempt.
    Contended,
}

/// Takes `cost` units from bucket `key` of `shape` at `now` (milliseconds).
pub fn take(store: &mut impl Store, key: &str, shape: &Shape, cost: u64, now: u64) -> Take {
    update(store, key, |value| {
        let mut b = Bucket::at(bucket(value), shape, now);
        match b.take(shape, cost) {
            Ok(()) => (Some(bucket_bytes(&b)), Take::Taken),
            Err(wait) => (None, Take::Short(wait)),
        }
    })
    .unwrap_or(Take::Contended)
}

/// Gives `cost` units back to bucket `key` (taken for a request another limit refused).
pub fn refund(store: &mut impl Store, key: &str, shape: &Shape, cost: u64, now: u64) -> bool {
    update(store, key, |value| {
        // Absent is full: nothing to give back to.
        let Some(b) = bucket(value) else {
            return (None, ());
        };
        let mut b = Bucket::at(Some(b), shape, now);
        b.refund(shape, cost);
        (Some(bucket_bytes(&b)), ())
    })
    .is_some()
}

/// Units left in bucket `key` at its last write (`None`: absent, that is full; for tests
/// and diagnostics).
pub fn units(store: &mut impl Store, key: &str) -> Option<u64> {
    let (value, _) = store.get(key);
    bucket(value.as_deref()).map(|b| b.units)
}

/// Who holds a lease: the worker (its number among all the Envoy's, [`Ids`]) and the
/// worker's count of leases taken. Never the same for two leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseId {
    /// The worker's number (from 1).
    pub worker: u64,
    /// The lease's number on that worker (from 1).
    pub seq: u64,
}

/// Gives out lease ids: the worker's number, taken once from a counter in shared data
/// ([`WORKERS_KEY`]), then a count. Unique across every worker of the Envoy and every
/// compiled configuration, with no randomness and one host call per lease saved.
#[derive(Debug, Default)]
pub struct Ids {
    worker: Cell<u64>,
    seq: Cell<u64>,
}

impl Ids {
    /// The next id (`None`: the worker counter kept changing under every attempt).
    pub fn next(&self, store: &mut impl Store) -> Option<LeaseId> {
        if self.worker.get() == 0 {
            self.worker.set(register_worker(store)?);
        }
        let seq = self.seq.get().wrapping_add(1);
        self.seq.set(seq);
        Some(LeaseId {
            worker: self.worker.get(),
            seq,
        })
    }
}

/// A worker number no one has had: one more than the last given out.
pub fn register_worker(store: &mut impl Store) -> Option<u64> {
    update(store, WORKERS_KEY, |value| {
        let n = value.map_or(0, |v| word(v, 0)).saturating_add(1);
        (Some(n.to_le_bytes()), n)
    })
}

/// The leases stored as `value`: `(id, deadline)` (a value of another length is not this
/// build's: read as none).
fn leases(value: Option<&[u8]>) -> impl Iterator<Item = (LeaseId, u64)> + '_ {
    let bytes = value
        .filter(|b| b.len() % LEASE_BYTES == 0)
        .unwrap_or_default();
    bytes.chunks_exact(LEASE_BYTES).map(|r| {
        (
            LeaseId {
                worker: word(r, 0),
                seq: word(r, 8),
            },
            word(r, 16),
        )
    })
}

fn push_lease(out: &mut Vec<u8>, id: LeaseId, deadline: u64) {
    out.extend_from_slice(&id.worker.to_le_bytes());
    out.extend_from_slice(&id.seq.to_le_bytes());
    out.extend_from_slice(&deadline.to_le_bytes());
}

/// What asking for a lease came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquire {
    /// Held, until released or `deadline`.
    Held,
    /// `max` are in flight already.
    Full,
    /// The key kept changing under every attempt.
    Contended,
}

/// Takes lease `id` on `key` until `deadline` (milliseconds) if fewer than `max` unexpired
/// leases on it are held at `now`; expired ones are dropped on the way.
pub fn acquire(
    store: &mut impl Store,
    key: &str,
    id: LeaseId,
    max: u32,
    now: u64,
    deadline: u64,
) -> Acquire {
    update(store, key, |value| {
        let live = leases(value).filter(|(_, d)| *d > now).count();
        if live >= max as usize || live >= MAX_LEASES {
            return (None, Acquire::Full);
        }
        let mut out = Vec::with_capacity((live + 1) * LEASE_BYTES);
        for (other, d) in leases(value).filter(|(_, d)| *d > now) {
            push_lease(&mut out, other, d);
        }
        push_lease(&mut out, id, deadline);
        (Some(out), Acquire::Held)
    })
    .unwrap_or(Acquire::Contended)
}

/// Releases lease `id` on `key` (nothing if it is not held: a release is idempotent);
/// expired leases go with it.
pub fn release(store: &mut impl Store, key: &str, id: LeaseId, now: u64) -> bool {
    update(store, key, |value| {
        let all = leases(value).count();
        let kept = || leases(value).filter(|(other, d)| *other != id && *d > now);
        if kept().count() == all {
            return (None, ());
        }
        let mut out = Vec::with_capacity(all.saturating_sub(1) * LEASE_BYTES);
        for (other, d) in kept() {
            push_lease(&mut out, other, d);
        }
        (Some(out), ())
    })
    .is_some()
}

/// Unexpired leases on `key` at `now` (for tests and diagnostics).
pub fn in_flight(store: &mut impl Store, key: &str, now: u64) -> usize {
    let (value, _) = store.get(key);
    leases(value.as_deref()).filter(|(_, d)| *d > now).count()
}

#[cfg(test)]
pub(crate) mod tests;
