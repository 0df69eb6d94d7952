//! The bench's wire decoding: HTTP/1.1 response heads (with `httparse`),
//! chunked transfer coding, the SSE line protocol, and the bench's own
//! payload format.
//!
//! Both decoders are incremental: they take whatever a `read` returned and
//! keep only a partial line between calls, so a subscriber costs a few small
//! buffers whatever the event rate. Neither allocates per event once its
//! buffers have grown to the largest line seen.

/// Why a chunked body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkError {
    /// A chunk-size line held something other than hex digits.
    BadSize,
    /// A chunk size does not fit in 64 bits.
    SizeOverflow,
    /// Chunk data was not followed by CRLF.
    MissingCrlf,
}

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChunkError::BadSize => "bad chunk size",
            ChunkError::SizeOverflow => "chunk size overflows",
            ChunkError::MissingCrlf => "chunk data not followed by CRLF",
        })
    }
}

impl std::error::Error for ChunkError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ChunkState {
    /// Reading the hex digits of a chunk size.
    #[default]
    Size,
    /// Skipping a chunk extension up to the end of the size line.
    Extension,
    /// Saw CR at the end of the size line; LF comes next.
    SizeLf,
    /// Inside chunk data, `remaining` bytes to go.
    Data,
    /// Chunk data done; CR comes next.
    DataCr,
    /// Chunk data done and CR seen; LF comes next.
    DataLf,
    /// After the last chunk, at the start of a trailer line.
    TrailerStart,
    /// Inside a trailer line.
    TrailerLine,
    /// After the last chunk, CR of the final empty line seen.
    TrailerLf,
    /// The body has ended.
    Done,
}

/// Incremental decoder for `Transfer-Encoding: chunked`.
#[derive(Debug, Default)]
pub struct ChunkDecoder {
    state: ChunkState,
    size: u64,
    digits: u32,
    remaining: u64,
}

impl ChunkDecoder {
    /// Feeds raw body bytes; `out` gets each run of payload bytes in order.
    /// Returns `Ok(true)` once the terminating zero-size chunk and trailer
    /// have been read (bytes after that are ignored).
    pub fn feed<'a>(
        &mut self,
        input: &'a [u8],
        out: &mut impl FnMut(&'a [u8]),
    ) -> Result<bool, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                ChunkState::Data => {
                    let take = (input.len() - i).min(self.remaining as usize);
                    out(&input[i..i + take]);
                    i += take;
                    self.remaining -= take as u64;
                    if self.remaining == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::Done => return Ok(true),
                _ => {}
            }
            let b = input[i];
            i += 1;
            match self.state {
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                        self.size = self
                            .size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(d))
                            .ok_or(ChunkError::SizeOverflow)?;
                        self.digits += 1;
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => self.state = ChunkState::Extension,
                    b'\r' if self.digits > 0 => self.state = ChunkState::SizeLf,
                    b'\n' if self.digits > 0 => self.end_size_line(),
                    _ => return Err(ChunkError::BadSize),
                },
                ChunkState::Extension => match b {
                    b'\r' => self.state = ChunkState::SizeLf,
                    b'\n' => self.end_size_line(),
                    _ => {}
                },
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadSize);
                    }
                    self.end_size_line();
                }
                ChunkState::DataCr => match b {
                    b'\r' => self.state = ChunkState::DataLf,
                    // Lenient: a bare LF ends the chunk too.
                    b'\n' => self.start_size(),
                    _ => return Err(ChunkError::MissingCrlf),
                },
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError::MissingCrlf);
                    }
                    self.start_size();
                }
                ChunkState::TrailerStart => match b {
                    b'\r' => self.state = ChunkState::TrailerLf,
                    b'\n' => self.state = ChunkState::Done,
                    _ => self.state = ChunkState::TrailerLine,
                },
                ChunkState::TrailerLine => {
                    if b == b'\n' {
                        self.state = ChunkState::TrailerStart;
                    }
                }
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError::MissingCrlf);
                    }
                    self.state = ChunkState::Done;
                }
                ChunkState::Data | ChunkState::Done => unreachable!("handled above"),
            }
        }
        Ok(self.state == ChunkState::Done)
    }

    fn end_size_line(&mut self) {
        if self.size == 0 {
            self.state = ChunkState::TrailerStart;
        } else {
            self.remaining = self.size;
            self.state = ChunkState::Data;
        }
    }

    fn start_size(&mut self) {
        self.size = 0;
        self.digits = 0;
        self.state = ChunkState::Size;
    }
}

/// One dispatched SSE event, borrowed from the parser's buffers.
#[derive(Debug, Clone, Copy)]
pub struct SseEvent<'a> {
    /// The last event id in force when the event was dispatched (may be empty).
    pub id: &'a [u8],
    /// The `event:` type, empty when the event had none (the default type).
    pub event: &'a [u8],
    /// The data lines joined by `\n`.
    pub data: &'a [u8],
}

