//! The two images of a delta, as the repository holds them: manifests
//! and configs byte for byte, their layers, and the source image's files.

use std::sync::Arc;

use crate::{
    Error,
    delta::source::SourceImage,
    oci::{
        digest::Digest,
        document::{ConfigDoc, ManifestDoc, parse},
        images,
    },
};
use composefs::{fsverity::FsVerityHashValue, repository::Repository as Store};

/// An image of the repository, as the delta needs it.
pub(crate) struct Side {
    /// The manifest's digest.
    pub manifest_digest: Digest,
    /// The manifest, byte for byte.
    pub manifest: Vec<u8>,
    /// The config's digest.
    pub config_digest: Digest,
    /// The config, byte for byte.
    pub config: Vec<u8>,
    /// `(blob digest, blob size, diff_id)` of each layer, in order.
    pub layers: Vec<(Digest, u64, Digest)>,
}

impl Side {
    /// Read `name`'s manifest and config as stored, checked against their
    /// digests, since the delta embeds them byte for byte.
    pub(crate) fn open<H: FsVerityHashValue>(repo: &Store<H>, name: &str) -> Result<Self, Error> {
        let image = images::open(repo, name)?;
        if !image.is_container_image() {
            return Err(Error::UnsupportedMediaType {
                what: format!("{name} (deltas are made between images)"),
                media_type: image.manifest().config().media_type().to_string(),
            });
        }
        let read = |e| Error::storage("reading an image of the repository", e);
        let manifest = image.read_manifest_json(repo).map_err(read)?;
        let config = image.read_config_json(repo).map_err(read)?;
        let manifest_digest = Digest::parse(image.manifest_digest().as_ref(), "a stored image")?;
        let config_digest = Digest::parse(image.config_digest().as_ref(), "a stored image")?;
        manifest_digest.verify(&Digest::of(&manifest), format!("stored manifest of {name}"))?;
        config_digest.verify(&Digest::of(&config), format!("stored config of {name}"))?;
        let layers = Self::layers(&manifest, &config, name)?;
        Ok(Side {
            manifest_digest,
            manifest,
            config_digest,
            config,
            layers,
        })
    }

    fn layers(
        manifest: &[u8],
        config: &[u8],
        name: &str,
    ) -> Result<Vec<(Digest, u64, Digest)>, Error> {
        let what = format!("the stored image {name}");
        let manifest: ManifestDoc = parse(manifest, &what)?;
        let config: ConfigDoc = parse(config, &what)?;
        let layers = manifest.image_layers(&what)?;
        if layers.len() != config.rootfs.diff_ids.len() {
            return Err(Error::InvalidJson {
                what: format!("the stored image {name}"),
                reason: "its manifest and config disagree on the number of layers".to_owned(),
            });
        }
        layers
            .iter()
            .zip(&config.rootfs.diff_ids)
            .map(|(layer, diff_id)| {
                Ok((
                    Digest::parse(&layer.digest, "a stored layer")?,
                    layer.size,
                    Digest::parse(diff_id, "a stored diff_id")?,
                ))
            })
            .collect()
    }
}

/// The source image's files, from its EROFS image: exactly what a delta's
/// applier reads.
pub(super) fn source_image<H: FsVerityHashValue>(
    repo: &Arc<Store<H>>,
    name: &str,
) -> Result<SourceImage<H>, Error> {
    let image = images::open(repo, name)?;
    let erofs = image
        .image_ref(repo.erofs_version())
        .ok_or_else(|| {
            Error::internal(
                "reading the source image",
                format!(
                    "{name} has no EROFS image: its pull was interrupted before the image was built"
                ),
            )
        })?
        .clone();
    SourceImage::load(repo.clone(), &erofs)
}
