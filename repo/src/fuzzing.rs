//! Entry points for the cargo-fuzz targets in `fuzz/`.
//!
//! Thin wrappers around crate-private code, so that the fuzz targets can
//! drive exactly what `oci pull` runs without those internals becoming
//! public API. Not a supported interface: it changes whenever the code it
//! wraps does.

use std::{
    collections::HashMap,
    fs::File,
    io::{self, Read, Write},
    sync::Arc,
};

use composefs::fsverity::FsVerityHashValue;
use composefs_oci::{LAYER_CONTENT_TYPE, layer_content_id};

use crate::{
    Error, Repository, Result,
    delta::tardiff::{self, BytesOnly, SourceFile, SourceFiles, TarDiffError},
    oci::{
        Archive, Platform, Source,
        digest::Digest,
        document::Compression,
        manifest::{self, LayerPlan},
        pipeline,
        source::Layout,
    },
    repository::with_store,
};

/// An `oci-archive:` tar indexed as `oci pull` indexes it.
#[derive(Debug)]
pub struct IndexedArchive(Archive);

impl IndexedArchive {
    /// Index the tar in `file`.
    pub fn index(file: File) -> Result<Self> {
        Archive::index(file).map(IndexedArchive)
    }

    /// The `(offset, length)` of the member at `path` (relative to the
    /// layout root, as pull looks members up).
    pub fn extent(&self, path: &str) -> Option<(u64, u64)> {
        self.0.member(path).map(|e| (e.offset, e.len))
    }

    /// The member's bytes, read by pread at its extent.
    pub fn read(&self, path: &str) -> Option<io::Result<Vec<u8>>> {
        let mut reader = self.0.open(path)?;
        let mut bytes = Vec::new();
        Some(reader.read_to_end(&mut bytes).map(|_| bytes))
    }
}

/// One layer of a resolved image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedLayer {
    /// The blob's digest, `sha256:...`.
    pub blob: String,
    /// The blob's declared size.
    pub size: u64,
    /// `none`, `gzip` or `zstd`.
    pub compression: &'static str,
    /// The digest of the uncompressed tar.
    pub diff_id: String,
}

/// The image that `oci pull` chose from a source, before any layer is read.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The digest of [`manifest`](Self::manifest), `sha256:...`.
    pub manifest_digest: String,
    /// The manifest stored for the image (a Docker one converted to OCI).
    pub manifest: Vec<u8>,
    /// The config's digest.
    pub config_digest: String,
    /// The config, byte for byte.
    pub config: Vec<u8>,
    /// The layers, bottom first.
    pub layers: Vec<ResolvedLayer>,
    /// Whether the source is an oci-delta artifact rebuilding the image.
    pub is_delta: bool,
}

/// Open `source` and resolve the image `reference` and `platform` name, as
/// `oci pull` does: index, nested indexes, manifest, config, layer plan.
pub fn resolve(
    source: Source,
    reference: Option<&str>,
    platform: &Platform,
) -> Result<ResolvedImage> {
    let layout = Layout::open(source)?;
    let resolved = manifest::resolve(&layout, reference, platform)?;
    Ok(ResolvedImage {
        manifest_digest: resolved.manifest_digest.to_string(),
        manifest: resolved.manifest,
        config_digest: resolved.config_digest.to_string(),
        config: resolved.config,
        layers: resolved.layers.iter().map(resolved_layer).collect(),
        is_delta: resolved.delta.is_some(),
    })
}

fn resolved_layer(plan: &LayerPlan) -> ResolvedLayer {
    ResolvedLayer {
        blob: plan.blob.to_string(),
        size: plan.size,
        compression: compression_name(plan.compression),
        diff_id: plan.diff_id.to_string(),
    }
}

fn compression_name(compression: Compression) -> &'static str {
    match compression {
        Compression::None => "none",
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
    }
}

/// Source files held in memory, path (normalised) → content.
#[derive(Debug, Default, Clone)]
pub struct MemoryFiles(pub HashMap<String, Arc<Vec<u8>>>);

struct MemoryFile(Arc<Vec<u8>>);

