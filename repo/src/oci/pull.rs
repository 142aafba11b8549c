//! `oci pull`: bring an image from an OCI layout into the repository.
//!
//! Layers are imported concurrently, each verified against its blob
//! digest and diff_id before its stream is named; then the config,
//! manifest and EROFS image are written and the tag is set, last, by
//! composefs-oci's own finalisation, so the result is what upstream
//! composefs-rs would store.

use std::sync::Arc;

use composefs::{fsverity::FsVerityHashValue, repository::Repository as Store};
use composefs_oci::oci_image::OciImage;

use super::{
    Platform, images,
    manifest::{self, Resolved},
    partial::PartialLayers,
    pipeline::{self, LayerProgress, Layers, Progress, Stage, blocking},
    publish::publish,
    source::{Layout, Source},
    split::Tally,
    stage::{StageGuard, StageWork},
};
use crate::{
    Error, Repository,
    coordination::Hold,
    delta::{
        Delta, DeltaLayers,
        discover::{discover, fall_back_after},
    },
    repository::with_store,
};

/// How to pull.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// The image in the layout: its `org.opencontainers.image.ref.name` or
    /// manifest digest. May be left out when the index holds one image.
    pub reference: Option<String>,
    /// The tag to give the image; the manifest digest when `None`.
    pub tag: Option<String>,
    /// The platform to choose from an image index; the host's when `None`.
    pub platform: Option<Platform>,
    /// How many layers to import at once; the number of cores when 0.
    pub jobs: usize,
    /// For a registry image: do not look for an oci-delta to pull it by
    /// (no referrers request is sent).
    pub no_delta: bool,
    /// `sha256:<hex>`: refuse any image but the one whose manifest (or an
    /// index leading to it) has this digest; for a delta, its target's.
    pub digest: Option<String>,
    /// The signature policy a local source (`oci:`, `oci-archive:`) must
    /// meet, with the signatures the layout carries; `None` checks none.
    /// A registry's policy comes with it (`crate::registry::Registry`).
    pub policy: Option<crate::trust::Policy>,
    /// Stage the image: import and verify all of it, set no tag, and keep
    /// a stage record to commit later (`tag` must then be `None`).
    pub stage: bool,
    /// For a delta: another repository where its source image may be,
    /// copied from there when this one lacks it.
    pub source_repo: Option<Arc<crate::secondary::SecondaryRepository>>,
    /// For a registry image: pull every layer in full, even zstd:chunked
    /// ones whose files the repository partly holds.
    pub no_partial: bool,
}

/// What a pull did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullReport {
    /// The image manifest's digest.
    pub manifest_digest: String,
    /// The image config's digest.
    pub config_digest: String,
    /// The composefs image id (hex fs-verity digest of the EROFS image).
    pub image_id: String,
    /// The tag set.
    pub tag: String,
    /// The image's layers.
    pub layers: u64,
    /// Layers that were already in the repository.
    pub layers_present: u64,
    /// Objects written by this pull.
    pub objects_new: u64,
    /// Objects the layers needed that were already stored.
    pub objects_present: u64,
    /// Bytes of the objects written.
    pub bytes_new: u64,
    /// The image was already there under this tag; nothing was done.
    pub already_present: bool,
    /// The oci-delta the image was rebuilt from, if it was.
    pub delta: Option<AppliedDelta>,
    /// For a registry image pulled by its own reference: whether an
    /// oci-delta found for it was used, and why.
    pub discovery: Option<DeltaDiscovery>,
    /// For a staged pull: the stage id (and `tag` is empty).
    pub stage: Option<String>,
    /// For a registry image: what its partial pulls of zstd:chunked
    /// layers did, when any layer was pulled so.
    pub partial: Option<super::partial::PartialPull>,
}

/// Whether a registry pull found and used an oci-delta, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaDiscovery {
    /// The image was rebuilt from a delta.
    pub used: bool,
    /// The delta's manifest digest, when one was chosen (used, or tried
    /// and failed).
    pub manifest: Option<String>,
    /// Why it was used, or why the image was pulled in full.
    pub reason: String,
}

