#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::*;
use std::collections::HashMap;

/// Envoy's shared data as proxy-wasm-cpp-host implements it: a token per value from one
/// counter; a write to an existing key fails unless its token is 0 or current; a write to
/// an absent key always succeeds. `interleave` runs another writer's update right before
/// each of the next writes (a conflict the update must retry).
#[derive(Default)]
pub struct FakeShared {
    pub values: HashMap<String, (Vec<u8>, u32)>,
    pub next_cas: u32,
    pub gets: usize,
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

    /// Runs `f` as another worker would, on this shared data (between this worker's read
    /// and its write).
    pub fn as_other(&mut self, f: impl FnOnce(&mut FakeShared)) {
        let mut other = FakeShared {
            values: std::mem::take(&mut self.values),
            next_cas: self.next_cas,
            ..FakeShared::default()
        };
        f(&mut other);
        self.values = other.values;
        self.next_cas = other.next_cas;
    }
}

impl Store for FakeShared {
    fn get(&mut self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.gets += 1;
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

fn id(worker: u64, seq: u64) -> LeaseId {
    LeaseId { worker, seq }
}

fn key(parts: &[(char, &str)]) -> Key {
    let mut k = Key::start(&Key::prefix(RATE_PREFIX, "s1", "r"), 0);
    for (tag, v) in parts {
        k.part(*tag, v);
    }
    k
}

#[test]
fn keys_are_unambiguous() {
    assert_eq!(
        Key::prefix(RATE_PREFIX, "s1", "calls"),
        "mcpgw.lim.r2:s15:calls"
    );
    assert_eq!(
        key(&[('p', "alice"), ('t', "a__t0")]).as_str(),
        "mcpgw.lim.r2:s11:rp5:alicet5:a__t0"
    );
    // The same bytes split differently, the same value under another part, another
    // scope or limit name, another kind of limit: all other keys.
    let a = key(&[('p', "ab"), ('t', "c")]);
    let b = key(&[('p', "a"), ('t', "bc")]);
    let c = key(&[('t', "ab"), ('p', "c")]);
    assert!(a != b && b != c && a != c);
    assert_ne!(
        Key::prefix(RATE_PREFIX, "s1", "r1"),
        Key::prefix(RATE_PREFIX, "s1r", "1")
    );
    assert_ne!(
        Key::prefix(RATE_PREFIX, "", "x"),
        Key::prefix(LEASE_PREFIX, "", "x")
    );
    // A value holding what looks like a length and a tag stays one value.
    let tricky = key(&[('p', "1:x"), ('t', "y")]);
    assert_eq!(tricky.as_str(), "mcpgw.lim.r2:s11:rp3:1:xt1:y");
    assert_ne!(tricky, key(&[('p', "1"), ('t', "y")]));
    let mut long = String::new();
    push_decimal(&mut long, 1234567890);
    push_decimal(&mut long, 0);
    assert_eq!(long, "12345678900");
}

#[test]
fn a_bucket_is_sixteen_bytes_and_spends_its_budget_across_writers_exactly() {
    let shape = Shape::new(3, 60, 3);
    let one = shape.units(1);
    let k = "mcpgw.lim.r0:1:b";
    let mut s = FakeShared::default();
    // Every write loses once to another worker taking from the same bucket.
    for _ in 0..2 {
        s.interleave.push(Box::new(move |s: &mut FakeShared| {
            s.as_other(|o| assert_eq!(take(o, k, &shape, one, 0), Take::Taken));
        }));
    }
    assert_eq!(take(&mut s, k, &shape, one, 0), Take::Taken);
    assert_eq!(s.conflicts, 2, "retried twice");
    assert_eq!(s.values[k].0.len(), BUCKET_BYTES);
    assert_eq!(units(&mut s, k), Some(0));
    // Two taken by the other writer, one here: the bucket is empty.
    assert_eq!(take(&mut s, k, &shape, one, 0), Take::Short(20_000));
    assert!(refund(&mut s, k, &shape, one, 0));
    assert_eq!(units(&mut s, k), Some(one));
    assert_eq!(take(&mut s, k, &shape, one, 0), Take::Taken);
    // Other keys are their own buckets.
    assert_eq!(
        take(&mut s, "mcpgw.lim.r0:1:c", &shape, one, 0),
        Take::Taken
    );
    // A refund to an absent (full) bucket writes nothing.
    let sets = s.sets;
    assert!(refund(&mut s, "mcpgw.lim.r0:1:d", &shape, one, 0));
    assert_eq!(s.sets, sets);
    assert!(!s.values.contains_key("mcpgw.lim.r0:1:d"));
}

#[test]
fn creating_a_key_never_overwrites_one_created_meanwhile() {
    let shape = Shape::new(1, 60, 1);
    let one = shape.units(1);
    let k = "mcpgw.lim.r0:1:e";
    let mut s = FakeShared::default();
    // Another worker creates the key (spending its only token) between this worker's read
    // of nothing and its write.
    s.interleave.push(Box::new(move |s: &mut FakeShared| {
        s.as_other(|o| assert_eq!(take(o, k, &shape, one, 0), Take::Taken));
    }));
    assert_eq!(take(&mut s, k, &shape, one, 0), Take::Short(60_000));
    assert_eq!(s.conflicts, 1);
}

#[test]
fn a_key_that_never_settles_is_contended() {
    let shape = Shape::new(1, 60, 1);
    let k = "mcpgw.lim.r0:1:f";
    let mut s = FakeShared::default();
    for _ in 0..CAS_ATTEMPTS {
        s.interleave.push(Box::new(move |s: &mut FakeShared| {
            s.raw_set(k, b"", None);
        }));
    }
    assert_eq!(take(&mut s, k, &shape, shape.units(1), 0), Take::Contended);
    for _ in 0..CAS_ATTEMPTS {
        s.interleave.push(Box::new(move |s: &mut FakeShared| {
            s.raw_set(k, b"", None);
        }));
    }
    assert_eq!(acquire(&mut s, k, id(1, 1), 5, 0, 10), Acquire::Contended);
}

#[test]
fn thousands_of_budgets_each_stay_exact() {
    // The old slots forgot the oldest of more than 128 buckets in one slot (a budget
    // refilled by others' traffic); keys of their own forget none.
    let shape = Shape::new(2, 3600, 2);
    let one = shape.units(1);
    let mut s = FakeShared::default();
    let keys: Vec<String> = (0..5000)
        .map(|i| key(&[('p', &format!("user{i}")), ('t', "t")]).0)
        .collect();
    for round in 0..2 {
        for k in &keys {
            assert_eq!(take(&mut s, k, &shape, one, round), Take::Taken);
        }
    }
    for k in &keys {
        assert!(matches!(take(&mut s, k, &shape, one, 2), Take::Short(_)));
        assert_eq!(s.values[k.as_str()].0.len(), BUCKET_BYTES);
    }
    assert_eq!(s.values.len(), keys.len());
}

#[test]
fn leases_count_expire_and_release_once() {
    let k = "mcpgw.lim.c0:1:g";
    let mut s = FakeShared::default();
    assert_eq!(acquire(&mut s, k, id(1, 100), 2, 0, 1_000), Acquire::Held);
    assert_eq!(acquire(&mut s, k, id(1, 101), 2, 0, 1_000), Acquire::Held);
    assert_eq!(acquire(&mut s, k, id(1, 102), 2, 0, 1_000), Acquire::Full);
    assert_eq!(
        acquire(&mut s, "mcpgw.lim.c0:1:h", id(1, 103), 2, 0, 1_000),
        Acquire::Held
    );
    assert_eq!(in_flight(&mut s, k, 0), 2);
    assert_eq!(s.values[k].0.len(), 2 * LEASE_BYTES);
    // Another worker's lease of the same count is another lease.
    assert!(release(&mut s, k, id(2, 100), 0));
    assert_eq!(in_flight(&mut s, k, 0), 2);
    assert!(release(&mut s, k, id(1, 100), 0));
    let sets = s.sets;
    assert!(
        release(&mut s, k, id(1, 100), 0),
        "a second release changes nothing"
    );
    assert_eq!(s.sets, sets, "and writes nothing");
    assert_eq!(in_flight(&mut s, k, 0), 1);
    assert_eq!(acquire(&mut s, k, id(1, 104), 2, 0, 1_000), Acquire::Held);
    assert_eq!(acquire(&mut s, k, id(1, 105), 2, 999, 2_000), Acquire::Full);
    // Past their deadline, leases stop counting (a call that outlived its hold, or a
    // worker that died with it) and are dropped by the next write.
    assert_eq!(
        acquire(&mut s, k, id(1, 106), 2, 1_000, 2_000),
        Acquire::Held
    );
    assert_eq!(in_flight(&mut s, k, 1_000), 1);
    assert_eq!(s.values[k].0.len(), LEASE_BYTES, "the expired went");
}

#[test]
fn a_key_emptied_by_its_last_release_takes_leases_again() {
    let k = "mcpgw.lim.c0:1:i";
    let mut s = FakeShared::default();
    for seq in 0..3 {
        assert_eq!(
            acquire(&mut s, k, id(1, seq), 1, 0, 1_000),
            Acquire::Held,
            "{seq}"
        );
        assert!(release(&mut s, k, id(1, seq), 0));
        assert_eq!(s.values[k].0.len(), 0, "the key is empty, not absent");
    }
    // Emptied, it is still created only once: another worker taking the place between
    // this worker's read and write makes this one see it.
    s.interleave.push(Box::new(move |s: &mut FakeShared| {
        s.as_other(|o| assert_eq!(acquire(o, k, id(2, 1), 1, 0, 1_000), Acquire::Held));
    }));
    assert_eq!(acquire(&mut s, k, id(1, 9), 1, 0, 1_000), Acquire::Full);
    assert_eq!(s.conflicts, 1);
}

#[test]
fn concurrent_acquires_hold_exactly_max() {
    // Every write of this worker loses to another worker's acquire: of 1 + 3 attempts at
    // a limit of 3, exactly 3 hold places.
    let k = "mcpgw.lim.c0:1:j";
    let mut s = FakeShared::default();
    for seq in 1..=3 {
        s.interleave.push(Box::new(move |s: &mut FakeShared| {
            s.as_other(|o| {
                let _ = acquire(o, k, id(2, seq), 3, 0, 1_000);
            });
        }));
    }
    assert_eq!(acquire(&mut s, k, id(1, 1), 3, 0, 1_000), Acquire::Full);
    assert_eq!(s.conflicts, 3);
    assert_eq!(in_flight(&mut s, k, 0), 3);
    // A release racing an acquire: both land.
    s.interleave.push(Box::new(move |s: &mut FakeShared| {
        s.as_other(|o| assert!(release(o, k, id(2, 1), 0)));
    }));
    assert!(release(&mut s, k, id(2, 2), 0));
    assert_eq!(in_flight(&mut s, k, 0), 1);
}

#[test]
fn lease_ids_are_unique_across_workers() {
    let mut s = FakeShared::default();
    let a = Ids::default();
    let b = Ids::default();
    // Two workers register at once: one write conflicts and is retried.
    s.interleave.push(Box::new(|s: &mut FakeShared| {
        s.as_other(|o| assert_eq!(register_worker(o), Some(1)));
    }));
    assert_eq!(a.next(&mut s), Some(id(2, 1)));
    assert_eq!(s.conflicts, 1);
    assert_eq!(b.next(&mut s), Some(id(3, 1)));
    assert_eq!(a.next(&mut s), Some(id(2, 2)));
    let gets = s.gets;
    assert_eq!(a.next(&mut s), Some(id(2, 3)));
    assert_eq!(s.gets, gets, "registered once: no host call per id");
}
