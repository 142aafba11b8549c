//! Parts of a registry blob, fetched with range requests: a partial pull
//! reads only the frames it lacks. The wanted spans are read as one
//! blocking stream, each span's bytes once and in blob order, without
//! the blob ever being held in memory.
//!
//! Near spans are merged into one range ([`MERGE_GAP`]) and up to
//! [`MAX_RANGES`] ranges go in one `Range: bytes=a-b,c-d,…` request.
//! Registries differ in what they do with that, so the answer decides
//! what is asked next:
//!
//! - `206 multipart/byteranges`: the parts are parsed as they arrive;
//! - a 206 of one range only (a server that serves the first range of a
//!   list), a 200 (a server that ignores a multi-range header), 400 or
//!   416: from then on one range per request;
//! - a 200 to a single range: the server ignores ranges, and the wanted
//!   spans are picked out of the whole body as it streams by (a partial
//!   pull checks for this on its first request and pulls the blob in
//!   full, verified by its digest, instead).
//!
//! Whatever a server sends, only bytes at the offsets its Content-Range
//! names are taken, and only those of wanted spans are passed on. A
//! connection that breaks is resumed from the first byte not passed on,
//! as often without progress as a whole blob's stream.

use std::{
    collections::VecDeque,
    io::{self, Read},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use bytes::{Buf, Bytes};
use futures_util::StreamExt;
use reqwest::{StatusCode, header::CONTENT_TYPE};
use tokio::sync::mpsc;

use super::{
    Failure,
    blob::{count_resume, receive_ahead},
    multipart::{Multipart, content_range},
    remote::Remote,
};
use crate::{Error, oci::digest::Digest};

/// Spans closer than this are fetched as one range, the bytes between
/// them dropped. A part of a multipart body costs about 150 bytes of
/// framing (delimiter, Content-Type, Content-Range) and its range 20
/// bytes of the request header, and fewer ranges mean fewer requests
/// under [`MAX_RANGES`]; past a few hundred bytes, though, the gap costs
/// more than it saves. containers/storage merges gaps under 1024 bytes;
/// a zstd:chunked blob's tar-header frames are tens of bytes, so most
/// gaps here are skipped files, which are worth not receiving.
pub(crate) const MERGE_GAP: u64 = 256;

/// The most ranges in one request. Each takes about 20 bytes of the
/// `Range` header (two offsets of up to 10 digits), so 200 keep the
/// request head under 4 KiB: within the 8 KiB that common front ends
/// (nginx, HAProxy) accept, where containers/storage's 1024 ranges
/// (about 20 KiB) could be refused as a whole.
pub(crate) const MAX_RANGES: usize = 200;

/// One span of a blob: bytes `start..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Its first byte's offset.
    pub start: u64,
    /// The offset just past its last byte.
    pub end: u64,
}

/// What fetching ranges of blobs did, shared by the readers of a pull.
#[derive(Debug, Default)]
pub struct RangeCounts {
    requests: AtomicU64,
    received: AtomicU64,
    single: AtomicBool,
    whole: AtomicBool,
}

impl RangeCounts {
    /// Requests sent.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Body bytes received, multipart framing and merged gaps included.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Whether the registry refused multi-range requests, so that ranges
    /// were asked for one at a time.
    pub fn single_ranges(&self) -> bool {
        self.single.load(Ordering::Relaxed)
    }

    /// Whether the registry ignored a single range and sent a whole blob.
    pub fn whole_blob(&self) -> bool {
        self.whole.load(Ordering::Relaxed)
    }
}

/// How ranges are asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Multi,
    Single,
}

/// How the body being received is laid out.
enum Layout {
    /// One range's bytes (a 206) or the whole blob (a 200), from `next`.
    Plain { next: u64 },
    /// `multipart/byteranges`.
    Parts(Multipart),
}

/// An answer being received.
struct Body {
    queue: mpsc::Receiver<io::Result<Bytes>>,
    layout: Layout,
    /// Data bytes taken from it, against a hostile endless body.
    taken: u64,
    /// The end of the last range asked for: the answer is short if the
    /// next byte wanted is before it when it ends.
    until: u64,
}

