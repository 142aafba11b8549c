//! Writing a layer tar as a current-variant zstd:chunked blob, as it
//! streams: each regular file's content in frames of its own (cut into
//! chunks as [`super::chunker`] decides), the tar headers between them in
//! frames of their own, then the TOC, the tar-split and the footer.
//!
//! Memory: one chunk at most ([`MAX_CHUNK`]) is never held; what grows
//! with the layer is the TOC (one entry per file and chunk) and the
//! compressed tar-split (the headers), as in containers/storage.

use std::{
    collections::BTreeMap,
    io::{self, Write},
};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use openssl::sha::Sha256;
use tar_core::{
    EntryType as TarType, HEADER_SIZE,
    parse::{ParseEvent, ParsedEntry, Parser},
};

use super::{
    EntryType, Footer, Layout, Position, SKIPPABLE_HEADER, SKIPPABLE_MAGIC, TarSplitEntry, Toc,
    TocEntry, Variant,
    chunker::{Chunk, Counted, FileChunks},
    frames::Frames,
    hex_digest, sha256_digest,
};

/// Header bytes with no content between them, and trailing bytes after
/// the end-of-archive blocks, go into frames (and the trailer into
/// segments) of about this much at most.
const TRAILER_PIECE: usize = 1 << 20;

/// What the blob written says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkedLayer {
    /// Where its metadata is, with the TOC checksum: the layer
    /// descriptor's annotations are [`Layout::annotations`].
    pub layout: Layout,
    /// `sha256:<hex>` of the layer tar, the diff_id.
    pub diff_id: String,
    /// The blob's size.
    pub size: u64,
}

/// Where the writer is in the tar.
enum Phase {
    /// Collecting header bytes until the parser has an entry.
    Header { need: usize },
    /// A regular file's content, `left` bytes to come.
    Content { left: u64, file: Box<FileChunks> },
    /// The padding after a file's content.
    Padding { left: u64 },
    /// After the end-of-archive blocks.
    Trailer,
}

/// A regular file whose content is being written.
struct Pending {
    entry: TocEntry,
    /// Its name as the tar has it, which the TOC's may not be if it is
    /// not UTF-8.
    name: Vec<u8>,
}

/// A writer taking a layer tar and writing it, as zstd:chunked, to `W`.
/// [`ChunkedWriter::finish`] ends the blob.
pub struct ChunkedWriter<W: Write> {
    out: Counted<W>,
    frames: Frames,
    parser: Parser,
    phase: Phase,
    /// Header bytes not yet parsed.
    pending: Vec<u8>,
    /// Tar bytes since the last file content: the next header frame.
    between: Vec<u8>,
    /// Tar bytes since the last tar-split file entry.
    segment: Vec<u8>,
    file: Option<Pending>,
    entries: Vec<TocEntry>,
    tar_split: TarSplitFrame,
    diff_id: Sha256,
}

impl<W: Write> ChunkedWriter<W> {
    /// A writer of a blob into `out`.
    pub fn new(out: W) -> io::Result<Self> {
        Ok(ChunkedWriter {
            out: Counted {
                inner: out,
                count: 0,
            },
            frames: Frames::new()?,
            parser: Parser::with_defaults(),
            phase: Phase::Header { need: HEADER_SIZE },
            pending: Vec::new(),
            between: Vec::new(),
            segment: Vec::new(),
            file: None,
            entries: Vec::new(),
            tar_split: TarSplitFrame::new()?,
            diff_id: Sha256::new(),
        })
    }

