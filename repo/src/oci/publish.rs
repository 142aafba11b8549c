//! Publishing a pulled image: its config and manifest streams, its EROFS
//! image and its tag, in composefs-oci 0.9.4's format, written so that the
//! same pull gives the same bytes in every repository.
//!
//! composefs-oci's `finalize_oci_image` rewrites the manifest stream with
//! its layer references in the order of a `HashMap`, which differs from
//! run to run: the stream's object, and so the repository, differed
//! between two identical pulls. Here every reference is added in config
//! order, and boot image references (which cfsd never makes, but keeps
//! when another tool did) in the order of their names. The streams carry
//! the same references under the same names as upstream's, so upstream
//! reads them as its own; only the order of the list differs.

use std::{collections::HashMap, sync::Arc};

use composefs::{
    erofs::format::{FormatEpoch, FormatVersion},
    fsverity::FsVerityHashValue,
    repository::Repository as Store,
};
use composefs_oci::{
    IMAGE_REF_KEY, IMAGE_REF_KEY_V1, OciDigest, OciTransformOptions, image, oci_image,
    sha256_content_digest,
};

/// The content type composefs-oci gives config streams.
const CONFIG_STREAM: u64 = u64::from_le_bytes(*b"ociconfg");
/// The content type composefs-oci gives manifest streams.
const MANIFEST_STREAM: u64 = u64::from_le_bytes(*b"ocimanif");

/// The EROFS images linked to a config.
struct Linked<H> {
    v2: Option<H>,
    v1: Option<H>,
    /// By their reference names, sorted.
    boot: Vec<(Box<str>, H)>,
}

impl<H> Linked<H> {
    /// No image yet.
    fn none() -> Self {
        Linked {
            v2: None,
            v1: None,
            boot: Vec::new(),
        }
    }
}

/// Write the config and manifest streams of the image `manifest` (whose
/// config is `config` and whose layer streams are `layers`, in config
/// order), build its EROFS image and tag it `tag`; the image id, in the
/// repository's EROFS format.
pub(crate) fn publish<H: FsVerityHashValue>(
    repo: &Arc<Store<H>>,
    manifest: &[u8],
    config: &[u8],
    layers: &[(OciDigest, H)],
    tag: &str,
) -> anyhow::Result<H> {
    let image_id = publish_untagged(repo, manifest, config, layers)?;
    oci_image::tag_image(repo, &sha256_content_digest(manifest), tag)?;
    Ok(image_id)
}

/// [`publish`] without the tag: an image that only the pull in flight
/// uses (a delta's source copied from another repository), which GC
/// collects once nothing refers to it.
pub(crate) fn publish_untagged<H: FsVerityHashValue>(
    repo: &Arc<Store<H>>,
    manifest: &[u8],
    config: &[u8],
    layers: &[(OciDigest, H)],
) -> anyhow::Result<H> {
    let config_digest = sha256_content_digest(config);
    let config_name = format!("oci-config-{config_digest}");
    // The EROFS image is built from the config stream's layer references:
    // it must exist first, without the image it links to.
    let (unlinked, kept) = match repo.has_stream(&config_name)? {
        Some(stored) => (
            stored.clone(),
            linked_boot_images(repo, &config_digest, &stored)?,
        ),
        None => {
            let written = write_config(repo, config, layers, &Linked::none())?;
            (written, Vec::new())
        }
    };
    // As upstream does, the manifest is named before the long build of the
    // EROFS image: a pull killed during it leaves an untagged image whose
    // manifest a later pull finds and completes.
    let manifest_name = oci_image::manifest_identifier(&sha256_content_digest(manifest));
    if repo.has_stream(&manifest_name)?.is_none() {
        write_manifest(repo, manifest, &config_digest, &unlinked, layers)?;
    }
    let filesystem = image::create_filesystem(
        repo,
        &config_digest,
        Some(&unlinked),
        &OciTransformOptions::default(),
    )?;
    let mut images = filesystem.commit_images(repo, None)?;
    let linked = Linked {
        v2: images.remove(&FormatVersion::V2),
        v1: images.remove(&FormatVersion::V1),
        boot: kept,
    };
    let image_id = match repo.erofs_version().epoch() {
        FormatEpoch::Epoch1 => linked.v1.clone(),
        FormatEpoch::Epoch2 => linked.v2.clone(),
    }
    .ok_or_else(|| anyhow::anyhow!("no EROFS image was made in the repository's format"))?;
    let config_stream = write_config(repo, config, layers, &linked)?;
    write_manifest(repo, manifest, &config_digest, &config_stream, layers)?;
    Ok(image_id)
}

/// The boot images another tool linked to the stored config, to keep.
fn linked_boot_images<H: FsVerityHashValue>(
    repo: &Store<H>,
    config_digest: &OciDigest,
    stored: &H,
) -> anyhow::Result<Vec<(Box<str>, H)>> {
    let opened = composefs_oci::open_config(repo, config_digest, Some(stored))?;
    Ok(sorted(opened.boot_image_refs))
}

fn sorted<H>(refs: HashMap<Box<str>, H>) -> Vec<(Box<str>, H)> {
    let mut refs: Vec<_> = refs.into_iter().collect();
    refs.sort_by(|a, b| a.0.cmp(&b.0));
    refs
}

/// The config stream: the layers in config order, then the images.
fn write_config<H: FsVerityHashValue>(
    repo: &Arc<Store<H>>,
    config: &[u8],
    layers: &[(OciDigest, H)],
    linked: &Linked<H>,
) -> anyhow::Result<H> {
    let mut stream = repo.create_stream(CONFIG_STREAM)?;
    for (diff_id, layer) in layers {
        stream.add_named_stream_ref(diff_id.as_ref(), layer);
    }
    if let Some(image) = &linked.v2 {
        stream.add_named_stream_ref(IMAGE_REF_KEY, image);
    }
    if let Some(image) = &linked.v1 {
        stream.add_named_stream_ref(IMAGE_REF_KEY_V1, image);
    }
    for (name, image) in &linked.boot {
        stream.add_named_stream_ref(name, image);
    }
    stream.write_external(config)?;
    let name = format!("oci-config-{}", sha256_content_digest(config));
    repo.write_stream(stream, &name, None)
}

/// The manifest stream: the config, then the layers in config order.
fn write_manifest<H: FsVerityHashValue>(
    repo: &Arc<Store<H>>,
    manifest: &[u8],
    config_digest: &OciDigest,
    config_stream: &H,
    layers: &[(OciDigest, H)],
) -> anyhow::Result<H> {
    let mut stream = repo.create_stream(MANIFEST_STREAM)?;
    stream.add_named_stream_ref(&format!("config:{config_digest}"), config_stream);
    for (diff_id, layer) in layers {
        stream.add_named_stream_ref(diff_id.as_ref(), layer);
    }
    stream.write_external(manifest)?;
    let name = oci_image::manifest_identifier(&sha256_content_digest(manifest));
    repo.write_stream(stream, &name, None)
}