/// Incremental `text/event-stream` parser following the WHATWG rules:
/// lines end in CRLF, LF or CR; `:` starts a comment; an empty line
/// dispatches the event if any `data:` was seen. As in `EventSource`, an
/// `id:` line only fills the id buffer; the id to resume from is committed at
/// the blank line that ends the event, so a connection cut between an event's
/// `id:` and its end resumes from the previous event, not past the lost one.
#[derive(Debug)]
pub struct SseParser {
    line: Vec<u8>,
    pending_cr: bool,
    data: Vec<u8>,
    has_data: bool,
    event: Vec<u8>,
    id_buf: Vec<u8>,
    last_id: Vec<u8>,
    /// Comment lines seen (heartbeats and the like).
    pub comments: u64,
    max_line: usize,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl SseParser {
    /// Longest line kept; anything past it is dropped (the bench's own lines are short).
    pub const MAX_LINE: usize = 1 << 20;

    /// A parser with no last event id.
    pub fn new() -> Self {
        Self {
            line: Vec::new(),
            pending_cr: false,
            data: Vec::new(),
            has_data: false,
            event: Vec::new(),
            id_buf: Vec::new(),
            last_id: Vec::new(),
            comments: 0,
            max_line: Self::MAX_LINE,
        }
    }

    /// The id to resume from (`Last-Event-ID`), empty if none seen yet.
    pub fn last_id(&self) -> &[u8] {
        &self.last_id
    }

    /// Forgets the partial line and event of a dropped connection, keeping
    /// the committed last event id.
    pub fn reset_stream(&mut self) {
        self.id_buf.clone_from(&self.last_id);
        self.line.clear();
        self.pending_cr = false;
        self.data.clear();
        self.has_data = false;
        self.event.clear();
    }

    /// Feeds body bytes; `on_event` gets each dispatched event.
    pub fn feed(&mut self, mut input: &[u8], on_event: &mut impl FnMut(SseEvent<'_>)) {
        if self.pending_cr {
            self.pending_cr = false;
            if let Some(b'\n') = input.first() {
                input = &input[1..];
            }
        }
        while !input.is_empty() {
            let Some(pos) = input.iter().position(|&b| b == b'\n' || b == b'\r') else {
                self.push_partial(input);
                return;
            };
            let (line, rest) = input.split_at(pos);
            let terminator = rest[0];
            input = &rest[1..];
            if terminator == b'\r' {
                match input.first() {
                    Some(b'\n') => input = &input[1..],
                    Some(_) => {}
                    None => self.pending_cr = true,
                }
            }
            if self.line.is_empty() {
                self.process_line(line, on_event);
            } else {
                self.push_partial(line);
                let whole = std::mem::take(&mut self.line);
                self.process_line(&whole, on_event);
                self.line = whole;
                self.line.clear();
            }
        }
    }

    fn push_partial(&mut self, bytes: &[u8]) {
        let room = self.max_line.saturating_sub(self.line.len());
        self.line.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn process_line(&mut self, line: &[u8], on_event: &mut impl FnMut(SseEvent<'_>)) {
        if line.is_empty() {
            if self.last_id != self.id_buf {
                self.last_id.clone_from(&self.id_buf);
            }
            if self.has_data {
                on_event(SseEvent {
                    id: &self.last_id,
                    event: &self.event,
                    data: &self.data,
                });
            }
            self.data.clear();
            self.has_data = false;
            self.event.clear();
            return;
        }
        if line[0] == b':' {
            self.comments += 1;
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(p) => {
                let v = &line[p + 1..];
                (&line[..p], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                let room = self.max_line.saturating_sub(self.data.len());
                self.data.extend_from_slice(&value[..value.len().min(room)]);
                self.has_data = true;
            }
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
            }
            b"id" if !value.contains(&0) => {
                self.id_buf.clear();
                self.id_buf.extend_from_slice(value);
            }
            _ => {}
        }
    }
}

/// Splits an event id `<epoch>-<seq>` into a hash of the epoch and the seq.
pub fn parse_id(id: &[u8]) -> Option<(u64, u64)> {
    let dash = id.iter().rposition(|&b| b == b'-')?;
    let seq = parse_u64(&id[dash + 1..])?;
    // FNV-1a: the epoch only needs comparing, and hashing avoids keeping its text.
    let epoch = id[..dash].iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    Some((epoch, seq))
}

/// Parses an unsigned decimal with no sign or spaces.
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add((b - b'0') as u64)
        } else {
            None
        }
    })
}

