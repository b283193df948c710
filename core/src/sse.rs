//! Observing a `text/event-stream` response frame by frame, without buffering it.
//!
//! [`EventStream`] splits the byte stream into lines (LF, CRLF or CR, across chunk
//! boundaries) and feeds the payload of each `data:` line straight into a
//! [`MessageParser`] (lines of one event are joined by `\n`, which is JSON whitespace),
//! so no event is ever held in memory. A blank line ends the event and yields the
//! JSON-RPC messages it carried. Other fields (`event`, `id`, `retry`, comments) are skipped.

use crate::jsonrpc::Message;
use crate::jsonrpc::stream::{Body, MessageParser, Options};

/// Where the decoder is within a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// At the start of a line.
    Start,
    /// Reading the field name (up to 5 bytes are enough to recognise `data:`).
    Field { len: u8, data_so_far: bool },
    /// After `data:`: the optional single leading space.
    DataSpace,
    /// In a `data` value: bytes go to the parser.
    Data,
    /// In a line that is not `data`.
    Skip,
}

/// The outcome of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The event carried these messages.
    Messages(Vec<Message>),
    /// The event's data was not a valid JSON-RPC message or batch.
    Malformed,
}

/// An incremental SSE decoder that parses the JSON-RPC messages in `data` fields.
#[derive(Debug)]
pub struct EventStream {
    line: Line,
    after_cr: bool,
    parser: Option<MessageParser>,
    data_lines: u32,
}

impl Default for EventStream {
    fn default() -> Self {
        EventStream {
            line: Line::Start,
            after_cr: false,
            parser: None,
            data_lines: 0,
        }
    }
}

impl EventStream {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds a chunk; calls `on_event` for every event the chunk completes.
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(Event)) {
        let mut i = 0;
        while let Some(&b) = chunk.get(i) {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    i += 1;
                    continue;
                }
            }
            if self.line == Line::Data && b != b'\n' && b != b'\r' {
                // Hand the run of data bytes up to the end of line to the parser at once.
                let rest = chunk.get(i..).unwrap_or_default();
                let n = rest
                    .iter()
                    .position(|&c| c == b'\n' || c == b'\r')
                    .unwrap_or(rest.len());
                if let (Some(p), Some(run)) = (self.parser.as_mut(), rest.get(..n)) {
                    // A parse error is sticky; it is reported when the event ends.
                    let _ = p.feed(run);
                }
                i += n;
                continue;
            }
            i += 1;
            if b == b'\n' || b == b'\r' {
                self.after_cr = b == b'\r';
                self.end_line(&mut on_event);
                continue;
            }
            self.line = match self.line {
                Line::Start | Line::Field { .. } => {
                    let (len, so_far) = match self.line {
                        Line::Field { len, data_so_far } => (len, data_so_far),
                        _ => (0, true),
                    };
                    if len == 4 && so_far && b == b':' {
                        Line::DataSpace
                    } else {
                        let expected = b"data".get(usize::from(len)).copied();
                        Line::Field {
                            len: len.saturating_add(1).min(5),
                            data_so_far: so_far && expected == Some(b),
                        }
                    }
                }
                Line::DataSpace => {
                    self.start_data_line();
                    if b != b' '
                        && let Some(p) = self.parser.as_mut()
                    {
                        let _ = p.feed(&[b]);
                    }
                    Line::Data
                }
                Line::Data | Line::Skip => Line::Skip,
            };
            if let Line::Field { len: 5, .. } = self.line {
                self.line = Line::Skip;
            }
        }
    }

    fn start_data_line(&mut self) {
        let parser = self.parser.get_or_insert_with(|| {
            MessageParser::new(Options {
                skim: true,
                ..Options::default()
            })
        });
        if self.data_lines > 0 {
            let _ = parser.feed(b"\n");
        }
        self.data_lines += 1;
    }

    fn end_line(&mut self, on_event: &mut impl FnMut(Event)) {
        match self.line {
            Line::Start => self.dispatch(on_event),
            // `data` with no colon, or `data:` with nothing after it: an empty data line.
            Line::Field {
                len: 4,
                data_so_far: true,
            }
            | Line::DataSpace => self.start_data_line(),
            _ => {}
        }
        self.line = Line::Start;
    }

    fn dispatch(&mut self, on_event: &mut impl FnMut(Event)) {
        self.data_lines = 0;
        let Some(parser) = self.parser.take() else {
            return;
        };
        match parser.finish() {
            Ok(Body::Single(m)) => on_event(Event::Messages(vec![m])),
            Ok(Body::Batch(ms)) => on_event(Event::Messages(ms)),
            Err(_) => on_event(Event::Malformed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonrpc::Kind;

    fn events(chunks: &[&[u8]]) -> Vec<Event> {
        let mut out = Vec::new();
        let mut s = EventStream::new();
        for c in chunks {
            s.feed(c, |e| out.push(e));
        }
        out
    }

    fn kinds(evs: &[Event]) -> Vec<Vec<Kind>> {
        evs.iter()
            .map(|e| match e {
                Event::Messages(ms) => ms.iter().map(|m| m.kind).collect(),
                Event::Malformed => vec![],
            })
            .collect()
    }

    const STREAM: &[u8] = b": comment\nevent: message\nid: 1\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":1}}\n\nid: 2\r\ndata: {\"jsonrpc\":\"2.0\",\r\ndata:  \"id\":1,\"result\":{\"content\":[]}}\r\n\r\ndata:{\"jsonrpc\":\"2.0\",\"id\":2,\"error\":{\"code\":-32601,\"message\":\"no\"}}\r\rdata: nope\n\n";

    #[test]
    fn parses_events_in_any_chunking() {
        let whole = events(&[STREAM]);
        assert_eq!(
            kinds(&whole),
            vec![
                vec![Kind::Notification],
                vec![Kind::Result],
                vec![Kind::Error],
                vec![]
            ]
        );
        assert_eq!(whole[3], Event::Malformed);
        match &whole[2] {
            Event::Messages(ms) => assert_eq!(ms[0].error_code, Some(-32601)),
            e => panic!("{e:?}"),
        }
        for at in 0..=STREAM.len() {
            let (a, b) = STREAM.split_at(at);
            assert_eq!(events(&[a, b]), whole, "split at {at}");
        }
        let bytes: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(events(&bytes), whole);
    }

    #[test]
    fn fields_that_only_look_like_data_are_skipped() {
        let evs = events(&[b"datax: {}\ndat: 1\ndata\n\n"]);
        // `data` alone is an empty data line: the event's data is "" (not JSON).
        assert_eq!(evs, vec![Event::Malformed]);
        assert!(events(&[b"event: x\n\n", b"id: 3\n\n"]).is_empty());
    }

    #[test]
    fn unterminated_event_is_not_dispatched() {
        assert!(events(&[b"data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n"]).is_empty());
    }
}