/// An oci-delta that a pull applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedDelta {
    /// The delta artifact's manifest digest.
    pub manifest_digest: String,
    /// The config digest of the image it was applied against.
    pub source_config: String,
    /// That image's manifest digest, when the delta names it.
    pub source_manifest: Option<String>,
}

/// A pull whose source is open and whose image is chosen and checked,
/// before anything is read beyond the index, manifest and config.
#[derive(Debug)]
pub struct PreparedPull {
    layout: Arc<Layout>,
    resolved: Arc<Resolved>,
    tag: String,
    jobs: usize,
    /// For a registry image: look for a delta (false: `no_delta` asked).
    discover: Option<bool>,
    /// Dropped with the pull, it stops the registry's blob readers.
    stop: Option<crate::registry::Stop>,
    /// The signatures that met the policy, kept with the image.
    signatures: Option<crate::trust::Accepted>,
    /// Stage the image rather than tag it.
    stage: bool,
    /// Where a delta's source image may be found.
    source_repo: Option<Arc<crate::secondary::SecondaryRepository>>,
    /// Pull zstd:chunked layers in part where that fetches less.
    partial: bool,
}

impl PreparedPull {
    /// The digest of the manifest this pull imports: two pulls with the
    /// same one import the same image.
    pub fn manifest_digest(&self) -> String {
        self.resolved.manifest_digest.to_string()
    }
}

impl Repository {
    /// Pull the image that `options` choose from `source`, and tag it.
    ///
    /// Nothing is published unless every blob and layer verifies: layer
    /// streams are named only after their digests check, and the tag is
    /// set last.
    pub async fn pull(
        &self,
        source: Source,
        options: PullOptions,
        progress: impl Fn(LayerProgress) + Send + Sync + 'static,
    ) -> Result<PullReport, Error> {
        let prepared = blocking(move || Repository::prepare_pull(source, &options)).await?;
        self.pull_prepared(prepared, progress).await
    }

