//! Legacy HTTP+SSE client transport (MCP 2024-11-05), which rmcp 3.11 no longer ships.
//!
//! `GET url` opens an event stream whose first `endpoint` event names the URL that
//! messages are POSTed to; responses and notifications arrive as `message` events. The
//! stream is read by a task feeding a channel; rmcp gets a (sink, stream) pair.

use std::pin::Pin;
use std::time::Duration;

use futures::{Sink, Stream, StreamExt as _};
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use tokio::sync::mpsc;

use super::FederationError;

/// Messages to the upstream.
pub type SseSink = Pin<Box<dyn Sink<ClientJsonRpcMessage, Error = std::io::Error> + Send>>;
/// Messages from the upstream.
pub type SseStream = Pin<Box<dyn Stream<Item = ServerJsonRpcMessage> + Send>>;

/// One server-sent event.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Event {
    pub(crate) event: String,
    pub(crate) data: String,
}

/// Incremental SSE parser (WHATWG event-stream format, `\n`, `\r\n` or `\r` line ends).
///
/// It buffers bytes and decodes whole lines: a chunk boundary may fall inside a
/// multi-byte UTF-8 character, but never inside a line terminator's byte (CR and LF are
/// ASCII and cannot occur within a multi-byte sequence).
#[derive(Debug, Default)]
pub(crate) struct Parser {
    buf: Vec<u8>,
    current: Event,
    has_data: bool,
}

impl Parser {
    /// Feeds bytes; returns the events completed by them.
    pub(crate) fn feed(&mut self, chunk: &[u8]) -> Vec<Event> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(rel) = self.buf[start..]
            .iter()
            .position(|b| *b == b'\n' || *b == b'\r')
        {
            let pos = start + rel;
            let skip = match (self.buf[pos], self.buf.get(pos + 1)) {
                (b'\r', Some(b'\n')) => 2,
                // A lone '\r' at the end may be half of "\r\n": wait for more.
                (b'\r', None) => break,
                _ => 1,
            };
            let line = String::from_utf8_lossy(&self.buf[start..pos]).into_owned();
            start = pos + skip;
            self.line(&line, &mut out);
        }
        self.buf.drain(..start);
        out
    }

    fn line(&mut self, line: &str, out: &mut Vec<Event>) {
        if line.is_empty() {
            if self.has_data {
                let mut ev = std::mem::take(&mut self.current);
                if ev.event.is_empty() {
                    ev.event = "message".into();
                }
                out.push(ev);
            }
            self.current = Event::default();
            self.has_data = false;
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.current.event = value.to_owned(),
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
    }
}

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
            for ev in parser.feed(&chunk) {
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
            for ev in parser.feed(&chunk) {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Name, chunks fed, `(event, data)` wanted.
    type Case<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, &'a str)]);

    #[test]
    fn parser_handles_split_chunks_and_line_endings() {
        let cases: &[Case] = &[
            (
                "one event",
                &["event: endpoint\ndata: /m?s=1\n\n"],
                &[("endpoint", "/m?s=1")],
            ),
            (
                "split mid-line",
                &["event: mess", "age\ndata: {\"a\"", ":1}\n", "\n"],
                &[("message", "{\"a\":1}")],
            ),
            ("crlf", &["data: x\r\n\r\n"], &[("message", "x")]),
            (
                "cr split from lf",
                &["data: y\r", "\n\r\n"],
                &[("message", "y")],
            ),
            (
                "comment and multi-line data",
                &[": ping\ndata: a\ndata: b\n\n"],
                &[("message", "a\nb")],
            ),
            ("no data, no event", &["event: x\n\n"], &[]),
        ];
        for (name, chunks, want) in cases {
            let mut p = Parser::default();
            let got: Vec<(String, String)> = chunks
                .iter()
                .flat_map(|c| p.feed(c.as_bytes()))
                .map(|e| (e.event, e.data))
                .collect();
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(e, d)| (e.to_string(), d.to_string()))
                .collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn parser_keeps_multibyte_characters_split_across_chunks() {
        let whole = "data: {\"city\":\"Orléans\"}\n\n".as_bytes();
        let at = whole.iter().position(|b| *b == 0xC3).unwrap();
        let cases: &[(&str, &[&[u8]])] = &[
            ("whole", &[whole]),
            ("split inside é", &[&whole[..at + 1], &whole[at + 1..]]),
            ("byte by byte", &whole.chunks(1).collect::<Vec<_>>()),
        ];
        for (name, chunks) in cases {
            let mut p = Parser::default();
            let got: Vec<String> = chunks
                .iter()
                .flat_map(|c| p.feed(c))
                .map(|e| e.data)
                .collect();
            assert_eq!(got, vec!["{\"city\":\"Orléans\"}".to_owned()], "{name}");
        }
    }
}
