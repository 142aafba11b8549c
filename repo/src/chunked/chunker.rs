//! Where a regular file's content is cut into chunks, each compressed in
//! a frame of its own: a rolling checksum over the last 64 bytes decides,
//! as bup and containers/storage do, so that an insertion early in a file
//! moves only the chunk it falls in; runs of zeros are chunks of their own.

use std::io::{self, Write};

use openssl::sha::Sha256;

use super::{frames::Frames, hex_digest, tarsplit::Crc64};

/// The rolling checksum's window.
const WINDOW: usize = 64;
/// What bup adds to each byte so that runs of zeros still roll.
const CHAR_OFFSET: u32 = 31;
/// A chunk ends where the low this many bits of the checksum are all
/// ones: chunks of 64 KiB on average.
const SPLIT_BITS: u32 = 16;
/// A run of at least this many zeros is a `zeros` chunk.
const HOLE_MIN: u64 = 1024;
/// No chunk is longer, so that one is never held whole in memory past
/// this; containers/storage has no such bound, so the two cut only
/// content with 8 MiB and no split point differently.
pub(super) const MAX_CHUNK: u64 = 8 << 20;

/// bup's rolling sum of the last [`WINDOW`] bytes.
#[derive(Clone)]
struct RollSum {
    s1: u32,
    s2: u32,
    window: [u8; WINDOW],
    at: usize,
}

impl RollSum {
    fn new() -> Self {
        RollSum {
            s1: WINDOW as u32 * CHAR_OFFSET,
            s2: WINDOW as u32 * (WINDOW as u32 - 1) * CHAR_OFFSET,
            window: [0; WINDOW],
            at: 0,
        }
    }

    fn roll(&mut self, byte: u8) {
        let dropped = u32::from(self.window[self.at]);
        self.s1 = self.s1.wrapping_add(u32::from(byte)).wrapping_sub(dropped);
        self.s2 = self
            .s2
            .wrapping_add(self.s1)
            .wrapping_sub((WINDOW as u32).wrapping_mul(dropped + CHAR_OFFSET));
        self.window[self.at] = byte;
        self.at = (self.at + 1) % WINDOW;
    }

    fn on_split(&self) -> bool {
        let mask = (1u32 << SPLIT_BITS) - 1;
        self.s2 & mask == mask
    }
}

/// One chunk of a file as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Chunk {
    /// Where in the file it starts.
    pub(super) file_offset: u64,
    /// Where its frame starts in the blob.
    pub(super) blob_offset: u64,
    /// How many bytes of the file it holds.
    pub(super) size: u64,
    /// `sha256:<hex>` of those bytes.
    pub(super) digest: String,
    /// Whether they are all zeros.
    pub(super) zeros: bool,
}

/// A regular file's content being cut and compressed.
pub(super) struct FileChunks {
    rollsum: RollSum,
    /// Zeros seen and not yet known to be data or a hole.
    zeros: u64,
    /// Whether the current chunk is a run of zeros.
    in_hole: bool,
    /// Bytes of the current chunk.
    chunk_size: u64,
    chunk_start: u64,
    chunk_blob: u64,
    chunk_hash: Sha256,
    file_hash: Sha256,
    crc: Crc64,
    /// Data bytes waiting to be hashed and compressed together.
    staged: Vec<u8>,
    chunks: Vec<Chunk>,
}

/// What the staging buffer holds before it goes to the hashes and the
/// frame encoder: fixed, so that the output does not depend on how the
/// input was cut into writes.
const STAGED: usize = 64 << 10;
static ZEROS: [u8; STAGED] = [0; STAGED];

impl FileChunks {
    /// A file whose first frame starts at blob offset `at`.
    pub(super) fn new(at: u64) -> Self {
        FileChunks {
            rollsum: RollSum::new(),
            zeros: 0,
            in_hole: false,
            chunk_size: 0,
            chunk_start: 0,
            chunk_blob: at,
            chunk_hash: Sha256::new(),
            file_hash: Sha256::new(),
            crc: Crc64::default(),
            staged: Vec::with_capacity(STAGED),
            chunks: Vec::new(),
        }
    }

