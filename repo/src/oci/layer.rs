//! Importing one layer: the blob is read by pread, decompressed and hashed
//! on a blocking thread, and streamed straight into composefs's tar
//! splitter; the stream is named only once both digests are verified.

use std::{
    io::{self, Read, Write},
    sync::Arc,
};

use composefs::{fsverity::FsVerityHashValue, repository::Repository as Store};
use composefs_oci::{ImportStats, LAYER_CONTENT_TYPE, layer_content_id};
use tokio_util::io::SyncIoBridge;

use super::{
    archive::Pread,
    digest::{Hashing, HashingWriter},
    manifest::{Compression, LayerPlan},
    source::{Layout, check_size},
};
use crate::Error;

/// How much decompressed tar may be in flight between the decompressing
/// thread and the splitter.
const PIPE_BYTES: usize = 1 << 20;

/// How often, in blob bytes, progress is reported.
const PROGRESS_STEP: u64 = 1 << 20;

/// A layer brought into the repository.
pub(crate) struct Imported<H> {
    /// The layer stream's object id.
    pub stream: H,
    /// What the import wrote and found present.
    pub stats: ImportStats,
}

/// Import the layer `plan` from `layout`; `progress` is told the blob bytes
/// read so far.
pub(crate) async fn import<H: FsVerityHashValue>(
    repo: Arc<Store<H>>,
    layout: Arc<Layout>,
    plan: LayerPlan,
    progress: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<Imported<H>, Error> {
    let blob = layout.blob(&plan.blob)?;
    check_size(blob.len(), plan.size, &format!("layer {}", plan.blob))?;
    let unpacking = plan.clone();
    store(repo, &plan, move |out| {
        unpack(blob, &unpacking, out, &*progress)
    })
    .await
}

/// Stream the tar that `produce` writes, on a blocking thread, into
/// composefs's tar splitter, and name the layer stream after `plan`'s
/// diff_id once `produce` has verified it (by returning `Ok`).
pub(crate) async fn store<H: FsVerityHashValue>(
    repo: Arc<Store<H>>,
    plan: &LayerPlan,
    produce: impl FnOnce(&mut dyn Write) -> Result<(), Error> + Send + 'static,
) -> Result<Imported<H>, Error> {
    let (reader, writer) = tokio::io::duplex(PIPE_BYTES);
    let piping = plan.clone();
    let producer = tokio::task::spawn_blocking(move || {
        let mut out = SyncIoBridge::new(writer);
        produce(&mut out)?;
        out.shutdown().map_err(|e| pipe_error(&piping, e))
    });
    let splitter = composefs_oci::tar::split_async(reader, repo.clone(), LAYER_CONTENT_TYPE);
    let (produced, split) = tokio::join!(producer, splitter);
    let produced =
        produced.map_err(|e| Error::storage("producing a layer", io::Error::other(e)))?;
    let (stream, stats) = match (produced, split) {
        (Ok(()), Ok(done)) => done,
        // A closed pipe means the splitter stopped first: its error is the
        // cause.
        (Err(Error::Storage { .. }) | Ok(()), Err(e)) => return Err(split_error(plan, e)),
        (Err(e), _) => return Err(e),
    };
    let name = layer_content_id(&plan.diff_id.to_oci());
    repo.register_stream(&stream, &name, None)
        .await
        .map_err(|e| Error::storage("naming a layer stream", e))?;
    Ok(Imported { stream, stats })
}

/// Decompress `blob` into `out`, then check the blob's digest and the
/// tar's diff_id.
fn unpack(
    blob: Pread,
    plan: &LayerPlan,
    out: &mut dyn Write,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(), Error> {
    let damaged = |e: io::Error| Error::InvalidLayer {
        layer: plan.blob.to_string(),
        reason: e.to_string(),
    };
    let mut compressed = Hashing::new(Reporting::new(blob, progress));
    let mut tar = HashingWriter::new(out);
    decompress_into(plan.compression, &mut compressed, &mut tar, plan, damaged)?;
    let diff_id = tar.finish();
    // Anything after the compressed stream still counts toward the blob's
    // digest.
    io::copy(&mut compressed, &mut io::sink()).map_err(damaged)?;
    compressed.get_mut().finish();
    let (blob_digest, _) = compressed.finish();
    plan.blob
        .verify(&blob_digest, format!("digest of layer {}", plan.blob))?;
    plan.diff_id
        .verify(&diff_id, format!("diff_id of layer {}", plan.blob))
}

/// Decompress `from` into the pipe `to`, telling read errors (damaged
/// data, reported through `damaged`) from write errors (the splitter
/// stopped).
pub(crate) fn decompress_into(
    compression: Compression,
    from: &mut dyn Read,
    to: &mut dyn Write,
    plan: &LayerPlan,
    damaged: impl Fn(io::Error) -> Error,
) -> Result<(), Error> {
    let mut decoder: Box<dyn Read + '_> = match compression {
        Compression::None => Box::new(from),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(from)),
        Compression::Zstd => Box::new(zstd::Decoder::new(from).map_err(&damaged)?),
    };
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = match decoder.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(damaged(e)),
        };
        to.write_all(&buf[..n]).map_err(|e| pipe_error(plan, e))?;
    }
}

/// The pipe into the splitter broke: the splitter stopped reading.
pub(crate) fn pipe_error(plan: &LayerPlan, e: io::Error) -> Error {
    Error::Storage {
        operation: "streaming a layer into the repository",
        reason: format!("layer {}: {e}", plan.blob),
    }
}

/// The splitter's failure: the tar is malformed, or writing failed.
fn split_error(plan: &LayerPlan, e: anyhow::Error) -> Error {
    let io_failure = e
        .chain()
        .filter_map(|c| c.downcast_ref::<io::Error>())
        .any(|io| {
            !matches!(
                io.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
            )
        });
    if io_failure {
        Error::storage("storing a layer", e)
    } else {
        Error::InvalidLayer {
            layer: plan.blob.to_string(),
            reason: format!("{e:#}"),
        }
    }
}

/// A reader that reports how far it got, every [`PROGRESS_STEP`] bytes.
pub(crate) struct Reporting<'p, R> {
    inner: R,
    done: u64,
    reported: u64,
    progress: &'p dyn Fn(u64),
}

impl<'p, R> Reporting<'p, R> {
    /// Report reads from `inner` to `progress`.
    pub(crate) fn new(inner: R, progress: &'p dyn Fn(u64)) -> Self {
        Reporting {
            inner,
            done: 0,
            reported: 0,
            progress,
        }
    }

    /// Report the final count.
    pub(crate) fn finish(&mut self) {
        if self.done != self.reported {
            (self.progress)(self.done);
            self.reported = self.done;
        }
    }
}

impl<R: Read> Read for Reporting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        if self.done - self.reported >= PROGRESS_STEP {
            (self.progress)(self.done);
            self.reported = self.done;
        }
        Ok(n)
    }
}