    /// Open `source` and choose and check the image that `options` name,
    /// reading only the index, manifest and config. Blocks on that reading.
    pub fn prepare_pull(source: Source, options: &PullOptions) -> Result<PreparedPull, Error> {
        let platform = options.platform.clone().unwrap_or_else(Platform::host);
        // A local source's `reject` scope refuses before it is read.
        let local_gate = match (&options.policy, source.local_transport()) {
            (Some(policy), Some(transport)) => crate::trust::Gate::local(policy, transport)?,
            _ => None,
        };
        let layout = Layout::open(source)?;
        let resolved = manifest::resolve(&layout, options.reference.as_deref(), &platform)?;
        if let Some(pinned) = &options.digest {
            resolved.check_pinned(pinned)?;
        }
        // Trust: the policy decides on the digest signatures name, before
        // any layer is fetched.
        let signatures = match &local_gate {
            Some(gate) => {
                let carried = crate::trust::carried::InLayout { layout: &layout };
                Some(gate.admit_local(resolved.signed(), &carried)?)
            }
            None => layout.admit(resolved.signed(), resolved.delta.is_some())?,
        };
        // Asked for by name, the platform must be the image's own, whatever
        // the index claims or when there is no index entry to choose from.
        if let Some(asked) = &options.platform {
            asked.check_config(&resolved.config)?;
        }
        let tag = stage_or_tag(options, &resolved)?;
        let jobs = match options.jobs {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        // A registry image asked for by its own reference may come by a
        // delta; one asked for by a delta's reference already does.
        let discover =
            (layout.remote().is_some() && resolved.delta.is_none()).then_some(!options.no_delta);
        let partial = layout.remote().is_some() && resolved.delta.is_none() && !options.no_partial;
        Ok(PreparedPull {
            stop: layout.take_stop(),
            layout: Arc::new(layout),
            resolved: Arc::new(resolved),
            tag,
            jobs,
            discover,
            signatures,
            stage: options.stage,
            source_repo: options.source_repo.clone(),
            partial,
        })
    }

    /// Import and tag the image of `prepared`.
    pub async fn pull_prepared(
        &self,
        mut prepared: PreparedPull,
        progress: impl Fn(LayerProgress) + Send + Sync + 'static,
    ) -> Result<PullReport, Error> {
        // Held by this future: a pull dropped on hang-up stops its
        // registry readers at once, wherever their threads are.
        let _stop = prepared.stop.take();
        // A pull of an image another pull is importing waits for it, then
        // finds the image present and only tags it. Its turn comes before
        // its hold, so that waiting does not hold off GC.
        let manifest = prepared.manifest_digest();
        let _turn = self.pulls().turn(&manifest).await;
        let hold = Arc::new(self.hold_async(format!("a pull of {manifest}")).await?);
        if let Some(plan) = prepared.resolved.layers.first() {
            // Every layer's plan shares this one slot.
            let _ = plan.hold.set(hold.clone());
        }
        // A stage's record is written under the hold, so that GC never
        // meets one in flight; dropped unsettled, the guard marks it
        // incomplete.
        let stage = match prepared.stage {
            true => {
                let (root, resolved) = (self.path().to_owned(), prepared.resolved.clone());
                Some(blocking(move || StageWork::begin(&root, &resolved)).await?)
            }
            false => None,
        };
        let _guard = stage.clone().map(StageGuard);
        let job = Pull {
            stage: stage.clone(),
            layout: prepared.layout,
            resolved: prepared.resolved,
            tag: prepared.tag,
            jobs: prepared.jobs,
            discover: prepared.discover,
            progress: Arc::new(progress),
            hold,
            signatures: prepared.signatures,
            root: self.path().to_owned(),
            source_repo: prepared.source_repo,
            partial: prepared.partial,
        };
        let result = with_store!(self.store(), store => job.run(store.clone()).await);
        if let (Err(_), Some(work)) = (&result, &stage) {
            work.discard();
        }
        result
    }
}

/// The tag a pull sets, or for a staged pull none (an empty string).
fn stage_or_tag(options: &PullOptions, resolved: &Resolved) -> Result<String, Error> {
    if options.stage {
        return match &options.tag {
            Some(tag) => Err(Error::InvalidTag {
                tag: tag.clone(),
                reason: "a staged pull sets no tag; committing the stage names the image"
                    .to_owned(),
            }),
            None => Ok(String::new()),
        };
    }
    let tag = options
        .tag
        .clone()
        .unwrap_or_else(|| resolved.manifest_digest.to_string());
    images::check_tag(&tag)?;
    images::check_tag_names(&tag, &resolved.manifest_digest.to_string())?;
    Ok(tag)
}

/// One pull in progress.
struct Pull {
    layout: Arc<Layout>,
    resolved: Arc<Resolved>,
    tag: String,
    jobs: usize,
    discover: Option<bool>,
    progress: Progress,
    /// Keeps GC off; the blocking work that names the image keeps a
    /// share, since it runs on if this pull is dropped.
    hold: Arc<Hold>,
    /// The signatures that met the policy, kept before the image is
    /// published, so that a published image has them.
    signatures: Option<crate::trust::Accepted>,
    /// The repository's directory, where they are kept.
    root: std::path::PathBuf,
    /// For a staged pull: its record, completed instead of a tag set.
    stage: Option<Arc<StageWork>>,
    /// Where a delta's source image may be found.
    source_repo: Option<Arc<crate::secondary::SecondaryRepository>>,
    /// Pull zstd:chunked layers in part where that fetches less.
    partial: bool,
}

impl Pull {
    async fn run<H: FsVerityHashValue>(self, repo: Arc<Store<H>>) -> Result<PullReport, Error> {
        let job = Arc::new(self);
        let (looking, store) = (job.clone(), repo.clone());
        if let Some(report) = blocking(move || looking.already_present(&store)).await? {
            return Ok(report);
        }
        let (brought, route) = job.bring_layers(&repo).await?;
        let Layers {
            refs,
            stats,
            present,
        } = brought;
        let publishing = job.clone();
        let bytes_new = stats.bytes_new();
        let image_id = blocking(move || {
            let _hold = publishing.hold.clone();
            let resolved = &publishing.resolved;
            publishing.keep_signatures()?;
            let tag = publishing
                .stage
                .is_none()
                .then_some(publishing.tag.as_str());
            let id = publish(&repo, &resolved.manifest, &resolved.config, &refs, tag)
                .map_err(image_error)?;
            durable(&repo)?;
            if let Some(work) = &publishing.stage {
                work.finish(&id.to_hex(), bytes_new)?;
            }
            Ok(id.to_hex())
        })
        .await?;
        let totals = Totals {
            layers_present: present,
            objects: stats,
        };
        Ok(job.report(image_id, totals, false, route))
    }

