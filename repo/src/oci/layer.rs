//! Fetching one layer for the pipeline: the source's blob is opened,
//! hashed, turned into a tar and streamed straight into the tar splitter,
//! all on blocking threads; the stream is named only once the blob's
//! digest and the tar's diff_id are verified.

use std::{
    io::{self, Read, Write},
    sync::Arc,
};

use composefs::{fsverity::FsVerityHashValue, repository::Repository as Store};
use composefs_oci::layer_content_id;

use super::{
    digest::{Digest, Hashing},
    document::Compression,
    manifest::LayerPlan,
    pipeline::{Blob, BlobCheck, LayerSource, Progress, Stage, blocking, tell},
    split::{self, Pipe, SplitError, Tally},
};
use crate::{Error, content::ChunkHints};

/// How often, in blob bytes, progress is reported.
const PROGRESS_STEP: u64 = 1 << 20;

/// A layer brought into the repository.
pub(crate) struct Imported<H> {
    /// The layer stream's object id.
    pub stream: H,
    /// What the import wrote and found present.
    pub stats: Tally<H>,
}

/// One layer to fetch from a source.
pub(crate) struct Fetch<H: FsVerityHashValue, S> {
    /// The repository it goes into.
    pub repo: Arc<Store<H>>,
    /// Where it comes from.
    pub source: Arc<S>,
    /// The layer.
    pub plan: LayerPlan,
    /// The blob the source makes it from.
    pub blob: Blob,
    /// Where progress goes.
    pub progress: Progress,
}

impl<H: FsVerityHashValue, S: LayerSource<H>> Fetch<H, S> {
    /// Fetch, verify and name the layer; its diff_id and what was stored.
    pub(crate) async fn run(self) -> Result<(Digest, Imported<H>), Error> {
        let (plan, total) = (self.plan.clone(), self.blob.size);
        tell(&self.progress, &plan, Stage::Importing, 0, total);
        let (source, blob) = (self.source.clone(), self.blob.clone());
        let bytes = blocking(move || source.open(&blob)).await?;
        let reporting = (self.progress.clone(), plan.clone());
        let tick = move |done| tell(&reporting.0, &reporting.1, Stage::Importing, done, total);
        let (source, blob) = (self.source.clone(), self.blob.clone());
        let unpacking = plan.clone();
        let produce = move |out: &mut Pipe<H>| {
            let mut hashed = Hashing::new(Reporting::new(bytes, &tick));
            let made = source.unpack(&unpacking, &blob, &mut hashed, out);
            verify_blob(&blob, hashed, made)
        };
        let hints = self.source.chunk_hints(&plan);
        let imported = store(self.repo, &plan, self.blob.tar.clone(), hints, produce).await?;
        tell(&self.progress, &plan, Stage::Done, total, total);
        Ok((plan.diff_id, imported))
    }
}

/// After the source made the tar (`made`) from `hashed`, check that its
/// input was the blob: a damaged blob explains whatever else went wrong,
/// so its digest is checked first, over every byte, those after the data
/// the tar needed included.
fn verify_blob(
    blob: &Blob,
    mut hashed: Hashing<Reporting<'_, Box<dyn Read + Send>>>,
    made: Result<(), Error>,
) -> Result<(), Error> {
    // A failing disk or registry explains a short read, not the blob.
    let passes_through =
        |e: &Error| matches!(e, Error::Storage { .. }) || crate::registry::is_registry_error(e);
    if made.as_ref().is_err_and(passes_through) {
        return made;
    }
    let drained = io::copy(&mut hashed, &mut io::sink());
    hashed.get_mut().finish();
    let (digest, _) = hashed.finish();
    if blob.check == BlobCheck::Digest {
        blob.digest
            .verify(&digest, format!("digest of {}", blob.name))?;
    }
    made?;
    drained.map_err(|e| damaged(&blob.digest, e))?;
    Ok(())
}

/// The blob `digest` cannot be read as what it claims to be.
pub(crate) fn damaged(digest: &Digest, e: io::Error) -> Error {
    // A registry's failure, carried through the reader, keeps its kind.
    crate::registry::registry_failure(e).unwrap_or_else(|e| Error::InvalidLayer {
        layer: digest.to_string(),
        reason: e.to_string(),
    })
}

/// Stream the tar that `produce` writes, on a blocking thread, into the
/// splitter, and name the layer stream after `plan`'s diff_id once
/// `produce` has succeeded (it verifies its own input) and the tar's
/// digest is that diff_id; `what` names the tar in a mismatch, and
/// `hints` how its files are cut into chunks.
async fn store<H: FsVerityHashValue>(
    repo: Arc<Store<H>>,
    plan: &LayerPlan,
    what: String,
    hints: Option<Arc<ChunkHints>>,
    produce: impl FnOnce(&mut Pipe<H>) -> Result<(), Error> + Send + 'static,
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
    let expected = plan.diff_id.clone();
    let splitter = tokio::task::spawn_blocking(move || {
        let _hold = held;
        split::split(tar, splitting, &cancel, &limits, pulled, &expected)
    });
    let (produced, split) = tokio::join!(producer, splitter);
    let produced =
        produced.map_err(|e| Error::storage("producing a layer", io::Error::other(e)))?;
    let split = split.map_err(|e| Error::storage("splitting a layer", io::Error::other(e)))?;
    let (stream, stats, contents) = match (produced, split) {
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
        (Ok(()), Ok((stream, stats, diff_id, contents))) => {
            plan.diff_id.verify(&diff_id, what)?;
            (stream, stats, contents)
        }
    };
    name(repo, plan, stream.clone(), contents, hints).await?;
    Ok(Imported { stream, stats })
}

/// Name the verified layer stream `stream`, on a blocking thread that
/// keeps the pull's hold until it returns: composefs syncs the objects
/// before it creates the name. Its `contents`, and the chunks `hints`
/// names of them, go in the content index: written before that sync, so
/// that it makes them durable too, and put in place after the name, since
/// the index may name only what a named stream refers to.
async fn name<H: FsVerityHashValue>(
    repo: Arc<Store<H>>,
    plan: &LayerPlan,
    stream: H,
    contents: split::Contents<H>,
    hints: Option<Arc<ChunkHints>>,
) -> Result<(), Error> {
    let hold = plan.hold.get().cloned();
    let name = layer_content_id(&plan.diff_id.to_oci());
    let runtime = tokio::runtime::Handle::current();
    blocking(move || {
        let _hold = hold;
        let recording = |e| Error::storage("recording a layer's contents in the content index", e);
        let chunks = hints.map_or_else(Vec::new, |h| crate::content::chunks_of(&contents, &h));
        let index = crate::content::write(&repo, contents, chunks).map_err(recording)?;
        runtime
            .block_on(repo.register_stream(&stream, &name, None))
            .map_err(|e| Error::storage("naming a layer stream", e))?;
        index.place(&stream).map_err(recording)
    })
    .await
}

/// Decompress the bytes of `blob`, compressed as `compression`, into the
/// tar of `layer`: what a source of compressed layer blobs unpacks with.
pub(crate) fn decompress(
    compression: Compression,
    layer: &LayerPlan,
    blob: &Blob,
    bytes: &mut dyn Read,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let damaged = |e| damaged(&blob.digest, e);
    decompress_into(compression, bytes, out, layer, damaged)
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