/// The wanted spans of one blob, read in order.
pub(crate) struct RangeReader {
    remote: Arc<Remote>,
    digest: String,
    size: u64,
    wanted: Wanted,
    mode: Mode,
    body: Option<Body>,
    ready: VecDeque<Bytes>,
    resumes: u32,
    counts: Arc<RangeCounts>,
}

impl RangeReader {
    /// A reader of `spans` (sorted, not overlapping, within `size`) of
    /// the blob `digest`; nothing is requested yet.
    pub(crate) fn new(
        remote: Arc<Remote>,
        digest: &Digest,
        size: u64,
        spans: Vec<Span>,
        counts: Arc<RangeCounts>,
    ) -> Result<Self, Error> {
        let ordered = spans.windows(2).all(|w| w[0].end <= w[1].start);
        let inside = spans.iter().all(|s| s.start < s.end && s.end <= size);
        if !ordered || !inside {
            return Err(Error::internal(
                "fetching parts of a blob",
                format!("spans of blob {digest} out of order or past its {size} bytes"),
            ));
        }
        Ok(RangeReader {
            remote,
            digest: digest.to_string(),
            size,
            wanted: Wanted::new(spans),
            mode: Mode::Multi,
            body: None,
            ready: VecDeque::new(),
            resumes: 0,
            counts,
        })
    }

    /// Send the next request and start receiving its answer.
    fn request(&mut self) -> Result<(), Error> {
        let limit = match self.mode {
            Mode::Multi => MAX_RANGES,
            Mode::Single => 1,
        };
        let (ranges, until) = self.wanted.ranges(limit);
        let header = ranges
            .iter()
            .map(|(a, b)| format!("{a}-{b}"))
            .collect::<Vec<_>>()
            .join(",");
        let what = format!("ranges of blob {}", self.digest);
        let response = send(&self.remote, &self.digest, &header, &self.counts)?;
        let status = response.status();
        let layout = match (status, self.mode) {
            (StatusCode::PARTIAL_CONTENT, _) => self.layout_of(&response)?,
            (StatusCode::OK, Mode::Single) => {
                self.counts.whole.store(true, Ordering::Relaxed);
                Layout::Plain { next: 0 }
            }
            (_, Mode::Multi) => {
                tracing::info!("{what}: HTTP {status} to {} ranges", ranges.len());
                self.one_range_at_a_time();
                return Ok(());
            }
            (_, Mode::Single) => {
                return Err(Error::RegistryStatus {
                    registry: self.remote.host.clone(),
                    status: status.as_u16(),
                    what,
                    reason: format!("refused the range {header} of a {} byte blob", self.size),
                });
            }
        };
        self.receive(response, layout, until);
        Ok(())
    }

    /// Receive the body of `response`, laid out as `layout`, which
    /// answers a request for the spans up to `until`.
    fn receive(&mut self, response: reqwest::Response, layout: Layout, until: u64) {
        let counts = self.counts.clone();
        let stream = response
            .bytes_stream()
            .map(move |piece| {
                let piece = piece.map_err(io::Error::other)?;
                counts
                    .received
                    .fetch_add(piece.len() as u64, Ordering::Relaxed);
                Ok(piece)
            })
            .boxed();
        self.body = Some(Body {
            queue: receive_ahead(&self.remote, stream),
            layout,
            taken: 0,
            until,
        });
    }

