//! Creating oci-delta artifacts from two images the repository holds.
//!
//! The artifact is what [`super::artifact`] reads: an artifact manifest
//! that embeds the target manifest and config byte for byte, names the
//! source image's config, and carries one blob per target layer whose
//! diff_id the source lacks: a tar-diff against the source image's files,
//! or the whole layer, recompressed, when that is smaller. Layer tars are
//! rebuilt from the repository's split streams and their diff_ids checked
//! first, so the original layer blobs are not needed.

pub(crate) mod archive;
mod encode;
pub(crate) mod image;
mod large;
mod layers;
mod matcher;
mod ordered;

use std::{
    collections::HashSet,
    fmt,
    fs::File,
    io::{BufWriter, Seek, Write},
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use composefs::{fsverity::FsVerityHashValue, repository::Repository as Store};

use crate::{Error, Repository, oci::digest::Digest, repository::with_store};
use encode::SourceIndex;
use image::{Side, source_image};
use layers::{Carried, Shared, Work};

/// How changed files are encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeltaMethod {
    /// A zstd frame of the new file with the old one as its dictionary
    /// (`tardf2` ZSTD_DICT, as `zstd --patch-from`).
    #[default]
    Zstd,
    /// Copies from and bytewise differences to the old file (`tardf1`).
    Bsdiff,
}

impl DeltaMethod {
    /// Its name, as [`FromStr`] reads it.
    pub fn as_str(self) -> &'static str {
        match self {
            DeltaMethod::Zstd => "zstd",
            DeltaMethod::Bsdiff => "bsdiff",
        }
    }
}

impl fmt::Display for DeltaMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeltaMethod {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "zstd" => Ok(DeltaMethod::Zstd),
            "bsdiff" => Ok(DeltaMethod::Bsdiff),
            other => Err(format!(
                "unknown delta method {other:?}: use zstd or bsdiff"
            )),
        }
    }
}

/// How to create a delta.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// How many layers to encode at once, and how many files of each to
    /// diff at once; the number of cores when 0. The delta's bytes do not
    /// depend on it.
    pub jobs: usize,
    /// How changed files are encoded.
    pub method: DeltaMethod,
    /// The `org.opencontainers.image.ref.name` of the artifact in the
    /// archive's index; the target's tag when it is a plain one, else
    /// `latest`.
    pub reference: Option<String>,
    /// The most bytes its scratch files may take in all; past that the
    /// delta fails as if the disk were full.
    pub max_scratch: u64,
}

impl CreateOptions {
    /// The scratch budget when none is given: 64 GiB.
    pub const DEFAULT_MAX_SCRATCH: u64 = 64 << 30;
}

impl Default for CreateOptions {
    /// One job per core, zstd, the default reference, and
    /// [`CreateOptions::DEFAULT_MAX_SCRATCH`].
    fn default() -> Self {
        CreateOptions {
            jobs: 0,
            method: DeltaMethod::default(),
            reference: None,
            max_scratch: Self::DEFAULT_MAX_SCRATCH,
        }
    }
}

/// What a changed layer became in the delta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDelta {
    /// The target layer's blob digest (the delta's `delta.to`).
    pub layer: String,
    /// The target layer's diff_id.
    pub diff_id: String,
    /// `tar-diff`, or `zstd` for the whole layer recompressed.
    pub method: String,
    /// The size of the layer's tar.
    pub tar_size: u64,
    /// The size of its blob in the delta.
    pub delta_size: u64,
    /// Files copied whole from the source image.
    pub files_copied: u64,
    /// Files diffed against a file of the source image.
    pub files_diffed: u64,
    /// Files sent whole; files under 128 bytes, sent with the tar
    /// headers, are not counted.
    pub files_added: u64,
}

/// What creating a delta did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaReport {
    /// The delta artifact manifest's digest.
    pub manifest_digest: String,
    /// The source image's manifest digest.
    pub source: String,
    /// The target image's manifest digest.
    pub target: String,
    /// Bytes written: the size of the archive.
    pub delta_bytes: u64,
    /// Layers of the target image.
    pub layers: u64,
    /// Layers the delta carries, in target order.
    pub changed: Vec<LayerDelta>,
}

impl Repository {
    /// Write an oci-delta archive that rebuilds `target` on a machine
    /// holding `source` (each a tag or `sha256:` manifest digest) into
    /// `out`, an uncompressed OCI layout tar. Reads the repository only;
    /// blocks on disk and CPU work.
    pub fn create_delta(
        &self,
        source: &str,
        target: &str,
        out: File,
        options: CreateOptions,
    ) -> Result<DeltaReport, Error> {
        self.create_delta_cancellable(source, target, out, options, &AtomicBool::new(false))
    }

