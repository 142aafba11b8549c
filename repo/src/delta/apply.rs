//! Bringing in the layers of a delta's target image: reuse what the
//! repository has, rebuild the rest from the delta, `jobs` at a time.

use std::{
    collections::{HashMap, HashSet},
    io::{self, Read, Write},
    sync::Arc,
};

use composefs::{fsverity::FsVerityHashValue, repository::Repository as Store};
use composefs_oci::{OciDigest, layer_content_id};
use tokio::{sync::Semaphore, task::JoinSet};

use super::{
    artifact::{Delta, Method, Rebuild},
    source::SourceImage,
    tardiff::{self, TarDiffError},
};
use crate::{
    Error,
    oci::{
        LayerProgress, Stage,
        archive::Pread,
        digest::{Digest, Hashing},
        layer::{self, Reporting, pipe_error},
        manifest::LayerPlan,
        pull::blocking,
        source::{Layout, check_size},
        split::Tally,
    },
};

/// Where progress reports go.
type Progress = Arc<dyn Fn(LayerProgress) + Send + Sync>;

/// The target image's layers, all in the repository now.
pub(crate) struct Rebuilt<H> {
    /// Each layer's diff_id and stream, in config order.
    pub refs: Vec<(OciDigest, H)>,
    /// What storing the rebuilt layers wrote and found present.
    pub stats: Tally<H>,
    /// Layers that were in the repository already.
    pub present: u64,
}

/// Bring in the target layers `layers` (in config order) of `delta` from
/// `layout`: each one the repository lacks is rebuilt from the delta.
pub(crate) async fn rebuild_layers<H: FsVerityHashValue>(
    repo: &Arc<Store<H>>,
    layout: &Arc<Layout>,
    delta: &Delta,
    layers: &[LayerPlan],
    jobs: usize,
    progress: Progress,
) -> Result<Rebuilt<H>, Error> {
    let mut streams = HashMap::new();
    let mut work = Vec::new();
    let mut missing = Vec::new();
    let mut scheduled = HashSet::new();
    for plan in layers {
        // An image may hold the same layer twice; bring it in once.
        if !scheduled.insert(plan.diff_id.clone()) {
            continue;
        }
        if let Some(stream) = existing(repo, &plan.diff_id)? {
            tell(&progress, plan, Stage::Present, plan.size, plan.size);
            streams.insert(plan.diff_id.clone(), stream);
        } else if let Some(rebuild) = delta.rebuilds.get(&plan.blob) {
            work.push((plan.clone(), rebuild.clone()));
        } else {
            missing.push(plan.diff_id.clone());
        }
    }
    let present = streams.len() as u64;
    let source = source_image(repo, delta, &work, &missing).await?;
    let stats = run(repo, layout, source, work, jobs, &progress, &mut streams).await?;
    let refs = layers
        .iter()
        .map(|plan| (plan.diff_id.to_oci(), streams[&plan.diff_id].clone()))
        .collect();
    Ok(Rebuilt {
        refs,
        stats,
        present,
    })
}

/// The stream of the layer `diff_id`, if the repository has it.
fn existing<H: FsVerityHashValue>(repo: &Store<H>, diff_id: &Digest) -> Result<Option<H>, Error> {
    repo.has_stream(&layer_content_id(&diff_id.to_oci()))
        .map_err(|e| Error::storage("looking up a layer", e))
}

/// The source image, loaded if a tar-diff needs its files. It must be in
/// the repository whenever anything depends on it: a tar-diff, or a layer
/// the delta leaves out that the repository lacks.
async fn source_image<H: FsVerityHashValue>(
    repo: &Arc<Store<H>>,
    delta: &Delta,
    work: &[(LayerPlan, Rebuild)],
    missing: &[Digest],
) -> Result<Option<Arc<SourceImage<H>>>, Error> {
    let tar_diffs = work.iter().any(|(_, r)| r.method == Method::TarDiff);
    if !tar_diffs && missing.is_empty() {
        return Ok(None);
    }
    // composefs-oci names an image's config stream `oci-config-<digest>`.
    let config = format!("oci-config-{}", delta.source_config);
    let present = repo
        .has_stream(&config)
        .map_err(|e| Error::storage("looking up the delta's source image", e))?;
    if present.is_none() {
        return Err(Error::DeltaSourceMissing {
            config: delta.source_config.to_string(),
            image: delta.source_manifest.as_ref().map(Digest::to_string),
        });
    }
    if let Some(layer) = missing.first() {
        return Err(Error::InvalidDelta {
            reason: format!(
                "it leaves out layer {layer}, which the repository does not have \
                 although it has the source image"
            ),
        });
    }
    if !tar_diffs {
        return Ok(None);
    }
    let repo = repo.clone();
    let source_config = delta.source_config.clone();
    blocking(move || {
        let image = composefs_oci::composefs_erofs_for_config(
            &repo,
            &source_config.to_oci(),
            None,
            repo.erofs_version(),
        )
        .map_err(|e| Error::storage("looking up the delta's source image", e))?
        .ok_or_else(|| {
            Error::internal(
                "looking up the delta's source image",
                format!("config {source_config} has no EROFS image; pull it again"),
            )
        })?;
        Ok(Some(Arc::new(SourceImage::load(repo, &image)?)))
    })
    .await
}