    /// Take in `input`, the next bytes of the tar.
    fn feed(&mut self, mut input: &[u8]) -> io::Result<()> {
        while !input.is_empty() {
            let taken = match &mut self.phase {
                Phase::Header { need } => {
                    let need = *need;
                    let n = need.saturating_sub(self.pending.len()).min(input.len());
                    self.pending.extend_from_slice(&input[..n]);
                    if self.pending.len() >= need {
                        let rest = self.parse()?;
                        self.feed(&rest)?;
                    }
                    n
                }
                Phase::Content { left, file } => {
                    let n = (*left).min(input.len() as u64) as usize;
                    file.feed(&input[..n], &mut self.frames, &mut self.out)?;
                    *left -= n as u64;
                    if *left == 0 {
                        self.end_content()?;
                    }
                    n
                }
                Phase::Padding { left } => {
                    let n = (*left).min(input.len() as u64) as usize;
                    *left -= n as u64;
                    if *left == 0 {
                        self.phase = Phase::Header { need: HEADER_SIZE };
                    }
                    self.raw(&input[..n]);
                    n
                }
                Phase::Trailer => {
                    let n = input.len().min(TRAILER_PIECE);
                    self.raw(&input[..n]);
                    if self.segment.len() >= TRAILER_PIECE {
                        self.flush_segment()?;
                        self.flush_between()?;
                    }
                    n
                }
            };
            input = &input[taken..];
        }
        Ok(())
    }

    /// Tar bytes outside any content: headers, padding, the trailer.
    fn raw(&mut self, bytes: &[u8]) {
        self.between.extend_from_slice(bytes);
        self.segment.extend_from_slice(bytes);
    }

    /// Parse the pending header bytes; what of them is past the entry's
    /// headers, for the phase the entry starts.
    fn parse(&mut self) -> io::Result<Vec<u8>> {
        let pending = std::mem::take(&mut self.pending);
        let (consumed, next) = match self.parser.parse(&pending).map_err(invalid)? {
            ParseEvent::NeedData { min_bytes } => {
                self.pending = pending;
                self.phase = Phase::Header { need: min_bytes };
                return Ok(Vec::new());
            }
            ParseEvent::GlobalExtensions { consumed, .. } => {
                (consumed, Phase::Header { need: HEADER_SIZE })
            }
            ParseEvent::SparseEntry { .. } => {
                return Err(invalid(
                    "sparse tar entries cannot be written as zstd:chunked",
                ));
            }
            ParseEvent::End { consumed } => (consumed, Phase::Trailer),
            ParseEvent::Entry { consumed, entry } => {
                let entry_type = toc_type(&entry)?;
                let toc = toc_entry(&entry, entry_type);
                // A tar may name what a TOC may not (a NUL inside a long
                // name, a `..`): refused here, not written for readers
                // to refuse.
                super::toc::check_entry(&toc).map_err(invalid)?;
                let name = entry.path.to_vec();
                let size = entry.size;
                self.raw(&pending[..consumed]);
                let next = self.start_entry(toc, name, size)?;
                self.phase = next;
                return Ok(pending[consumed..].to_vec());
            }
        };
        self.raw(&pending[..consumed]);
        self.phase = next;
        Ok(pending[consumed..].to_vec())
    }

    /// Begin an entry whose headers were just taken in.
    fn start_entry(&mut self, toc: TocEntry, name: Vec<u8>, size: u64) -> io::Result<Phase> {
        self.flush_segment()?;
        if toc.entry_type != EntryType::Reg || size == 0 {
            if size != 0 {
                return Err(invalid(format!(
                    "the {:?} entry {:?} has content",
                    toc.entry_type,
                    String::from_utf8_lossy(&name)
                )));
            }
            self.tar_split.add(&TarSplitEntry::File {
                name,
                size: 0,
                crc64: None,
            })?;
            self.entries.push(toc);
            // Thousands of directories in a row would otherwise pile up.
            if self.between.len() >= TRAILER_PIECE {
                self.flush_between()?;
            }
            return Ok(Phase::Header { need: HEADER_SIZE });
        }
        self.flush_between()?;
        let file = Box::new(FileChunks::new(self.out.count));
        self.file = Some(Pending { entry: toc, name });
        Ok(Phase::Content { left: size, file })
    }

