//! Encoding one layer tar as a tar-diff against the files of the source
//! image: tar headers and new content as DATA, content the source has as
//! OPEN + COPY, changed files as a zstd `--patch-from` frame (ZSTD_DICT)
//! or as bsdiff-style COPY / ADD_DATA / DATA runs.
//!
//! The decoder in [`super::super::tardiff`] is the specification: what is
//! written here is exactly what it (and oci-delta 0.1.1) reads.

use std::{
    collections::HashMap,
    fs::File,
    io::{self, Seek, Write},
    os::unix::fs::FileExt,
    sync::atomic::AtomicBool,
};

use composefs::{
    fsverity::{FsVerityHashValue, compute_verity},
    tree::RegularFile,
};

use super::{
    DeltaMethod,
    large::{self, At, LARGE, Run},
    matcher::{self, Piece},
    ordered,
};
use crate::delta::{
    source::SourceImage,
    tardiff::{
        HEADER_V1, HEADER_V2, MAX_ADD_DATA, MAX_DICT, MAX_DICT_WINDOW_LOG, MAX_PATH, OP_ADD_DATA,
        OP_COPY, OP_DATA, OP_OPEN, OP_SEEK, OP_ZSTD_DICT, SourceFiles, normalise,
    },
};

/// The zstd level of the op stream and of ZSTD_DICT frames. On the Debian
/// benchmark pair (bench/delta.sh) the base layer's diff was 7.97 MB in
/// 13 s at 16, 7.55 MB in 19 s at 18, and 7.44 MB in 26 s at 19: 18 keeps
/// creation well inside half a minute on two cores.
pub(crate) const LEVEL: i32 = 18;

/// How many candidate matches (as a power of two) a ZSTD_DICT frame's
/// match finder compares at each position when the old and new files
/// together pass [`DICT_SEARCH_FROM`], where level 18 compares 64.
/// Indexing the old file and searching it took two thirds of a delta
/// create's CPU time, nearly all of it in such large pairs. On the Debian
/// pair 4 compares made the delta 0.42 % larger (7,600,128 bytes against
/// 7,567,872) and the create a quarter faster (7.9–8.0 s against 10.2–10.7 s
/// on two cores); 8 compares, on every file, gave 0.15 % and 8.4–9.3 s.
/// The frames decode as fast either way.
const DICT_SEARCH_LOG: u32 = 2;

/// The size of an old and new file together from which
/// [`DICT_SEARCH_LOG`] applies: zstd's parameter tables for level 18 stop
/// distinguishing sizes here. Below it the search is cheap, and a small,
/// repetitive text can lose its match to the old file with fewer compares.
const DICT_SEARCH_FROM: usize = 256 << 10;

/// Files smaller than this are sent as DATA: an OPEN costs about as much
/// as they do, and the op stream's compression handles them.
const MIN_MATCH: u64 = 128;

/// How many bytes of files past the one the op stream waits for the
/// diffing threads may reach, largest first. On the Debian benchmark pair
/// a window of 8 files left one core idle while a 6.8 MB binary was
/// diffed; 64 MiB keeps both busy, and bounds the diffs held waiting.
const AHEAD: u64 = 64 << 20;

/// How much is copied at a time from the layer tar into a DATA op.
const CHUNK: usize = 256 << 10;

/// The source image's files, indexed to find a target file's best source.
pub(crate) struct SourceIndex<H: FsVerityHashValue> {
    /// A path holding each content, by object id.
    by_id: HashMap<H, String>,
    /// Every regular file's size, by path.
    by_path: HashMap<String, u64>,
    /// Paths, by file name.
    by_name: HashMap<String, Vec<String>>,
}

impl<H: FsVerityHashValue> SourceIndex<H> {
    /// Index the regular files of `image`.
    pub(crate) fn new(image: &SourceImage<H>) -> Self {
        let mut index = SourceIndex {
            by_id: HashMap::new(),
            by_path: HashMap::new(),
            by_name: HashMap::new(),
        };
        image.for_each_file(|path, file| index.add(path, file));
        index
    }

