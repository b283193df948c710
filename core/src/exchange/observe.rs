//! Observing a response body as it streams through, to count its JSON-RPC results and
//! errors: a single JSON message, a batch, or an event stream.

use crate::jsonrpc::Kind;
use crate::jsonrpc::stream::{MessageParser, Options, Progress};
use crate::sniff::{BodyKind, sniff};
use crate::sse::{Event, EventStream};

use super::BodyNeed;

/// How the response body is observed.
pub(super) enum Observer {
    /// Not at all.
    None,
    /// Headers seen, no body byte yet: the body's first bytes decide (see `sniff`).
    Sniff,
    /// A single JSON message whose kind is known from its first `result` or `error` key:
    /// counted when the body ends, the rest not read.
    Settled(Kind),
    Json(MessageParser),
    Sse(EventStream),
}

impl Observer {
    pub(super) fn need(&self) -> BodyNeed {
        match self {
            Observer::None => BodyNeed::Nothing,
            Observer::Settled(_) => BodyNeed::End,
            Observer::Sniff | Observer::Json(_) | Observer::Sse(_) => BodyNeed::Bytes,
        }
    }

    /// Feeds a chunk; `count` is told the kind of every response message completed.
    pub(super) fn feed(&mut self, chunk: &[u8], end_of_stream: bool, count: &mut dyn FnMut(Kind)) {
        match self {
            Observer::None => return,
            // The kind is known: the rest of the body is not read, only its end awaited (a
            // response cut short is not counted).
            Observer::Settled(kind) => {
                if end_of_stream {
                    count(*kind);
                    *self = Observer::None;
                }
                return;
            }
            Observer::Sniff | Observer::Json(_) | Observer::Sse(_) => {}
        }
        if matches!(self, Observer::Sniff) {
            *self = match sniff(chunk) {
                Some(BodyKind::Json) => Observer::Json(MessageParser::new(Options {
                    // Responses are observed, not validated: what the counters need is read,
                    // the rest skimmed, and a single message is read only up to its
                    // `result` or `error`.
                    skim: true,
                    settle: true,
                    ..Options::default()
                })),
                Some(BodyKind::EventStream) => Observer::Sse(EventStream::new()),
                Some(BodyKind::Other) => Observer::None,
                // Only whitespace so far, which neither parser needs.
                None if end_of_stream => Observer::None,
                None => Observer::Sniff,
            };
        }
        match self {
            Observer::Json(parser) => match parser.feed(chunk) {
                // A malformed upstream body is not ours to fix; stop observing it.
                Err(_) => *self = Observer::None,
                Ok(Progress::Settled(kind)) if end_of_stream => {
                    count(kind);
                    *self = Observer::None;
                }
                Ok(Progress::Settled(kind)) => *self = Observer::Settled(kind),
                Ok(_) if end_of_stream => {
                    if let Observer::Json(parser) = std::mem::replace(self, Observer::None)
                        && let Ok(body) = parser.finish()
                    {
                        for msg in body.messages() {
                            count(msg.kind);
                        }
                    }
                }
                Ok(_) => {}
            },
            Observer::Sse(stream) => stream.feed(chunk, |event| {
                if let Event::Messages(ms) = event {
                    for msg in &ms {
                        count(msg.kind);
                    }
                }
            }),
            Observer::None | Observer::Sniff | Observer::Settled(_) => {}
        }
    }
}
