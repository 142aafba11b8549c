//! tar-diff: rebuilding a layer tar from a delta and the files of an image
//! the repository already holds, one op at a time, without buffering the
//! result.
//!
//! The format (containers/tar-diff `file-format.md`): an 8-byte header,
//! then one zstd stream of ops, each `op: u8, size: uvarint, data`. `size`
//! is the operand of COPY and SEEK, which carry no data, and the length of
//! the data of the others. `tardf2` adds ZSTD_DICT (tar-diff's
//! `DeltaOpZstdDict`, read the same way by oci-delta 0.1.1).

use std::io::{self, BufRead, BufReader, Read, Write};

/// The header of a delta that uses the original ops only.
pub(crate) const HEADER_V1: &[u8; 8] = b"tardf1\n\0";
/// The header of a delta that may also use ZSTD_DICT.
pub(crate) const HEADER_V2: &[u8; 8] = b"tardf2\n\0";

/// Emit the op's data.
pub(crate) const OP_DATA: u8 = 0;
/// Make the file named by the op's data the current source file, at 0.
pub(crate) const OP_OPEN: u8 = 1;
/// Emit `size` bytes of the current source file.
pub(crate) const OP_COPY: u8 = 2;
/// Emit the op's data added bytewise (wrapping) to as many source bytes.
pub(crate) const OP_ADD_DATA: u8 = 3;
/// Move the current source file's position to `size`.
pub(crate) const OP_SEEK: u8 = 4;
/// Emit the op's data, one zstd frame, decoded with the whole current
/// source file as its raw-content dictionary (as `zstd --patch-from`).
pub(crate) const OP_ZSTD_DICT: u8 = 5;

/// The longest OPEN path: tar-patch's `maxFilenameSize` (4 KiB), also
/// oci-delta 0.1.1's `MAX_FILENAME_SIZE`.
pub(crate) const MAX_PATH: u64 = 4 * 1024;
/// The largest ADD_DATA: tar-patch's `maxAddDataSize` (100 MiB), also
/// oci-delta 0.1.1's `MAX_ADD_DATA_SIZE`. Applied although we stream it,
/// so that we accept exactly what the reference implementations accept.
pub(crate) const MAX_ADD_DATA: u64 = 100 * 1024 * 1024;
/// The largest zstd window of a ZSTD_DICT frame, as a log: oci-delta
/// 0.1.1's `MAX_ZSTD_DICT_WINDOW_LOG` (29), which is tar-diff's
/// `zstdMaxCompatibleWindow` of 512 MiB, the most its encoder emits.
pub(crate) const MAX_DICT_WINDOW_LOG: u32 = 29;
/// The largest source file used as a ZSTD_DICT dictionary (oci-delta
/// 0.1.1's `MAX_ZSTD_DICT_SIZE`): it is held in memory whole.
pub(crate) const MAX_DICT: u64 = 1 << MAX_DICT_WINDOW_LOG;

/// How much is moved at a time between the delta, the source and the
/// output.
const CHUNK: usize = 64 << 10;