    fn add(&mut self, path: &str, file: &RegularFile<H>) {
        if path.len() as u64 > MAX_PATH {
            return;
        }
        let id = match file {
            RegularFile::Inline(data) => compute_verity::<H>(data),
            RegularFile::External(id, _) | RegularFile::ExternalNoVerity(id, _) => id.clone(),
            // No data to copy from.
            RegularFile::Sparse(_) => return,
        };
        // The shortest path, then the first in name order: deterministic.
        self.by_id
            .entry(id)
            .and_modify(|p| {
                if (path.len(), path) < (p.len(), p.as_str()) {
                    *p = path.to_owned();
                }
            })
            .or_insert_with(|| path.to_owned());
        self.by_path.insert(path.to_owned(), file.file_size());
        let name = path.rsplit('/').next().unwrap_or(path).to_owned();
        self.by_name.entry(name).or_default().push(path.to_owned());
    }

    /// The source file to diff the target file `path` of `size` bytes
    /// against: the same path, else the file of the same name closest in
    /// size; and whether it is the same path.
    fn similar(&self, path: &str, size: u64) -> Option<(&str, bool)> {
        if let Some((found, _)) = self.by_path.get_key_value(path) {
            return Some((found, true));
        }
        let name = path.rsplit('/').next().unwrap_or(path);
        self.by_name
            .get(name)?
            .iter()
            .min_by_key(|p| (self.by_path[p.as_str()].abs_diff(size), p.as_str()))
            .map(|p| (p.as_str(), false))
    }
}

/// How the files of one layer were encoded.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Encoded {
    /// Files copied whole from the source.
    pub copied: u64,
    /// Files diffed against a source file.
    pub diffed: u64,
    /// Files of at least [`MIN_MATCH`] bytes sent as data.
    pub added: u64,
}

/// Write the tar-diff of the layer tar `tar` against `source` to `out`,
/// diffing files on `jobs` threads. The bytes do not depend on `jobs`.
pub(crate) fn encode<H: FsVerityHashValue>(
    tar: &File,
    source: &SourceImage<H>,
    index: &SourceIndex<H>,
    method: DeltaMethod,
    jobs: usize,
    out: impl Write,
    cancelled: &AtomicBool,
) -> io::Result<Encoded> {
    let header = match method {
        DeltaMethod::Zstd => HEADER_V2,
        DeltaMethod::Bsdiff => HEADER_V1,
    };
    let mut out = out;
    out.write_all(header)?;
    let mut ops = Frames::new(out, LEVEL)?;
    let files = Files {
        tar,
        source,
        index,
        method,
        cancelled,
    };
    let candidates = files.candidates()?;
    let mut encoder = Encoder {
        tar,
        ops: Ops(&mut ops),
        done: 0,
        encoded: Encoded::default(),
    };
    ordered::in_order(
        &candidates,
        jobs,
        ordered::Ahead {
            budget: AHEAD,
            weight: |file: &Candidate| file.size,
        },
        |file| files.decide(file),
        |file, decided| encoder.emit(file, decided?),
    )?;
    let end = tar.metadata()?.len();
    encoder.data_until(end)?;
    let encoded = encoder.encoded;
    ops.finish()?.flush()?;
    Ok(encoded)
}

/// The op stream being written.
struct Ops<'w, W: Write>(&'w mut W);

