//! A byte-level parser of server-sent events (the `text/event-stream` format of the WHATWG HTML
//! standard, "Server-sent events", section "Parsing an event stream").
//!
//! It is fed whatever byte chunks the network gives, cut anywhere (inside a line, inside a CRLF pair,
//! inside a multi-byte UTF-8 character), and yields complete events:
//!
//! - lines end with LF, CR or CRLF (a CR at the end of one chunk and an LF at the start of the next
//!   are one line end);
//! - a line starting with `:` is a comment (servers send `: keep-alive` or `: ping`): ignored;
//! - `field:value` with one optional space after the colon; a line without a colon is a field with an
//!   empty value; fields `data` (several lines join with `\n`), `event` and `id` are kept, `retry` and
//!   unknown fields are ignored;
//! - an empty line dispatches the event if it has data (an event with no data line is dropped, as the
//!   standard says); a UTF-8 byte order mark at the very start is skipped;
//! - [`SseParser::finish`] at the end of the stream dispatches a last event whose blank line never
//!   came (lenient: some servers close right after the last `data:` line).
//!
//! Errors are typed ([`SseError`]): a line that is not UTF-8, or a line or event above the size limit
//! (so a server that never sends a line end cannot exhaust memory). The OpenAI meaning of events
//! (`[DONE]`, JSON chunks, error events) is the caller's business (see [`super::openai`]).

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field, when given (OpenAI-compatible servers leave it out, some send `error`).
    pub event: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
    /// The last `id:` seen (it persists across events, as the standard says).
    pub id: Option<String>,
}

/// Why the byte stream is not a valid event stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("malformed SSE: line {line} is not valid UTF-8")]
    InvalidUtf8 { line: usize },
    #[error("malformed SSE: line {line} is longer than {limit} bytes")]
    LineTooLong { line: usize, limit: usize },
    #[error("malformed SSE: event ending at line {line} holds more than {limit} bytes of data")]
    EventTooLarge { line: usize, limit: usize },
}

/// Default limit of one line and of one event's data: 16 MiB.
pub const DEFAULT_MAX_BYTES: usize = 16 << 20;

