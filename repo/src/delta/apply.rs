//! An oci-delta as a source of the layer pipeline: the target layers the
//! repository lacks are rebuilt from the delta's blobs, by a tar-diff
//! against the source image or from a whole layer it carries; the layers
//! it leaves out must be in the repository already.

use std::{
    collections::HashMap,
    io::{self, Read},
    sync::{Arc, OnceLock},
};

use composefs::{fsverity::FsVerityHashValue, repository::Repository as Store};

use super::{
    artifact::{Delta, Method, Rebuild},
    source::SourceImage,
    tardiff::{self, TarDiffError, TarOut},
};
use crate::{
    Error,
    oci::{
        digest::Digest,
        layer::{self, pipe_error},
        manifest::LayerPlan,
        pipeline::{Blob, LayerSource},
        source::Layout,
        split::Pipe,
    },
};

/// A file the tar-diff copies whole from a source file that is certainly
/// an object (see [`SourceFile::object`](tardiff::SourceFile::object)) is
/// that object again: the splitter refers to it rather than hashing and
/// storing the same bytes, which still reach the diff_id.
impl<H> TarOut<H> for Pipe<H>
where
    H: FsVerityHashValue,
{
    fn object_follows(&mut self, id: &H, size: u64) {
        Pipe::object_follows(self, id.clone(), size);
    }
}

/// The layers of a delta's target image, as the pipeline reads them.
pub(crate) struct DeltaLayers<H: FsVerityHashValue> {
    layout: Arc<Layout>,
    /// The config digest of the image the delta applies to.
    source_config: Digest,
    /// That image's manifest digest, when the delta names it.
    source_manifest: Option<Digest>,
    /// The layers the delta carries, by target layer digest.
    rebuilds: HashMap<Digest, Rebuild>,
    /// The source image's files, loaded in `prepare` when a tar-diff
    /// needs them.
    source: OnceLock<Arc<SourceImage<H>>>,
}

impl<H: FsVerityHashValue> DeltaLayers<H> {
    /// The target layers of `delta`, whose blobs are in `layout`.
    pub(crate) fn new(layout: Arc<Layout>, delta: &Delta) -> Self {
        DeltaLayers {
            layout,
            source_config: delta.source_config.clone(),
            source_manifest: delta.source_manifest.clone(),
            rebuilds: delta.rebuilds.clone(),
            source: OnceLock::new(),
        }
    }

    fn rebuild(&self, layer: &LayerPlan) -> Result<&Rebuild, Error> {
        self.rebuilds.get(&layer.blob).ok_or_else(|| {
            Error::internal(
                "rebuilding a layer",
                format!("the delta carries no layer {}", layer.blob),
            )
        })
    }
}

impl<H: FsVerityHashValue> LayerSource<H> for DeltaLayers<H> {
    fn blob(&self, layer: &LayerPlan) -> Option<Blob> {
        self.rebuilds.get(&layer.blob).map(|rebuild| Blob {
            digest: rebuild.blob.clone(),
            size: rebuild.size,
            name: format!("delta layer {}", rebuild.blob),
            tar: format!("diff_id of layer {} rebuilt from the delta", layer.blob),
            check: crate::oci::pipeline::BlobCheck::Digest,
        })
    }

    /// The source image must be in the repository whenever anything
    /// depends on it: a tar-diff (whose files are loaded here), or a layer
    /// the delta leaves out that the repository lacks.
    fn prepare(
        &self,
        repo: &Arc<Store<H>>,
        fetching: &[(LayerPlan, Blob)],
        absent: &[LayerPlan],
    ) -> Result<(), Error> {
        let tar_diffs = fetching.iter().any(|(layer, _)| {
            self.rebuild(layer)
                .is_ok_and(|r| r.method == Method::TarDiff)
        });
        if !tar_diffs && absent.is_empty() {
            return Ok(());
        }
        if !source_present(repo, &self.source_config)? {
            return Err(Error::DeltaSourceMissing {
                config: self.source_config.to_string(),
                image: self.source_manifest.as_ref().map(Digest::to_string),
            });
        }
        if let Some(layer) = absent.first() {
            return Err(Error::InvalidDelta {
                reason: format!(
                    "it leaves out layer {}, which the repository does not have \
                     although it has the source image",
                    layer.diff_id
                ),
            });
        }
        if tar_diffs {
            let image = self.load_source(repo)?;
            let _ = self.source.set(image);
        }
        Ok(())
    }