impl<W: Write> Ops<'_, W> {
    /// An op and its size; its data, if any, follows.
    fn op(&mut self, code: u8, size: u64) -> io::Result<()> {
        let mut bytes = vec![code];
        let mut value = size;
        while value >= 0x80 {
            bytes.push(value as u8 | 0x80);
            value >>= 7;
        }
        bytes.push(value as u8);
        self.0.write_all(&bytes)
    }

    fn with_data(&mut self, code: u8, data: &[u8]) -> io::Result<()> {
        self.op(code, data.len() as u64)?;
        self.0.write_all(data)
    }

    fn open(&mut self, path: &str) -> io::Result<()> {
        self.with_data(OP_OPEN, path.as_bytes())
    }

    /// The changed file `new` as runs copied from, added to, or not in
    /// `old`; the source position starts at 0 after OPEN.
    fn bsdiff(&mut self, old: &[u8], new: &[u8], pieces: Vec<Piece>) -> io::Result<()> {
        let mut pos = 0u64;
        for piece in pieces {
            match piece {
                Piece::Copy { from, len } => {
                    self.seek(&mut pos, from)?;
                    self.op(OP_COPY, len)?;
                    pos += len;
                }
                Piece::Add { at, from, len } => {
                    self.seek(&mut pos, from)?;
                    let from = from as usize;
                    let delta: Vec<u8> = new[at..at + len]
                        .iter()
                        .zip(&old[from..from + len])
                        .map(|(n, o)| n.wrapping_sub(*o))
                        .collect();
                    for part in delta.chunks(MAX_ADD_DATA as usize) {
                        self.with_data(OP_ADD_DATA, part)?;
                    }
                    pos += len as u64;
                }
                Piece::Data { at, len } => self.with_data(OP_DATA, &new[at..at + len])?,
            }
        }
        Ok(())
    }

    fn seek(&mut self, pos: &mut u64, to: u64) -> io::Result<()> {
        if *pos != to {
            self.op(OP_SEEK, to)?;
            *pos = to;
        }
        Ok(())
    }
}

/// A regular file of the layer tar, large enough to be encoded on its own.
struct Candidate {
    path: String,
    /// Where its content starts in the tar.
    start: u64,
    size: u64,
}

/// How a candidate is sent, decided apart from the op stream.
enum Decided {
    /// Its ops (OPEN, then COPY or the diff), to write where it starts.
    Ops { bytes: Vec<u8>, copied: bool },
    /// A large file as copies from the source file `source` and runs of
    /// its own content, read from the tar when written.
    Runs { source: String, runs: Vec<Run> },
    /// As part of the DATA around it.
    Data,
}

/// What deciding a file needs; shared by the threads that decide.
struct Files<'a, H: FsVerityHashValue> {
    tar: &'a File,
    source: &'a SourceImage<H>,
    index: &'a SourceIndex<H>,
    method: DeltaMethod,
    /// Set once the delta is no longer wanted; checked before each file.
    cancelled: &'a AtomicBool,
}

