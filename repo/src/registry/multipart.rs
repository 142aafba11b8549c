//! The body of a `206 Partial Content` answer to a multi-range request:
//! `multipart/byteranges` (RFC 9110, 14.6), parsed as it arrives.
//!
//! Each part's `Content-Range` says where its bytes are in the blob and
//! how many there are, so a part's data is passed on by count, never
//! scanned for the boundary: the parser holds only a part's headers (at
//! most [`MAX_HEADERS`] bytes) and the text between parts (at most
//! [`MAX_FILLER`] bytes), whatever the size of the data.

use bytes::{Buf, Bytes};

/// The most header bytes one part may have. Real ones are about 100
/// (`Content-Type` and `Content-Range`).
const MAX_HEADERS: usize = 8 << 10;

/// The most bytes of preamble, line ends and epilogue accepted around
/// the delimiters: a body is otherwise only parts.
const MAX_FILLER: usize = 8 << 10;

/// A body that is not `multipart/byteranges` as announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) String);

/// Where the parser is in the body.
#[derive(Debug)]
enum State {
    /// Before a delimiter line: the preamble, or the line end after a
    /// part's data.
    Between,
    /// In a part's header lines; the Content-Range seen so far.
    Headers(Option<(u64, u64)>),
    /// In a part's data: its next byte's offset in the blob, and how many
    /// bytes are left.
    Data { offset: u64, left: u64 },
    /// After the close delimiter.
    Done,
}

/// A `multipart/byteranges` body being parsed.
#[derive(Debug)]
pub(crate) struct Multipart {
    /// `--BOUNDARY`.
    delimiter: Vec<u8>,
    state: State,
    /// The unfinished line of the headers or filler.
    line: Vec<u8>,
    /// Bytes of headers or filler taken since the last data.
    text: usize,
}

impl Multipart {
    /// A parser for the body of an answer whose `Content-Type` is
    /// `content_type`, if that is `multipart/byteranges` with a boundary.
    pub(crate) fn for_content_type(content_type: &str) -> Option<Self> {
        let mut params = content_type.split(';');
        let media = params.next()?.trim();
        if !media.eq_ignore_ascii_case("multipart/byteranges") {
            return None;
        }
        let boundary = params.find_map(|p| {
            let (name, value) = p.split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("boundary")
                .then(|| value.trim().trim_matches('"').to_owned())
        })?;
        (!boundary.is_empty()).then(|| Multipart {
            delimiter: format!("--{boundary}").into_bytes(),
            state: State::Between,
            line: Vec::new(),
            text: 0,
        })
    }

    /// Whether the close delimiter has been read.
    pub(crate) fn done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Parse `input`, the next bytes of the body, passing each piece of
    /// part data to `data` with its offset in the blob.
    pub(crate) fn feed(
        &mut self,
        mut input: Bytes,
        data: &mut dyn FnMut(u64, Bytes),
    ) -> Result<(), Malformed> {
        while !input.is_empty() {
            if let State::Data { offset, left } = &mut self.state {
                let n = (*left).min(input.len() as u64) as usize;
                data(*offset, input.split_to(n));
                *offset += n as u64;
                *left -= n as u64;
                if *left == 0 {
                    self.state = State::Between;
                    self.text = 0;
                }
                continue;
            }
            if self.done() {
                // The epilogue, which carries nothing.
                self.take_text(input.len())?;
                return Ok(());
            }
            let Some(end) = input.iter().position(|&b| b == b'\n') else {
                self.take_text(input.len())?;
                self.line.extend_from_slice(&input);
                return Ok(());
            };
            self.take_text(end + 1)?;
            self.line.extend_from_slice(&input[..end]);
            input.advance(end + 1);
            let line = std::mem::take(&mut self.line);
            self.line_ends(trim_cr(&line))?;
        }
        Ok(())
    }

    /// Count `n` more bytes of headers or filler against their limits.
    fn take_text(&mut self, n: usize) -> Result<(), Malformed> {
        self.text += n;
        let limit = match self.state {
            State::Headers(_) => MAX_HEADERS,
            _ => MAX_FILLER,
        };
        if self.text > limit {
            return Err(Malformed(format!(
                "more than {limit} bytes of headers or filler between parts"
            )));
        }
        Ok(())
    }

    /// A whole line of headers or filler has been read.
    fn line_ends(&mut self, line: &[u8]) -> Result<(), Malformed> {
        match &mut self.state {
            State::Between => {
                if let Some(rest) = line.strip_prefix(self.delimiter.as_slice()) {
                    match rest.trim_ascii_end() {
                        b"" => self.state = State::Headers(None),
                        b"--" => self.state = State::Done,
                        // A line that merely starts like the delimiter.
                        _ => {}
                    }
                    self.text = 0;
                }
                Ok(())
            }
            State::Headers(range) if line.is_empty() => {
                let Some((first, last)) = *range else {
                    return Err(Malformed("a part has no Content-Range".to_owned()));
                };
                self.state = State::Data {
                    offset: first,
                    left: last - first + 1,
                };
                Ok(())
            }
            State::Headers(range) => {
                let text = String::from_utf8_lossy(line);
                let Some((name, value)) = text.split_once(':') else {
                    return Err(Malformed(format!("a part header line {text:?}")));
                };
                if name.trim().eq_ignore_ascii_case("content-range") {
                    let parsed = content_range(value)
                        .ok_or_else(|| Malformed(format!("a part's Content-Range {value:?}")))?;
                    *range = Some(parsed.0);
                }
                Ok(())
            }
            State::Data { .. } | State::Done => Ok(()),
        }
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// `bytes FIRST-LAST/LENGTH` (LENGTH may be `*`): the inclusive range and
/// the length, if given.
pub(crate) fn content_range(value: &str) -> Option<((u64, u64), Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, length) = rest.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last): (u64, u64) = (first.trim().parse().ok()?, last.trim().parse().ok()?);
    let length = match length.trim() {
        "*" => None,
        n => Some(n.parse().ok()?),
    };
    if first > last || length.is_some_and(|l| last >= l) {
        return None;
    }
    Some(((first, last), length))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Data at offsets of the blob.
    type Pieces = Vec<(u64, Vec<u8>)>;