    /// A regular file's last byte came: its TOC entries and tar-split line.
    fn end_content(&mut self) -> io::Result<()> {
        let Phase::Content { file, .. } = std::mem::replace(&mut self.phase, Phase::Trailer) else {
            unreachable!("only called in the content phase");
        };
        let (chunks, digest, crc) = file.finish(&mut self.frames, &mut self.out)?;
        let Pending { mut entry, name } = self.file.take().expect("a file is pending");
        let size = entry.size;
        entry.digest = Some(digest);
        entry.offset = chunks.first().map_or(0, |c| c.blob_offset);
        entry.end_offset = self.out.count;
        self.push_file_entries(entry, &chunks);
        self.tar_split.add(&TarSplitEntry::File {
            name,
            size,
            crc64: Some(crc),
        })?;
        let padding = size.next_multiple_of(HEADER_SIZE as u64) - size;
        self.phase = match padding {
            0 => Phase::Header { need: HEADER_SIZE },
            left => Phase::Padding { left },
        };
        Ok(())
    }

    /// The TOC entries of a regular file and its chunks, as
    /// containers/storage lays them out: chunk fields only when there is
    /// more than one chunk, the first in the file's own entry.
    fn push_file_entries(&mut self, mut entry: TocEntry, chunks: &[Chunk]) {
        if chunks.len() <= 1 {
            self.entries.push(entry);
            return;
        }
        let name = entry.name.clone();
        let chunk_fields = |e: &mut TocEntry, c: &Chunk| {
            e.offset = c.blob_offset;
            e.chunk_offset = c.file_offset;
            e.chunk_size = c.size;
            e.chunk_digest = Some(c.digest.clone());
            e.chunk_type = c.zeros.then(|| "zeros".to_owned());
        };
        chunk_fields(&mut entry, &chunks[0]);
        self.entries.push(entry);
        for c in &chunks[1..] {
            let mut e = TocEntry::new(EntryType::Chunk, name.clone());
            chunk_fields(&mut e, c);
            self.entries.push(e);
        }
    }

    /// The bytes since the last tar-split file entry, as a segment.
    fn flush_segment(&mut self) -> io::Result<()> {
        if !self.segment.is_empty() {
            let segment = TarSplitEntry::Segment(std::mem::take(&mut self.segment));
            self.tar_split.add(&segment)?;
        }
        Ok(())
    }

    /// The bytes since the last file content, as a frame of their own.
    fn flush_between(&mut self) -> io::Result<()> {
        let between = std::mem::take(&mut self.between);
        self.frames.write(&between, &mut self.out)?;
        self.frames.end_frame(&mut self.out)?;
        self.between = between;
        self.between.clear();
        Ok(())
    }

    /// End the blob: the last header frame, the TOC, the tar-split and
    /// the footer. The writer, and what the blob says about itself.
    pub fn finish(mut self) -> io::Result<(W, ChunkedLayer)> {
        match self.phase {
            Phase::Trailer => {}
            Phase::Header { .. } if self.pending.is_empty() => {}
            _ => return Err(invalid("the tar ends in the middle of an entry")),
        }
        self.flush_segment()?;
        self.flush_between()?;
        let data_end = self.out.count;
        let tar_split = std::mem::replace(&mut self.tar_split, TarSplitFrame::new()?);
        let (split_frame, split_digest, split_size) = tar_split.finish()?;
        let toc = Toc {
            version: 1,
            entries: std::mem::take(&mut self.entries),
            tar_split_digest: Some(split_digest),
        };
        let json = toc.to_json();
        let toc_frame = self.frames.frame(&json)?;
        let toc_position = self.skippable(&toc_frame, json.len() as u64)?;
        let split_position = self.skippable(&split_frame, split_size)?;
        let footer = Footer {
            variant: Variant::Current,
            toc: toc_position,
            tar_split: Some(split_position),
        };
        self.out.write_all(&footer.encode())?;
        debug_assert!(data_end + SKIPPABLE_HEADER <= toc_position.offset);
        let layer = ChunkedLayer {
            layout: Layout {
                variant: Variant::Current,
                toc: toc_position,
                toc_checksum: Some(sha256_digest(&toc_frame)),
                tar_split: Some(split_position),
            },
            diff_id: hex_digest(self.diff_id.finish()),
            size: self.out.count,
        };
        Ok((self.out.inner, layer))
    }