impl<H: FsVerityHashValue> Files<'_, H> {
    /// Every regular file worth encoding; what lies between them
    /// (headers, padding, other entries) becomes DATA.
    fn candidates(&self) -> io::Result<Vec<Candidate>> {
        // The tar crate reads from the file's position.
        let mut rewind = self.tar;
        rewind.seek(io::SeekFrom::Start(0))?;
        let mut archive = tar::Archive::new(self.tar);
        let mut found = Vec::new();
        for entry in archive.entries_with_seek()? {
            super::layers::cancelled(self.cancelled)?;
            let entry = entry?;
            let kind = entry.header().entry_type();
            let size = entry.size();
            if !(kind.is_file() || kind.is_contiguous()) || size < MIN_MATCH {
                continue;
            }
            let Ok(path) = normalise(&entry.path_bytes()) else {
                continue;
            };
            let start = entry.raw_file_position();
            found.push(Candidate { path, start, size });
        }
        Ok(found)
    }

    /// How to send `file`: copied whole from a source file with its
    /// content, diffed against a similar one, or as data.
    fn decide(&self, file: &Candidate) -> io::Result<Decided> {
        super::layers::cancelled(self.cancelled)?;
        let similar = self.index.similar(&file.path, file.size);
        if file.size >= LARGE || similar.is_some_and(|(p, _)| self.index.by_path[p] >= LARGE) {
            return self.decide_large(file, similar);
        }
        let data = read_at(self.tar, file.start, file.size)?;
        let id = compute_verity::<H>(&data);
        let mut bytes = Vec::new();
        let mut ops = Ops(&mut bytes);
        let copied = if let Some(found) = self.index.by_id.get(&id) {
            ops.open(found)?;
            ops.op(OP_COPY, file.size)?;
            true
        } else if let Some(diff) = self.diff(&file.path, &data)? {
            ops.open(diff.source)?;
            match diff.ops {
                DiffOps::Frame(frame) => ops.with_data(OP_ZSTD_DICT, &frame)?,
                DiffOps::Pieces(pieces) => ops.bsdiff(&diff.old, &data, pieces)?,
            }
            false
        } else {
            return Ok(Decided::Data);
        };
        Ok(Decided::Ops { bytes, copied })
    }

    /// How to send `file`, too large to hold in memory, with `similar`
    /// the source file to match it against: as [`Self::decide`] does,
    /// with the runs of [`large::read`] for a diff.
    fn decide_large(&self, file: &Candidate, similar: Option<(&str, bool)>) -> io::Result<Decided> {
        let new = |buf: &mut [u8], at: u64| self.tar.read_exact_at(buf, file.start + at);
        let opened =
            similar.and_then(|(path, same)| Some((self.source.open(path).ok()?, path, same)));
        let old = opened
            .as_ref()
            .map(|(f, ..)| move |buf: &mut [u8], at: u64| read_source_at(f.as_ref(), buf, at));
        let old_size = opened.as_ref().map_or(0, |(f, ..)| f.size());
        let matched = large::read::<H>(
            &new,
            file.size,
            old.as_ref().map(|o| (o as &dyn At, old_size)),
            self.cancelled,
        )?;
        if let Some(found) = self.index.by_id.get(&matched.id) {
            let mut bytes = Vec::new();
            let mut ops = Ops(&mut bytes);
            ops.open(found)?;
            ops.op(OP_COPY, file.size)?;
            return Ok(Decided::Ops {
                bytes,
                copied: true,
            });
        }
        let Some((_, source, same_path)) = opened else {
            return Ok(Decided::Data);
        };
        let copied: u64 = matched
            .runs
            .iter()
            .map(|r| match r {
                Run::Copy { len, .. } => *len,
                Run::Data { .. } => 0,
            })
            .sum();
        // As for a small file: a match of a file that merely shares the
        // name must pay, and a file with nothing in common is data.
        if copied == 0 || (!same_path && copied < file.size / 8) {
            return Ok(Decided::Data);
        }
        Ok(Decided::Runs {
            source: source.to_owned(),
            runs: matched.runs,
        })
    }

    /// The target file `path` with content `new` encoded against its most
    /// similar source file, if there is one and the diff pays: a file that
    /// merely shares a name (`__init__.py`, `README`) may be unrelated.
    fn diff<'i>(&'i self, path: &str, new: &[u8]) -> io::Result<Option<Diff<'i>>> {
        let Some((source, same_path)) = self.index.similar(path, new.len() as u64) else {
            return Ok(None);
        };
        let Some(old) = self.read_source(source)?.filter(|o| usable(o)) else {
            return Ok(None);
        };
        let ops = match self.method {
            DeltaMethod::Zstd => DiffOps::Frame(patch_from(&old, new)?),
            DeltaMethod::Bsdiff => DiffOps::Pieces(matcher::diff(&old, new)),
        };
        if !same_path && !pays(&ops, new)? {
            return Ok(None);
        }
        Ok(Some(Diff { source, old, ops }))
    }

    /// A whole source file, or `None` if the image lacks it after all.
    fn read_source(&self, path: &str) -> io::Result<Option<Vec<u8>>> {
        let Ok(file) = self.source.open(path) else {
            return Ok(None);
        };
        let mut data = vec![0u8; file.size() as usize];
        let mut at = 0;
        while at < data.len() {
            match file.read_at(&mut data[at..], at as u64)? {
                0 => return Err(io::Error::other(format!("{path:?} ends early"))),
                n => at += n,
            }
        }
        Ok(Some(data))
    }
}