    /// Bring in the layers: from the delta the source is, from a delta
    /// found for the image, or from the image's own blobs; a found delta
    /// that fails is followed by the image's own blobs.
    async fn bring_layers<H: FsVerityHashValue>(
        self: &Arc<Self>,
        repo: &Arc<Store<H>>,
    ) -> Result<(Layers<H>, Route), Error> {
        let layers = &self.resolved.layers;
        // oci-delta hook: the layers come from the delta (crate::delta).
        if let Some(delta) = &self.resolved.delta {
            if let Some(secondary) = &self.source_repo {
                let jobs = self.jobs;
                crate::secondary::delta_source::bring_delta_source(
                    repo, secondary, delta, layers, &self.hold, jobs,
                )
                .await?;
            }
            let source = Arc::new(DeltaLayers::new(self.layout.clone(), delta));
            let brought =
                pipeline::bring_in(repo, source, layers, self.jobs, &self.progress).await?;
            return Ok((brought, Route::applied(delta, None)));
        }
        if let Some(secondary) = self.layout.secondary() {
            let source = Arc::new(crate::secondary::copy::CopyLayers {
                source: secondary.clone(),
                repo: repo.clone(),
            });
            let brought =
                pipeline::bring_in(repo, source, layers, self.jobs, &self.progress).await?;
            let route = Route {
                applied: None,
                discovery: None,
                partial: None,
            };
            return Ok((brought, route));
        }
        let discovery = match self.discover {
            None => None,
            Some(false) => Some(DeltaDiscovery {
                used: false,
                manifest: None,
                reason: "looking for a delta was turned off (noDelta)".to_owned(),
            }),
            Some(true) => match self.try_found_delta(repo).await? {
                Ok(done) => return Ok(done),
                Err(discovery) => Some(discovery),
            },
        };
        if self.partial {
            let manifest = &self.resolved.manifest;
            let source = Arc::new(PartialLayers::new(self.layout.clone(), manifest));
            let brought =
                pipeline::bring_in(repo, source.clone(), layers, self.jobs, &self.progress).await?;
            let route = Route {
                applied: None,
                discovery,
                partial: source.report(),
            };
            return Ok((brought, route));
        }
        let source = self.layout.clone();
        let brought = pipeline::bring_in(repo, source, layers, self.jobs, &self.progress).await?;
        Ok((
            brought,
            Route {
                applied: None,
                discovery,
                partial: None,
            },
        ))
    }

    /// Look for a delta of this registry image and apply it. `Ok(Err)`
    /// says why the image is to be pulled in full: no usable delta, or
    /// one that failed for a fault of its own, having named nothing that
    /// is not verified.
    async fn try_found_delta<H: FsVerityHashValue>(
        self: &Arc<Self>,
        repo: &Arc<Store<H>>,
    ) -> Result<Result<(Layers<H>, Route), DeltaDiscovery>, Error> {
        let (looking, store) = (self.clone(), repo.clone());
        let found = blocking(move || {
            let target = &looking.resolved.manifest_digest;
            Ok(discover(&looking.layout, &store, target))
        })
        .await?;
        let Some(delta) = found.delta else {
            return Ok(Err(DeltaDiscovery {
                used: false,
                manifest: None,
                reason: found.reason,
            }));
        };
        let manifest = delta.manifest.to_string();
        // A fresh count of the pull's size, so that a failed attempt
        // does not count against the full pull.
        let layers = manifest::afresh(&self.resolved.layers);
        let source = Arc::new(DeltaLayers::new(self.layout.clone(), &delta));
        match pipeline::bring_in(repo, source, &layers, self.jobs, &self.progress).await {
            Ok(brought) => {
                let discovery = DeltaDiscovery {
                    used: true,
                    manifest: Some(manifest),
                    reason: found.reason,
                };
                Ok(Ok((brought, Route::applied(&delta, Some(discovery)))))
            }
            Err(e) if fall_back_after(&e) => {
                tracing::warn!("delta {manifest} failed, pulling in full: {e}");
                Ok(Err(DeltaDiscovery {
                    used: false,
                    reason: format!(
                        "delta {manifest} failed, so the image was pulled in full: {e}"
                    ),
                    manifest: Some(manifest),
                }))
            }
            Err(e) => Err(e),
        }
    }

