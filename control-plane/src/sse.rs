//! Server-sent events (the WHATWG `text/event-stream` format): an incremental parser with
//! line and event size limits, and the framing of outgoing events. Used by the federation
//! client (legacy SSE upstreams) and the session relay.

/// Default of [`Limits::max_line_bytes`]: 16 MiB. A JSON-RPC message usually travels as one
/// `data:` line, so this is also the largest message a stream can carry in one line.
pub const DEFAULT_MAX_LINE_BYTES: usize = 16 * 1024 * 1024;
/// Default of [`Limits::max_event_bytes`]: 16 MiB.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// How much of a stream the parser holds at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest line (without its terminator).
    pub max_line_bytes: usize,
    /// Largest event: its `data:` lines joined.
    pub max_event_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
        }
    }
}

/// Why a stream cannot be parsed further.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A line is longer than [`Limits::max_line_bytes`].
    #[error("an event-stream line exceeds {limit} bytes")]
    LineTooLong {
        /// The limit.
        limit: usize,
    },
    /// An event's data is larger than [`Limits::max_event_bytes`].
    #[error("an event exceeds {limit} bytes")]
    EventTooLarge {
        /// The limit.
        limit: usize,
    },
}

impl SseError {
    /// Low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            SseError::LineTooLong { .. } => "sse_line_too_long",
            SseError::EventTooLarge { .. } => "sse_event_too_large",
        }
    }
}

/// One server-sent event.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field (`message` when the stream named none).
    pub event: String,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// Incremental SSE parser (WHATWG event-stream format, `\n`, `\r\n` or `\r` line ends).
///
/// It buffers bytes and decodes whole lines: a chunk boundary may fall inside a
/// multi-byte UTF-8 character, but never inside a line terminator's byte (CR and LF are
/// ASCII and cannot occur within a multi-byte sequence).
///
/// Work is linear in the bytes fed: the search for a line end resumes where the last one
/// stopped (`searched`) instead of rescanning the partial line on every chunk, and the
/// bytes of consumed lines are dropped once per feed. A peer that sends one endless line
/// costs at most [`Limits::max_line_bytes`] of memory before the parser gives up.
#[derive(Debug, Default)]
pub struct Parser {
    limits: Limits,
    /// Bytes of a line not yet terminated.
    buf: Vec<u8>,
    /// The last byte fed was a CR that ended a line: an LF that comes next is its pair.
    skip_lf: bool,
    /// How much of `buf` is known to hold no line end.
    searched: usize,
    current: Event,
    has_data: bool,
    /// Set once a limit was exceeded: the stream is not parsed further.
    failed: Option<SseError>,
    scanned: u64,
}

impl Parser {
    /// A parser enforcing `limits`.
    pub fn new(limits: Limits) -> Parser {
        Parser {
            limits,
            ..Parser::default()
        }
    }

    /// Bytes examined so far while looking for line ends (the parser's work, for tests).
    pub fn scanned(&self) -> u64 {
        self.scanned
    }

    /// Feeds bytes; returns the events completed by them, or why the stream cannot be
    /// parsed further (then every later call fails the same way).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Event>, SseError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.parse(chunk);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
            self.buf = Vec::new();
            self.current = Event::default();
        }
        result
    }

    fn parse(&mut self, chunk: &[u8]) -> Result<Vec<Event>, SseError> {
        let mut chunk = chunk;
        if self.skip_lf && !chunk.is_empty() {
            self.skip_lf = false;
            chunk = chunk.strip_prefix(b"\n").unwrap_or(chunk);
        }
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        // Start of the current line, and where the search for its end resumes.
        let mut start = 0;
        let mut from = self.searched;
        loop {
            let rest = self.buf.get(from..).unwrap_or_default();
            let Some(rel) = rest.iter().position(|b| *b == b'\n' || *b == b'\r') else {
                self.scanned += rest.len() as u64;
                from = self.buf.len();
                break;
            };
            self.scanned += rel as u64 + 1;
            let pos = from + rel;
            let skip = match (self.buf.get(pos), self.buf.get(pos + 1)) {
                (Some(b'\r'), Some(b'\n')) => 2,
                // A '\r' at the end ends its line now (an event it completes is not held
                // until more bytes come: a stream may pause there for long); if the next
                // chunk starts with '\n', that is the rest of a "\r\n".
                (Some(b'\r'), None) => {
                    self.skip_lf = true;
                    1
                }
                _ => 1,
            };
            if pos - start > self.limits.max_line_bytes {
                return Err(SseError::LineTooLong {
                    limit: self.limits.max_line_bytes,
                });
            }
            let line =
                String::from_utf8_lossy(self.buf.get(start..pos).unwrap_or_default()).into_owned();
            self.line(&line, &mut out)?;
            start = pos + skip;
            from = start;
        }
        self.buf.drain(..start);
        self.searched = from - start;
        if self.searched > self.limits.max_line_bytes {
            return Err(SseError::LineTooLong {
                limit: self.limits.max_line_bytes,
            });
        }
        Ok(out)
    }

    fn line(&mut self, line: &str, out: &mut Vec<Event>) -> Result<(), SseError> {
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
            return Ok(());
        }
        if line.starts_with(':') {
            return Ok(());
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.current.event = value.to_owned(),
            "data" => {
                let separator = usize::from(self.has_data);
                if self.current.data.len() + separator + value.len() > self.limits.max_event_bytes {
                    return Err(SseError::EventTooLarge {
                        limit: self.limits.max_event_bytes,
                    });
                }
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
        Ok(())
    }
}

