//! The layer pipeline: how every pull brings an image's layers into the
//! repository, whatever they are read from.
//!
//! The pipeline owns the scheduling and the trust: it drops duplicate
//! diff_ids, looks up which layers the repository already has (those are
//! reported [`Stage::Present`] and never read), lets the source prepare,
//! runs at most `jobs` layers at once under the pull's GC hold, reports
//! progress, checks each blob against its digest and each tar against its
//! diff_id, names a layer stream only once both hold, and returns the
//! streams in config order. All of its disk work runs on blocking threads.
//!
//! # Plugging in a source
//!
//! A source implements [`LayerSource`]: it says which [`Blob`] it makes a
//! layer from, may prepare once before any layer is fetched, opens a
//! blob's bytes and turns them into the layer's tar. It never names
//! anything and needs no checks of its own beyond its input's format:
//!
//! - the `oci:` directory and `oci-archive:` ([`super::source::Layout`])
//!   open a blob by pread and decompress it;
//! - an oci-delta (`crate::delta`) opens a delta blob and applies it as a
//!   tar-diff against the source image (loaded in `prepare`), or
//!   decompresses a whole layer it carries;
//! - a registry opens a blob as an HTTP body and, when the connection
//!   breaks, resumes it with a `Range: bytes=N-` request inside its reader:
//!   the pipeline hashes every byte the reader yields, in order, so a
//!   resume that skipped, repeated or changed a byte fails the blob's
//!   digest, and nothing is named;
//! - a partial pull (zstd:chunked, `super::partial`) does not read the
//!   whole blob, so its bytes cannot be checked against the blob digest:
//!   once it has read a layer's TOC in `prepare`, it turns that layer's
//!   blob into one of [`BlobCheck::Rebuilt`] ([`LayerSource::refine`]),
//!   whose bytes are the frames fetched; it checks each file against the
//!   TOC's digest itself, and the tar it writes, from fetched frames and
//!   stored objects, is still checked against the diff_id here.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    io::Read,
    sync::Arc,
};

use composefs::{fsverity::FsVerityHashValue, repository::Repository as Store};
use composefs_oci::{OciDigest, layer_content_id};
use tokio::{sync::Semaphore, task::JoinSet};

use super::{
    digest::Digest,
    layer,
    manifest::LayerPlan,
    split::{Pipe, Tally},
};
use crate::{Error, content::ChunkHints};

/// Where one layer is in its pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Waiting for a free job.
    Queued,
    /// Being read, decompressed, verified and stored.
    Importing,
    /// Already in the repository: not read at all.
    Present,
    /// Imported and verified.
    Done,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Queued => "queued",
            Stage::Importing => "importing",
            Stage::Present => "present",
            Stage::Done => "done",
        })
    }
}

/// A progress report about one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerProgress {
    /// The layer blob's digest (the image's, also when a delta rebuilds
    /// it from another blob).
    pub layer: String,
    /// What is happening to it.
    pub stage: Stage,
    /// Bytes of the blob it is made from read so far.
    pub done: u64,
    /// That blob's size.
    pub total: u64,
}

/// Where progress reports go; shared by the layer tasks.
pub(crate) type Progress = Arc<dyn Fn(LayerProgress) + Send + Sync>;

/// The blob a source makes one layer from.
#[derive(Debug, Clone)]
pub(crate) struct Blob {
    /// Its digest, which the bytes the source opens must have.
    pub digest: Digest,
    /// Its size, which progress counts in.
    pub size: u64,
    /// How errors name it (`layer sha256:…`, `delta layer sha256:…`).
    pub name: String,
    /// How a diff_id mismatch names the tar made from it.
    pub tar: String,
    /// What the bytes read are checked against.
    pub check: BlobCheck,
}

/// What the pipeline checks the bytes a source reads against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlobCheck {
    /// The blob's digest: they are the whole blob.
    Digest,
    /// Nothing: they are parts of it, which the source checks, and the
    /// tar made from them is checked against the diff_id.
    Rebuilt,
}

impl Blob {
    /// The image's own blob of `layer`, as a layout or registry holds it.
    pub(crate) fn of_layer(layer: &LayerPlan) -> Self {
        Blob {
            digest: layer.blob.clone(),
            size: layer.size,
            name: format!("layer {}", layer.blob),
            tar: format!("diff_id of layer {}", layer.blob),
            check: BlobCheck::Digest,
        }
    }
}

/// A place layers come from. See the module documentation for how the
/// pipeline uses it; every method but [`LayerSource::blob`] runs on a
/// blocking thread.
pub(crate) trait LayerSource<H: FsVerityHashValue>: Send + Sync + 'static {
    /// The blob this source makes `layer` from, or `None` when it has
    /// none: the layer must then be in the repository already.
    fn blob(&self, layer: &LayerPlan) -> Option<Blob>;

    /// Get ready to make the layers of `fetching`, once, before any is
    /// fetched; `absent` are the layers neither the repository nor this
    /// source has. An error ends the pull with nothing fetched; a source
    /// that leaves `absent` unrefused gets an internal error.
    fn prepare(
        &self,
        repo: &Arc<Store<H>>,
        fetching: &[(LayerPlan, Blob)],
        absent: &[LayerPlan],
    ) -> Result<(), Error> {
        let _ = (repo, fetching, absent);
        Ok(())
    }

    /// The blob to make `layer` from, now that the source is prepared:
    /// `blob` unless preparing changed how.
    fn refine(&self, layer: &LayerPlan, blob: Blob) -> Blob {
        let _ = layer;
        blob
    }

    /// How the files of `layer` are cut into chunks, as the source knows
    /// it (a zstd:chunked TOC), to record in the content index with the
    /// layer's contents; `None` when it does not know.
    fn chunk_hints(&self, layer: &LayerPlan) -> Option<Arc<ChunkHints>> {
        let _ = layer;
        None
    }

    /// The bytes of `blob`, from the first, each once and in order; a
    /// source that resumes does so inside the reader.
    fn open(&self, blob: &Blob) -> Result<Box<dyn Read + Send>, Error>;

    /// Write the tar of `layer` into `out`, made from `bytes` (the blob's,
    /// hashed on their way in). A damaged input is an error of its own
    /// kind; a write error means the splitter stopped, and its error is
    /// the one reported. A source that copies a file's content whole from
    /// an object of the repository may say so ([`Pipe::object_follows`]).
    fn unpack(
        &self,
        layer: &LayerPlan,
        blob: &Blob,
        bytes: &mut dyn Read,
        out: &mut Pipe<H>,
    ) -> Result<(), Error>;
}