/// Whether a source file can serve as the base of a diff: ZSTD_DICT
/// holds it in memory whole, up to the decoder's limit.
fn usable(old: &[u8]) -> bool {
    !old.is_empty() && old.len() as u64 <= MAX_DICT
}

/// The zstd level of the frames that hold large files, where a level made
/// for a layer's worth of small files would take an hour: 64 MiB of random
/// bytes took 18.7 s at [`LEVEL`] and 0.11 s at 3; a tar of this machine's
/// /usr/share/doc and man (187 MB) 45 s for 90.9 MB, and 0.56 s for
/// 100.3 MB.
const LARGE_LEVEL: i32 = 3;

/// The op stream of one layer, written in tar order.
struct Encoder<'a, W: Write> {
    tar: &'a File,
    ops: Ops<'a, Frames<W>>,
    /// How far into the tar the ops reach.
    done: u64,
    encoded: Encoded,
}

impl<W: Write> Encoder<'_, W> {
    /// Write `file` as `decided`, after the DATA that precedes it.
    fn emit(&mut self, file: &Candidate, decided: Decided) -> io::Result<()> {
        let (bytes, copied) = match decided {
            Decided::Ops { bytes, copied } => (bytes, copied),
            Decided::Runs { source, runs } => {
                self.data_until(file.start)?;
                return self.in_large_frame(|e| e.runs(file, &source, runs));
            }
            Decided::Data if file.size >= LARGE => {
                self.data_until(file.start)?;
                self.encoded.added += 1;
                return self.in_large_frame(|e| e.data_until(file.start + file.size));
            }
            // Left for the DATA that follows.
            Decided::Data => {
                self.encoded.added += 1;
                return Ok(());
            }
        };
        self.data_until(file.start)?;
        self.ops.0.write_all(&bytes)?;
        if copied {
            self.encoded.copied += 1;
        } else {
            self.encoded.diffed += 1;
        }
        self.done = file.start + file.size;
        Ok(())
    }

    /// Write the large `file` as copies from the source file `source` and
    /// data read from the tar where it differs.
    fn runs(&mut self, file: &Candidate, source: &str, runs: Vec<Run>) -> io::Result<()> {
        self.ops.open(source)?;
        let mut pos = 0;
        for run in runs {
            match run {
                Run::Copy { from, len } => {
                    self.ops.seek(&mut pos, from)?;
                    self.ops.op(OP_COPY, len)?;
                    pos += len;
                }
                Run::Data { at, len } => {
                    self.done = file.start + at;
                    self.data_until(file.start + at + len)?;
                }
            }
        }
        self.done = file.start + file.size;
        self.encoded.diffed += 1;
        Ok(())
    }

    /// Write what `write` writes in a frame of its own at [`LARGE_LEVEL`].
    /// Decoders read concatenated frames as one stream (RFC 8878, 3.1).
    fn in_large_frame(
        &mut self,
        write: impl FnOnce(&mut Self) -> io::Result<()>,
    ) -> io::Result<()> {
        self.level(LARGE_LEVEL)?;
        write(self)?;
        self.level(LEVEL)
    }

    fn level(&mut self, level: i32) -> io::Result<()> {
        self.ops.0.next(level)
    }

    /// Send the tar from where the ops reach up to `end` as DATA.
    fn data_until(&mut self, end: u64) -> io::Result<()> {
        if end <= self.done {
            return Ok(());
        }
        self.ops.op(OP_DATA, end - self.done)?;
        let mut buf = vec![0u8; CHUNK];
        while self.done < end {
            let n = (end - self.done).min(CHUNK as u64) as usize;
            self.tar.read_exact_at(&mut buf[..n], self.done)?;
            self.ops.0.write_all(&buf[..n])?;
            self.done += n as u64;
        }
        Ok(())
    }
}