/// The incremental parser; see the module documentation.
#[derive(Debug)]
pub struct SseParser {
    /// Bytes of the current, not yet terminated line.
    line: Vec<u8>,
    /// The previous chunk ended with CR: an LF starting the next chunk belongs to that line end.
    pending_cr: bool,
    /// Nothing has been seen yet (a BOM may come).
    at_start: bool,
    data: String,
    has_data: bool,
    event: Option<String>,
    id: Option<String>,
    /// Lines completed so far (1-based line numbers in errors).
    lines: usize,
    max_bytes: usize,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl SseParser {
    pub fn new() -> Self {
        Self::with_limit(DEFAULT_MAX_BYTES)
    }

    /// A parser whose lines and events may hold at most `max_bytes` bytes.
    pub fn with_limit(max_bytes: usize) -> Self {
        SseParser {
            line: Vec::new(),
            pending_cr: false,
            at_start: true,
            data: String::new(),
            has_data: false,
            event: None,
            id: None,
            lines: 0,
            max_bytes: max_bytes.max(1),
        }
    }

    /// Feed the next bytes of the stream; every event they complete is appended to `out`. After an
    /// error the current line is dropped and parsing can go on with the next bytes.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        let mut i = 0;
        if self.pending_cr {
            self.pending_cr = false;
            if bytes.first() == Some(&b'\n') {
                i = 1;
            }
        }
        while i < bytes.len() {
            let rest = &bytes[i..];
            match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
                None => {
                    self.push_line_bytes(rest)?;
                    break;
                }
                Some(p) => {
                    self.push_line_bytes(&rest[..p])?;
                    let end = i + p;
                    i = end + 1;
                    if bytes[end] == b'\r' {
                        match bytes.get(end + 1) {
                            Some(b'\n') => i += 1,
                            Some(_) => {}
                            None => self.pending_cr = true,
                        }
                    }
                    self.end_line(out)?;
                }
            }
        }
        Ok(())
    }

    /// The stream ended: a last unterminated line is processed and an event still holding data is
    /// dispatched.
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        self.pending_cr = false;
        if !self.line.is_empty() {
            self.end_line(out)?;
        }
        self.dispatch(out);
        Ok(())
    }

    /// Whether bytes of an unfinished line or event are buffered.
    pub fn has_partial(&self) -> bool {
        !self.line.is_empty() || self.has_data
    }

    fn push_line_bytes(&mut self, b: &[u8]) -> Result<(), SseError> {
        if self.line.len() + b.len() > self.max_bytes {
            self.line.clear();
            return Err(SseError::LineTooLong {
                line: self.lines + 1,
                limit: self.max_bytes,
            });
        }
        self.line.extend_from_slice(b);
        Ok(())
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        self.lines += 1;
        let mut bytes = std::mem::take(&mut self.line);
        let mut body: &[u8] = &bytes;
        if self.at_start {
            self.at_start = false;
            body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
        }
        let result = self.process_line(body, out);
        // Reuse the allocation for the next line.
        bytes.clear();
        self.line = bytes;
        result
    }

    fn process_line(&mut self, body: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if body.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        if body[0] == b':' {
            return Ok(()); // comment / keep-alive
        }
        let text =
            std::str::from_utf8(body).map_err(|_| SseError::InvalidUtf8 { line: self.lines })?;
        let (field, value) = match text.find(':') {
            Some(c) => {
                let v = &text[c + 1..];
                (&text[..c], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (text, ""),
        };
        match field {
            "data" => {
                let extra = value.len() + usize::from(self.has_data);
                if self.data.len() + extra > self.max_bytes {
                    self.data.clear();
                    self.has_data = false;
                    return Err(SseError::EventTooLarge {
                        line: self.lines,
                        limit: self.max_bytes,
                    });
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_string()),
            "id" if !value.contains('\0') => self.id = Some(value.to_string()),
            _ => {} // retry, unknown fields
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        if self.has_data {
            out.push(SseEvent {
                event: self.event.take(),
                data: std::mem::take(&mut self.data),
                id: self.id.clone(),
            });
        }
        self.has_data = false;
        self.event = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(chunks: &[&[u8]]) -> Result<Vec<SseEvent>, SseError> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut out)?;
        }
        p.finish(&mut out)?;
        Ok(out)
    }

    fn data(events: &[SseEvent]) -> Vec<&str> {
        events.iter().map(|e| e.data.as_str()).collect()
    }

    /// A realistic OpenAI stream with every awkward feature: BOM, comments, keep-alives, CRLF, CR,
    /// multi-line data, an event name, a retry field, multi-byte UTF-8, an empty event, [DONE].
    const STREAM: &[u8] = b"\xEF\xBB\xBF: hello\r\n\r\n\
data: {\"choices\":[{\"text\":\"caf\xC3\xA9\"}]}\r\n\r\n\
: keep-alive\n\n\
retry: 100\n\
data:{\"choices\":[{\"text\":\" \xE2\x82\xAC\xF0\x9F\x98\x80\"}]}\r\r\
event: error\ndata: {\"error\":\n data: \"x\"}\nid: 7\n\n\
event: ping\n\n\
data\n\n\
data: [DONE]\n\n";

    fn expected() -> Vec<SseEvent> {
        vec![
            SseEvent {
                event: None,
                data: "{\"choices\":[{\"text\":\"café\"}]}".into(),
                id: None,
            },
            SseEvent {
                event: None,
                data: "{\"choices\":[{\"text\":\" €😀\"}]}".into(),
                id: None,
            },
            SseEvent {
                event: Some("error".into()),
                // ` data: "x"}` starts with a space: a field named " data", ignored.
                data: "{\"error\":".into(),
                id: Some("7".into()),
            },
            SseEvent {
                event: None,
                data: String::new(),
                id: Some("7".into()),
            },
            SseEvent {
                event: None,
                data: "[DONE]".into(),
                id: Some("7".into()),
            },
        ]
    }

    #[test]
    fn parses_a_stream_with_every_feature() {
        assert_eq!(parse_all(&[STREAM]).unwrap(), expected());
    }

    #[test]
    fn survives_a_split_at_every_byte_offset() {
        let whole = parse_all(&[STREAM]).unwrap();
        for cut in 0..=STREAM.len() {
            let (a, b) = STREAM.split_at(cut);
            assert_eq!(parse_all(&[a, b]).unwrap(), whole, "cut at {cut}");
        }
        for cut1 in (0..STREAM.len()).step_by(7) {
            for cut2 in cut1..STREAM.len() {
                let chunks = [&STREAM[..cut1], &STREAM[cut1..cut2], &STREAM[cut2..]];
                assert_eq!(parse_all(&chunks).unwrap(), whole, "cuts {cut1} {cut2}");
            }
        }
        let bytes: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(parse_all(&bytes).unwrap(), whole);
    }

    #[test]
    fn crlf_split_between_chunks_is_one_line_end() {
        let got = parse_all(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]).unwrap();
        assert_eq!(data(&got), ["a\nb"]);
        // CR then CR: two line ends (the second is the blank line).
        let got = parse_all(&[b"data: a\r", b"\rdata: b\n\n"]).unwrap();
        assert_eq!(data(&got), ["a", "b"]);
    }

    #[test]
    fn comments_and_empty_events_dispatch_nothing() {
        let got = parse_all(&[b": ping\n\n:\n\nevent: x\n\nid: 3\n\n"]).unwrap();
        assert!(got.is_empty());
    }

    #[test]
    fn finish_dispatches_an_unterminated_last_event() {
        assert_eq!(data(&parse_all(&[b"data: last"]).unwrap()), ["last"]);
        assert_eq!(data(&parse_all(&[b"data: last\n"]).unwrap()), ["last"]);
        assert!(parse_all(&[b": only a comment"]).unwrap().is_empty());
    }

    #[test]
    fn field_forms() {
        // No space, one space stripped, two spaces keep one, no colon = empty value.
        let got = parse_all(&[b"data:a\n\ndata: b\n\ndata:  c\n\ndata\ndata\n\n"]).unwrap();
        assert_eq!(data(&got), ["a", "b", " c", "\n"]);
        // Only the first colon splits.
        let got = parse_all(&[b"data: {\"a\":1}\n\n"]).unwrap();
        assert_eq!(data(&got), ["{\"a\":1}"]);
    }

    #[test]
    fn invalid_utf8_is_a_typed_error_and_parsing_goes_on() {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        let e = p
            .feed(b"data: ok\n\ndata: \xFF\xFE\n", &mut out)
            .unwrap_err();
        assert_eq!(e, SseError::InvalidUtf8 { line: 3 });
        assert_eq!(data(&out), ["ok"]);
        p.feed(b"data: next\n\n", &mut out).unwrap();
        assert_eq!(data(&out), ["ok", "next"]);
    }

    #[test]
    fn long_lines_and_events_are_bounded() {
        let mut p = SseParser::with_limit(16);
        let mut out = Vec::new();
        let e = p.feed(&[b'x'; 40], &mut out).unwrap_err();
        assert!(matches!(e, SseError::LineTooLong { limit: 16, .. }), "{e}");
        let mut p = SseParser::with_limit(16);
        let e = p
            .feed(b"data: 0123456789\ndata: 0123456789\n\n", &mut out)
            .unwrap_err();
        assert!(matches!(e, SseError::EventTooLarge { .. }), "{e}");
        assert!(e.to_string().contains("malformed SSE"));
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_events(
            events in proptest::collection::vec("[a-z0-9 {}:\"é€]{0,12}", 0..8),
            ends in proptest::collection::vec(0u8..3, 8),
            cuts in proptest::collection::vec(0usize..200, 0..6),
        ) {
            let eol = |k: u8| -> &'static [u8] { match k { 0 => b"\n", 1 => b"\r\n", _ => b"\r" } };
            let mut bytes = Vec::new();
            for (i, e) in events.iter().enumerate() {
                let end = eol(ends[i % ends.len()]);
                bytes.extend_from_slice(b": c");
                bytes.extend_from_slice(end);
                bytes.extend_from_slice(b"data: ");
                bytes.extend_from_slice(e.as_bytes());
                bytes.extend_from_slice(end);
                bytes.extend_from_slice(end);
            }
            let whole = parse_all(&[&bytes]).unwrap();
            let want: Vec<String> = events.iter().map(|e| e.to_string()).collect();
            prop_assert_eq!(whole.iter().map(|e| e.data.clone()).collect::<Vec<_>>(), want);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut prev = 0;
            for c in cuts { chunks.push(&bytes[prev..c]); prev = c; }
            chunks.push(&bytes[prev..]);
            prop_assert_eq!(parse_all(&chunks).unwrap(), whole);
        }
    }
}
