//! The tar-split: the layer tar less its files' contents, as the JSON
//! lines of vbatts/tar-split, so that the exact tar bytes (and with them
//! the diff_id) can be rebuilt from the files.

use std::io::{BufRead, BufReader, Read};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use serde::{Deserialize, Serialize};

use super::{Layout, Limits, Toc, TocFault, check_frame, shown};

/// tar-split's entry type of a file's content.
const FILE_TYPE: u8 = 1;
/// tar-split's entry type of raw bytes of the stream.
const SEGMENT_TYPE: u8 = 2;

/// One line of a tar-split, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TarSplitEntry {
    /// Bytes of the tar stream as they are: headers, the padding after
    /// the file before, the end-of-archive blocks.
    Segment(Vec<u8>),
    /// The content of one tar entry, which the tar-split leaves out. Every
    /// entry has one, empty for all but regular files.
    File {
        /// The entry's name as in its tar header.
        name: Vec<u8>,
        /// How many content bytes follow the header.
        size: u64,
        /// The CRC-64 (ISO) of the content, big-endian, for a non-empty
        /// file.
        crc64: Option<[u8; 8]>,
    },
}

/// A line as tar-split's Go code encodes it.
#[derive(Debug, Serialize, Deserialize)]
struct Line {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name_raw: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    payload: Option<String>,
    position: u64,
}

impl TarSplitEntry {
    /// The JSON line (with its newline) of this entry at `position`.
    pub fn to_line(&self, position: u64) -> Vec<u8> {
        let line = match self {
            TarSplitEntry::Segment(bytes) => Line {
                kind: SEGMENT_TYPE,
                name: None,
                name_raw: None,
                size: None,
                payload: Some(BASE64.encode(bytes)),
                position,
            },
            TarSplitEntry::File { name, size, crc64 } => {
                let (name, name_raw) = match std::str::from_utf8(name) {
                    Ok(text) => (Some(text.to_owned()), None),
                    Err(_) => (None, Some(BASE64.encode(name))),
                };
                Line {
                    kind: FILE_TYPE,
                    name,
                    name_raw,
                    // Go leaves a zero size out, and readers take an
                    // entry with a size for one with content.
                    size: (*size != 0).then_some(*size),
                    payload: crc64.map(|c| BASE64.encode(c)),
                    position,
                }
            }
        };
        let mut out = serde_json::to_vec(&line).expect("a tar-split line serialises");
        out.push(b'\n');
        out
    }

    /// The entry of one JSON line that must be at `position`.
    fn from_line(text: &[u8], position: u64) -> Result<Self, TocFault> {
        let invalid = |reason: String| TocFault::Json {
            what: "tar-split",
            reason: format!("line {}: {reason}", position + 1),
        };
        let line: Line = serde_json::from_slice(text).map_err(|e| invalid(e.to_string()))?;
        if line.position != position {
            return Err(invalid(format!("its position is {}", line.position)));
        }
        let base64 = |field: &str, text: &str| {
            BASE64
                .decode(text)
                .map_err(|e| invalid(format!("{field} is not base64: {e}")))
        };
        match line.kind {
            SEGMENT_TYPE => Ok(TarSplitEntry::Segment(match line.payload {
                Some(payload) => base64("payload", &payload)?,
                None => Vec::new(),
            })),
            FILE_TYPE => {
                let name = match (line.name, line.name_raw) {
                    (_, Some(raw)) => base64("name_raw", &raw)?,
                    (Some(name), None) => name.into_bytes(),
                    (None, None) => Vec::new(),
                };
                let crc64 = match line.payload {
                    None => None,
                    Some(payload) => {
                        Some(base64("payload", &payload)?.try_into().map_err(|_| {
                            invalid(format!(
                                "the CRC of {:?} is not 8 bytes",
                                shown_bytes(&name)
                            ))
                        })?)
                    }
                };
                Ok(TarSplitEntry::File {
                    name,
                    size: line.size.unwrap_or(0),
                    crc64,
                })
            }
            kind => Err(invalid(format!("its type is {kind}"))),
        }
    }
}

fn shown_bytes(name: &[u8]) -> String {
    shown(&String::from_utf8_lossy(name))
}

/// A decoded tar-split, all entries in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarSplit {
    /// The entries in stream order.
    pub entries: Vec<TarSplitEntry>,
}