/// The op stream as a run of checksummed zstd frames.
struct Frames<W: Write>(Option<zstd::stream::write::Encoder<'static, W>>);

impl<W: Write> Frames<W> {
    fn new(out: W, level: i32) -> io::Result<Self> {
        let mut frame = zstd::stream::write::Encoder::new(out, level)?;
        frame.include_checksum(true)?;
        Ok(Frames(Some(frame)))
    }

    /// End the frame being written; the next one is at `level`.
    fn next(&mut self, level: i32) -> io::Result<()> {
        let out = self.take()?.finish()?;
        *self = Self::new(out, level)?;
        Ok(())
    }

    /// End the last frame.
    fn finish(mut self) -> io::Result<W> {
        self.take()?.finish()
    }

    fn take(&mut self) -> io::Result<zstd::stream::write::Encoder<'static, W>> {
        self.0.take().ok_or_else(no_frame)
    }

    fn frame(&mut self) -> io::Result<&mut zstd::stream::write::Encoder<'static, W>> {
        self.0.as_mut().ok_or_else(no_frame)
    }
}

/// What writing after a failed [`Frames::next`] meets.
fn no_frame() -> io::Error {
    io::Error::other("the op stream failed to start a frame")
}

impl<W: Write> Write for Frames<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.frame()?.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.frame()?.flush()
    }
}

/// A changed file's encoding against a source file.
struct Diff<'i> {
    /// The source file's path.
    source: &'i str,
    /// Its content.
    old: Vec<u8>,
    ops: DiffOps,
}

/// What a changed file is sent as.
enum DiffOps {
    /// A ZSTD_DICT frame.
    Frame(Vec<u8>),
    /// COPY, ADD_DATA and DATA runs.
    Pieces(Vec<Piece>),
}

/// Whether the diff is smaller than sending `new` as data: the frame
/// smaller than `new` compressed alone, or an eighth of `new` copied.
fn pays(ops: &DiffOps, new: &[u8]) -> io::Result<bool> {
    Ok(match ops {
        DiffOps::Frame(frame) => frame.len() < zstd::bulk::compress(new, LEVEL)?.len(),
        DiffOps::Pieces(pieces) => {
            let copied: u64 = pieces
                .iter()
                .map(|p| match p {
                    Piece::Copy { len, .. } => *len,
                    _ => 0,
                })
                .sum();
            copied >= new.len() as u64 / 8
        }
    })
}

/// One zstd frame of `new` compressed with `old` as its raw-content prefix,
/// with a window that reaches back over `old` as far as the decoder
/// allows.
pub(crate) fn patch_from(old: &[u8], new: &[u8]) -> io::Result<Vec<u8>> {
    use zstd::stream::raw::CParameter;
    let span = (old.len() + new.len()).max(1) as u64;
    let window_log = (64 - (span - 1).leading_zeros()).clamp(10, MAX_DICT_WINDOW_LOG);
    let mut encoder = zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), LEVEL, old)?;
    encoder.set_parameter(CParameter::WindowLog(window_log))?;
    // Long-distance matching finds the old file's runs beyond the
    // regular match finder's reach, as `--patch-from` turns it on.
    encoder.set_parameter(CParameter::EnableLongDistanceMatching(span > 1 << 24))?;
    if old.len() + new.len() > DICT_SEARCH_FROM {
        encoder.set_parameter(CParameter::SearchLog(DICT_SEARCH_LOG))?;
    }
    encoder.set_pledged_src_size(Some(new.len() as u64))?;
    encoder.include_contentsize(true)?;
    encoder.write_all(new)?;
    encoder.finish()
}

/// Fill `buf` from the source file `file` at `at`.
fn read_source_at<H>(
    file: &dyn crate::delta::tardiff::SourceFile<H>,
    buf: &mut [u8],
    at: u64,
) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], at + done as u64)? {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the source file ends early",
                ));
            }
            n => done += n,
        }
    }
    Ok(())
}

fn read_at(file: &File, start: u64, size: u64) -> io::Result<Vec<u8>> {
    let mut data = vec![0u8; size as usize];
    file.read_exact_at(&mut data, start)?;
    Ok(data)
}
