//! Encoding the changed layers, `jobs` at a time: each layer's tar is
//! rebuilt from the repository and verified, then encoded as a tar-diff,
//! or recompressed whole when that is smaller.

use std::{
    fs::File,
    io::{self, BufWriter, Seek, Write},
    path::Path,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
};

use composefs::{fsverity::FsVerityHashValue, repository::Repository as Store};

use super::{
    DeltaMethod, LayerDelta,
    encode::{self, SourceIndex},
};
use crate::{
    Error,
    delta::source::SourceImage,
    oci::{
        digest::{Digest, HashingWriter},
        export::verified_layer_tar,
    },
};

/// One target layer to carry.
pub(super) struct Work {
    /// The layer's blob digest.
    pub blob: Digest,
    /// The blob's size.
    pub blob_size: u64,
    /// The layer's diff_id.
    pub diff_id: Digest,
}

/// A changed layer, encoded: its delta blob in a temporary file.
pub(super) struct Carried {
    /// What the layer became.
    pub report: LayerDelta,
    /// The delta blob's media type.
    pub media_type: &'static str,
    /// The delta blob.
    pub blob: File,
    /// Its digest.
    pub digest: Digest,
}

/// What the encoding threads share.
pub(super) struct Shared<'a, H: FsVerityHashValue> {
    /// The repository.
    pub repo: &'a Store<H>,
    /// The source image's files.
    pub image: &'a SourceImage<H>,
    /// Their index.
    pub index: &'a SourceIndex<H>,
    /// How changed files are encoded.
    pub method: DeltaMethod,
    /// Set once the delta is no longer wanted: every loop and every
    /// write checks it, so the work stops within one buffer's worth.
    pub cancelled: &'a AtomicBool,
    /// Where scratch files go: the repository's own directory, so that
    /// they use its filesystem (not a tmpfs, which is RAM), as unnamed
    /// `O_TMPFILE`s that vanish the moment the work stops.
    pub scratch: &'a Path,
    /// The scratch bytes this delta may still write: a bound on the disk
    /// one CreateDelta can take, whoever asks for it.
    pub scratch_left: &'a AtomicU64,
}

impl<H: FsVerityHashValue> Shared<'_, H> {
    /// Encode every layer of `work`, `jobs` at a time; the results in
    /// `work`'s order. The first failure stops the others from starting.
    pub(super) fn encode_all(&self, work: &[Work], jobs: usize) -> Result<Vec<Carried>, Error> {
        let mut carried = Vec::with_capacity(work.len());
        super::ordered::in_order(
            work,
            jobs,
            super::ordered::Ahead {
                budget: work.len() as u64,
                weight: |_: &Work| 1,
            },
            |layer| {
                // Cancelled, the layers not yet begun are not begun.
                cancelled(self.cancelled).map_err(|e| Error::storage("encoding a layer", e))?;
                self.encode_one(layer, jobs)
            },
            |_, result| {
                carried.push(result?);
                Ok(())
            },
        )?;
        Ok(carried)
    }

    /// Rebuild the layer's tar, check its diff_id, and encode it as a
    /// tar-diff, diffing its files `jobs` at a time, or as the whole layer
    /// when that is smaller.
    fn encode_one(&self, work: &Work, jobs: usize) -> Result<Carried, Error> {
        let storage = |e: io::Error| Error::storage("encoding a layer", e);
        let tar = self.layer_tar(work)?;
        let tar_size = tar.metadata().map_err(storage)?.len();
        let mut diff = self.scratch_file().map_err(storage)?;
        let encoded = encode::encode(
            &tar,
            self.image,
            self.index,
            self.method,
            jobs,
            BufWriter::new(Budgeted(
                Cancellable(&mut diff, self.cancelled),
                self.scratch_left,
            )),
            self.cancelled,
        )
        .map_err(storage)?;
        let diff_size = diff.metadata().map_err(storage)?.len();
        let mut report = LayerDelta {
            layer: work.blob.to_string(),
            diff_id: work.diff_id.to_string(),
            method: "tar-diff".to_owned(),
            tar_size,
            delta_size: diff_size,
            files_copied: encoded.copied,
            files_diffed: encoded.diffed,
            files_added: encoded.added,
        };
        let mut chosen = (diff, crate::delta::artifact::TAR_DIFF);
        // Only when the diff is no smaller than the original blob can the
        // whole layer win; recompressing costs a pass over the tar.
        if diff_size >= work.blob_size.min(tar_size)
            && let Some(whole) = self.recompress(&tar, diff_size).map_err(storage)?
        {
            report = LayerDelta {
                method: "zstd".to_owned(),
                delta_size: whole.metadata().map_err(storage)?.len(),
                files_copied: 0,
                files_diffed: 0,
                files_added: 0,
                ..report
            };
            chosen = (whole, "application/vnd.oci.image.layer.v1.tar+zstd");
        }
        let (mut blob, media_type) = chosen;
        let digest = hash_file(&mut blob).map_err(storage)?;
        Ok(Carried {
            report,
            media_type,
            blob,
            digest,
        })
    }

    /// The layer's tar, rebuilt from its split stream into a temporary
    /// file, with its diff_id checked.
    fn layer_tar(&self, work: &Work) -> Result<File, Error> {
        let storage = |e: io::Error| Error::storage("rebuilding a layer tar", e);
        let mut file = self.scratch_file().map_err(storage)?;
        {
            let cancellable = Budgeted(Cancellable(&mut file, self.cancelled), self.scratch_left);
            let out = BufWriter::new(cancellable);
            verified_layer_tar(self.repo, &work.diff_id, &work.blob, out)?
                .into_inner()
                .map_err(|e| storage(e.into_error()))?;
        }
        Ok(file)
    }
}

