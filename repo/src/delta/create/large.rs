//! Matching a file too large for memory against its source file: the
//! rsync way, with the old file's blocks indexed by hash and the new file
//! read once, in order, a buffer at a time.
//!
//! A zstd `--patch-from` frame at the op stream's level takes minutes per
//! hundred MiB, and the in-memory matcher holds both files whole. Here
//! memory is the index (at most about a million blocks) and two buffers,
//! whatever the size. The result has only copies and new data: an edit in
//! place is new data, which costs a large file little next to its size.

use std::{
    collections::HashMap,
    hash::BuildHasherDefault,
    io::{self, Write},
    sync::atomic::AtomicBool,
};

use composefs::fsverity::{FsVerityHashValue, FsVerityHasher};

use super::matcher::{self, Passthrough};

/// Files at least this large, or diffed against a source file at least
/// this large, are matched here. Below it the whole-file methods stay:
/// they find more, and their cost is still seconds. Tests lower it so
/// that fixtures of a few MiB take this path through a whole delta.
pub(crate) const LARGE: u64 = if cfg!(test) { 1 << 20 } else { 64 << 20 };

/// How much of each file is read at a time.
const BUFFER: usize = 4 << 20;

/// A file read by offset: the layer tar's view of one entry, or a source
/// file. Reads past the end are an error.
pub(crate) trait At {
    /// Fill `buf` from `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl<F: Fn(&mut [u8], u64) -> io::Result<()>> At for F {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self(buf, offset)
    }
}

/// A run of the new file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Run {
    /// `len` bytes equal to the old file's at `from`.
    Copy {
        /// Where they start in the old file.
        from: u64,
        /// How many.
        len: u64,
    },
    /// The new file's `len` bytes at `at`, sent as they are.
    Data {
        /// Where they start in the new file.
        at: u64,
        /// How many.
        len: u64,
    },
}

/// What reading a large new file found.
pub(crate) struct Matched<H> {
    /// Its fs-verity digest.
    pub id: H,
    /// The runs that rebuild it from the old file, if one was given.
    pub runs: Vec<Run>,
}

/// Read `new` (`new_len` bytes) once, computing its fs-verity digest and,
/// if `old` (`old_len` bytes) is given, the copies and data that rebuild
/// it from `old`.
pub(crate) fn read<H: FsVerityHashValue>(
    new: &dyn At,
    new_len: u64,
    old: Option<(&dyn At, u64)>,
    cancelled: &AtomicBool,
) -> io::Result<Matched<H>> {
    let mut reader = Reader {
        new,
        len: new_len,
        buf: Vec::new(),
        start: 0,
        hasher: FsVerityHasher::<H>::new(),
        cancelled,
    };
    let runs = match old {
        Some((old, old_len)) => {
            let index = Index::new(old, old_len, cancelled)?;
            scan(&mut reader, old, old_len, &index)?
        }
        None => Vec::new(),
    };
    reader.finish()?;
    Ok(Matched {
        id: reader.hasher.digest(),
        runs,
    })
}

/// Walk the new file with a rolling hash; on an old block with the same
/// bytes, copy from there as far as the two agree.
fn scan(
    reader: &mut Reader<'_, impl FsVerityHashValue>,
    old: &dyn At,
    old_len: u64,
    index: &Index,
) -> io::Result<Vec<Run>> {
    let block = index.block;
    let mut runs = Vec::new();
    let mut literal = 0u64;
    let mut i = 0u64;
    let mut hash = None;
    let mut old_block = vec![0u8; block];
    while i + block as u64 <= reader.len {
        let window = reader.window(i, block + 1)?;
        let h = hash.unwrap_or_else(|| matcher::block_hash(&window[..block]));
        if let Some(&from) = index.starts.get(&h) {
            old.read_exact_at(&mut old_block, from)?;
            if old_block[..] == window[..block] {
                let len = block as u64
                    + reader.agree(i + block as u64, old, from + block as u64, old_len)?;
                data(&mut runs, literal, i);
                runs.push(Run::Copy { from, len });
                i += len;
                literal = i;
                hash = None;
                continue;
            }
        }
        hash =
            (window.len() > block).then(|| matcher::roll(h, window[0], window[block], index.top));
        i += 1;
    }
    data(&mut runs, literal, reader.len);
    Ok(runs)
}