/// Why a tar-diff cannot be applied.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TarDiffError {
    /// The first 8 bytes are neither `tardf1` nor `tardf2`.
    #[error("not a tar-diff: the header is {found:?}")]
    BadHeader {
        /// The bytes found, lossily as text.
        found: String,
    },
    /// The op stream ends inside an op.
    #[error("the tar-diff ends inside {what}")]
    Truncated {
        /// What was being read.
        what: &'static str,
    },
    /// The op stream is not valid zstd.
    #[error("the tar-diff's zstd stream is damaged: {reason}")]
    Decompress {
        /// The decoder's message.
        reason: String,
    },
    /// An op's size does not fit a u64 varint.
    #[error("an op size varint overflows 64 bits")]
    VarintOverflow,
    /// An op code this version does not know.
    #[error("unknown tar-diff op {op}")]
    UnknownOp {
        /// The op code.
        op: u8,
    },
    /// ZSTD_DICT in a `tardf1` delta, which cannot have it.
    #[error("a tardf1 delta uses ZSTD_DICT, which needs tardf2")]
    DictNeedsV2,
    /// An OPEN path longer than [`MAX_PATH`].
    #[error("an OPEN path of {len} bytes is longer than the {MAX_PATH} allowed")]
    PathTooLong {
        /// Its length.
        len: u64,
    },
    /// An OPEN path that cannot name a file of the source image.
    #[error("invalid OPEN path {path:?}: {reason}")]
    InvalidPath {
        /// The path, lossily as text.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The source image has nothing at the path.
    #[error("the source image has no file {path:?}")]
    SourceMissing {
        /// The normalised path.
        path: String,
    },
    /// The path names a directory, symlink, device or other non-file.
    #[error("{path:?} is not a regular file of the source image")]
    SourceNotRegular {
        /// The normalised path.
        path: String,
    },
    /// A directory on the way to the path is a symlink, which is not
    /// followed.
    #[error("{path:?} leads through the symlink {link:?} of the source image")]
    SourceThroughSymlink {
        /// The normalised path.
        path: String,
        /// The symlink on the way.
        link: String,
    },
    /// A source file could not be read.
    #[error("reading {path:?} of the source image failed: {error}")]
    SourceRead {
        /// The normalised path.
        path: String,
        /// Why, with the errno that tells a failing disk from a full one.
        #[source]
        error: io::Error,
    },
    /// A source file ended before its size said.
    #[error("{path:?} of the source image ended at {at}, before its size {size}")]
    ShortSourceRead {
        /// The normalised path.
        path: String,
        /// Where it ended.
        at: u64,
        /// Its declared size.
        size: u64,
    },
    /// COPY, ADD_DATA or SEEK before any OPEN.
    #[error("{op} before any OPEN")]
    NoSourceOpen {
        /// The op.
        op: &'static str,
    },
    /// COPY or ADD_DATA reaching past the end of the source file.
    #[error("{op} of {len} bytes at {at} reaches past the end of {path:?} ({size} bytes)")]
    BeyondSource {
        /// The op.
        op: &'static str,
        /// The source file.
        path: String,
        /// Its position.
        at: u64,
        /// The op's length.
        len: u64,
        /// The file's size.
        size: u64,
    },
    /// SEEK past the end of the source file.
    #[error("SEEK to {to} is past the end of {path:?} ({size} bytes)")]
    SeekBeyondSource {
        /// The source file.
        path: String,
        /// The position asked for.
        to: u64,
        /// The file's size.
        size: u64,
    },
    /// ADD_DATA larger than [`MAX_ADD_DATA`].
    #[error("ADD_DATA of {len} bytes is larger than the {MAX_ADD_DATA} allowed")]
    AddDataTooLarge {
        /// Its length.
        len: u64,
    },
    /// A ZSTD_DICT dictionary larger than [`MAX_DICT`].
    #[error("{path:?} ({size} bytes) is larger than the {MAX_DICT} a ZSTD_DICT dictionary may be")]
    DictTooLarge {
        /// The source file.
        path: String,
        /// Its size.
        size: u64,
    },
    /// A ZSTD_DICT frame that does not decode, or needs too large a
    /// window.
    #[error("the ZSTD_DICT frame against {path:?} does not decode: {reason}")]
    BadDictFrame {
        /// The source file.
        path: String,
        /// The decoder's message.
        reason: String,
    },
    /// Writing the rebuilt tar failed.
    #[error("writing the rebuilt tar failed: {0}")]
    Output(#[source] io::Error),
}

/// A regular file of the source image, read by position. `Id` names the
/// stored objects a file may be.
pub(crate) trait SourceFile<Id = ()>: Send {
    /// Its size in bytes.
    fn size(&self) -> u64;
    /// Read into `buf` from `offset`, as `pread`: 0 only at the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// The stored object whose content `read_at` reads, all of it and
    /// nothing else, when that is certain: the output may then refer to
    /// the object where the file is copied whole.
    fn object(&self) -> Option<&Id> {
        None
    }
}

/// The files of the image a delta was made against.
pub(crate) trait SourceFiles<Id = ()> {
    /// The regular file at `path`, which is normalised (see
    /// [`normalise`]). Implementations must not follow symlinks, not even
    /// for a directory on the way.
    fn open(&self, path: &str) -> Result<Box<dyn SourceFile<Id>>, TarDiffError>;
}

/// Where a tar-diff writes the tar it rebuilds.
pub(crate) trait TarOut<Id>: Write {
    /// The next `size` bytes written are all of the stored object `id`:
    /// a COPY of a whole source file whose [`SourceFile::object`] it is.
    fn object_follows(&mut self, id: &Id, size: u64);
}

/// A tar rebuilt in memory keeps only the bytes.
impl<Id> TarOut<Id> for Vec<u8> {
    fn object_follows(&mut self, _: &Id, _: u64) {}
}

/// An output that keeps only the bytes, for a tar rebuilt anywhere but
/// into the repository.
pub(crate) struct BytesOnly<W>(pub W);

impl<W: Write> Write for BytesOnly<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<Id, W: Write> TarOut<Id> for BytesOnly<W> {
    fn object_follows(&mut self, _: &Id, _: u64) {}
}

/// The normal form of an OPEN path: relative to the image root, with no
/// empty, `.` or `..` components. `..` is resolved lexically; one that
/// would climb above the root is refused rather than clamped, since no
/// delta tar-diff writes has it.
pub(crate) fn normalise(raw: &[u8]) -> Result<String, TarDiffError> {
    let invalid = |reason| TarDiffError::InvalidPath {
        path: String::from_utf8_lossy(raw).into_owned(),
        reason,
    };
    let text = std::str::from_utf8(raw).map_err(|_| invalid("it is not UTF-8"))?;
    if text.contains('\0') {
        return Err(invalid("it contains a NUL byte"));
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts
                    .pop()
                    .ok_or_else(|| invalid("it leads above the image root"))?;
            }
            name => parts.push(name),
        }
    }
    if parts.is_empty() {
        return Err(invalid("it names the image root"));
    }
    Ok(parts.join("/"))
}

