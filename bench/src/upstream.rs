//! The upstream every variant forwards to: a minimal hyper HTTP/1.1 server on its own
//! thread that reads the request body and answers a canned JSON-RPC `tools/call` result.
//! It stands in for an MCP server that is never the bottleneck.

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

/// The body every request gets back.
pub const RESULT_BODY: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"pong"}],"isError":false}}"#;

/// A running upstream; stops when dropped.
pub struct Upstream {
    addr: SocketAddr,
    served: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    /// Binds 127.0.0.1 on an ephemeral port and serves on a new thread.
    pub fn start() -> anyhow::Result<Upstream> {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("upstream: bind 127.0.0.1:0")?;
        listener
            .set_nonblocking(true)
            .context("upstream: set_nonblocking")?;
        let addr = listener.local_addr().context("upstream: local_addr")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("upstream: tokio runtime")?;
        let served = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let counter = served.clone();
        let thread = std::thread::Builder::new()
            .name("bench-upstream".into())
            .spawn(move || runtime.block_on(serve(listener, counter, stopped)))
            .context("upstream: spawn thread")?;
        Ok(Upstream {
            addr,
            served,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Address the upstream listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    served: Arc<AtomicU64>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("upstream: cannot register listener: {e}");
            return;
        }
    };
    let result_body = Bytes::from_static(RESULT_BODY.as_bytes());
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    eprintln!("upstream: accept failed: {e}");
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let served = served.clone();
        let result_body = result_body.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let served = served.clone();
                let result_body = result_body.clone();
                async move {
                    // Read the whole request, as a real server must before answering.
                    let _ = req.into_body().collect().await;
                    served.fetch_add(1, Ordering::Relaxed);
                    let mut resp = Response::new(Full::new(result_body));
                    resp.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    Ok::<_, Infallible>(resp)
                }
            });
            // Connection errors (client went away mid-request) end only that connection.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