/// What the bench puts in each event's data: `"<unix_nanos> <index> <m|w> <padding>"`,
/// where `index` numbers the events of one channel from 0 and `m`/`w` marks
/// an event sent in the measured window or in the warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload {
    /// Wall-clock time the publish request was written, in ns since the Unix epoch.
    pub sent_unix_ns: u64,
    /// Position of the event among its channel's events.
    pub index: u64,
    /// Sent during the measured window rather than the warm-up.
    pub measured: bool,
}

impl Payload {
    /// Writes the payload text, padded with `x` to `size` bytes where it fits.
    pub fn write(&self, size: usize, out: &mut String) {
        use std::fmt::Write as _;
        let start = out.len();
        let flag = if self.measured { 'm' } else { 'w' };
        // Writing to a String cannot fail.
        let _ = write!(out, "{} {} {} ", self.sent_unix_ns, self.index, flag);
        let used = out.len() - start;
        out.extend(std::iter::repeat_n('x', size.saturating_sub(used)));
    }

    /// Reads a payload back from event data; `None` if it is not the bench's.
    pub fn parse(data: &[u8]) -> Option<Payload> {
        let mut parts = data.splitn(4, |&b| b == b' ');
        let sent_unix_ns = parse_u64(parts.next()?)?;
        let index = parse_u64(parts.next()?)?;
        let measured = match parts.next()? {
            b"m" => true,
            b"w" => false,
            _ => return None,
        };
        Some(Payload {
            sent_unix_ns,
            index,
            measured,
        })
    }
}

/// The parsed head of an HTTP/1.x response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// `Transfer-Encoding: chunked` was given.
    pub chunked: bool,
    /// `Content-Length`, if given.
    pub content_length: Option<u64>,
    /// `Content-Type` starts with `text/event-stream`.
    pub event_stream: bool,
    /// `Connection: close` was given.
    pub close: bool,
}

/// Most response headers read; Herald and Nchan send about ten.
const MAX_HEADERS: usize = 64;