/// Rebuild every layer of `work`, `jobs` at a time, adding each stream to
/// `streams`. The first failure ends it; the other layers are cancelled.
async fn run<H: FsVerityHashValue>(
    repo: &Arc<Store<H>>,
    layout: &Arc<Layout>,
    source: Option<Arc<SourceImage<H>>>,
    work: Vec<(LayerPlan, Rebuild)>,
    jobs: usize,
    progress: &Progress,
    streams: &mut HashMap<Digest, H>,
) -> Result<Tally<H>, Error> {
    let slots = Arc::new(Semaphore::new(jobs.max(1)));
    let mut tasks = JoinSet::new();
    for (plan, rebuild) in work {
        tell(progress, &plan, Stage::Queued, 0, rebuild.size);
        let job = Job {
            plan,
            rebuild,
            source: source.clone(),
        };
        let slots = slots.clone();
        let (repo, layout, progress) = (repo.clone(), layout.clone(), progress.clone());
        tasks.spawn(async move {
            let _slot = slots
                .acquire_owned()
                .await
                .map_err(|e| Error::storage("waiting for a job", io::Error::other(e)))?;
            job.rebuild(repo, layout, progress).await
        });
    }
    let mut stats = Tally::default();
    while let Some(joined) = tasks.join_next().await {
        let (diff_id, stream, layer_stats) =
            joined.map_err(|e| Error::storage("rebuilding a layer", io::Error::other(e)))??;
        stats.merge(layer_stats);
        streams.insert(diff_id, stream);
    }
    Ok(stats)
}

fn tell(progress: &Progress, plan: &LayerPlan, stage: Stage, done: u64, total: u64) {
    progress(LayerProgress {
        layer: plan.blob.to_string(),
        stage,
        done,
        total,
    });
}

/// One target layer to rebuild.
struct Job<H: FsVerityHashValue> {
    plan: LayerPlan,
    rebuild: Rebuild,
    source: Option<Arc<SourceImage<H>>>,
}

impl<H: FsVerityHashValue> Job<H> {
    /// Rebuild the layer into the repository and name its stream once its
    /// diff_id is verified.
    async fn rebuild(
        self,
        repo: Arc<Store<H>>,
        layout: Arc<Layout>,
        progress: Progress,
    ) -> Result<(Digest, H, Tally<H>), Error> {
        let blob = layout.blob(&self.rebuild.blob)?;
        let what = format!("delta layer {}", self.rebuild.blob);
        check_size(blob.len(), self.rebuild.size, &what)?;
        let (plan, total) = (self.plan.clone(), self.rebuild.size);
        tell(&progress, &plan, Stage::Importing, 0, total);
        let reporting = (progress.clone(), plan.clone());
        let tick = move |done| tell(&reporting.0, &reporting.1, Stage::Importing, done, total);
        let what = format!("diff_id of layer {} rebuilt from the delta", plan.blob);
        let imported =
            layer::store(repo, &plan, what, move |out| self.produce(blob, out, &tick)).await?;
        let (stream, stats) = (imported.stream, imported.stats);
        tell(&progress, &plan, Stage::Done, total, total);
        Ok((plan.diff_id, stream, stats))
    }

    /// Write the layer tar into `out`, then check the delta blob's digest
    /// (the layer store checks the tar's diff_id).
    fn produce(&self, blob: Pread, out: &mut dyn Write, tick: &dyn Fn(u64)) -> Result<(), Error> {
        let mut blob = Hashing::new(Reporting::new(blob, tick));
        let made = match self.rebuild.method {
            Method::TarDiff => self.apply_tar_diff(&mut blob, out),
            Method::Layer(compression) => {
                let damaged = |e: io::Error| Error::InvalidLayer {
                    layer: self.rebuild.blob.to_string(),
                    reason: e.to_string(),
                };
                layer::decompress_into(compression, &mut blob, out, &self.plan, damaged)
            }
        };
        if let Err(e @ Error::Storage { .. }) = made {
            return Err(e);
        }
        // Anything after the data still counts toward the blob's digest.
        let drained = io::copy(&mut blob, &mut io::sink());
        blob.get_mut().finish();
        let (digest, _) = blob.finish();
        // A damaged blob explains whatever else went wrong: report it
        // first.
        let what = format!("digest of delta layer {}", self.rebuild.blob);
        self.rebuild.blob.verify(&digest, what)?;
        made?;
        drained.map_err(|e| Error::storage("reading the delta", e))?;
        Ok(())
    }

    fn apply_tar_diff(&self, blob: &mut impl Read, out: &mut dyn Write) -> Result<(), Error> {
        let source = self.source.as_deref().ok_or_else(|| {
            Error::internal(
                "rebuilding a layer",
                "the source image was not loaded".to_owned(),
            )
        })?;
        tardiff::apply(blob, source, out).map_err(|e| match e {
            TarDiffError::Output(e) => pipe_error(&self.plan, e),
            TarDiffError::SourceRead { .. } => Error::storage(
                "reading a file of the delta's source image",
                io::Error::other(e.to_string()),
            ),
            e => Error::TarDiff {
                layer: self.plan.blob.to_string(),
                reason: e.to_string(),
            },
        })
    }
}