    /// Write `content` as a skippable frame; where it is.
    fn skippable(&mut self, content: &[u8], uncompressed: u64) -> io::Result<Position> {
        let length = u32::try_from(content.len())
            .map_err(|_| invalid("the layer's metadata is larger than 4 GiB"))?;
        self.out.write_all(&SKIPPABLE_MAGIC)?;
        self.out.write_all(&length.to_le_bytes())?;
        let offset = self.out.count;
        self.out.write_all(content)?;
        Ok(Position {
            offset,
            length: content.len() as u64,
            uncompressed,
        })
    }
}

impl<W: Write> Write for ChunkedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.diff_id.update(buf);
        self.feed(buf)?;
        Ok(buf.len())
    }

    /// Frames end where the tar says, not where a caller flushes.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The tar-split being compressed, as one frame.
struct TarSplitFrame {
    encoder: zstd::stream::write::Encoder<'static, Vec<u8>>,
    position: u64,
    size: u64,
}

impl TarSplitFrame {
    fn new() -> io::Result<Self> {
        Ok(TarSplitFrame {
            encoder: zstd::stream::write::Encoder::new(Vec::new(), 3)?,
            position: 0,
            size: 0,
        })
    }

    fn add(&mut self, entry: &TarSplitEntry) -> io::Result<()> {
        let line = entry.to_line(self.position);
        self.encoder.write_all(&line)?;
        self.position += 1;
        self.size += line.len() as u64;
        Ok(())
    }

    /// The compressed frame, its sha256, and its uncompressed size.
    fn finish(self) -> io::Result<(Vec<u8>, String, u64)> {
        let frame = self.encoder.finish()?;
        let digest = sha256_digest(&frame);
        Ok((frame, digest, self.size))
    }
}

fn invalid(e: impl ToString) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// The TOC type of a tar entry.
fn toc_type(entry: &ParsedEntry<'_>) -> io::Result<EntryType> {
    Ok(match entry.entry_type {
        TarType::Regular | TarType::Continuous => EntryType::Reg,
        TarType::Directory => EntryType::Dir,
        TarType::Symlink => EntryType::Symlink,
        TarType::Link => EntryType::Hardlink,
        TarType::Char => EntryType::Char,
        TarType::Block => EntryType::Block,
        TarType::Fifo => EntryType::Fifo,
        other => {
            return Err(invalid(format!(
                "the entry {:?} is of a type zstd:chunked has no name for ({other:?})",
                entry.path_lossy()
            )));
        }
    })
}

/// The TOC entry of a tar entry, its content not yet written.
fn toc_entry(entry: &ParsedEntry<'_>, entry_type: EntryType) -> TocEntry {
    let mut toc = TocEntry::new(entry_type, entry.path_lossy());
    toc.link_name = entry
        .link_target_lossy()
        .map(|l| l.into_owned())
        .unwrap_or_default();
    toc.mode = u64::from(entry.mode);
    toc.size = if entry_type == EntryType::Reg {
        entry.size
    } else {
        0
    };
    toc.uid = entry.uid;
    toc.gid = entry.gid;
    toc.mod_time = Some(rfc3339(entry.mtime));
    toc.dev_major = entry.dev_major.map_or(0, u64::from);
    toc.dev_minor = entry.dev_minor.map_or(0, u64::from);
    toc.xattrs = entry
        .xattrs
        .iter()
        .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), BASE64.encode(v)))
        .collect::<BTreeMap<_, _>>();
    toc
}

/// Seconds since the epoch as RFC 3339 in UTC, as Go writes a
/// `time.Time` in JSON; a time past chrono's range (year 262143) as the
/// latest it can show, which no tar's mtime reaches.
pub(super) fn rfc3339(seconds: u64) -> String {
    let time = i64::try_from(seconds)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
    time.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}