/// One server-sent event on the wire; multi-line data becomes several `data:` lines (a
/// line end inside `data` can therefore not end the event early or inject a field).
pub fn frame(event: Option<&str>, data: &str) -> String {
    let mut out = String::with_capacity(data.len() + 32);
    if let Some(event) = event {
        out.push_str("event: ");
        out.push_str(event);
        out.push('\n');
    }
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line.strip_suffix('\r').unwrap_or(line));
        out.push('\n');
    }
    out.push('\n');
    out
}

/// A comment frame: keeps an idle stream's connections from timing out.
pub const KEEPALIVE_FRAME: &[u8] = b": keepalive\n\n";

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
            ("lone cr", &["data: z\r\r", ":"], &[("message", "z")]),
            (
                "crlf split after the blank line's cr",
                &["data: w\r\n\r", "\ndata: v\r\n\r\n"],
                &[("message", "w"), ("message", "v")],
            ),
            (
                "a crlf split by an empty chunk",
                &["data: u\r", "", "\n", "\n"],
                &[("message", "u")],
            ),
            (
                "comment and multi-line data",
                &[": ping\ndata: a\ndata: b\n\n"],
                &[("message", "a\nb")],
            ),
            ("no data, no event", &["event: x\n\n"], &[]),
            (
                "two events in one chunk, one split",
                &["data: 1\n\ndata: ", "2\n\n"],
                &[("message", "1"), ("message", "2")],
            ),
        ];
        for (name, chunks, want) in cases {
            let mut p = Parser::default();
            let got: Vec<(String, String)> = chunks
                .iter()
                .flat_map(|c| p.feed(c.as_bytes()).unwrap())
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
    fn an_event_ending_in_crlf_is_complete_without_the_next_chunk() {
        let mut p = Parser::default();
        // As a proxy may pass it: the blank line's LF comes with the next event.
        let first = p.feed(b"data: a\r\n\r").unwrap();
        assert_eq!(first.len(), 1, "the event is not held for its last LF");
        let next = p.feed(b"\ndata: b\r\n\r").unwrap();
        assert_eq!(
            next.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
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
                .flat_map(|c| p.feed(c).unwrap())
                .map(|e| e.data)
                .collect();
            assert_eq!(got, vec!["{\"city\":\"Orléans\"}".to_owned()], "{name}");
        }
    }

    #[test]
    fn a_huge_line_fed_in_small_chunks_is_scanned_once() {
        let total = 2 * 1024 * 1024;
        let line = format!("data: {}\n\n", "x".repeat(total));
        let mut p = Parser::default();
        let mut events = Vec::new();
        for chunk in line.as_bytes().chunks(512) {
            events.extend(p.feed(chunk).unwrap());
        }
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data.len(), total);
        let fed = line.len() as u64;
        assert!(
            p.scanned() <= 2 * fed,
            "scanned {} bytes to parse {fed}: line ends are searched for again in bytes already searched",
            p.scanned()
        );
    }

    #[test]
    fn lines_and_events_over_the_limits_end_the_stream() {
        let limits = Limits {
            max_line_bytes: 16,
            max_event_bytes: 24,
        };
        // Name, chunks, the error.
        let cases: &[(&str, &[&str], SseError)] = &[
            (
                "a terminated line",
                &["data: 0123456789abcdef\n"],
                SseError::LineTooLong { limit: 16 },
            ),
            (
                "an endless line, in chunks",
                &["data: 0123", "456789", "abcdef"],
                SseError::LineTooLong { limit: 16 },
            ),
            (
                "an event of many small lines",
                &["data: 0123456789\ndata: 0123456789\ndata: 0123\n"],
                SseError::EventTooLarge { limit: 24 },
            ),
        ];
        for (name, chunks, want) in cases {
            let mut p = Parser::new(limits);
            let got = chunks.iter().find_map(|c| p.feed(c.as_bytes()).err());
            assert_eq!(got.as_ref(), Some(want), "{name}");
            // The parser stays failed: it never resynchronises in the middle of a line.
            assert_eq!(
                p.feed(b"\n\ndata: x\n\n").err().as_ref(),
                Some(want),
                "{name}"
            );
        }
        // At the limits exactly, all is well.
        let mut p = Parser::new(limits);
        let got = p
            .feed(b"data: 0123456789\ndata: 0123456789\ndata: 12\n\n")
            .unwrap();
        assert_eq!(got[0].data.len(), 24);
    }

    #[test]
    fn frames_split_multi_line_data() {
        assert_eq!(
            frame(Some("message"), "{\"a\":\n1}"),
            "event: message\ndata: {\"a\":\ndata: 1}\n\n"
        );
        assert_eq!(
            frame(Some("endpoint"), "/servers/s/message?session_id=x"),
            "event: endpoint\ndata: /servers/s/message?session_id=x\n\n"
        );
        // A frame parses back to what was framed.
        let mut p = Parser::default();
        let got = p.feed(frame(None, "a\r\nb\nc").as_bytes()).unwrap();
        assert_eq!(got[0].data, "a\nb\nc");
    }
}
