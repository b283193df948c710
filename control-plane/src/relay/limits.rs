//! What the relay holds, and for how long: caps on open streams per client and in total,
//! idle timeouts, and the size of what it buffers.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::error::{Held, RelayError};
use crate::serving::Timeouts;

/// Default of [`Limits::max_sse_sessions`].
pub const DEFAULT_MAX_SSE_SESSIONS: usize = 10_000;
/// Default of [`Limits::max_sse_sessions_per_client`].
pub const DEFAULT_MAX_SSE_SESSIONS_PER_CLIENT: usize = 64;
/// Default of [`Limits::max_merged_streams`].
pub const DEFAULT_MAX_MERGED_STREAMS: usize = 1_000;
/// Default of [`Limits::max_merged_streams_per_client`].
pub const DEFAULT_MAX_MERGED_STREAMS_PER_CLIENT: usize = 16;
/// Default of [`Limits::max_listen_streams`].
pub const DEFAULT_MAX_LISTEN_STREAMS: usize = 1_000;
/// Default of [`Limits::max_listen_streams_per_client`].
pub const DEFAULT_MAX_LISTEN_STREAMS_PER_CLIENT: usize = 16;
/// Default of [`Limits::listen_idle_timeout`]: 30 minutes.
pub const DEFAULT_LISTEN_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Default of [`Limits::sse_idle_timeout`]: 30 minutes.
pub const DEFAULT_SSE_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Default of [`Limits::merged_idle_timeout`]: 30 minutes.
pub const DEFAULT_MERGED_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Default of [`Limits::max_answer_bytes`]: 16 MiB.
pub const DEFAULT_MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;
/// Default header-read timeout of the relay's listener: longer than the 50 s for which
/// Envoy keeps an idle upstream connection, so Envoy closes an idle connection to the relay
/// first instead of racing a request into one the relay is closing.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The relay's limits (settings; the defaults are the `DEFAULT_*` constants).
///
/// A client is the address in [`mcpgw_core::edge::CLIENT_ADDRESS_HEADER`] (an IPv6 client
/// by its /64, which one host usually holds whole); requests without it share one bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Open legacy SSE sessions, in total; more are refused (503).
    pub max_sse_sessions: usize,
    /// Open legacy SSE sessions of one client; more are refused (429).
    pub max_sse_sessions_per_client: usize,
    /// Open merged GET streams, in total; more are refused (503).
    pub max_merged_streams: usize,
    /// Open merged GET streams of one client; more are refused (429).
    pub max_merged_streams_per_client: usize,
    /// Open `subscriptions/listen` streams, in total; more are refused (503).
    pub max_listen_streams: usize,
    /// Open `subscriptions/listen` streams of one client; more are refused (429).
    pub max_listen_streams_per_client: usize,
    /// A listen stream that relayed no notification for this long is closed gracefully
    /// (its result as the last frame; the client listens again if it still cares).
    pub listen_idle_timeout: Duration,
    /// A legacy SSE session that received no message and sent nothing (keepalive comments
    /// aside) for this long, and has no message being relayed, is closed.
    pub sse_idle_timeout: Duration,
    /// A merged stream that relayed no event for this long is closed (the client opens a
    /// new GET stream, as after any end of stream).
    pub merged_idle_timeout: Duration,
    /// Largest answer of the edge the relay reads whole (a JSON response to a relayed
    /// message), and largest line and event of an edge event stream it relays.
    pub max_answer_bytes: usize,
    /// Header-read, request-body and TLS-handshake timeouts of the relay's listener.
    pub http: Timeouts,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sse_sessions: DEFAULT_MAX_SSE_SESSIONS,
            max_sse_sessions_per_client: DEFAULT_MAX_SSE_SESSIONS_PER_CLIENT,
            max_merged_streams: DEFAULT_MAX_MERGED_STREAMS,
            max_merged_streams_per_client: DEFAULT_MAX_MERGED_STREAMS_PER_CLIENT,
            max_listen_streams: DEFAULT_MAX_LISTEN_STREAMS,
            max_listen_streams_per_client: DEFAULT_MAX_LISTEN_STREAMS_PER_CLIENT,
            listen_idle_timeout: DEFAULT_LISTEN_IDLE_TIMEOUT,
            sse_idle_timeout: DEFAULT_SSE_IDLE_TIMEOUT,
            merged_idle_timeout: DEFAULT_MERGED_IDLE_TIMEOUT,
            max_answer_bytes: DEFAULT_MAX_ANSWER_BYTES,
            http: Timeouts {
                header_read: DEFAULT_HEADER_READ_TIMEOUT,
                ..Timeouts::default()
            },
        }
    }
}

impl Limits {
    /// The limits of the event streams the relay reads from the edge.
    pub(super) fn sse(&self) -> crate::sse::Limits {
        crate::sse::Limits {
            max_line_bytes: self.max_answer_bytes,
            max_event_bytes: self.max_answer_bytes,
        }
    }
}