    fn open(&self, blob: &Blob) -> Result<Box<dyn Read + Send>, Error> {
        // The delta's blobs are in its layout, read as an image's are.
        LayerSource::<H>::open(&*self.layout, blob)
    }

    fn unpack(
        &self,
        layer: &LayerPlan,
        blob: &Blob,
        bytes: &mut dyn Read,
        out: &mut Pipe<H>,
    ) -> Result<(), Error> {
        match self.rebuild(layer)?.method {
            Method::TarDiff => self.apply_tar_diff(layer, bytes, out),
            Method::Layer(compression) => layer::decompress(compression, layer, blob, bytes, out),
        }
    }
}

/// Whether the image whose config is `config`, which a delta applies
/// to, is in the repository.
pub(crate) fn source_present<H: FsVerityHashValue>(
    repo: &Store<H>,
    config: &Digest,
) -> Result<bool, Error> {
    // composefs-oci names an image's config stream `oci-config-<digest>`.
    let present = repo
        .has_stream(&format!("oci-config-{config}"))
        .map_err(|e| Error::storage("looking up the delta's source image", e))?;
    Ok(present.is_some())
}

impl<H: FsVerityHashValue> DeltaLayers<H> {
    /// The source image's files, from its EROFS image.
    fn load_source(&self, repo: &Arc<Store<H>>) -> Result<Arc<SourceImage<H>>, Error> {
        let image = composefs_oci::composefs_erofs_for_config(
            repo,
            &self.source_config.to_oci(),
            None,
            repo.erofs_version(),
        )
        .map_err(|e| Error::storage("looking up the delta's source image", e))?
        .ok_or_else(|| {
            Error::internal(
                "looking up the delta's source image",
                format!(
                    "config {} has no EROFS image: its pull was interrupted before the image was built",
                    self.source_config
                ),
            )
        })?;
        Ok(Arc::new(SourceImage::load(repo.clone(), &image)?))
    }

    fn apply_tar_diff(
        &self,
        layer: &LayerPlan,
        blob: &mut dyn Read,
        out: &mut Pipe<H>,
    ) -> Result<(), Error> {
        let source = self.source.get().ok_or_else(|| {
            Error::internal(
                "rebuilding a layer",
                "the source image was not loaded".to_owned(),
            )
        })?;
        tardiff::apply(blob, source.as_ref(), out).map_err(|e| tar_diff_error(layer, e))
    }
}

/// The pull's error for a tar-diff of `layer` that failed with `e`: the
/// splitter's, the disk's (of its kind) or the delta's.
pub(super) fn tar_diff_error(layer: &LayerPlan, e: TarDiffError) -> Error {
    match e {
        TarDiffError::Output(e) => pipe_error(layer, e),
        // The errno is the io::Error's, the source of `e`.
        TarDiffError::SourceRead { .. } => Error::storage(
            "reading a file of the delta's source image",
            io::Error::other(e),
        ),
        e => Error::TarDiff {
            layer: layer.blob.to_string(),
            reason: e.to_string(),
        },
    }
}

impl Delta {
    /// Whether applying this delta to `layers` (its target's) reads the
    /// source image: a tar-diff does, and so does a layer it leaves out.
    pub(crate) fn needs_source(&self, layers: &[LayerPlan]) -> bool {
        self.rebuilds.values().any(|r| r.method == Method::TarDiff)
            || layers.iter().any(|l| !self.rebuilds.contains_key(&l.blob))
    }
}