/// Apply the tar-diff read from `delta` against `sources`, writing the
/// rebuilt tar to `out`. The result is not verified here: the caller
/// checks its diff_id. `delta` is read only as far as the op stream goes.
pub(crate) fn apply<Id>(
    delta: impl Read,
    sources: &dyn SourceFiles<Id>,
    out: &mut dyn TarOut<Id>,
) -> Result<(), TarDiffError> {
    let mut delta = BufReader::new(delta);
    let v2 = read_header(&mut delta)?;
    let decoder = zstd::stream::read::Decoder::with_buffer(delta).map_err(decompress)?;
    let mut applier = Applier {
        ops: BufReader::with_capacity(CHUNK, decoder),
        sources,
        out,
        v2,
        current: None,
        buf: vec![0; CHUNK],
        extra: vec![0; CHUNK],
    };
    while let Some(op) = applier.next_op()? {
        applier.run(op)?;
    }
    Ok(())
}

/// Check the header; whether it is `tardf2`.
fn read_header(delta: &mut impl Read) -> Result<bool, TarDiffError> {
    let mut header = [0u8; 8];
    read_exact(delta, &mut header, "the header")?;
    match &header {
        h if h == HEADER_V1 => Ok(false),
        h if h == HEADER_V2 => Ok(true),
        h => Err(TarDiffError::BadHeader {
            found: String::from_utf8_lossy(h).into_owned(),
        }),
    }
}

/// One op: its code and size.
#[derive(Debug, Clone, Copy)]
struct Op {
    code: u8,
    size: u64,
}

/// The current source file and the position in it.
struct Current<Id> {
    path: String,
    file: Box<dyn SourceFile<Id>>,
    pos: u64,
}

/// The state of one application.
struct Applier<'a, R, Id> {
    ops: R,
    sources: &'a dyn SourceFiles<Id>,
    out: &'a mut dyn TarOut<Id>,
    v2: bool,
    current: Option<Current<Id>>,
    /// Scratch space for data from the delta.
    buf: Vec<u8>,
    /// Scratch space for data from the source.
    extra: Vec<u8>,
}