    /// Parse `body` fed in pieces of `step` bytes: the (offset, bytes)
    /// pieces of data, joined where contiguous.
    fn parse(body: &[u8], step: usize) -> Result<(Pieces, bool), Malformed> {
        let mut parser = Multipart::for_content_type("multipart/byteranges; boundary=XyZ").unwrap();
        let mut parts: Vec<(u64, Vec<u8>)> = Vec::new();
        for piece in body.chunks(step) {
            parser.feed(
                Bytes::copy_from_slice(piece),
                &mut |offset, bytes| match parts.last_mut() {
                    Some((at, data)) if *at + data.len() as u64 == offset => {
                        data.extend_from_slice(&bytes)
                    }
                    _ => parts.push((offset, bytes.to_vec())),
                },
            )?;
        }
        Ok((parts, parser.done()))
    }

    /// A body as Go's net/http (the registry) writes one.
    fn body(parts: &[(u64, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, (at, data)) in parts.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b"\r\n");
            }
            let last = at + data.len() as u64 - 1;
            out.extend_from_slice(
                format!(
                    "--XyZ\r\nContent-Type: application/octet-stream\r\n\
                     Content-Range: bytes {at}-{last}/1000\r\n\r\n"
                )
                .as_bytes(),
            );
            out.extend_from_slice(data);
        }
        out.extend_from_slice(b"\r\n--XyZ--\r\n");
        out
    }

    #[test]
    fn parts_are_passed_on_at_their_offsets_however_the_body_is_cut() {
        // Data that holds the delimiter and line ends must not confuse it.
        let tricky: &[u8] = b"\r\n--XyZ\r\n\r\n--XyZ--";
        let parts = [
            (3u64, &b"abc"[..]),
            (100, tricky),
            (990, &b"0123456789"[..]),
        ];
        let whole = body(&parts);
        for step in [1, 2, 7, 64, whole.len()] {
            let (got, done) = parse(&whole, step).unwrap();
            let want: Vec<(u64, Vec<u8>)> = parts.iter().map(|(a, d)| (*a, d.to_vec())).collect();
            assert_eq!(got, want, "step {step}");
            assert!(done, "step {step}");
        }
    }

    #[test]
    fn a_preamble_and_bare_line_feeds_are_accepted() {
        let text = b"preamble\n--XyZ\nContent-Range: bytes 0-1/2\n\nhi\n--XyZ--\n";
        let (got, done) = parse(text, 5).unwrap();
        assert_eq!(got, vec![(0, b"hi".to_vec())]);
        assert!(done);
    }

    #[test]
    fn a_cut_body_is_not_done_and_damaged_ones_are_malformed() {
        let whole = body(&[(0, b"abcdef")]);
        let (_, done) = parse(&whole[..whole.len() - 5], 3).unwrap();
        assert!(!done);
        let no_range = b"--XyZ\r\nContent-Type: x\r\n\r\nabc";
        assert!(parse(no_range, 4).is_err());
        let bad_range = b"--XyZ\r\nContent-Range: bytes 9-3/10\r\n\r\n";
        assert!(parse(bad_range, 4).is_err());
        let endless = vec![b'h'; MAX_FILLER + 1];
        assert!(parse(&endless, 100).is_err());
        let mut headers = b"--XyZ\r\n".to_vec();
        headers.extend(std::iter::repeat_n(b'x', MAX_HEADERS + 1));
        assert!(parse(&headers, 100).is_err());
    }

    #[test]
    fn content_types_and_ranges_are_read_as_the_rfc_writes_them() {
        assert!(Multipart::for_content_type("multipart/byteranges; boundary=\"a b\"").is_some());
        assert!(Multipart::for_content_type("MULTIPART/BYTERANGES;boundary=z").is_some());
        assert!(Multipart::for_content_type("multipart/byteranges").is_none());
        assert!(Multipart::for_content_type("application/octet-stream").is_none());
        assert_eq!(content_range("bytes 0-9/10"), Some(((0, 9), Some(10))));
        assert_eq!(content_range(" bytes 5-5/*"), Some(((5, 5), None)));
        assert_eq!(content_range("bytes 0-10/10"), None);
        assert_eq!(content_range("bytes */10"), None);
        assert_eq!(content_range("items 0-1/2"), None);
    }
}