impl SourceFile for MemoryFile {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = usize::try_from(offset).map_or(self.0.len(), |o| o.min(self.0.len()));
        let n = buf.len().min(self.0.len() - start);
        buf[..n].copy_from_slice(&self.0[start..start + n]);
        Ok(n)
    }
}

impl SourceFiles for MemoryFiles {
    fn open(&self, path: &str) -> Result<Box<dyn SourceFile>, TarDiffError> {
        let data = self
            .0
            .get(path)
            .ok_or_else(|| TarDiffError::SourceMissing {
                path: path.to_owned(),
            })?;
        Ok(Box::new(MemoryFile(data.clone())))
    }
}

/// Apply the tar-diff `delta` against `files`, writing the rebuilt tar to
/// `out`; the error is the message a pull would report.
pub fn apply_tardiff(delta: &[u8], files: &MemoryFiles, out: &mut dyn Write) -> Result<(), String> {
    tardiff::apply(delta, files, &mut BytesOnly(out)).map_err(|e| e.to_string())
}

/// The normal form of a tar-diff OPEN path, or `None` if it is refused.
pub fn normalise_tardiff_path(raw: &[u8]) -> Option<String> {
    tardiff::normalise(raw).ok()
}

/// The layer stream name of a layer with `diff_id` (`sha256:...`).
pub fn layer_stream_name(diff_id: &str) -> Result<String> {
    Ok(layer_content_id(
        &Digest::parse(diff_id, "the diff_id")?.to_oci(),
    ))
}

/// Import `blob`, compressed as `compression` (`none`, `gzip`, `zstd`),
/// as a layer whose tar has `diff_id`, as `oci pull` imports a layer of an
/// `oci-archive:`. Returns the layer stream's name.
pub async fn import_layer(
    repo: &Repository,
    blob: &[u8],
    compression: &str,
    diff_id: &str,
) -> Result<String> {
    let plan = LayerPlan {
        blob: Digest::of(blob),
        size: blob.len() as u64,
        compression: match compression {
            "gzip" => Compression::Gzip,
            "zstd" => Compression::Zstd,
            _ => Compression::None,
        },
        diff_id: Digest::parse(diff_id, "the diff_id")?,
        pulled: Default::default(),
        hold: Default::default(),
    };
    let layout = Arc::new(Layout::open(Source::Archive(archive_of(
        &plan.blob, blob,
    )?))?);
    let name = layer_stream_name(diff_id)?;
    with_store!(repo.store(), store => {
        let progress: pipeline::Progress = Arc::new(|_| {});
        pipeline::bring_in(store, layout, &[plan], 1, &progress).await?;
    });
    Ok(name)
}

/// The bytes of the layer stream `name`, joined back into a tar, or `None`
/// if there is no such stream.
pub fn layer_stream(repo: &Repository, name: &str) -> Result<Option<Vec<u8>>> {
    with_store!(repo.store(), store => cat_stream(store, name))
}

fn cat_stream<H: FsVerityHashValue>(
    store: &composefs::repository::Repository<H>,
    name: &str,
) -> Result<Option<Vec<u8>>> {
    let reading = |e| Error::storage("reading a layer stream", e);
    if store.has_stream(name).map_err(reading)?.is_none() {
        return Ok(None);
    }
    let mut out = Vec::new();
    store
        .open_stream(name, None, Some(LAYER_CONTENT_TYPE))
        .and_then(|mut s| s.cat(store, &mut out))
        .map_err(reading)?;
    Ok(Some(out))
}

/// An `oci-archive:` holding only the layout marker and `blob`.
fn archive_of(digest: &Digest, blob: &[u8]) -> Result<File> {
    let writing = |e| Error::storage("writing a fuzzing archive", e);
    let mut builder = tar::Builder::new(tempfile::tempfile().map_err(writing)?);
    let marker = br#"{"imageLayoutVersion":"1.0.0"}"#;
    for (path, data) in [
        ("oci-layout".to_owned(), &marker[..]),
        (format!("blobs/sha256/{}", digest.hex()), blob),
    ] {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, path, data)
            .map_err(writing)?;
    }
    builder.into_inner().map_err(writing)
}