    /// How the body of a 206 is laid out.
    fn layout_of(&self, response: &reqwest::Response) -> Result<Layout, Error> {
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
        };
        if let Some(parts) = Multipart::for_content_type(header(CONTENT_TYPE)) {
            return Ok(Layout::Parts(parts));
        }
        match content_range(header(reqwest::header::CONTENT_RANGE)) {
            Some(((first, _), _)) => Ok(Layout::Plain { next: first }),
            None => Err(self.misbehaved("a 206 answer without a Content-Range or parts")),
        }
    }

    fn one_range_at_a_time(&mut self) {
        self.mode = Mode::Single;
        self.counts.single.store(true, Ordering::Relaxed);
        self.body = None;
    }

    fn misbehaved(&self, reason: &str) -> Error {
        Error::RegistryStatus {
            registry: self.remote.host.clone(),
            status: 206,
            what: format!("ranges of blob {}", self.digest),
            reason: reason.to_owned(),
        }
    }

    /// Receive the next piece of the answer, or ask for what is still
    /// wanted when there is none.
    fn fill(&mut self) -> Result<(), Error> {
        while self.ready.is_empty() && !self.wanted.finished() {
            let Some(body) = self.body.as_mut() else {
                self.request()?;
                continue;
            };
            let piece = self.remote.until_stopped(body.queue.recv())?;
            match piece {
                Some(Ok(bytes)) => self.piece(bytes)?,
                Some(Err(e)) => self.broke(&e.to_string())?,
                None => self.ended()?,
            }
        }
        Ok(())
    }

    /// Parse and take one piece of the body.
    fn piece(&mut self, bytes: Bytes) -> Result<(), Error> {
        let limit = self.size.saturating_mul(2).max(1 << 20);
        let body = self.body.as_mut().expect("a body is being received");
        body.taken += bytes.len() as u64;
        let mut pieces = Vec::new();
        let parsed = match &mut body.layout {
            Layout::Plain { next } => {
                pieces.push((*next, bytes.clone()));
                *next += bytes.len() as u64;
                Ok(())
            }
            Layout::Parts(parts) => parts.feed(bytes, &mut |at, data| pieces.push((at, data))),
        };
        if body.taken > limit {
            return Err(self.misbehaved("an answer longer than twice the blob"));
        }
        if let Err(e) = parsed {
            return Err(self.misbehaved(&format!("a damaged multipart body: {}", e.0)));
        }
        for (at, data) in pieces {
            if at + data.len() as u64 > self.size {
                return Err(self.misbehaved("bytes past the end of the blob"));
            }
            let taken = self.wanted.take(at, data, &mut self.ready);
            if taken == Ok(true) {
                self.resumes = 0;
            }
            if taken.is_err() {
                // The server left out what was asked for: it does not do
                // multi-range as it claims. Ranges one at a time do not
                // depend on it.
                return match self.mode {
                    Mode::Multi => {
                        self.one_range_at_a_time();
                        Ok(())
                    }
                    Mode::Single => Err(self.misbehaved("not the range asked for")),
                };
            }
        }
        Ok(())
    }

    /// The answer ended cleanly: if it was short of what was asked, ask
    /// again, one range at a time if it was a multi-range request.
    fn ended(&mut self) -> Result<(), Error> {
        let body = self.body.take().expect("a body is being received");
        if let Layout::Parts(parts) = &body.layout
            && !parts.done()
        {
            return self.broke("the multipart body ended before its last part");
        }
        if self.wanted.finished() || self.wanted.next >= body.until {
            return Ok(());
        }
        match self.mode {
            Mode::Multi => {
                self.one_range_at_a_time();
                Ok(())
            }
            Mode::Single => self.broke("the answer ended before the range did"),
        }
    }

    /// The connection broke: resume from the next byte wanted.
    fn broke(&mut self, cut: &str) -> Result<(), Error> {
        self.body = None;
        let what = format!("ranges of blob {}", self.digest);
        count_resume(&mut self.resumes, &self.remote, &what, cut)
    }
}

impl Read for RangeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.fill().map_err(|e| io::Error::other(Failure(e)))?;
        let Some(front) = self.ready.front_mut() else {
            // Every span is read: what a server sends beyond is not wanted.
            self.body = None;
            return Ok(0);
        };
        let n = buf.len().min(front.len());
        buf[..n].copy_from_slice(&front.split_to(n));
        if front.is_empty() {
            self.ready.pop_front();
        }
        Ok(n)
    }
}