/// The new bytes `[start, end)`, if any, as data.
fn data(runs: &mut Vec<Run>, start: u64, end: u64) {
    if end > start {
        runs.push(Run::Data {
            at: start,
            len: end - start,
        });
    }
}

/// The new file, read in order through one buffer, each byte hashed for
/// the fs-verity digest as it is read.
struct Reader<'a, H: FsVerityHashValue> {
    new: &'a dyn At,
    len: u64,
    /// The bytes from `start` on that have been read.
    buf: Vec<u8>,
    start: u64,
    hasher: FsVerityHasher<H>,
    cancelled: &'a AtomicBool,
}

impl<H: FsVerityHashValue> Reader<'_, H> {
    /// Up to `want` bytes from `at`, fewer only at the end; the bytes
    /// before `at` are no longer wanted.
    fn window(&mut self, at: u64, want: usize) -> io::Result<&[u8]> {
        let end = (at + want as u64).min(self.len);
        if end > self.start + self.buf.len() as u64 {
            let gone = ((at - self.start) as usize).min(self.buf.len());
            self.buf.drain(..gone);
            self.start += gone as u64;
            self.fill(end)?;
        }
        let from = (at - self.start) as usize;
        Ok(&self.buf[from..from + (end - at) as usize])
    }

    /// Read on, a buffer at a time, until the buffer reaches `end`.
    fn fill(&mut self, end: u64) -> io::Result<()> {
        while self.start + (self.buf.len() as u64) < end {
            super::layers::cancelled(self.cancelled)?;
            let at = self.start + self.buf.len() as u64;
            let n = (self.len - at).min(BUFFER as u64) as usize;
            let old = self.buf.len();
            self.buf.resize(old + n, 0);
            self.new.read_exact_at(&mut self.buf[old..], at)?;
            self.hasher.write_all(&self.buf[old..])?;
        }
        Ok(())
    }

    /// How many bytes from `at` equal the old file's from `from`.
    fn agree(&mut self, mut at: u64, old: &dyn At, mut from: u64, old_len: u64) -> io::Result<u64> {
        let begin = at;
        let mut theirs = vec![0u8; BUFFER];
        while at < self.len && from < old_len {
            let n = (self.len - at).min(old_len - from).min(BUFFER as u64) as usize;
            old.read_exact_at(&mut theirs[..n], from)?;
            let ours = self.window(at, n)?;
            let same = ours
                .iter()
                .zip(&theirs[..n])
                .take_while(|(a, b)| a == b)
                .count();
            at += same as u64;
            from += same as u64;
            if same < n {
                break;
            }
        }
        Ok(at - begin)
    }

    /// Read and hash the rest: the scan stops short of the end, and
    /// without an old file it reads nothing.
    fn finish(&mut self) -> io::Result<()> {
        loop {
            self.start += self.buf.len() as u64;
            self.buf.clear();
            if self.start >= self.len {
                return Ok(());
            }
            self.fill((self.start + BUFFER as u64).min(self.len))?;
        }
    }
}

/// Where each block-aligned block of the old file starts, by hash; the
/// first one wins.
struct Index {
    starts: HashMap<u64, u64, BuildHasherDefault<Passthrough>>,
    block: usize,
    top: u64,
}

