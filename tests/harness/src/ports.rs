//! Ephemeral ports on 127.0.0.1, and waiting for something to come up.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// How often [`wait_until`] polls.
pub const POLL: Duration = Duration::from_millis(50);

/// A port that was free a moment ago (bind 127.0.0.1:0, read it, release it).
///
/// Only for peers that cannot report the port they bound themselves; callers retry
/// when the peer then fails with "address in use".
pub fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Whether something accepts TCP connections on `addr`.
pub fn accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Polls `ready` every [`POLL`] until it yields `Some`, `timeout` passes, or `abort` says
/// why waiting is pointless (e.g. the process exited).
pub async fn wait_until<T, F, Fut>(
    timeout: Duration,
    abort: impl FnMut() -> Option<String>,
    ready: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    poll(POLL, timeout, abort, ready).await
}

/// [`wait_until`], polling every `every`.
pub async fn poll<T, F, Fut>(
    every: Duration,
    timeout: Duration,
    mut abort: impl FnMut() -> Option<String>,
    mut ready: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = ready().await {
            return Ok(v);
        }
        if let Some(why) = abort() {
            return Err(why);
        }
        if Instant::now() >= deadline {
            return Err(format!("not ready after {timeout:?}"));
        }
        tokio::time::sleep(every).await;
    }
}