/// The spans of a blob still to be read.
#[derive(Debug)]
struct Wanted {
    spans: Vec<Span>,
    /// The span being read, and the next offset wanted in it.
    at: usize,
    next: u64,
}

impl Wanted {
    fn new(spans: Vec<Span>) -> Self {
        let next = spans.first().map_or(0, |s| s.start);
        Wanted { spans, at: 0, next }
    }

    fn finished(&self) -> bool {
        self.at == self.spans.len()
    }

    /// The ranges of the next request, inclusive, from the next byte
    /// wanted: near spans merged, at most `limit`; and the end of the
    /// last. Not to be called once finished.
    fn ranges(&self, limit: usize) -> (Vec<(u64, u64)>, u64) {
        let mut ranges: Vec<(u64, u64)> = vec![(self.next, self.spans[self.at].end)];
        for span in &self.spans[self.at + 1..] {
            let last = ranges.last_mut().expect("one range at least");
            if span.start - last.1 <= MERGE_GAP {
                last.1 = span.end;
            } else if ranges.len() == limit {
                break;
            } else {
                ranges.push((span.start, span.end));
            }
        }
        let until = ranges.last().expect("one range at least").1;
        (ranges.into_iter().map(|(a, b)| (a, b - 1)).collect(), until)
    }

    /// Take `bytes`, which the server says are at `offset` of the blob:
    /// what falls in the wanted spans goes to `ready`. Whether any did;
    /// `Err(())` when they start past the next byte wanted, which the
    /// server left out.
    fn take(
        &mut self,
        mut offset: u64,
        mut bytes: Bytes,
        ready: &mut VecDeque<Bytes>,
    ) -> Result<bool, ()> {
        let mut progressed = false;
        while !bytes.is_empty() && !self.finished() {
            if offset + bytes.len() as u64 <= self.next {
                break;
            }
            if offset > self.next {
                return Err(());
            }
            bytes.advance((self.next - offset) as usize);
            let span_end = self.spans[self.at].end;
            let n = (span_end - self.next).min(bytes.len() as u64);
            ready.push_back(bytes.split_to(n as usize));
            progressed = true;
            self.next += n;
            offset = self.next;
            if self.next == span_end {
                self.at += 1;
                if let Some(span) = self.spans.get(self.at) {
                    self.next = span.start;
                }
            }
        }
        Ok(progressed)
    }
}

/// Send one GET of the ranges `header` of the blob `digest`, with the
/// retries every registry request gets.
fn send(
    remote: &Arc<Remote>,
    digest: &str,
    header: &str,
    counts: &RangeCounts,
) -> Result<reqwest::Response, Error> {
    let what = format!("ranges of blob {digest}");
    counts.requests.fetch_add(1, Ordering::Relaxed);
    remote.until_stopped(remote.retrying(&what, || remote.get_ranges(digest, header)))?
}

/// The bytes `span` of the blob `digest`, with one range request; `None`
/// when the registry answers with the whole blob (it ignores ranges),
/// which is then not read. For a partial pull's first look at a blob.
/// Blocks.
pub(crate) fn read_span(
    remote: &Arc<Remote>,
    digest: &Digest,
    size: u64,
    span: Span,
    counts: &Arc<RangeCounts>,
) -> Result<Option<Vec<u8>>, Error> {
    let mut reader = RangeReader::new(remote.clone(), digest, size, vec![span], counts.clone())?;
    reader.mode = Mode::Single;
    let header = format!("{}-{}", span.start, span.end - 1);
    let response = send(remote, &reader.digest, &header, counts)?;
    if response.status() != StatusCode::PARTIAL_CONTENT {
        return Ok(None);
    }
    let layout = reader.layout_of(&response)?;
    reader.receive(response, layout, span.end);
    let mut bytes = Vec::with_capacity((span.end - span.start) as usize);
    reader.read_to_end(&mut bytes).map_err(super::failure)?;
    Ok(Some(bytes))
}

#[cfg(test)]
#[path = "ranges_tests.rs"]
mod tests;
