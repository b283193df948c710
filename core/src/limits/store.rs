//! Where buckets and in-flight leases live: proxy-wasm shared data, the same compare-and-swap
//! store the session table uses ([`crate::exchange::Host::shared_get`]), so every worker
//! of one Envoy reads and writes one budget.
//!
//! Shared data cannot delete a key, so, as the session table does, limits use a fixed set
//! of slots (keys) and keep in each the entries whose key hashes to it: a bucket only while
//! it is not full (a full bucket is the same as none), a lease only until it is released or
//! expires. A slot's value is a packed array of 24-byte little-endian records, so reading
//! one costs no parser. Updates are compare-and-swap on the slot and retried on conflict.
//!
//! Envoy's shared data checks a compare-and-swap token only against a key that exists: a
//! write to an absent key always succeeds. Two workers creating the same slot at once could
//! both succeed and one lose its update. So a slot is created with a token no slot holds
//! ([`CREATE`]): if another worker created it first, the write fails and is retried against
//! what that worker wrote.

use super::bucket::{Bucket, Shape};

/// The shared data limits live in (the host's, in the filter; a fake in tests).
pub trait Store {
    /// A value and its compare-and-swap token (`None`: absent).
    fn get(&mut self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Stores `value` unless the key's token moved past `cas`; `false` when it did.
    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool;
}

/// The token a slot is created with: Envoy's tokens count up from 1 across all keys, so an
/// existing slot does not hold this one, and the write fails if another worker created it.
pub const CREATE: u32 = u32::MAX;
/// Attempts at one update before giving up (a request then gets 429: a limit never admits
/// what it cannot count).
pub const CAS_ATTEMPTS: usize = 32;
/// Slots of each kind.
pub const SLOTS: u64 = 1024;
/// Prefix of a bucket slot's key.
pub const BUCKET_PREFIX: &str = "mcpgw.limits.bucket.";
/// Prefix of a lease slot's key.
pub const LEASE_PREFIX: &str = "mcpgw.limits.lease.";
/// Most buckets a slot keeps: past it the bucket stamped longest ago (the one most likely
/// full again) is forgotten, so a flood of keys costs them their budget's memory, not the
/// Envoy its memory.
pub const MAX_BUCKETS: usize = 128;
/// Most leases a slot keeps: a call that would hold one more is refused.
pub const MAX_LEASES: usize = 1024;

const RECORD: usize = 24;

/// The slot key of entry `key` with `prefix`.
pub fn slot_key(prefix: &str, key: u64) -> String {
    format!("{prefix}{}", key % SLOTS)
}

fn records(bytes: Option<&[u8]>) -> impl Iterator<Item = [u64; 3]> + '_ {
    // A value of another length is not this build's: read as empty.
    let bytes = bytes.filter(|b| b.len() % RECORD == 0).unwrap_or_default();
    bytes.chunks_exact(RECORD).map(|r| {
        let word = |i: usize| {
            let mut w = [0u8; 8];
            if let Some(src) = r.get(i * 8..i * 8 + 8) {
                w.copy_from_slice(src);
            }
            u64::from_le_bytes(w)
        };
        [word(0), word(1), word(2)]
    })
}

fn pack(records: impl Iterator<Item = [u64; 3]>) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        for w in r {
            out.extend_from_slice(&w.to_le_bytes());
        }
    }
    out
}

/// Reads `key`, lets `change` compute the new value (`None`: leave it) and writes it by
/// compare-and-swap, again on conflict; `None` when every attempt lost.
pub fn update<T>(
    store: &mut impl Store,
    key: &str,
    mut change: impl FnMut(Option<&[u8]>) -> (Option<Vec<u8>>, T),
) -> Option<T> {
    for _ in 0..CAS_ATTEMPTS {
        let (value, cas) = store.get(key);
        let (new, out) = change(value.as_deref());
        let Some(new) = new else {
            return Some(out);
        };
        // Absent is told by the token, not the value: an emptied slot reads as no value
        // (the host hands back nothing for zero bytes) but has a token.
        let cas = if cas.is_none() { Some(CREATE) } else { cas };
        if store.set(key, &new, cas) {
            return Some(out);
        }
    }
    None
}