impl<R: BufRead, Id> Applier<'_, R, Id> {
    /// The next op, or `None` at the clean end of the stream.
    fn next_op(&mut self) -> Result<Option<Op>, TarDiffError> {
        let code = match self.ops.fill_buf() {
            Ok([]) => return Ok(None),
            Ok(buf) => buf[0],
            Err(e) => return Err(read_error(e, "an op")),
        };
        self.ops.consume(1);
        let size = read_uvarint(&mut self.ops)?;
        Ok(Some(Op { code, size }))
    }

    fn run(&mut self, op: Op) -> Result<(), TarDiffError> {
        match op.code {
            OP_DATA => self.data(op.size),
            OP_OPEN => self.open(op.size),
            OP_COPY => self.copy(op.size),
            OP_ADD_DATA => self.add_data(op.size),
            OP_SEEK => self.seek(op.size),
            OP_ZSTD_DICT => self.zstd_dict(op.size),
            code => Err(TarDiffError::UnknownOp { op: code }),
        }
    }

    fn data(&mut self, mut left: u64) -> Result<(), TarDiffError> {
        while left > 0 {
            let n = chunk(left);
            read_exact(&mut self.ops, &mut self.buf[..n], "DATA")?;
            self.out
                .write_all(&self.buf[..n])
                .map_err(TarDiffError::Output)?;
            left -= n as u64;
        }
        Ok(())
    }

    fn open(&mut self, len: u64) -> Result<(), TarDiffError> {
        if len > MAX_PATH {
            return Err(TarDiffError::PathTooLong { len });
        }
        let mut raw = vec![0u8; len as usize];
        read_exact(&mut self.ops, &mut raw, "an OPEN path")?;
        let path = normalise(&raw)?;
        let file = self.sources.open(&path)?;
        self.current = Some(Current { path, file, pos: 0 });
        Ok(())
    }

    fn copy(&mut self, mut left: u64) -> Result<(), TarDiffError> {
        let current = span(&mut self.current, "COPY", left)?;
        // What follows is then exactly the object's bytes, as read below.
        if let Some(id) = current.file.object()
            && current.pos == 0
            && left == current.file.size()
        {
            self.out.object_follows(id, left);
        }
        while left > 0 {
            let n = chunk(left);
            read_source(current, &mut self.buf[..n])?;
            self.out
                .write_all(&self.buf[..n])
                .map_err(TarDiffError::Output)?;
            left -= n as u64;
        }
        Ok(())
    }

    fn add_data(&mut self, mut left: u64) -> Result<(), TarDiffError> {
        if left > MAX_ADD_DATA {
            return Err(TarDiffError::AddDataTooLarge { len: left });
        }
        let current = span(&mut self.current, "ADD_DATA", left)?;
        while left > 0 {
            let n = chunk(left);
            read_exact(&mut self.ops, &mut self.buf[..n], "ADD_DATA")?;
            read_source(current, &mut self.extra[..n])?;
            for (delta, source) in self.buf[..n].iter_mut().zip(&self.extra[..n]) {
                *delta = delta.wrapping_add(*source);
            }
            self.out
                .write_all(&self.buf[..n])
                .map_err(TarDiffError::Output)?;
            left -= n as u64;
        }
        Ok(())
    }

    fn seek(&mut self, to: u64) -> Result<(), TarDiffError> {
        let current = self
            .current
            .as_mut()
            .ok_or(TarDiffError::NoSourceOpen { op: "SEEK" })?;
        let size = current.file.size();
        if to > size {
            return Err(TarDiffError::SeekBeyondSource {
                path: current.path.clone(),
                to,
                size,
            });
        }
        current.pos = to;
        Ok(())
    }

    fn zstd_dict(&mut self, len: u64) -> Result<(), TarDiffError> {
        if !self.v2 {
            return Err(TarDiffError::DictNeedsV2);
        }
        let current = self
            .current
            .as_mut()
            .ok_or(TarDiffError::NoSourceOpen { op: "ZSTD_DICT" })?;
        let dict = read_whole(current)?;
        let path = current.path.clone();
        let mut frame = (&mut self.ops).take(len);
        decode_with_dict(&mut frame, &dict, &path, &mut self.buf, self.out)?;
        // Bytes after the frame still belong to the op: skip them, as
        // oci-delta does.
        io::copy(&mut frame, &mut io::sink()).map_err(|e| read_error(e, "ZSTD_DICT"))?;
        if frame.limit() > 0 {
            return Err(TarDiffError::Truncated { what: "ZSTD_DICT" });
        }
        Ok(())
    }
}