impl<H: FsVerityHashValue> Shared<'_, H> {
    /// An unnamed scratch file on the repository's filesystem.
    fn scratch_file(&self) -> io::Result<File> {
        tempfile::tempfile_in(self.scratch)
    }

    /// [`recompress`] into a scratch file.
    /// Its size is charged to the scratch budget once it is written: at
    /// most one compressed layer beyond it.
    fn recompress(&self, tar: &File, limit: u64) -> io::Result<Option<File>> {
        let whole = recompress(tar, limit, self.scratch_file()?, self.cancelled)?;
        if let Some(file) = &whole {
            charge(self.scratch_left, file.metadata()?.len())?;
        }
        Ok(whole)
    }
}

/// The tar compressed with zstd into `whole`, if that is smaller than
/// `limit` bytes.
pub(super) fn recompress(
    tar: &File,
    limit: u64,
    mut whole: File,
    cancelled: &AtomicBool,
) -> io::Result<Option<File>> {
    let mut reader = io::BufReader::new(tar);
    io::Seek::seek(&mut reader, io::SeekFrom::Start(0))?;
    let out = BufWriter::new(Cancellable(&mut whole, cancelled));
    let mut encoder = zstd::stream::write::Encoder::new(out, encode::LEVEL)?;
    encoder.include_checksum(true)?;
    io::copy(&mut reader, &mut encoder)?;
    encoder.finish()?.flush()?;
    let size = whole.metadata()?.len();
    Ok((size < limit).then_some(whole))
}

/// A writer that fails once `.1` is set: the delta is no longer wanted.
struct Cancellable<'a, W>(W, &'a AtomicBool);

impl<W: Write> Write for Cancellable<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        cancelled(self.1)?;
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// A writer that fails once the scratch budget `.1` is spent.
struct Budgeted<'a, W>(W, &'a AtomicU64);

impl<W: Write> Write for Budgeted<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        charge(self.1, buf.len() as u64)?;
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Take `n` bytes from the scratch budget `left`, or fail as a full disk
/// does: for this delta, there is no more room.
fn charge(left: &AtomicU64, n: u64) -> io::Result<()> {
    left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| l.checked_sub(n))
        .map(|_| ())
        .map_err(|_| io::Error::new(io::ErrorKind::StorageFull, ScratchSpent))
}

/// The scratch budget of one delta is spent.
#[derive(Debug, thiserror::Error)]
#[error("the delta needs more scratch space than cfsd allows one delta (--max-delta-scratch)")]
struct ScratchSpent;

/// An error once `flag` is set.
pub(super) fn cancelled(flag: &AtomicBool) -> io::Result<()> {
    if flag.load(Ordering::Relaxed) {
        return Err(io::Error::other("cancelled: the caller went away"));
    }
    Ok(())
}

/// The sha256 of a whole file.
fn hash_file(file: &mut File) -> io::Result<Digest> {
    file.seek(io::SeekFrom::Start(0))?;
    let mut hashing = HashingWriter::new(io::sink());
    io::copy(file, &mut hashing)?;
    Ok(hashing.finish())
}