/// What taking from a bucket came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Taken.
    Taken,
    /// Not enough: milliseconds until there is.
    Short(u64),
    /// The slot kept changing under every attempt.
    Contended,
}

/// Takes `cost` units from bucket `key` of `shape` at `now` (milliseconds).
pub fn take(store: &mut impl Store, key: u64, shape: &Shape, cost: u64, now: u64) -> Take {
    let slot = slot_key(BUCKET_PREFIX, key);
    let out = update(store, &slot, |value| {
        let mut others: Vec<[u64; 3]> = Vec::new();
        let mut mine = None;
        for r in records(value) {
            if r[0] == key {
                mine = Some(Bucket {
                    units: r[1],
                    stamp: r[2],
                });
            } else {
                others.push(r);
            }
        }
        let mut bucket = Bucket::at(mine, shape, now);
        if let Err(wait) = bucket.take(shape, cost) {
            return (None, Take::Short(wait));
        }
        if others.len() >= MAX_BUCKETS
            && let Some(oldest) = (0..others.len()).min_by_key(|&i| others.get(i).map(|r| r[2]))
        {
            others.remove(oldest);
        }
        others.push([key, bucket.units, bucket.stamp]);
        (Some(pack(others.into_iter())), Take::Taken)
    });
    out.unwrap_or(Take::Contended)
}

/// Gives `cost` units back to bucket `key` (taken for a request another limit refused).
pub fn refund(store: &mut impl Store, key: u64, shape: &Shape, cost: u64, now: u64) -> bool {
    let slot = slot_key(BUCKET_PREFIX, key);
    update(store, &slot, |value| {
        let mut out: Vec<[u64; 3]> = Vec::new();
        for r in records(value) {
            if r[0] != key {
                out.push(r);
                continue;
            }
            let mut b = Bucket::at(
                Some(Bucket {
                    units: r[1],
                    stamp: r[2],
                }),
                shape,
                now,
            );
            b.refund(shape, cost);
            if !b.is_full(shape) {
                out.push([key, b.units, b.stamp]);
            }
        }
        (Some(pack(out.into_iter())), ())
    })
    .is_some()
}

/// What asking for a lease came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquire {
    /// Held, until released or `deadline`.
    Held,
    /// `max` are in flight already.
    Full,
    /// The slot kept changing under every attempt.
    Contended,
}

/// Takes lease `id` on `key` until `deadline` (milliseconds) if fewer than `max` unexpired
/// leases on it are held at `now`.
pub fn acquire(
    store: &mut impl Store,
    key: u64,
    id: u64,
    max: u32,
    now: u64,
    deadline: u64,
) -> Acquire {
    let slot = slot_key(LEASE_PREFIX, key);
    update(store, &slot, |value| {
        let mut live: Vec<[u64; 3]> = records(value).filter(|r| r[2] > now).collect();
        let held = live.iter().filter(|r| r[0] == key).count();
        if held >= max as usize || live.len() >= MAX_LEASES {
            return (None, Acquire::Full);
        }
        live.push([key, id, deadline]);
        (Some(pack(live.into_iter())), Acquire::Held)
    })
    .unwrap_or(Acquire::Contended)
}

/// Releases lease `id` on `key` (nothing if it is not held: a release is idempotent).
pub fn release(store: &mut impl Store, key: u64, id: u64, now: u64) -> bool {
    let slot = slot_key(LEASE_PREFIX, key);
    update(store, &slot, |value| {
        let all: Vec<[u64; 3]> = records(value).collect();
        let kept: Vec<[u64; 3]> = all
            .iter()
            .copied()
            .filter(|r| !(r[0] == key && r[1] == id) && r[2] > now)
            .collect();
        if kept.len() == all.len() {
            return (None, ());
        }
        (Some(pack(kept.into_iter())), ())
    })
    .is_some()
}