impl TarSplit {
    /// Check `frame`, the compressed tar-split at `layout.tar_split`,
    /// against the digest `toc` records for it, and read its entries one
    /// at a time, within `limits` and the declared size.
    pub fn open<'a>(
        frame: &'a [u8],
        toc: &Toc,
        layout: &Layout,
        limits: &Limits,
    ) -> Result<TarSplitReader<BufReader<zstd::stream::read::Decoder<'a, &'a [u8]>>>, TocFault>
    {
        let position = layout.tar_split.ok_or_else(|| TocFault::Footer {
            reason: "the layer has no tar-split".to_owned(),
        })?;
        let expected = toc
            .tar_split_digest
            .as_ref()
            .ok_or_else(|| TocFault::Json {
                what: "TOC",
                reason: "it has no tarSplitDigest, and the layer a tar-split".to_owned(),
            })?;
        check_frame("tar-split", frame, position.length, Some(expected))?;
        if position.uncompressed > limits.tar_split {
            return Err(TocFault::TooLarge {
                what: "tar-split",
                limit: limits.tar_split,
            });
        }
        let decoder =
            zstd::stream::read::Decoder::with_buffer(frame).map_err(|e| TocFault::Compression {
                what: "tar-split",
                reason: e.to_string(),
            })?;
        Ok(TarSplitReader::new(
            BufReader::new(decoder),
            position.uncompressed,
            limits.tar_split_line,
        ))
    }

    /// [`TarSplit::open`], every entry read.
    pub fn decode(
        frame: &[u8],
        toc: &Toc,
        layout: &Layout,
        limits: &Limits,
    ) -> Result<TarSplit, TocFault> {
        let entries = TarSplit::open(frame, toc, layout, limits)?.collect::<Result<_, _>>()?;
        Ok(TarSplit { entries })
    }
}

/// The entries of a decompressed tar-split, read line by line: never more
/// than one line (at most `line_limit` bytes) in memory, and failing once
/// the text runs past its declared size or ends short of it.
#[derive(Debug)]
pub struct TarSplitReader<R> {
    input: R,
    declared: u64,
    read: u64,
    line_limit: usize,
    position: u64,
    line: Vec<u8>,
    done: bool,
}

impl<R: BufRead> TarSplitReader<R> {
    /// Entries from `input`, which must hold `declared` bytes.
    pub fn new(input: R, declared: u64, line_limit: usize) -> Self {
        TarSplitReader {
            input,
            declared,
            read: 0,
            line_limit,
            position: 0,
            line: Vec::new(),
            done: false,
        }
    }

    /// The next line, without its newline; `None` at the end.
    fn next_line(&mut self) -> Result<Option<&[u8]>, TocFault> {
        self.line.clear();
        let budget = (self.declared - self.read).min(self.line_limit as u64 + 1) + 1;
        let n = (&mut self.input)
            .take(budget)
            .read_until(b'\n', &mut self.line)
            .map_err(|e| TocFault::Compression {
                what: "tar-split",
                reason: e.to_string(),
            })?;
        self.read += n as u64;
        if self.read > self.declared {
            return Err(TocFault::TooLarge {
                what: "tar-split",
                limit: self.declared,
            });
        }
        if n == 0 {
            if self.read < self.declared {
                return Err(TocFault::Compression {
                    what: "tar-split",
                    reason: format!(
                        "it decodes to {} bytes, not the {} declared",
                        self.read, self.declared
                    ),
                });
            }
            return Ok(None);
        }
        if self.line.last() == Some(&b'\n') {
            self.line.pop();
        } else if self.line.len() > self.line_limit {
            return Err(TocFault::TooLarge {
                what: "tar-split line",
                limit: self.line_limit as u64,
            });
        }
        Ok(Some(&self.line))
    }
}

impl<R: BufRead> Iterator for TarSplitReader<R> {
    type Item = Result<TarSplitEntry, TocFault>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let position = self.position;
        let entry = loop {
            match self.next_line() {
                Ok(None) => {
                    self.done = true;
                    return None;
                }
                // Go's encoder ends each line with a newline; a blank
                // line is nothing.
                Ok(Some(line)) if line.iter().all(u8::is_ascii_whitespace) => continue,
                Ok(Some(line)) => break TarSplitEntry::from_line(line, position),
                Err(e) => break Err(e),
            }
        };
        self.position += 1;
        if entry.is_err() {
            self.done = true;
        }
        Some(entry)
    }
}

/// The CRC-64 of `bytes` with the ISO polynomial, as Go's `hash/crc64`
/// computes it for tar-split: big-endian, as its `Sum` appends it.
pub fn crc64_iso(bytes: &[u8]) -> [u8; 8] {
    Crc64::default().update(bytes).finish()
}

/// A running CRC-64 (ISO), for content that arrives in pieces.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Crc64(u64);

/// The reflected ISO polynomial x^64 + x^4 + x^3 + x + 1.
const ISO_POLY: u64 = 0xD800_0000_0000_0000;

const fn crc_table() -> [u64; 256] {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u64;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ ISO_POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

static CRC_TABLE: [u64; 256] = crc_table();

impl Crc64 {
    /// The CRC with `bytes` added.
    pub(crate) fn update(mut self, bytes: &[u8]) -> Self {
        let mut crc = !self.0;
        for &b in bytes {
            crc = CRC_TABLE[((crc as u8) ^ b) as usize] ^ (crc >> 8);
        }
        self.0 = !crc;
        self
    }

    /// The CRC, big-endian.
    pub(crate) fn finish(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }
}