    /// Cut and compress `data`, the next bytes of the file, into `out`
    /// through `frames`.
    pub(super) fn feed<W: Write>(
        &mut self,
        data: &[u8],
        frames: &mut Frames,
        out: &mut Counted<W>,
    ) -> io::Result<()> {
        for &byte in data {
            if byte == 0 {
                self.zeros += 1;
                if self.zeros == HOLE_MIN && !self.in_hole {
                    // The data before the run ends its chunk.
                    self.end_chunk(frames, out)?;
                    self.in_hole = true;
                }
                if self.in_hole && self.zeros == MAX_CHUNK {
                    self.flush_hole(frames, out)?;
                    self.in_hole = true;
                }
                continue;
            }
            self.settle_zeros(frames, out)?;
            self.data_byte(byte, frames, out)?;
        }
        Ok(())
    }

    /// Decide what the pending zeros are, now that they ended.
    fn settle_zeros<W: Write>(
        &mut self,
        frames: &mut Frames,
        out: &mut Counted<W>,
    ) -> io::Result<()> {
        if self.in_hole {
            return self.flush_hole(frames, out);
        }
        for _ in 0..std::mem::take(&mut self.zeros) {
            self.data_byte(0, frames, out)?;
        }
        Ok(())
    }

    fn data_byte<W: Write>(
        &mut self,
        byte: u8,
        frames: &mut Frames,
        out: &mut Counted<W>,
    ) -> io::Result<()> {
        self.staged.push(byte);
        self.chunk_size += 1;
        self.rollsum.roll(byte);
        if self.staged.len() == STAGED {
            self.unstage(frames, out)?;
        }
        if self.rollsum.on_split() || self.chunk_size == MAX_CHUNK {
            self.end_chunk(frames, out)?;
        }
        Ok(())
    }

    /// Hash and compress the staged bytes.
    fn unstage<W: Write>(&mut self, frames: &mut Frames, out: &mut Counted<W>) -> io::Result<()> {
        let staged = std::mem::take(&mut self.staged);
        self.take_in(&staged, frames, out)?;
        self.staged = staged;
        self.staged.clear();
        Ok(())
    }

    fn take_in<W: Write>(
        &mut self,
        bytes: &[u8],
        frames: &mut Frames,
        out: &mut Counted<W>,
    ) -> io::Result<()> {
        self.chunk_hash.update(bytes);
        self.file_hash.update(bytes);
        self.crc = self.crc.update(bytes);
        frames.write(bytes, out)
    }

    /// The pending zeros as a chunk of their own.
    fn flush_hole<W: Write>(
        &mut self,
        frames: &mut Frames,
        out: &mut Counted<W>,
    ) -> io::Result<()> {
        let mut left = std::mem::take(&mut self.zeros);
        self.chunk_size = left;
        while left > 0 {
            let n = left.min(STAGED as u64) as usize;
            self.take_in(&ZEROS[..n], frames, out)?;
            // Rolled like data, though no split is looked for inside.
            for _ in 0..n.min(WINDOW) {
                self.rollsum.roll(0);
            }
            left -= n as u64;
        }
        self.end_chunk(frames, out)?;
        self.in_hole = false;
        Ok(())
    }

    /// End the current chunk, if it has any bytes, and its frame.
    fn end_chunk<W: Write>(&mut self, frames: &mut Frames, out: &mut Counted<W>) -> io::Result<()> {
        self.unstage(frames, out)?;
        if self.chunk_size == 0 {
            return Ok(());
        }
        frames.end_frame(out)?;
        let hash = std::mem::replace(&mut self.chunk_hash, Sha256::new());
        self.chunks.push(Chunk {
            file_offset: self.chunk_start,
            blob_offset: self.chunk_blob,
            size: self.chunk_size,
            digest: hex_digest(hash.finish()),
            zeros: self.in_hole,
        });
        self.chunk_start += self.chunk_size;
        self.chunk_size = 0;
        self.chunk_blob = out.count;
        Ok(())
    }

    /// End the file: its chunks, the sha256 of its content, its CRC-64,
    /// and where its last frame ends.
    pub(super) fn finish<W: Write>(
        mut self,
        frames: &mut Frames,
        out: &mut Counted<W>,
    ) -> io::Result<(Vec<Chunk>, String, [u8; 8])> {
        self.settle_zeros(frames, out)?;
        self.end_chunk(frames, out)?;
        Ok((
            self.chunks,
            hex_digest(self.file_hash.finish()),
            self.crc.finish(),
        ))
    }
}

/// A writer that counts what went through it: where the next frame
/// starts.
pub(super) struct Counted<W> {
    pub(super) inner: W,
    pub(super) count: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