/// The layers of one image, all in the repository now.
#[derive(Debug)]
pub(crate) struct Layers<H> {
    /// Each layer's diff_id and stream, in config order.
    pub refs: Vec<(OciDigest, H)>,
    /// What storing the fetched layers wrote and found present.
    pub stats: Tally<H>,
    /// Layers (distinct diff_ids) that were in the repository already.
    pub present: u64,
}

/// Bring the layers `layers` (in config order) into `repo` from `source`,
/// `jobs` at a time. The first failure ends it and cancels the other
/// layers; each layer's threads keep the pull's GC hold until they return.
pub(crate) async fn bring_in<H: FsVerityHashValue, S: LayerSource<H>>(
    repo: &Arc<Store<H>>,
    source: Arc<S>,
    layers: &[LayerPlan],
    jobs: usize,
    progress: &Progress,
) -> Result<Layers<H>, Error> {
    let (mut streams, wanted) = look_up(repo, layers).await?;
    for plan in layers.iter().filter(|p| streams.contains_key(&p.diff_id)) {
        tell(progress, plan, Stage::Present, plan.size, plan.size);
    }
    let present = streams.len() as u64;
    let fetching = prepare(repo, &source, wanted).await?;
    let slots = Arc::new(Semaphore::new(jobs.max(1)));
    let mut tasks = JoinSet::new();
    for (plan, blob) in fetching {
        tell(progress, &plan, Stage::Queued, 0, blob.size);
        let fetch = layer::Fetch {
            repo: repo.clone(),
            source: source.clone(),
            plan,
            blob,
            progress: progress.clone(),
        };
        let slots = slots.clone();
        tasks.spawn(async move {
            let _slot = slots
                .acquire_owned()
                .await
                .map_err(|e| Error::storage("waiting for a job", std::io::Error::other(e)))?;
            fetch.run().await
        });
    }
    let mut stats = Tally::default();
    while let Some(joined) = tasks.join_next().await {
        let (diff_id, fetched) =
            joined.map_err(|e| Error::storage("importing a layer", std::io::Error::other(e)))??;
        stats.merge(fetched.stats);
        streams.insert(diff_id, fetched.stream);
    }
    let refs = layers
        .iter()
        .map(|plan| (plan.diff_id.to_oci(), streams[&plan.diff_id].clone()))
        .collect();
    Ok(Layers {
        refs,
        stats,
        present,
    })
}

/// The streams of the layers the repository has, by diff_id, and the
/// others, each diff_id once (an image may hold the same layer twice).
async fn look_up<H: FsVerityHashValue>(
    repo: &Arc<Store<H>>,
    layers: &[LayerPlan],
) -> Result<(HashMap<Digest, H>, Vec<LayerPlan>), Error> {
    let repo = repo.clone();
    let layers = layers.to_vec();
    blocking(move || {
        let mut streams = HashMap::new();
        let mut wanted = Vec::new();
        let mut seen = HashSet::new();
        for plan in layers {
            if !seen.insert(plan.diff_id.clone()) {
                continue;
            }
            let stored = repo
                .has_stream(&layer_content_id(&plan.diff_id.to_oci()))
                .map_err(|e| Error::storage("looking up a layer", e))?;
            match stored {
                Some(stream) => {
                    streams.insert(plan.diff_id, stream);
                }
                None => wanted.push(plan),
            }
        }
        Ok((streams, wanted))
    })
    .await
}

/// Pair each wanted layer with its blob and let the source prepare.
async fn prepare<H: FsVerityHashValue, S: LayerSource<H>>(
    repo: &Arc<Store<H>>,
    source: &Arc<S>,
    wanted: Vec<LayerPlan>,
) -> Result<Vec<(LayerPlan, Blob)>, Error> {
    let (mut fetching, mut absent) = (Vec::new(), Vec::new());
    for plan in wanted {
        match source.blob(&plan) {
            Some(blob) => fetching.push((plan, blob)),
            None => absent.push(plan),
        }
    }
    let (repo, source) = (repo.clone(), source.clone());
    blocking(move || {
        source.prepare(&repo, &fetching, &absent)?;
        match absent.first() {
            None => Ok(fetching
                .into_iter()
                .map(|(plan, blob)| {
                    let blob = source.refine(&plan, blob);
                    (plan, blob)
                })
                .collect()),
            Some(plan) => Err(Error::internal(
                "bringing in the layers",
                format!("the source has no blob for layer {}", plan.blob),
            )),
        }
    })
    .await
}

/// Report `stage` of `plan`.
pub(crate) fn tell(progress: &Progress, plan: &LayerPlan, stage: Stage, done: u64, total: u64) {
    progress(LayerProgress {
        layer: plan.blob.to_string(),
        stage,
        done,
        total,
    });
}

/// Run disk work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::storage("a repository task", std::io::Error::other(e)))?
}