    /// Keep the signatures that admitted the image, if any did.
    fn keep_signatures(&self) -> Result<(), Error> {
        match &self.signatures {
            Some(accepted) => accepted.store(&self.root, &self.resolved.manifest_digest),
            None => Ok(()),
        }
    }

    /// If the repository already holds this image, complete with its EROFS
    /// image, set the tag and report that; nothing is read or written.
    fn already_present<H: FsVerityHashValue>(
        &self,
        repo: &Store<H>,
    ) -> Result<Option<PullReport>, Error> {
        let digest = self.resolved.manifest_digest.to_oci();
        let stored = composefs_oci::oci_image::has_manifest(repo, &digest)
            .map_err(|e| Error::storage("looking up the manifest", e))?;
        let Some(verity) = stored else {
            return Ok(None);
        };
        let Ok(image) = OciImage::open(repo, &digest, Some(&verity)) else {
            return Ok(None);
        };
        let Some(id) = image.image_ref(repo.erofs_version()) else {
            return Ok(None);
        };
        self.keep_signatures()?;
        match &self.stage {
            Some(work) => work.finish(&id.to_hex(), 0)?,
            None => {
                composefs_oci::oci_image::tag_image(repo, &digest, &self.tag)
                    .map_err(|e| Error::storage("tagging", e))?;
                durable(repo)?;
            }
        }
        for plan in &self.resolved.layers {
            pipeline::tell(&self.progress, plan, Stage::Present, plan.size, plan.size);
        }
        let totals = Totals {
            layers_present: self.resolved.layers.len() as u64,
            ..Totals::<H>::default()
        };
        let route = Route {
            applied: self.resolved.delta.as_ref().map(applied),
            discovery: None,
            partial: None,
        };
        Ok(Some(self.report(id.to_hex(), totals, true, route)))
    }

