//! The upstream every variant forwards to: a minimal hyper HTTP/1.1 server on its own
//! thread that reads the request body and answers by what the request is — the catalog's
//! 100-tool page for `tools/list`, a canned result for a `tools/call` of `echo`. It stands
//! in for an MCP server that is never the bottleneck, and counts what it answered so the
//! run can prove which requests reached it (none of `edge-list`'s) and under which name.

use crate::catalog;
use crate::load::MCP_PATH;
use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

/// The body a `tools/call` of `echo` gets back.
pub const RESULT_BODY: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"pong"}],"isError":false}}"#;

/// How many leading body bytes the upstream looks at to tell requests apart. The client
/// writes the envelope (method, id, `params.name`) first, as MCP clients do, so it is
/// always in here; searching only the head keeps the cost per 1 KB call small and equal
/// for every variant.
const HEAD_BYTES: usize = 200;

/// How a `tools/call` of [`catalog::CALLED_TOOL`] starts its params.
const CALLED_TOOL_PARAMS: &[u8] = br#""params":{"name":"echo""#;

/// What the upstream makes of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `tools/list`: answered with [`catalog::list_page`].
    List,
    /// `tools/call` of the upstream's own tool name `echo`: answered with [`RESULT_BODY`].
    Call,
    /// Anything else (another path, method or tool name, e.g. a namespaced name the filter
    /// did not rewrite): answered with an HTTP 4xx, which fails the run.
    Refused,
}

/// Classifies a request by its path and the head of its body.
pub fn classify(path: &str, body: &[u8]) -> Kind {
    let head = body.get(..HEAD_BYTES).unwrap_or(body);
    let has = |needle: &[u8]| head.windows(needle.len()).any(|w| w == needle);
    if path != MCP_PATH {
        Kind::Refused
    } else if has(br#""method":"tools/list""#) {
        Kind::List
    } else if has(br#""method":"tools/call""#) && has(CALLED_TOOL_PARAMS) {
        Kind::Call
    } else {
        Kind::Refused
    }
}

/// Requests answered, by [`Kind`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Served {
    /// `tools/list` requests.
    pub lists: u64,
    /// `tools/call` requests of `echo`.
    pub calls: u64,
    /// Refused requests.
    pub refused: u64,
}

impl Served {
    /// Every request answered.
    pub fn total(&self) -> u64 {
        self.lists + self.calls + self.refused
    }

    /// What was answered since `before`.
    pub fn since(&self, before: &Served) -> Served {
        Served {
            lists: self.lists - before.lists,
            calls: self.calls - before.calls,
            refused: self.refused - before.refused,
        }
    }
}

#[derive(Default)]
struct Counters {
    lists: AtomicU64,
    calls: AtomicU64,
    refused: AtomicU64,
}

/// A running upstream; stops when dropped.
pub struct Upstream {
    addr: SocketAddr,
    counters: Arc<Counters>,
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
        let counters = Arc::new(Counters::default());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let shared = counters.clone();
        let thread = std::thread::Builder::new()
            .name("bench-upstream".into())
            .spawn(move || runtime.block_on(serve(listener, shared, stopped)))
            .context("upstream: spawn thread")?;
        Ok(Upstream {
            addr,
            counters,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Address the upstream listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests answered so far, by kind.
    pub fn served(&self) -> Served {
        Served {
            lists: self.counters.lists.load(Ordering::Relaxed),
            calls: self.counters.calls.load(Ordering::Relaxed),
            refused: self.counters.refused.load(Ordering::Relaxed),
        }
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

/// The canned answers, built once.
#[derive(Clone)]
struct Answers {
    result: Bytes,
    list: Bytes,
}

fn answer(kind: Kind, answers: &Answers) -> Response<Full<Bytes>> {
    let (status, body) = match kind {
        Kind::List => (StatusCode::OK, answers.list.clone()),
        Kind::Call => (StatusCode::OK, answers.result.clone()),
        // An MCP server would answer an unknown tool with a JSON-RPC error in a 200; a 4xx
        // makes the load generator stop the run instead of measuring wrong answers.
        Kind::Refused => (
            StatusCode::BAD_REQUEST,
            Bytes::from_static(
                br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"bench upstream: unknown path, method or tool"}}"#,
            ),
        ),
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

async fn serve(
    listener: std::net::TcpListener,
    counters: Arc<Counters>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("upstream: cannot register listener: {e}");
            return;
        }
    };
    let answers = Answers {
        result: Bytes::from_static(RESULT_BODY.as_bytes()),
        list: catalog::list_page(),
    };
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
        let counters = counters.clone();
        let answers = answers.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let counters = counters.clone();
                let answers = answers.clone();
                async move {
                    let path = req.uri().path().to_owned();
                    // Read the whole request, as a real server must before answering.
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let kind = classify(&path, &body);
                    let counter = match kind {
                        Kind::List => &counters.lists,
                        Kind::Call => &counters.calls,
                        Kind::Refused => &counters.refused,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    Ok::<_, Infallible>(answer(kind, &answers))
                }
            });
            // Connection errors (client went away mid-request) end only that connection.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::tools_call_body;

    #[test]
    fn requests_are_told_apart_by_path_method_and_tool() {
        let list = catalog::tools_list_body();
        let call = tools_call_body("echo");
        let namespaced = tools_call_body("bench__echo");
        let cases: [(&str, &str, &[u8], Kind); 6] = [
            ("list", "/mcp", &list, Kind::List),
            ("call of echo", "/mcp", &call, Kind::Call),
            ("call not renamed", "/mcp", &namespaced, Kind::Refused),
            (
                "path not rewritten",
                "/servers/bench/mcp",
                &call,
                Kind::Refused,
            ),
            (
                "list at the edge path",
                "/servers/bench/mcp",
                &list,
                Kind::Refused,
            ),
            ("not MCP", "/mcp", b"{}", Kind::Refused),
        ];
        for (name, path, body, kind) in cases {
            assert_eq!(classify(path, body), kind, "{name}");
        }
    }

    #[test]
    fn the_call_needle_names_the_called_tool() {
        assert_eq!(
            CALLED_TOOL_PARAMS,
            format!(r#""params":{{"name":"{}""#, catalog::CALLED_TOOL).as_bytes()
        );
    }

    #[test]
    fn served_counts_subtract() {
        let before = Served {
            lists: 1,
            calls: 2,
            refused: 0,
        };
        let after = Served {
            lists: 1,
            calls: 7,
            refused: 0,
        };
        assert_eq!(
            after.since(&before),
            Served {
                lists: 0,
                calls: 5,
                refused: 0
            }
        );
        assert_eq!(after.total(), 8);
    }
}
