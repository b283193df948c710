//! Token-bucket arithmetic, in integers so every worker computes the same bucket.
//!
//! A bucket of `burst` tokens refilled at `requests` per `per_seconds` is kept in *units*:
//! one token is `per_seconds × 1000` units and the bucket gains `requests` units every
//! millisecond. No division happens on the way in, so no rounding drifts a budget: a bucket
//! of 100 per minute admits exactly 100 in any minute that starts full.

/// The shape of one rate's buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Units of one token: the period in milliseconds.
    pub token: u64,
    /// Units gained per millisecond: requests per period.
    pub refill: u64,
    /// Units a full bucket holds.
    pub capacity: u64,
}

impl Shape {
    /// `requests` per `per_seconds`, holding `burst` at most (all at least 1).
    pub fn new(requests: u32, per_seconds: u32, burst: u32) -> Shape {
        let token = u64::from(per_seconds.max(1)) * 1000;
        Shape {
            token,
            refill: u64::from(requests.max(1)),
            capacity: u64::from(burst.max(1)) * token,
        }
    }

    /// Units `cost` tokens are.
    pub fn units(&self, cost: u32) -> u64 {
        u64::from(cost).saturating_mul(self.token)
    }
}

/// One bucket's state: units left when it was last stamped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// Units left at `stamp`.
    pub units: u64,
    /// Milliseconds since the Unix epoch.
    pub stamp: u64,
}

impl Bucket {
    /// The bucket at `now`: refilled for the time since its stamp (a clock that went back
    /// refills nothing); an absent bucket is full.
    pub fn at(this: Option<Bucket>, shape: &Shape, now: u64) -> Bucket {
        match this {
            None => Bucket {
                units: shape.capacity,
                stamp: now,
            },
            Some(b) => {
                let elapsed = now.saturating_sub(b.stamp);
                Bucket {
                    units: b
                        .units
                        .saturating_add(elapsed.saturating_mul(shape.refill))
                        .min(shape.capacity),
                    stamp: b.stamp.max(now),
                }
            }
        }
    }

    /// Takes `cost` units; `Err` holds the milliseconds until they will be there.
    pub fn take(&mut self, shape: &Shape, cost: u64) -> Result<(), u64> {
        if self.units >= cost {
            self.units -= cost;
            return Ok(());
        }
        Err((cost - self.units).div_ceil(shape.refill))
    }

    /// Gives `cost` units back (a request another limit refused).
    pub fn refund(&mut self, shape: &Shape, cost: u64) {
        self.units = self.units.saturating_add(cost).min(shape.capacity);
    }

    /// Whether it holds all it can: the same as absent, so it need not be stored.
    pub fn is_full(&self, shape: &Shape) -> bool {
        self.units >= shape.capacity
    }
}

/// Milliseconds to whole seconds, rounded up, at least 1 (a `Retry-After`).
pub fn retry_after_secs(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_full_bucket_admits_exactly_its_burst_then_refills_at_the_rate() {
        let shape = Shape::new(100, 60, 100);
        let mut b = Bucket::at(None, &shape, 1_000);
        let one = shape.units(1);
        let admitted = (0..250).filter(|_| b.take(&shape, one).is_ok()).count();
        assert_eq!(admitted, 100);
        // 100 per minute: a token every 600 ms.
        assert_eq!(b.take(&shape, one), Err(600));
        let mut later = Bucket::at(Some(b), &shape, 1_599);
        assert_eq!(later.take(&shape, one), Err(1));
        let mut later = Bucket::at(Some(b), &shape, 1_600);
        assert_eq!(later.take(&shape, one), Ok(()));
        assert_eq!(later.take(&shape, one), Err(600));
        // A minute refills it all, and never more than the burst.
        let full = Bucket::at(Some(b), &shape, 1_000 + 3_600_000);
        assert!(full.is_full(&shape));
        assert_eq!(full.units, shape.capacity);
    }

    #[test]
    fn cost_burst_clock_and_refund() {
        let shape = Shape::new(2, 1, 5);
        let mut b = Bucket::at(None, &shape, 10);
        assert_eq!(b.take(&shape, shape.units(3)), Ok(()));
        assert_eq!(b.take(&shape, shape.units(3)), Err(500));
        b.refund(&shape, shape.units(3));
        assert!(b.is_full(&shape));
        b.refund(&shape, shape.units(3));
        assert_eq!(b.units, shape.capacity, "a refund never overfills");
        b.take(&shape, shape.units(5)).unwrap();
        // A clock that went back refills nothing and keeps the later stamp.
        let back = Bucket::at(Some(b), &shape, 5);
        assert_eq!((back.units, back.stamp), (0, 10));
        assert_eq!(retry_after_secs(0), 1);
        assert_eq!(retry_after_secs(1), 1);
        assert_eq!(retry_after_secs(1000), 1);
        assert_eq!(retry_after_secs(1001), 2);
    }
}