/// The current file, with `len` bytes from its position checked to lie
/// inside it.
fn span<'c, Id>(
    current: &'c mut Option<Current<Id>>,
    op: &'static str,
    len: u64,
) -> Result<&'c mut Current<Id>, TarDiffError> {
    let current = current.as_mut().ok_or(TarDiffError::NoSourceOpen { op })?;
    let size = current.file.size();
    if current.pos.checked_add(len).is_none_or(|end| end > size) {
        return Err(TarDiffError::BeyondSource {
            op,
            path: current.path.clone(),
            at: current.pos,
            len,
            size,
        });
    }
    Ok(current)
}

/// Decode one zstd frame from `frame` with `dict` as its prefix into
/// `out`.
fn decode_with_dict(
    frame: &mut impl BufRead,
    dict: &[u8],
    path: &str,
    buf: &mut [u8],
    out: &mut dyn Write,
) -> Result<(), TarDiffError> {
    let bad = |e: io::Error| TarDiffError::BadDictFrame {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let mut decoder = zstd::stream::read::Decoder::with_ref_prefix(frame, dict)
        .map_err(bad)?
        .single_frame();
    decoder.window_log_max(MAX_DICT_WINDOW_LOG).map_err(bad)?;
    loop {
        let n = match decoder.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(bad(e)),
        };
        out.write_all(&buf[..n]).map_err(TarDiffError::Output)?;
    }
}

/// The whole current file, which leaves its position at the end (as
/// oci-delta's data sources do).
fn read_whole<Id>(current: &mut Current<Id>) -> Result<Vec<u8>, TarDiffError> {
    let size = current.file.size();
    if size > MAX_DICT {
        return Err(TarDiffError::DictTooLarge {
            path: current.path.clone(),
            size,
        });
    }
    let mut dict = vec![0u8; size as usize];
    current.pos = 0;
    read_source(current, &mut dict)?;
    Ok(dict)
}

/// Fill `buf` from the current file's position, advancing it. The caller
/// has checked that the file is long enough.
fn read_source<Id>(current: &mut Current<Id>, buf: &mut [u8]) -> Result<(), TarDiffError> {
    let mut filled = 0;
    while filled < buf.len() {
        let at = current.pos;
        match current.file.read_at(&mut buf[filled..], at) {
            Ok(0) => {
                return Err(TarDiffError::ShortSourceRead {
                    path: current.path.clone(),
                    at,
                    size: current.file.size(),
                });
            }
            Ok(n) => {
                filled += n;
                current.pos += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(TarDiffError::SourceRead {
                    path: current.path.clone(),
                    error: e,
                });
            }
        }
    }
    Ok(())
}

/// Read a protobuf-style unsigned varint: 7 bits a byte, low first, at
/// most 10 bytes, the last of which may only hold the top bit of a u64.
fn read_uvarint(r: &mut impl Read) -> Result<u64, TarDiffError> {
    let mut value = 0u64;
    for i in 0..10 {
        let mut byte = [0u8; 1];
        read_exact(r, &mut byte, "an op size")?;
        let bits = u64::from(byte[0] & 0x7f);
        if i == 9 && byte[0] > 1 {
            return Err(TarDiffError::VarintOverflow);
        }
        value |= bits << (7 * i);
        if byte[0] & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(TarDiffError::VarintOverflow)
}

/// The length of the next chunk of `left` bytes.
fn chunk(left: u64) -> usize {
    usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK))
}

/// `read_exact` with the end of the stream as [`TarDiffError::Truncated`].
fn read_exact(r: &mut impl Read, buf: &mut [u8], what: &'static str) -> Result<(), TarDiffError> {
    r.read_exact(buf).map_err(|e| read_error(e, what))
}

/// A failure reading the delta: its end, or damaged zstd.
fn read_error(e: io::Error, what: &'static str) -> TarDiffError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        TarDiffError::Truncated { what }
    } else {
        decompress(e)
    }
}

fn decompress(e: io::Error) -> TarDiffError {
    TarDiffError::Decompress {
        reason: e.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod tests;
