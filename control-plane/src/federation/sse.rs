//! Legacy HTTP+SSE client transport (MCP 2024-11-05), which rmcp 3.11 no longer ships.
//!
//! `GET url` opens an event stream whose first `endpoint` event names the URL that
//! messages are POSTed to; responses and notifications arrive as `message` events. The
//! stream is read by a task feeding a channel; rmcp gets a (sink, stream) pair. The event
//! stream is parsed by [`crate::sse`], whose size limits end a stream that exceeds them.

use std::pin::Pin;
use std::time::Duration;

use futures::{Sink, Stream, StreamExt as _};
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use tokio::sync::mpsc;

use super::FederationError;
use crate::sse::{Event, Parser};

/// Messages to the upstream.
pub type SseSink = Pin<Box<dyn Sink<ClientJsonRpcMessage, Error = std::io::Error> + Send>>;
/// Messages from the upstream.
pub type SseStream = Pin<Box<dyn Stream<Item = ServerJsonRpcMessage> + Send>>;

fn io(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Opens the event stream, waits (under `timeout`) for the endpoint, and returns the
/// transport halves.
pub(crate) async fn connect(
    client: reqwest::Client,
    url: &str,
    timeout: Duration,
) -> Result<(SseSink, SseStream), FederationError> {
    let fail = |reason: String| FederationError::Upstream {
        step: "sse connect",
        reason,
    };
    let base = url::Url::parse(url).map_err(|e| fail(e.to_string()))?;
    let resp = tokio::time::timeout(
        timeout,
        client
            .get(base.clone())
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send(),
    )
    .await
    .map_err(|_| FederationError::Timeout {
        step: "sse connect",
        timeout,
    })?
    .map_err(|e| fail(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(fail(format!("HTTP {}", resp.status())));
    }
    let mut body = resp.bytes_stream();
    let mut parser = Parser::default();
    let mut pending: Vec<Event> = Vec::new();
    let endpoint = tokio::time::timeout(timeout, async {
        loop {
            let chunk = body
                .next()
                .await
                .ok_or_else(|| fail("stream ended before the endpoint event".into()))?
                .map_err(|e| fail(e.to_string()))?;
            let events = parser
                .feed(&chunk)
                .map_err(|e| fail(format!("before the endpoint event: {e}")))?;
            for ev in events {
                if ev.event == "endpoint" {
                    return base
                        .join(ev.data.trim())
                        .map_err(|e| fail(format!("bad endpoint: {e}")));
                }
                pending.push(ev);
            }
        }
    })
    .await
    .map_err(|_| FederationError::Timeout {
        step: "sse endpoint",
        timeout,
    })??;
    if endpoint.origin() != base.origin() {
        // The endpoint must not send our credentials elsewhere.
        return Err(fail(format!(
            "endpoint {endpoint} is not on the upstream's origin"
        )));
    }
    let (tx, rx) = mpsc::channel::<ServerJsonRpcMessage>(64);
    tokio::spawn(async move {
        let deliver = |ev: Event| serde_json::from_str::<ServerJsonRpcMessage>(&ev.data).ok();
        for ev in pending {
            if let Some(m) = (ev.event == "message").then(|| deliver(ev)).flatten()
                && tx.send(m).await.is_err()
            {
                return;
            }
        }
        while let Some(Ok(chunk)) = body.next().await {
            let events = match parser.feed(&chunk) {
                Ok(events) => events,
                Err(e) => {
                    tracing::warn!(error = %e, "closing a legacy SSE upstream stream");
                    return;
                }
            };
            for ev in events {
                if ev.event != "message" {
                    continue;
                }
                match deliver(ev) {
                    Some(m) => {
                        if tx.send(m).await.is_err() {
                            return;
                        }
                    }
                    None => tracing::debug!("ignoring an SSE message that is not JSON-RPC"),
                }
            }
        }
        // Dropping `tx` ends the stream: rmcp sees the transport closed.
    });
    let stream: SseStream = Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|m| (m, rx))
    }));
    let sink: SseSink = Box::pin(futures::sink::unfold(
        (client, endpoint),
        move |(client, endpoint), msg: ClientJsonRpcMessage| async move {
            let resp =
                tokio::time::timeout(timeout, client.post(endpoint.clone()).json(&msg).send())
                    .await
                    .map_err(|_| io("POST timed out"))?
                    .map_err(io)?;
            if !resp.status().is_success() {
                return Err(io(format!("POST {endpoint}: HTTP {}", resp.status())));
            }
            Ok((client, endpoint))
        },
    ));
    Ok((sink, stream))
}