/// Unexpired leases on `key` at `now` (for tests and diagnostics).
pub fn in_flight(store: &mut impl Store, key: u64, now: u64) -> usize {
    let (value, _) = store.get(&slot_key(LEASE_PREFIX, key));
    records(value.as_deref())
        .filter(|r| r[0] == key && r[2] > now)
        .count()
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use std::collections::HashMap;

    /// Envoy's shared data as proxy-wasm-cpp-host implements it: a token per value from
    /// one counter; a write to an existing key fails unless its token is 0 or current; a
    /// write to an absent key always succeeds. `interleave` runs another writer's update
    /// right before each of the next writes (a conflict the update must retry).
    #[derive(Default)]
    pub struct FakeShared {
        pub values: HashMap<String, (Vec<u8>, u32)>,
        pub next_cas: u32,
        pub sets: usize,
        pub conflicts: usize,
        pub interleave: Vec<Interleaved>,
    }

    /// Another writer's update, run before a write.
    pub type Interleaved = Box<dyn FnMut(&mut FakeShared)>;

    impl FakeShared {
        pub fn raw_set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
            let cas = cas.unwrap_or(0);
            if let Some((_, current)) = self.values.get(key)
                && cas != 0
                && cas != *current
            {
                self.conflicts += 1;
                return false;
            }
            self.next_cas += 1;
            self.values
                .insert(key.to_owned(), (value.to_vec(), self.next_cas));
            true
        }
    }

    impl Store for FakeShared {
        fn get(&mut self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
            match self.values.get(key) {
                // As the filter's host reads it: zero bytes come back as no value.
                Some((v, c)) if v.is_empty() => (None, Some(*c)),
                Some((v, c)) => (Some(v.clone()), Some(*c)),
                None => (None, None),
            }
        }
        fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
            self.sets += 1;
            if !self.interleave.is_empty() {
                let mut other = self.interleave.remove(0);
                other(self);
            }
            self.raw_set(key, value, cas)
        }
    }

    #[test]
    fn records_round_trip_and_foreign_values_read_empty() {
        let rs = vec![[1, 2, 3], [u64::MAX, 0, 7]];
        let packed = pack(rs.clone().into_iter());
        assert_eq!(packed.len(), 48);
        assert_eq!(records(Some(&packed)).collect::<Vec<_>>(), rs);
        assert_eq!(records(Some(b"12345")).count(), 0);
        assert_eq!(records(None).count(), 0);
        assert_eq!(slot_key(BUCKET_PREFIX, 1025), "mcpgw.limits.bucket.1");
    }

    #[test]
    fn a_bucket_spends_its_budget_across_writers_exactly() {
        let shape = Shape::new(3, 60, 3);
        let one = shape.units(1);
        let mut s = FakeShared::default();
        // Every write loses once to another worker taking from the same bucket.
        for _ in 0..2 {
            s.interleave.push(Box::new(move |s: &mut FakeShared| {
                let mut other = FakeShared {
                    values: std::mem::take(&mut s.values),
                    next_cas: s.next_cas,
                    ..FakeShared::default()
                };
                assert_eq!(take(&mut other, 7, &shape, one, 0), Take::Taken);
                s.values = other.values;
                s.next_cas = other.next_cas;
            }));
        }
        assert_eq!(take(&mut s, 7, &shape, one, 0), Take::Taken);
        assert_eq!(s.conflicts, 2, "retried twice");
        // Two taken by the other writer, one here: the bucket is empty.
        assert_eq!(take(&mut s, 7, &shape, one, 0), Take::Short(20_000));
        assert!(refund(&mut s, 7, &shape, one, 0));
        assert_eq!(take(&mut s, 7, &shape, one, 0), Take::Taken);
        // Other keys are their own buckets, in the same slot or not.
        assert_eq!(take(&mut s, 7 + SLOTS, &shape, one, 0), Take::Taken);
        assert_eq!(take(&mut s, 8, &shape, one, 0), Take::Taken);
    }

    #[test]
    fn creating_a_slot_never_overwrites_one_created_meanwhile() {
        let shape = Shape::new(1, 60, 1);
        let one = shape.units(1);
        let mut s = FakeShared::default();
        // Another worker creates the slot (spending key 5's only token) between this
        // worker's read of nothing and its write.
        s.interleave.push(Box::new(move |s: &mut FakeShared| {
            let mut other = FakeShared::default();
            assert_eq!(take(&mut other, 5, &shape, one, 0), Take::Taken);
            s.values = other.values;
            s.next_cas = other.next_cas;
        }));
        assert_eq!(take(&mut s, 5, &shape, one, 0), Take::Short(60_000));
        assert_eq!(s.conflicts, 1);
    }

    #[test]
    fn a_slot_that_never_settles_is_contended() {
        let shape = Shape::new(1, 60, 1);
        let mut s = FakeShared::default();
        for _ in 0..CAS_ATTEMPTS {
            s.interleave.push(Box::new(|s: &mut FakeShared| {
                s.raw_set(&slot_key(BUCKET_PREFIX, 9), b"", None);
            }));
        }
        assert_eq!(take(&mut s, 9, &shape, shape.units(1), 0), Take::Contended);
    }

    #[test]
    fn leases_count_expire_and_release_once() {
        let mut s = FakeShared::default();
        assert_eq!(acquire(&mut s, 1, 100, 2, 0, 1_000), Acquire::Held);
        assert_eq!(acquire(&mut s, 1, 101, 2, 0, 1_000), Acquire::Held);
        assert_eq!(acquire(&mut s, 1, 102, 2, 0, 1_000), Acquire::Full);
        assert_eq!(acquire(&mut s, 1 + SLOTS, 103, 2, 0, 1_000), Acquire::Held);
        assert_eq!(in_flight(&mut s, 1, 0), 2);
        assert!(release(&mut s, 1, 100, 0));
        let sets = s.sets;
        assert!(
            release(&mut s, 1, 100, 0),
            "a second release changes nothing"
        );
        assert_eq!(s.sets, sets, "and writes nothing");
        assert_eq!(in_flight(&mut s, 1, 0), 1);
        assert_eq!(acquire(&mut s, 1, 104, 2, 0, 1_000), Acquire::Held);
        assert_eq!(acquire(&mut s, 1, 105, 2, 999, 2_000), Acquire::Full);
        // Past their deadline, leases stop counting (a call that outlived its hold, or a
        // worker that died with it).
        assert_eq!(acquire(&mut s, 1, 106, 2, 1_000, 2_000), Acquire::Held);
        assert_eq!(in_flight(&mut s, 1, 1_000), 1);
    }

    #[test]
    fn a_slot_emptied_by_its_last_release_takes_leases_again() {
        let mut s = FakeShared::default();
        for id in 0..3 {
            assert_eq!(acquire(&mut s, 4, id, 1, 0, 1_000), Acquire::Held, "{id}");
            assert!(release(&mut s, 4, id, 0));
            assert_eq!(
                s.values[&slot_key(LEASE_PREFIX, 4)].0.len(),
                0,
                "the slot is empty, not absent"
            );
        }
        // And a bucket slot emptied by a refund takes tokens again.
        let shape = Shape::new(1, 60, 1);
        let one = shape.units(1);
        assert_eq!(take(&mut s, 4, &shape, one, 0), Take::Taken);
        assert!(refund(&mut s, 4, &shape, one, 0));
        assert_eq!(take(&mut s, 4, &shape, one, 0), Take::Taken);
        assert_eq!(take(&mut s, 4, &shape, one, 0), Take::Short(60_000));
    }
}
