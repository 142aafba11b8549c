//! A file too large to hold in memory, on its way to becoming an object.
//!
//! Its bytes are written to an anonymous file and hashed for both of its
//! digests, each on a thread of its own, while the tar is still arriving;
//! the file is never read back. Without that, a layer that is one
//! multi-GiB file would be written and then hashed twice, one pass after
//! another on a single core.

use std::{
    fs::File,
    io::{self, Write},
    num::NonZeroU64,
    sync::{
        Arc,
        mpsc::{Receiver, SyncSender, sync_channel},
    },
    thread::JoinHandle,
};

use composefs::fsverity::{FsVerityHashValue, FsVerityHasher};
use openssl::sha::Sha256;
use rustix::fs::{Advice, fadvise};

use crate::content::Sha256Digest;

/// The bytes handed to the threads at once. Few hand-offs matter more
/// than a small buffer: each one wakes three threads, and on two cores a
/// wake-up may wait for a whole time slice.
const PIECE_BYTES: usize = 4 << 20;

/// Some bytes of the file, shared by the threads.
type Piece = Arc<Vec<u8>>;

/// Pieces that may wait for each thread.
const QUEUED_PIECES: usize = 4;

/// Writeback is started after every so many bytes written.
const WRITEBACK_BYTES: u64 = 64 << 20;

/// A large file being written and hashed.
pub(super) struct LargeFile<H: FsVerityHashValue> {
    /// Bytes not yet handed to the threads.
    filling: Vec<u8>,
    writer: Lane<File>,
    sha256: Lane<Sha256Digest>,
    verity: Option<Lane<H>>,
}

/// What a [`LargeFile`] became: the anonymous file holding it, its sha256,
/// and its fs-verity digest where it was computed here.
pub(super) struct Written<H> {
    /// The anonymous file, complete.
    pub file: File,
    /// The sha256 of its content, for the content index.
    pub sha256: Sha256Digest,
    /// Its fs-verity digest; `None` where the kernel is to measure it.
    pub id: Option<H>,
}

impl<H: FsVerityHashValue> LargeFile<H> {
    /// Start writing into the anonymous `file`. With `measure`, the
    /// fs-verity digest is computed too: a repository without fs-verity
    /// has no kernel to measure it.
    pub(super) fn start(file: File, measure: bool) -> Self {
        LargeFile {
            filling: Vec::with_capacity(PIECE_BYTES),
            writer: Lane::start(move |pieces| write_pieces(file, pieces)),
            sha256: Lane::start(|pieces| {
                let mut sha256 = Sha256::new();
                pieces.iter().for_each(|piece| sha256.update(&piece));
                Ok(sha256.finish())
            }),
            verity: measure.then(|| {
                Lane::start(|pieces| {
                    let mut verity = FsVerityHasher::<H>::new();
                    for piece in pieces {
                        verity.write_all(&piece)?;
                    }
                    Ok(verity.digest())
                })
            }),
        }
    }

    /// Append `bytes` to the file.
    pub(super) fn append(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let take = bytes.len().min(PIECE_BYTES - self.filling.len());
            self.filling.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.filling.len() == PIECE_BYTES {
                self.hand_off()?;
            }
        }
        Ok(())
    }

    fn hand_off(&mut self) -> io::Result<()> {
        if self.filling.is_empty() {
            return Ok(());
        }
        let piece = Arc::new(std::mem::replace(
            &mut self.filling,
            Vec::with_capacity(PIECE_BYTES),
        ));
        let sent = self.writer.send(piece.clone())
            && self.sha256.send(piece.clone())
            && self.verity.as_mut().is_none_or(|lane| lane.send(piece));
        if sent {
            return Ok(());
        }
        // Only a failed write stops a thread early: its error is the answer.
        self.writer.finish()?;
        Err(io::Error::other("a large-file thread stopped"))
    }

    /// Wait for the last bytes to be written and hashed.
    pub(super) fn finish(mut self) -> io::Result<Written<H>> {
        self.hand_off()?;
        let file = self.writer.finish()?;
        let sha256 = self.sha256.finish()?;
        let id = self.verity.as_mut().map(Lane::finish).transpose()?;
        Ok(Written { file, sha256, id })
    }
}

