//! Importing one layer: the blob is read by pread, decompressed and hashed
//! on a blocking thread, and streamed straight into the tar splitter; the
//! stream is named only once both digests are verified.

use std::{
    io::{self, Read, Write},
    sync::Arc,
};

use composefs::{fsverity::FsVerityHashValue, repository::Repository as Store};
use composefs_oci::layer_content_id;

use super::{
    archive::Pread,
    digest::Hashing,
    manifest::{Compression, LayerPlan},
    source::{Layout, check_size},
    split::{self, SplitError, Tally},
};
use crate::Error;

/// How often, in blob bytes, progress is reported.
const PROGRESS_STEP: u64 = 1 << 20;

/// A layer brought into the repository.
pub(crate) struct Imported<H> {
    /// The layer stream's object id.
    pub stream: H,
    /// What the import wrote and found present.
    pub stats: Tally<H>,
}

/// Import the layer `plan` from `layout`; `progress` is told the blob bytes
/// read so far.
pub(crate) async fn import<H: FsVerityHashValue>(
    repo: Arc<Store<H>>,
    layout: Arc<Layout>,
    plan: LayerPlan,
    progress: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<Imported<H>, Error> {
    // Opening the blob reads the source, which may be slow.
    let digest = plan.blob.clone();
    let blob = super::pull::blocking(move || layout.blob(&digest)).await?;
    check_size(blob.len(), plan.size, &format!("layer {}", plan.blob))?;
    let unpacking = plan.clone();
    let what = format!("diff_id of layer {}", plan.blob);
    store(repo, &plan, what, move |out| {
        unpack(blob, &unpacking, out, &*progress)
    })
    .await
}

/// Stream the tar that `produce` writes, on a blocking thread, into the
/// splitter, and name the layer stream after `plan`'s diff_id once
/// `produce` has succeeded (it verifies its own input) and the tar's
/// digest is that diff_id; `what` names the tar in a mismatch.
pub(crate) async fn store<H: FsVerityHashValue>(
    repo: Arc<Store<H>>,
    plan: &LayerPlan,
    what: String,
    produce: impl FnOnce(&mut dyn Write) -> Result<(), Error> + Send + 'static,
) -> Result<Imported<H>, Error> {
    let (mut pipe, tar) = split::pipe();
    let piping = plan.clone();
    // Both threads keep GC off until they return, even if this future is
    // dropped before then.
    let (hold, held) = (plan.hold.get().cloned(), plan.hold.get().cloned());
    let producer = tokio::task::spawn_blocking(move || {
        let _hold = hold;
        produce(&mut pipe)?;
        pipe.close().map_err(|e| pipe_error(&piping, e))
    });
    // Dropping this future (the client hung up) stops the splitter too.
    let cancel = split::Cancel::default();
    let _stop_on_drop = cancel.on_drop();
    let splitting = repo.clone();
    let limits = split::LayerLimits::installed();
    let pulled = plan.pulled.clone();
    let splitter = tokio::task::spawn_blocking(move || {
        let _hold = held;
        split::split(tar, splitting, &cancel, &limits, pulled)
    });
    let (produced, split) = tokio::join!(producer, splitter);
    let produced =
        produced.map_err(|e| Error::storage("producing a layer", io::Error::other(e)))?;
    let split = split.map_err(|e| Error::storage("splitting a layer", io::Error::other(e)))?;
    let (stream, stats) = match (produced, split) {
        // A damaged blob explains whatever else went wrong.
        (Err(e), _) if !matches!(e, Error::Storage { .. }) => return Err(e),
        (_, Err(SplitError::Tar { reason, diff_id })) => {
            plan.diff_id.verify(&diff_id, what)?;
            return Err(invalid(plan, reason));
        }
        // A closed pipe means the splitter stopped first: its error is the
        // cause.
        (_, Err(e)) => return Err(split_error(plan, e)),
        (Err(e), Ok(_)) => return Err(e),
        (Ok(()), Ok((stream, stats, diff_id))) => {
            plan.diff_id.verify(&diff_id, what)?;
            (stream, stats)
        }
    };
    let name = layer_content_id(&plan.diff_id.to_oci());
    // Naming syncs the repository and creates a link: disk work, kept
    // off the async threads so that a slow disk stalls only this layer.
    let (naming, named) = (repo.clone(), stream.clone());
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        runtime.block_on(naming.register_stream(&named, &name, None))
    })
    .await
    .map_err(|e| Error::storage("naming a layer stream", io::Error::other(e)))?
    .map_err(|e| Error::storage("naming a layer stream", e))?;
    Ok(Imported { stream, stats })
}

/// Decompress `blob` into `out`, then check the blob's digest.
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
    decompress_into(plan.compression, &mut compressed, out, plan, damaged)?;
    // Anything after the compressed stream still counts toward the blob's
    // digest.
    io::copy(&mut compressed, &mut io::sink()).map_err(damaged)?;
    compressed.get_mut().finish();
    let (blob_digest, _) = compressed.finish();
    plan.blob
        .verify(&blob_digest, format!("digest of layer {}", plan.blob))
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
    Error::internal(
        "streaming a layer into the repository",
        format!("layer {}: {e}", plan.blob),
    )
}

/// The splitter's failure: the tar is malformed, or writing failed.
fn split_error(plan: &LayerPlan, e: SplitError) -> Error {
    match e {
        SplitError::Tar { reason, .. } => invalid(plan, reason),
        SplitError::Storage(e) => Error::storage("storing a layer", e),
        SplitError::Cancelled => Error::storage(
            "storing a layer",
            io::Error::new(io::ErrorKind::Interrupted, "the import was cancelled"),
        ),
        SplitError::Limit(exceeded) => Error::LayerTooLarge {
            layer: plan.blob.to_string(),
            what: exceeded.what.to_owned(),
            limit: exceeded.limit,
        },
    }
}

fn invalid(plan: &LayerPlan, reason: String) -> Error {
    Error::InvalidLayer {
        layer: plan.blob.to_string(),
        reason,
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