    /// [`Repository::create_delta`] that gives up once `cancelled` is
    /// set: every encoding loop and every write to a scratch file checks
    /// it, so the work stops within one buffer's worth, and `out` stays
    /// untouched when it gives up. Scratch files are unnamed files in the
    /// repository's directory, gone when the work ends.
    pub fn create_delta_cancellable(
        &self,
        source: &str,
        target: &str,
        out: File,
        options: CreateOptions,
        cancelled: &AtomicBool,
    ) -> Result<DeltaReport, Error> {
        let reference = options
            .reference
            .clone()
            .unwrap_or_else(|| default_reference(target));
        let jobs = match options.jobs {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        with_store!(self.store(), s => {
            let scratch = self.path();
            let scratch_left = AtomicU64::new(options.max_scratch);
            let job = Create {
                source,
                target,
                jobs,
                method: options.method,
                reference,
                cancelled,
                scratch,
                scratch_left: &scratch_left,
            };
            job.run(s, out)
        })
    }
}

/// The ref name for the target `name`: itself when it is a plain tag (the
/// grammar of `org.opencontainers.image.ref.name`, roughly), else
/// `latest`.
fn default_reference(name: &str) -> String {
    let plain = !name.is_empty()
        && !name.starts_with("sha256:")
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._:@+/".contains(c))
        && !name.contains("//")
        && !name.contains(":/");
    if plain { name } else { "latest" }.to_owned()
}

/// One delta being created.
struct Create<'a> {
    source: &'a str,
    target: &'a str,
    jobs: usize,
    method: DeltaMethod,
    reference: String,
    cancelled: &'a AtomicBool,
    /// Where scratch files go; see [`Shared::scratch`].
    scratch: &'a std::path::Path,
    /// See [`Shared::scratch_left`].
    scratch_left: &'a AtomicU64,
}

impl Create<'_> {
    fn run<H: FsVerityHashValue>(
        &self,
        repo: &Arc<Store<H>>,
        out: File,
    ) -> Result<DeltaReport, Error> {
        let mut out = out;
        let start = out
            .stream_position()
            .map_err(|e| Error::storage("writing the delta", e))?;
        let source = Side::open(repo, self.source)?;
        let target = Side::open(repo, self.target)?;
        let work = changed_layers(&source, &target);
        let carried = if work.is_empty() {
            Vec::new()
        } else {
            let image = source_image(repo, self.source)?;
            let index = SourceIndex::new(&image);
            let shared = Shared {
                repo,
                image: &image,
                index: &index,
                method: self.method,
                cancelled: self.cancelled,
                scratch: self.scratch,
                scratch_left: self.scratch_left,
            };
            self.encode(&shared, &work)?
        };
        self.go_on()?;
        // The signatures that admitted the target travel with it, so that
        // an updater with no network can check the delta.
        // (`scratch` is the repository's directory.)
        let kept = crate::trust::load_stored(self.scratch, &target.manifest_digest)?;
        let signatures = crate::trust::carried::entry(&kept, &target.manifest_digest);
        let mut out = BufWriter::new(out);
        let sides = (&source, &target);
        let manifest_digest =
            archive::write(&mut out, sides, &carried, &self.reference, signatures)
                .map_err(|e| Error::storage("writing the delta", e))?;
        let mut out = out
            .into_inner()
            .map_err(|e| Error::storage("writing the delta", e.into_error()))?;
        out.flush()
            .map_err(|e| Error::storage("writing the delta", e))?;
        let delta_bytes = out
            .stream_position()
            .map_err(|e| Error::storage("writing the delta", e))?
            - start;
        Ok(DeltaReport {
            manifest_digest: manifest_digest.to_string(),
            source: source.manifest_digest.to_string(),
            target: target.manifest_digest.to_string(),
            delta_bytes,
            layers: target.layers.len() as u64,
            changed: carried.into_iter().map(|c| c.report).collect(),
        })
    }
}

impl Create<'_> {
    /// Encode `work` a round of `jobs` layers at a time, so that a
    /// cancellation is noticed within one round. A round waits for its
    /// slowest layer; that costs little, as images change few layers.
    fn encode<H: FsVerityHashValue>(
        &self,
        shared: &Shared<'_, H>,
        work: &[Work],
    ) -> Result<Vec<Carried>, Error> {
        let mut carried = Vec::with_capacity(work.len());
        for round in work.chunks(self.jobs.max(1)) {
            self.go_on()?;
            // A cancelled encoder fails mid-layer; say why.
            let encoded = shared.encode_all(round, self.jobs);
            self.go_on()?;
            carried.extend(encoded?);
        }
        Ok(carried)
    }

    /// An error once the delta is no longer wanted.
    fn go_on(&self) -> Result<(), Error> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(Error::internal(
                "creating a delta",
                "cancelled: the caller went away".to_owned(),
            ));
        }
        Ok(())
    }
}

/// The target layers whose diff_id the source lacks, each once.
fn changed_layers(source: &Side, target: &Side) -> Vec<Work> {
    let present: HashSet<&Digest> = source.layers.iter().map(|(_, _, d)| d).collect();
    let mut seen = HashSet::new();
    target
        .layers
        .iter()
        .filter(|(blob, _, diff_id)| !present.contains(diff_id) && seen.insert(blob.clone()))
        .map(|(blob, size, diff_id)| Work {
            blob: blob.clone(),
            blob_size: *size,
            diff_id: diff_id.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests;