/// The splitter copies a file's content here as it reads it.
impl<H: FsVerityHashValue> Write for LargeFile<H> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.append(bytes)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One thread taking every piece of the file, and what it makes of them.
struct Lane<T> {
    pieces: Option<SyncSender<Piece>>,
    thread: Option<JoinHandle<io::Result<T>>>,
}

impl<T: Send + 'static> Lane<T> {
    fn start(work: impl FnOnce(Receiver<Piece>) -> io::Result<T> + Send + 'static) -> Self {
        let (pieces, received) = sync_channel(QUEUED_PIECES);
        Lane {
            pieces: Some(pieces),
            thread: Some(std::thread::spawn(move || work(received))),
        }
    }

    /// Hand the thread a piece; false if it has stopped.
    fn send(&mut self, piece: Piece) -> bool {
        self.pieces
            .as_ref()
            .is_some_and(|pieces| pieces.send(piece).is_ok())
    }

    /// Tell the thread the file is complete, and wait for its answer.
    fn finish(&mut self) -> io::Result<T> {
        self.pieces = None;
        let thread = self
            .thread
            .take()
            .ok_or_else(|| io::Error::other("a large-file thread stopped"))?;
        thread
            .join()
            .map_err(|_| io::Error::other("a large-file thread panicked"))?
    }
}

/// A file given up on (a truncated tar, a cancelled pull) waits for its
/// threads, so that none outlives the split that started it.
impl<T> Drop for Lane<T> {
    fn drop(&mut self) {
        self.pieces = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Write every piece to `file`, starting writeback as it goes: the pull
/// syncs the filesystem before it names anything, and that sync then
/// finds most of the file already on its way to the disk.
fn write_pieces(mut file: File, pieces: Receiver<Piece>) -> io::Result<File> {
    let (mut written, mut flushed) = (0u64, 0u64);
    for piece in pieces {
        file.write_all(&piece)?;
        written += piece.len() as u64;
        if written - flushed >= WRITEBACK_BYTES {
            // On dirty pages DONTNEED only starts their writeback: they
            // stay cached, and this is advice, whose failure costs nothing.
            let _ = fadvise(
                &file,
                flushed,
                NonZeroU64::new(written - flushed),
                Advice::DontNeed,
            );
            flushed = written;
        }
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, SeekFrom};

    use composefs::fsverity::{Sha256HashValue, compute_verity};

    use super::*;

    #[test]
    fn pieces_of_any_size_give_the_file_and_both_digests_of_the_whole() {
        let data: Vec<u8> = (0..3_000_017u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut large = LargeFile::<Sha256HashValue>::start(tempfile::tempfile().unwrap(), true);
        for piece in data.chunks(65_537) {
            large.append(piece).unwrap();
        }
        let Written {
            mut file,
            sha256,
            id,
        } = large.finish().unwrap();
        assert_eq!(sha256, openssl::sha::sha256(&data));
        assert_eq!(id, Some(compute_verity(&data)));
        let mut back = Vec::new();
        file.seek(SeekFrom::Start(0)).unwrap();
        file.read_to_end(&mut back).unwrap();
        assert!(back == data, "the file is not what was appended");
    }

    #[test]
    fn where_the_kernel_measures_no_fs_verity_digest_is_computed() {
        let mut large = LargeFile::<Sha256HashValue>::start(tempfile::tempfile().unwrap(), false);
        large.append(b"some content").unwrap();
        let written = large.finish().unwrap();
        assert_eq!(written.id, None);
        assert_eq!(written.sha256, openssl::sha::sha256(b"some content"));
    }

    #[test]
    fn a_write_that_fails_is_the_answer_of_the_file() {
        let named = tempfile::NamedTempFile::new().unwrap();
        let read_only = File::open(named.path()).unwrap();
        let mut large = LargeFile::<Sha256HashValue>::start(read_only, true);
        // The writer may fail before or after the last piece is queued.
        let err = (0..64)
            .find_map(|_| large.append(&[1u8; 1 << 16]).err())
            .or_else(|| large.finish().err())
            .expect("writing to a read-only descriptor succeeded");
        assert_eq!(
            err.raw_os_error(),
            Some(rustix::io::Errno::BADF.raw_os_error())
        );
    }
}