/// Parses a response head at the start of `buf` with `httparse`; returns the
/// parsed head and its length including the blank line, `Ok(None)` if more
/// bytes are needed.
pub fn parse_head(buf: &[u8]) -> Result<Option<(ResponseHead, usize)>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err("too many response headers"),
        Err(httparse::Error::Version) => return Err("not an HTTP/1.x response"),
        Err(_) => return Err("malformed response head"),
    };
    let mut out = ResponseHead {
        status: resp.code.ok_or("bad status line")?,
        chunked: false,
        content_length: None,
        event_stream: false,
        close: resp.version == Some(0),
    };
    for h in resp.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            out.chunked = value.to_ascii_lowercase().contains("chunked");
        } else if h.name.eq_ignore_ascii_case("content-length") {
            out.content_length = Some(
                value
                    .parse()
                    .map_err(|_| "bad content-length in response")?,
            );
        } else if h.name.eq_ignore_ascii_case("content-type") {
            out.event_stream = value.to_ascii_lowercase().starts_with("text/event-stream");
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                out.close = true;
            } else if v.contains("keep-alive") {
                out.close = false;
            }
        }
    }
    Ok(Some((out, len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(pieces: &[&[u8]]) -> (Vec<u8>, bool) {
        let mut dec = ChunkDecoder::default();
        let mut out = Vec::new();
        let mut done = false;
        for p in pieces {
            done = dec.feed(p, &mut |s| out.extend_from_slice(s)).unwrap();
        }
        (out, done)
    }

    #[test]
    fn chunked_whole_and_split_byte_by_byte() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-T: 1\r\n\r\n";
        let (out, done) = decode_all(&[body]);
        assert_eq!(out, b"hello, world");
        assert!(done);
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        let (out, done) = decode_all(&bytes);
        assert_eq!(out, b"hello, world");
        assert!(done);
    }

    #[test]
    fn chunked_hex_sizes_and_open_stream() {
        let data = vec![b'a'; 0x1f];
        let mut body = b"1F\r\n".to_vec();
        body.extend_from_slice(&data);
        body.extend_from_slice(b"\r\n");
        let (out, done) = decode_all(&[&body[..10], &body[10..]]);
        assert_eq!(out, data);
        assert!(!done, "no zero chunk yet: stream still open");
    }

    #[test]
    fn chunked_rejects_garbage() {
        let mut dec = ChunkDecoder::default();
        assert_eq!(dec.feed(b"zz\r\n", &mut |_| {}), Err(ChunkError::BadSize));
        let mut dec = ChunkDecoder::default();
        assert_eq!(
            dec.feed(b"2\r\nabX", &mut |_| {}),
            Err(ChunkError::MissingCrlf)
        );
        let mut dec = ChunkDecoder::default();
        assert_eq!(
            dec.feed(b"fffffffffffffffff\r\n", &mut |_| {}),
            Err(ChunkError::SizeOverflow)
        );
    }

    fn events_of(pieces: &[&[u8]]) -> Vec<(String, String, String)> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for piece in pieces {
            p.feed(piece, &mut |e| {
                out.push((
                    String::from_utf8_lossy(e.id).into_owned(),
                    String::from_utf8_lossy(e.event).into_owned(),
                    String::from_utf8_lossy(e.data).into_owned(),
                ))
            });
        }
        out
    }

    #[test]
    fn sse_frames_as_herald_sends_them() {
        let stream =
            b"retry: 3000\n\n: hb\n\nid: 7-1\nevent: msg\ndata: a\ndata: b\n\nid: 7-5\ndata: c\n\n";
        let want = vec![
            ("7-1".to_string(), "msg".to_string(), "a\nb".to_string()),
            ("7-5".to_string(), String::new(), "c".to_string()),
        ];
        assert_eq!(events_of(&[stream]), want);
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(events_of(&bytes), want);
        let mut p = SseParser::new();
        p.feed(stream, &mut |_| {});
        assert_eq!(p.comments, 1);
        assert_eq!(p.last_id(), b"7-5");
    }

    #[test]
    fn sse_line_endings_crlf_and_cr() {
        let crlf = b"id: 1-1\r\ndata: x\r\n\r\n";
        assert_eq!(events_of(&[crlf]).len(), 1);
        let cr = b"id: 1-2\rdata: y\r\r";
        assert_eq!(events_of(&[cr])[0].2, "y");
        // CR at the end of one read and LF at the start of the next is one line end.
        let ev = events_of(&[b"data: z\r", b"\n\r", b"\n"]);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].2, "z");
    }

    #[test]
    fn sse_field_rules() {
        // No space after the colon, a field with no colon, unknown fields, and
        // an event with no data is not dispatched.
        let s = b"data:nospace\nfoo: bar\n\nevent: x\n\ndata\n\n";
        let ev = events_of(&[s]);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].2, "nospace");
        assert_eq!(ev[1].2, "");
        assert_eq!(ev[1].1, "", "event type resets after dispatch");
    }

    #[test]
    fn sse_partial_event_dropped_on_reset_and_id_not_committed() {
        let mut p = SseParser::new();
        let mut n = 0;
        p.feed(b"id: 3-9\ndata: a\n\nid: 3-10\ndata: b\n", &mut |_| n += 1);
        assert_eq!(n, 1);
        assert_eq!(p.last_id(), b"3-9", "3-10 is not complete yet");
        p.reset_stream();
        assert_eq!(p.last_id(), b"3-9", "resume before the cut event");
        p.feed(b"\n\ndata: c\n\n", &mut |e| {
            n += 1;
            assert_eq!(e.id, b"3-9", "the uncommitted id died with its connection");
        });
        assert_eq!(n, 2, "the half event of the dropped connection is gone");
        // An id with no data still commits at the blank line.
        p.feed(b"id: 3-11\n\n", &mut |_| n += 1);
        assert_eq!((n, p.last_id()), (2, &b"3-11"[..]));
    }

    #[test]
    fn ids_and_payloads() {
        assert_eq!(parse_id(b"abc-42").map(|x| x.1), Some(42));
        assert_eq!(parse_id(b"a-b-7").map(|x| x.1), Some(7));
        assert_ne!(parse_id(b"1-5").map(|x| x.0), parse_id(b"2-5").map(|x| x.0));
        assert_eq!(parse_id(b"garbage"), None);
        assert_eq!(parse_id(b"1-"), None);

        let p = Payload {
            sent_unix_ns: 1_700_000_000_123_456_789,
            index: 17,
            measured: true,
        };
        let mut s = String::new();
        p.write(100, &mut s);
        assert_eq!(s.len(), 100);
        assert_eq!(Payload::parse(s.as_bytes()), Some(p));
        let mut short = String::new();
        p.write(5, &mut short);
        assert_eq!(Payload::parse(short.as_bytes()), Some(p));
        assert_eq!(Payload::parse(b"hello world"), None);
        assert_eq!(Payload::parse(b"1 2 q x"), None);
    }

    #[test]
    fn response_head() {
        let buf = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello";
        let (h, n) = parse_head(buf).unwrap().unwrap();
        assert_eq!(h.status, 200);
        assert!(h.chunked && h.event_stream);
        assert_eq!(&buf[n..], b"5\r\nhello");
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap(), None);
        let (h, _) = parse_head(b"HTTP/1.1 202 Accepted\r\nContent-Length: 12\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.status, h.content_length, h.chunked),
            (202, Some(12), false)
        );
        assert!(parse_head(b"SSH-2.0\r\n\r\n").is_err());
        // HTTP/1.0 closes unless told otherwise; 1.1 keeps alive unless told to close.
        let (h, _) = parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.close);
        let (h, _) = parse_head(b"HTTP/1.1 201 Created\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.close && h.status == 201);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
    }
}