    fn report<H: FsVerityHashValue>(
        &self,
        image_id: String,
        totals: Totals<H>,
        already_present: bool,
        route: Route,
    ) -> PullReport {
        PullReport {
            manifest_digest: self.resolved.manifest_digest.to_string(),
            config_digest: self.resolved.config_digest.to_string(),
            image_id,
            tag: self.tag.clone(),
            layers: self.resolved.layers.len() as u64,
            layers_present: totals.layers_present,
            objects_new: totals.objects.objects_new(),
            objects_present: totals.objects.objects_present(),
            bytes_new: totals.objects.bytes_new(),
            already_present,
            delta: route.applied,
            discovery: route.discovery,
            stage: self.stage.as_ref().map(|w| w.id().to_owned()),
            partial: route.partial,
        }
    }
}

/// Which way a pull's layers came.
#[derive(Debug)]
struct Route {
    applied: Option<AppliedDelta>,
    discovery: Option<DeltaDiscovery>,
    partial: Option<super::partial::PartialPull>,
}

impl Route {
    fn applied(delta: &Delta, discovery: Option<DeltaDiscovery>) -> Self {
        Route {
            applied: Some(applied(delta)),
            discovery,
            partial: None,
        }
    }
}

/// What a report says of the delta `d`.
fn applied(d: &Delta) -> AppliedDelta {
    AppliedDelta {
        manifest_digest: d.manifest.to_string(),
        source_config: d.source_config.to_string(),
        source_manifest: d.source_manifest.as_ref().map(ToString::to_string),
    }
}

/// What the layer imports added up to.
#[derive(Debug)]
struct Totals<H> {
    layers_present: u64,
    /// Every object the imported layers refer to, once each.
    objects: Tally<H>,
}

impl<H> Default for Totals<H> {
    fn default() -> Self {
        Totals {
            layers_present: 0,
            objects: Tally::default(),
        }
    }
}

/// Make what was written durable before the caller is told it is done:
/// composefs syncs before it creates each name, not after, so the newest
/// name (the tag) would otherwise be lost to a power cut after the reply.
pub(crate) fn durable<H: FsVerityHashValue>(repo: &Store<H>) -> Result<(), Error> {
    repo.sync()
        .map_err(|e| Error::storage("syncing the repository", e))
}

/// Building the image failed: on an I/O error, the repository is at
/// fault; otherwise the layers are, which only conflict across layers can
/// cause, each layer having passed the tar rules alone.
pub(crate) fn image_error(e: anyhow::Error) -> Error {
    let io_failure = e.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some()
            || cause.downcast_ref::<rustix::io::Errno>().is_some()
    });
    if io_failure {
        Error::storage("writing the image", e)
    } else {
        Error::InvalidImage {
            reason: format!("{e:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        HashAlgorithm, VerityPolicy,
        test_image::{TestImage, TestLayer},
    };

    /// A one-layer image as an uncompressed oci-archive, with its layer
    /// blob's first data byte replaced by `flip` if given.
    fn archive(flip: Option<u8>) -> std::fs::File {
        let mut layer = tar::Builder::new(Vec::new());
        for (path, data) in [("usr/", &b""[..]), ("usr/hello", &[b'h'; 100][..])] {
            let mut header = tar::Header::new_ustar();
            header.set_size(data.len() as u64);
            header.set_mode(if data.is_empty() { 0o755 } else { 0o644 });
            header.set_entry_type(if data.is_empty() {
                tar::EntryType::Directory
            } else {
                tar::EntryType::Regular
            });
            header.set_mtime(1_700_000_000);
            header.set_cksum();
            layer.append_data(&mut header, path, data).unwrap();
        }
        let mut layer = TestLayer::plain(layer.into_inner().unwrap());
        if let Some(byte) = flip {
            layer.blob[512] = byte;
        }
        TestImage::new(vec![layer]).archive(Some("v1"))
    }

    fn options() -> PullOptions {
        PullOptions {
            reference: Some("v1".into()),
            tag: Some("demo:v1".into()),
            ..PullOptions::default()
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn pulls_once_and_then_finds_it_present() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, _) =
            Repository::init(dir.path(), HashAlgorithm::SHA256, VerityPolicy::BestEffort).unwrap();
        let first = repo
            .pull(Source::Archive(archive(None)), options(), |_| {})
            .await
            .unwrap();
        assert!(!first.already_present);
        assert_eq!(first.layers, 1);
        assert_eq!(first.objects_new, 1, "the 100-byte file is an object");
        assert_eq!(repo.compute_id("demo:v1").unwrap(), first.image_id);
        let again = repo
            .pull(Source::Archive(archive(None)), options(), |_| {})
            .await
            .unwrap();
        assert!(again.already_present);
        assert_eq!(again.image_id, first.image_id);
        assert_eq!(repo.images().unwrap().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_flipped_byte_publishes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, _) =
            Repository::init(dir.path(), HashAlgorithm::SHA256, VerityPolicy::BestEffort).unwrap();
        let err = repo
            .pull(Source::Archive(archive(Some(b'X'))), options(), |_| {})
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::DigestMismatch { ref what, .. } if what.starts_with("diff_id")),
            "{err}"
        );
        assert!(repo.images().unwrap().is_empty());
        let streams = std::fs::read_dir(dir.path().join("streams")).map_or(0, |d| d.count());
        assert_eq!(streams, 0, "a stream was named");
    }
}
