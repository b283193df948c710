//! `notifications/*/list_changed`, coalesced: each gateway has one slot, not a queue. A
//! notification marks the slot dirty; one worker per dirty gateway rediscovers it, at most
//! once per `min_interval`, and every notification that arrives meanwhile folds into the
//! next run. An upstream that floods notifications therefore costs one rediscovery per
//! interval and one map entry, however fast it sends; memory is bounded by the number of
//! gateways (an unbounded channel of ids grew with the flood, and each id spawned a full
//! rediscovery).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// What [`Changes::notify`] did with a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Noted {
    /// The gateway had nothing pending: a rediscovery is scheduled.
    Scheduled,
    /// One was pending already: this notification folds into it.
    Coalesced,
}

impl Noted {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Noted::Scheduled => "scheduled",
            Noted::Coalesced => "coalesced",
        }
    }
}

#[derive(Debug)]
struct Slot {
    /// A notification arrived since the last run started.
    dirty: bool,
    /// A worker owns this gateway.
    running: bool,
    /// When the next run may start.
    next: Instant,
}

/// The per-gateway slots and the signal that wakes the dispatcher.
#[derive(Debug)]
pub struct Changes {
    slots: Mutex<HashMap<String, Slot>>,
    wake: Notify,
    min_interval: Duration,
}

impl Changes {
    /// Slots whose runs are at least `min_interval` apart.
    pub fn new(min_interval: Duration) -> Self {
        Changes {
            slots: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            min_interval,
        }
    }

    /// A list changed at gateway `id`.
    pub fn notify(&self, id: &str) -> Noted {
        let noted = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            let slot = slots.entry(id.to_owned()).or_insert_with(|| Slot {
                dirty: false,
                running: false,
                next: Instant::now(),
            });
            let was = slot.dirty;
            slot.dirty = true;
            if was {
                Noted::Coalesced
            } else {
                Noted::Scheduled
            }
        };
        self.wake.notify_one();
        noted
    }

    /// Drops the slot of a deleted gateway (a running worker ends after its run).
    pub fn forget(&self, id: &str) {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Whether a rediscovery of `id` is pending or running.
    pub fn pending(&self, id: &str) -> bool {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .is_some_and(|s| s.dirty || s.running)
    }

    /// Dispatches until aborted: a worker per dirty gateway, each running `refresh`.
    pub async fn run<F, Fut>(self: Arc<Self>, refresh: F)
    where
        F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        loop {
            self.wake.notified().await;
            let ready: Vec<String> = {
                let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
                slots
                    .iter_mut()
                    .filter(|(_, s)| s.dirty && !s.running)
                    .map(|(id, s)| {
                        s.running = true;
                        id.clone()
                    })
                    .collect()
            };
            for id in ready {
                tokio::spawn(self.clone().work(id, refresh.clone()));
            }
        }
    }

    /// Runs `refresh` for `id` while it is dirty, no closer together than the interval.
    async fn work<F, Fut>(self: Arc<Self>, id: String, refresh: F)
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = ()>,
    {
        loop {
            let next = {
                let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
                match slots.get(&id) {
                    Some(s) => s.next,
                    None => return,
                }
            };
            tokio::time::sleep_until(next).await;
            {
                let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
                let Some(slot) = slots.get_mut(&id) else {
                    return;
                };
                if !slot.dirty {
                    slot.running = false;
                    return;
                }
                slot.dirty = false;
            }
            refresh(id.clone()).await;
            if let Some(slot) = self
                .slots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(&id)
            {
                slot.next = Instant::now() + self.min_interval;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Lets spawned tasks run until they wait on time.
    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_costs_one_run_per_interval_per_gateway() {
        let changes = Arc::new(Changes::new(Duration::from_secs(10)));
        let runs: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = runs.clone();
        let dispatcher = tokio::spawn(changes.clone().run(move |id| {
            let seen = seen.clone();
            async move { seen.lock().unwrap().push(id) }
        }));
        let count = |id: &str| runs.lock().unwrap().iter().filter(|r| *r == id).count();

        // A thousand notifications: the first runs at once, the rest fold into one more.
        assert_eq!(changes.notify("a"), Noted::Scheduled);
        settle().await;
        for _ in 0..1000 {
            changes.notify("a");
        }
        changes.notify("b");
        settle().await;
        assert_eq!(
            (count("a"), count("b")),
            (1, 1),
            "{:?}",
            runs.lock().unwrap()
        );
        assert!(changes.pending("a"));
        tokio::time::advance(Duration::from_secs(9)).await;
        settle().await;
        assert_eq!(count("a"), 1, "not before the interval");
        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
        assert_eq!(count("a"), 2, "the folded run");
        // Quiet again: no further run, the worker is gone, the slot idle.
        tokio::time::advance(Duration::from_secs(60)).await;
        settle().await;
        assert_eq!((count("a"), count("b")), (2, 1));
        assert!(!changes.pending("a"));
        // The next notification after a quiet interval runs at once.
        changes.notify("a");
        settle().await;
        assert_eq!(count("a"), 3);
        // A forgotten gateway's slot is gone.
        changes.forget("a");
        assert!(!changes.pending("a"));
        dispatcher.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_run_takes_the_notifications_that_arrive_meanwhile() {
        let changes = Arc::new(Changes::new(Duration::from_millis(100)));
        let started = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let (s, g) = (started.clone(), gate.clone());
        let dispatcher = tokio::spawn(changes.clone().run(move |_| {
            let (s, g) = (s.clone(), g.clone());
            async move {
                s.fetch_add(1, Ordering::SeqCst);
                g.acquire().await.unwrap().forget();
            }
        }));
        changes.notify("a");
        settle().await;
        assert_eq!(started.load(Ordering::SeqCst), 1);
        // While the run hangs, more notifications arrive; no second run starts.
        for _ in 0..100 {
            changes.notify("a");
        }
        settle().await;
        assert_eq!(started.load(Ordering::SeqCst), 1);
        gate.add_permits(1);
        settle().await;
        assert_eq!(started.load(Ordering::SeqCst), 1, "not before the interval");
        tokio::time::advance(Duration::from_millis(100)).await;
        settle().await;
        assert_eq!(started.load(Ordering::SeqCst), 2, "one run for all of them");
        gate.add_permits(1);
        tokio::time::advance(Duration::from_secs(5)).await;
        settle().await;
        assert_eq!(started.load(Ordering::SeqCst), 2);
        dispatcher.abort();
    }
}