/// The bucket a client's streams are counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum ClientKey {
    /// An IPv4 address, or the /64 of an IPv6 one.
    Addr(IpAddr),
    /// Requests that did not say who the client is.
    Shared,
}

impl ClientKey {
    /// The bucket of `ip` (an IPv4-mapped IPv6 address counts as the IPv4 one).
    pub(super) fn of(ip: IpAddr) -> ClientKey {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                ClientKey::Addr(IpAddr::V6(prefix.into()))
            }
            v4 => ClientKey::Addr(v4),
        }
    }
}

/// Counts open streams of one kind, per client and in total.
///
/// One mutex over a small map: it is taken twice per stream (open and close), never across
/// an await, and the map only holds clients with a stream open, so its size is bounded by
/// the total cap.
#[derive(Debug)]
pub(super) struct Caps {
    held: Held,
    total: usize,
    per_client: usize,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_client: HashMap<ClientKey, usize>,
}

impl Caps {
    pub(super) fn new(held: Held, total: usize, per_client: usize) -> Caps {
        Caps {
            held,
            total,
            per_client,
            open: Mutex::new(Open::default()),
        }
    }

    /// Counts one more stream of `client`, or refuses it: 429 over the client's cap, 503
    /// over the total.
    pub(super) fn acquire(self: &Arc<Self>, client: ClientKey) -> Result<Permit, RelayError> {
        let mut open = self.open.lock().map_err(|_| RelayError::Full {
            held: self.held,
            limit: self.total,
        })?;
        let mine = open.by_client.get(&client).copied().unwrap_or(0);
        if mine >= self.per_client {
            return Err(RelayError::ClientLimit {
                held: self.held,
                limit: self.per_client,
            });
        }
        if open.total >= self.total {
            return Err(RelayError::Full {
                held: self.held,
                limit: self.total,
            });
        }
        open.total += 1;
        open.by_client.insert(client, mine + 1);
        Ok(Permit {
            caps: self.clone(),
            client,
        })
    }

    #[cfg(test)]
    fn held_by(&self, client: ClientKey) -> usize {
        self.open
            .lock()
            .map(|o| o.by_client.get(&client).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

/// One counted stream; dropping it uncounts it.
#[derive(Debug)]
pub(super) struct Permit {
    caps: Arc<Caps>,
    client: ClientKey,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Ok(mut open) = self.caps.open.lock() {
            open.total = open.total.saturating_sub(1);
            if let Some(n) = open.by_client.get_mut(&self.client) {
                *n -= 1;
                if *n == 0 {
                    open.by_client.remove(&self.client);
                }
            }
        }
    }
}

/// When a stream last did something that counts as activity.
#[derive(Debug)]
pub(super) struct Activity {
    start: Instant,
    /// Milliseconds from `start` to the last activity.
    last: AtomicU64,
}

impl Activity {
    pub(super) fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    /// Records activity now.
    pub(super) fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.fetch_max(ms, Ordering::Relaxed);
    }

    /// Resolves once there has been no activity for `idle`.
    pub(super) async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_per_client_and_in_total_and_release_on_drop() {
        let caps = Arc::new(Caps::new(Held::SseSessions, 3, 2));
        let a = ClientKey::of("10.0.0.1".parse().unwrap());
        let b = ClientKey::of("10.0.0.2".parse().unwrap());
        let a1 = caps.acquire(a).unwrap();
        let _a2 = caps.acquire(a).unwrap();
        assert_eq!(
            caps.acquire(a).unwrap_err(),
            RelayError::ClientLimit {
                held: Held::SseSessions,
                limit: 2
            }
        );
        let _b1 = caps.acquire(b).unwrap();
        assert_eq!(
            caps.acquire(ClientKey::Shared).unwrap_err(),
            RelayError::Full {
                held: Held::SseSessions,
                limit: 3
            }
        );
        drop(a1);
        assert_eq!(caps.held_by(a), 1);
        let _shared = caps.acquire(ClientKey::Shared).unwrap();
        assert_eq!(caps.held_by(ClientKey::Shared), 1);
    }

    #[test]
    fn an_ipv6_client_is_its_64_and_a_mapped_ipv4_client_is_the_ipv4_one() {
        let key = |s: &str| ClientKey::of(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:bbbb::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:10.0.0.1"), key("10.0.0.1"));
        assert_ne!(key("10.0.0.1"), key("10.0.0.2"));
    }

    #[tokio::test(start_paused = true)]
    async fn activity_postpones_the_idle_deadline() {
        let idle = Duration::from_secs(60);
        let activity = Arc::new(Activity::new());
        let start = Instant::now();
        let watch = {
            let activity = activity.clone();
            tokio::spawn(async move {
                activity.idle_for(idle).await;
                Instant::now()
            })
        };
        tokio::time::sleep(Duration::from_secs(40)).await;
        activity.touch();
        tokio::time::sleep(Duration::from_secs(40)).await;
        activity.touch();
        let fired = watch.await.unwrap();
        // Idle from the last touch (at 80 s) for 60 s.
        assert_eq!(fired - start, Duration::from_secs(140));
    }
}
