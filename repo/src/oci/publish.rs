//! Publishing a pulled image: its config and manifest streams, its EROFS
//! image and its tag, in composefs-oci 0.9.4's format, written so that the
//! same pull gives the same bytes in every repository.
//!
//! composefs-oci's `finalize_oci_image` rewrites the manifest stream with
//! its layer references in the order of a `HashMap`, which differs from
//! run to run: the stream's object, and so the repository, differed
//! between two identical pulls. Here every reference is added in config
//! order, and boot image references (see `boot.rs`; kept too when another
//! tool made them) in the order of their names. The streams carry
//! the same references under the same names as upstream's, so upstream
//! reads them as its own; only the order of the list differs.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use composefs::{
    erofs::format::{FormatEpoch, FormatVersion},
    fsverity::FsVerityHashValue,
    repository::Repository as Store,
    tree::FileSystem,
};
use composefs_oci::{IMAGE_REF_KEY, IMAGE_REF_KEY_V1, OciDigest, oci_image, sha256_content_digest};

/// The content type composefs-oci gives config streams.
const CONFIG_STREAM: u64 = u64::from_le_bytes(*b"ociconfg");
/// The content type composefs-oci gives manifest streams.
const MANIFEST_STREAM: u64 = u64::from_le_bytes(*b"ocimanif");

/// The EROFS images linked to a config.
pub(crate) struct Linked<H> {
    /// The plain image, format 2.
    pub(crate) v2: Option<H>,
    /// The plain image, format 1.
    pub(crate) v1: Option<H>,
    /// The bootable ones, by their reference names, sorted.
    pub(crate) boot: Vec<(Box<str>, H)>,
}

/// Held while a config stream is rewritten from what it linked before
/// (here, and when an image is made bootable), so that two rewrites of
/// one config never race and drop each other's references.
static LINKING: Mutex<()> = Mutex::new(());

/// Take [`LINKING`].
pub(crate) fn linking() -> MutexGuard<'static, ()> {
    LINKING.lock().unwrap_or_else(|e| e.into_inner())
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
/// order), build its EROFS image and tag it `tag` (a staged pull sets
/// none); the image id, in the repository's EROFS format.
pub(crate) fn publish<H: FsVerityHashValue>(
    repo: &Arc<Store<H>>,
    manifest: &[u8],
    config: &[u8],
    layers: &[(OciDigest, H)],
    tag: Option<&str>,
) -> anyhow::Result<H> {
    publish_with(repo, manifest, config, layers, tag, |digest, stream| {
        super::merge::merge_layers(repo, digest, stream, config)
    })
}

/// [`publish`], with the image's filesystem made by `build` from the
/// config's digest and its (not yet linked) stream.
pub(crate) fn publish_with<H: FsVerityHashValue>(
    repo: &Arc<Store<H>>,
    manifest: &[u8],
    config: &[u8],
    layers: &[(OciDigest, H)],
    tag: Option<&str>,
    build: impl FnOnce(&OciDigest, &H) -> anyhow::Result<FileSystem<H>>,
) -> anyhow::Result<H> {
    let config_digest = sha256_content_digest(config);
    let config_name = format!("oci-config-{config_digest}");
    // The EROFS image is built from the config stream's layer references:
    // it must exist first, without the image it links to.
    let unlinked = match repo.has_stream(&config_name)? {
        Some(stored) => stored,
        None => write_config(repo, config, layers, &Linked::none())?,
    };
    // As upstream does, the manifest is named before the long build of the
    // EROFS image: a pull killed during it leaves an untagged image whose
    // manifest a later pull finds and completes.
    let manifest_name = oci_image::manifest_identifier(&sha256_content_digest(manifest));
    if repo.has_stream(&manifest_name)?.is_none() {
        write_manifest(repo, manifest, &config_digest, &unlinked, layers)?;
    }
    let filesystem = build(&config_digest, &unlinked)?;
    let mut images = filesystem.commit_images(repo, None)?;
    // The boot images linked now, not when the pull began: one may have
    // been made meanwhile.
    let _linking = linking();
    let stored = repo
        .has_stream(&config_name)?
        .ok_or_else(|| anyhow::anyhow!("the config stream {config_name} went away"))?;
    let kept = linked_boot_images(repo, &config_digest, &stored)?;
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
    if let Some(tag) = tag {
        oci_image::tag_image(repo, &sha256_content_digest(manifest), tag)?;
    }
    Ok(image_id)
}

/// The layer streams `opened` links, in its config's diff_id order: what
/// a config stream is rewritten with (a bootable image linked, an
/// ID-mapped variant made).
pub(crate) fn linked_layers<H: FsVerityHashValue>(
    opened: &composefs_oci::OpenConfig<H>,
) -> anyhow::Result<Vec<(OciDigest, H)>> {
    opened
        .config
        .rootfs()
        .diff_ids()
        .iter()
        .map(|diff_id| {
            let stream = opened.layer_refs.get(diff_id.as_str()).ok_or_else(|| {
                anyhow::anyhow!("the config stream does not link layer {diff_id}")
            })?;
            Ok((diff_id.parse::<OciDigest>()?, stream.clone()))
        })
        .collect()
}

/// The boot images linked to the stored config (by cfsd or another
/// tool), to keep.
fn linked_boot_images<H: FsVerityHashValue>(
    repo: &Store<H>,
    config_digest: &OciDigest,
    stored: &H,
) -> anyhow::Result<Vec<(Box<str>, H)>> {
    let opened = composefs_oci::open_config(repo, config_digest, Some(stored))?;
    Ok(sorted(opened.boot_image_refs))
}

/// `refs`, sorted by name, so that the stream's bytes are the same in
/// every run.
pub(crate) fn sorted<H>(refs: HashMap<Box<str>, H>) -> Vec<(Box<str>, H)> {
    let mut refs: Vec<_> = refs.into_iter().collect();
    refs.sort_by(|a, b| a.0.cmp(&b.0));
    refs
}

/// The config stream: the layers in config order, then the images.
pub(crate) fn write_config<H: FsVerityHashValue>(
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
pub(crate) fn write_manifest<H: FsVerityHashValue>(
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