impl Index {
    fn new(old: &dyn At, len: u64, cancelled: &AtomicBool) -> io::Result<Self> {
        let block = matcher::block_length(len);
        let mut starts = HashMap::with_capacity_and_hasher(
            (len / block as u64) as usize + 1,
            Default::default(),
        );
        let mut buf = vec![0u8; BUFFER - BUFFER % block];
        let mut at = 0u64;
        while at + block as u64 <= len {
            super::layers::cancelled(cancelled)?;
            let n = ((len - at) as usize).min(buf.len());
            let n = n - n % block;
            old.read_exact_at(&mut buf[..n], at)?;
            for (k, chunk) in buf[..n].chunks_exact(block).enumerate() {
                starts
                    .entry(matcher::block_hash(chunk))
                    .or_insert(at + (k * block) as u64);
            }
            at += n as u64;
        }
        Ok(Index {
            starts,
            block,
            top: matcher::top(block),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use composefs::fsverity::{Sha256HashValue, compute_verity};

    use super::*;
    use crate::delta::create::tests::noise;

    fn at(data: &[u8]) -> impl Fn(&mut [u8], u64) -> io::Result<()> + '_ {
        move |buf: &mut [u8], offset: u64| {
            let start = offset as usize;
            let end = start + buf.len();
            let Some(bytes) = data.get(start..end) else {
                return Err(io::ErrorKind::UnexpectedEof.into());
            };
            buf.copy_from_slice(bytes);
            Ok(())
        }
    }

    /// Match `new` against `old`, check the digest, rebuild `new` from
    /// the runs, and return how many bytes went as data.
    fn rebuilt(old: Option<&[u8]>, new: &[u8]) -> u64 {
        let (n, o) = (at(new), old.map(at));
        let old_at = o
            .as_ref()
            .zip(old)
            .map(|(f, d)| (f as &dyn At, d.len() as u64));
        let matched =
            read::<Sha256HashValue>(&n, new.len() as u64, old_at, &AtomicBool::new(false)).unwrap();
        assert_eq!(matched.id, compute_verity::<Sha256HashValue>(new));
        let Some(old) = old else {
            assert!(matched.runs.is_empty());
            return new.len() as u64;
        };
        let mut out = Vec::new();
        let mut sent = 0;
        for run in &matched.runs {
            match *run {
                Run::Copy { from, len } => {
                    assert!(len > 0);
                    out.extend_from_slice(&old[from as usize..(from + len) as usize]);
                }
                Run::Data { at, len } => {
                    assert_eq!(at, out.len() as u64, "data runs are in order");
                    out.extend_from_slice(&new[at as usize..(at + len) as usize]);
                    sent += len;
                }
            }
        }
        assert!(out == new, "the runs rebuild the new file");
        sent
    }

    #[test]
    fn edits_insertions_and_moves_cost_only_their_bytes() {
        let old = noise(9 << 20, 1);
        let mut new = old.clone();
        // Across the first buffer boundary, then a shift of everything
        // after an insertion, a deletion, a moved stretch and a new tail.
        new[(4 << 20) - 300..(4 << 20) + 300].fill(0xa5);
        new.splice(6 << 20..6 << 20, noise(5000, 2));
        new.drain(7 << 20..(7 << 20) + 10_000);
        let moved = old[100_000..300_000].to_vec();
        new.splice(8 << 20..8 << 20, moved);
        new.extend(noise(12_345, 3));
        let sent = rebuilt(Some(&old), &new);
        assert!(sent < 40_000, "sent {sent} bytes");
        assert_eq!(rebuilt(Some(&old), &old), 0, "an equal file is all copies");
    }

    #[test]
    fn without_a_match_everything_is_data_and_still_hashed() {
        let new = noise((4 << 20) + 4097, 4);
        assert_eq!(rebuilt(None, &new), new.len() as u64);
        assert_eq!(rebuilt(None, &[]), 0);
        let unrelated = noise(3 << 20, 5);
        assert_eq!(rebuilt(Some(&unrelated), &new), new.len() as u64);
        assert_eq!(rebuilt(Some(&[]), &new), new.len() as u64);
        assert_eq!(
            rebuilt(Some(&new), &new[..100]),
            100,
            "shorter than a block"
        );
    }

    #[test]
    fn a_cancelled_match_stops() {
        let new = noise(1 << 20, 6);
        let n = at(&new);
        let err = read::<Sha256HashValue>(
            &n,
            new.len() as u64,
            Some((&n, 1 << 20)),
            &AtomicBool::new(true),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("cancelled"), "{err}");
    }
}
