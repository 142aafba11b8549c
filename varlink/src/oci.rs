//! `io.cfsd.Oci`: pulling OCI images into the repository, naming,
//! describing, removing and mounting them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::export::{
    DumpParams, ExportImageReply, ExportLayerParams, ExportParams, ExportReply, LayerFormat,
};
pub use crate::push::{PushCompression, PushDeltaParams, PushDeltaReply, PushParams, PushReply};
pub use crate::stage::{CommitParams, CommitReply, ListStagesReply, Stage, StageParams};

/// The transport of a directory holding an OCI image layout.
pub const TRANSPORT_DIRECTORY: &str = "oci";

/// The transport of an uncompressed tar holding an OCI image layout.
pub const TRANSPORT_ARCHIVE: &str = "oci-archive";

/// The transport of an image in an OCI registry, which the daemon
/// reaches itself; the reference is `HOST[:PORT]/NAME[:TAG|@DIGEST]`.
pub const TRANSPORT_REGISTRY: &str = "docker";

/// The parameters of `Pull`. A local source travels as the call's first
/// fd; for [`TRANSPORT_REGISTRY`], that fd is an optional auth file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullParams {
    /// [`TRANSPORT_DIRECTORY`] or [`TRANSPORT_ARCHIVE`].
    pub transport: String,
    /// The manifest inside the source: a `ref.name` annotation or a
    /// `sha256:` digest; `None` when the source holds a single manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// The tag to set; defaults to the manifest digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// `os/arch[/variant]`; defaults to the daemon's own platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// The most layers imported at once; `None` or 0 means one per CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs: Option<u64>,
    /// For [`TRANSPORT_REGISTRY`]: `false` allows plain HTTP and
    /// unverified TLS; `true` verifies even a registry registries.conf
    /// marks insecure; `None` follows registries.conf.
    #[serde(default, rename = "tlsVerify", skip_serializing_if = "Option::is_none")]
    pub tls_verify: Option<bool>,
    /// For [`TRANSPORT_REGISTRY`]: `true` skips looking for an oci-delta
    /// of the image; no referrers request is sent.
    #[serde(default, rename = "noDelta", skip_serializing_if = "Option::is_none")]
    pub no_delta: Option<bool>,
    /// `sha256:<hex>`: refuse any image but the one whose manifest, or an
    /// index leading to it, has this digest; for a delta, its target's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Stage the image (set no tag) and return a stage id to commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<bool>,
    /// `true`: the call's last fd is another repository's directory,
    /// where a delta's source image may be.
    #[serde(
        default,
        rename = "sourceRepo",
        skip_serializing_if = "Option::is_none"
    )]
    pub source_repo: Option<bool>,
}

/// The parameters of `Copy`; the source repository's directory travels
/// as the call's fd.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyParams {
    /// The image there: a tag or a `sha256:` manifest digest.
    pub image: String,
    /// The tag to set here; defaults to the manifest digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The most layers copied at once; `None` or 0 means one per CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs: Option<u64>,
}

/// How far the import of one layer has come.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerProgress {
    /// The layer's blob digest.
    pub layer: String,
    /// `queued`, `importing`, `present` or `done`.
    pub stage: String,
    /// Bytes of the layer blob handled so far.
    pub done: u64,
    /// Bytes of the layer blob in all.
    pub total: u64,
}

/// What a pull did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PullResult {
    /// The digest of the image manifest pulled.
    pub manifest_digest: String,
    /// The digest of its config.
    pub config_digest: String,
    /// The composefs image id, in hex.
    pub image_id: String,
    /// The tag set on the image.
    pub tag: String,
    /// Layers of the image.
    pub layers: u64,
    /// Layers the repository already held.
    pub layers_present: u64,
    /// Objects written by this pull.
    pub objects_new: u64,
    /// Objects the repository already held.
    pub objects_present: u64,
    /// Bytes of the objects written.
    pub bytes_new: u64,
    /// The repository already held the whole image.
    pub already_present: bool,
    /// This pull waited for an identical one (of the same manifest) that
    /// was importing the image, and then only tagged it.
    #[serde(default)]
    pub shared_import: bool,
    /// The oci-delta the image was rebuilt from, when the source was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<AppliedDelta>,
    /// For a registry image pulled by its own reference: whether an
    /// oci-delta found for it was used, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_discovery: Option<DeltaDiscovery>,
    /// For a staged pull: the stage id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
}

/// Whether a registry pull found an oci-delta for its image and used it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaDiscovery {
    /// The image was rebuilt from the delta.
    pub used: bool,
    /// The delta's manifest digest, when one was chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// Why it was used, or why the image was pulled in full.
    pub reason: String,
}

/// An oci-delta that a pull applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppliedDelta {
    /// The digest of the delta artifact's manifest.
    pub manifest_digest: String,
    /// The config digest of the image it was applied against.
    pub source_config: String,
    /// That image's manifest digest, when the delta names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_manifest: Option<String>,
}

/// One reply of `Pull`: progress while more follow, the result last.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullReply {
    /// A layer advanced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<LayerProgress>,
    /// The pull finished; set on the last reply only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<PullResult>,
}

/// An image in the repository, under one of its tags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    /// The tag.
    pub name: String,
    /// The digest of its manifest.
    pub manifest_digest: String,
    /// The digest of its config.
    pub config_digest: String,
    /// The config's operating system.
    pub os: String,
    /// The config's CPU architecture.
    pub architecture: String,
    /// The config's creation time, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Layers of the image.
    pub layers: u64,
    /// The composefs image id in hex, when the image was built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
}

/// The reply of `ListImages`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListImagesReply {
    /// Every tagged image, one entry per tag.
    pub images: Vec<Image>,
}

/// The parameters of the methods that take only an image: `Inspect`,
/// `Remove`, `MakeBootable` and `KernelArgument`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageParams {
    /// A tag, or `sha256:<hex>` of the image's manifest.
    pub image: String,
}

/// The parameters of `ComputeId`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputeIdParams {
    /// A tag, or `sha256:<hex>` of the image's manifest.
    pub image: String,
    /// The id of the image's bootable variant instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootable: Option<bool>,
}

/// The parameters of `Mount`. The mount is `nosuid` and `nodev` unless
/// asked otherwise, which only root may.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MountParams {
    /// A tag, or `sha256:<hex>` of the image's manifest.
    pub image: String,
    /// Honour the image's setuid and setgid bits and file capabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_setuid: Option<bool>,
    /// Let the image's device nodes be opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_devices: Option<bool>,
    /// Mount the image's bootable variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootable: Option<bool>,
    /// Make the mount idmapped with these uid ranges (`C:H:L`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uidmap: Option<Vec<String>>,
    /// Make the mount idmapped with these gid ranges (`C:H:L`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gidmap: Option<Vec<String>>,
}

/// The parameters of `Idmap`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdmapParams {
    /// The image to make a variant of.
    pub image: String,
    /// The variant's tag.
    pub tag: String,
    /// The uid ranges (`C:H:L`).
    pub uidmap: Vec<String>,
    /// The gid ranges (`C:H:L`).
    pub gidmap: Vec<String>,
}

/// The reply of `Idmap`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdmapReply {
    /// The variant's manifest digest.
    pub manifest_digest: String,
    /// The variant's composefs image id.
    pub image_id: String,
}

/// The reply of `Inspect`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InspectReply {
    /// The digest of the manifest.
    pub manifest_digest: String,
    /// The digest of the config.
    pub config_digest: String,
    /// The composefs image id in hex, when the image was built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// Every tag naming the image.
    pub tags: Vec<String>,
    /// The manifest document as stored.
    pub manifest: Value,
    /// The config document as stored.
    pub config: Value,
    /// The bootable image id in hex, when its bootable EROFS is kept
    /// (`MakeBootable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootable_image_id: Option<String>,
}

/// The parameters of `Tag`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagParams {
    /// The image to tag: a tag or a manifest digest.
    pub image: String,
    /// The new tag.
    pub tag: String,
}

/// The parameters of `Untag`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UntagParams {
    /// The tag to remove.
    pub tag: String,
}

/// The reply of `Remove`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveReply {
    /// The tags removed.
    pub untagged: Vec<String>,
}

/// The reply of `ComputeId`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComputeIdReply {
    /// The composefs image id in hex.
    pub image_id: String,
}

/// The reply of `MakeBootable`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MakeBootableReply {
    /// The bootable image id in hex.
    pub image_id: String,
}

/// The reply of `KernelArgument`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KernelArgumentReply {
    /// `composefs=<hex>` or `composefs.digest=v1-<algorithm>:<hex>`.
    pub argument: String,
    /// The bootable image id in hex.
    pub image_id: String,
}

/// The reply of methods that return nothing: `Tag`, `Untag`, and `Mount`
/// (whose mount travels as the reply's fd).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmptyReply {}

/// How `CreateDelta` encodes a changed file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeltaMethod {
    /// A zstd frame with the old file as its dictionary (tar-diff v2).
    #[default]
    Zstd,
    /// Copies from and bytewise differences to the old file (tar-diff v1).
    Bsdiff,
}

/// The parameters of `CreateDelta`. The output travels as the call's
/// first fd.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateDeltaParams {
    /// The image the delta applies to: a tag or manifest digest.
    pub source: String,
    /// The image the delta rebuilds: a tag or manifest digest.
    pub target: String,
    /// The most layers encoded at once; `None` or 0 means one per CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs: Option<u64>,
    /// How changed files are encoded; zstd when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<DeltaMethod>,
    /// The artifact's ref name in the archive's index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// What one changed layer of the target became in a delta.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeltaLayer {
    /// The target layer's blob digest.
    pub layer: String,
    /// The target layer's diff_id.
    pub diff_id: String,
    /// `tar-diff`, or `zstd` for the whole layer recompressed.
    pub method: String,
    /// Bytes of the layer's tar.
    pub tar_size: u64,
    /// Bytes of its blob in the delta.
    pub delta_size: u64,
    /// Files copied whole from the source image.
    pub files_copied: u64,
    /// Files encoded as differences to a source file.
    pub files_diffed: u64,
    /// Files carried whole.
    pub files_added: u64,
}

/// The reply of `CreateDelta`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateDeltaReply {
    /// Bytes written.
    pub delta_bytes: u64,
    /// Layers of the target image.
    pub layers: u64,
    /// Layers the delta carries.
    pub layers_changed: u64,
    /// The digest of the delta artifact's manifest.
    pub manifest_digest: String,
    /// The digest of the source image's manifest.
    pub source_digest: String,
    /// The digest of the target image's manifest.
    pub target_digest: String,
    /// Each carried layer, in target order.
    pub changed: Vec<DeltaLayer>,
}

/// Every error of `io.cfsd.Oci`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "error", content = "parameters")]
pub enum OciError {
    /// The directory holds no repository yet.
    #[serde(rename = "io.cfsd.Oci.NotInitialized")]
    #[error("no composefs repository at {path}")]
    NotInitialized {
        /// The repository directory.
        path: String,
    },
    /// The caller may not call the method: it changes the repository, or
    /// it mounts, which only root may; or it asked for an option that only
    /// root may.
    #[serde(rename = "io.cfsd.Oci.PermissionDenied")]
    #[error("permission denied: {}", permission_denied(method, *uid, option.as_deref()))]
    PermissionDenied {
        /// The method refused.
        method: String,
        /// The caller's uid.
        uid: u32,
        /// The parameter the caller may not set, when the method itself
        /// was allowed (`allowSetuid` or `allowDevices` of `Mount`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        option: Option<String>,
    },
    /// The call lacks the fd it needs, or it is of the wrong kind.
    #[serde(rename = "io.cfsd.Oci.MissingFd")]
    #[error("{method} needs {expected} passed with the call")]
    MissingFd {
        /// The method called.
        method: String,
        /// What kind of fd it needs.
        expected: String,
    },
    /// A transport other than `oci` or `oci-archive`.
    #[serde(rename = "io.cfsd.Oci.UnknownTransport")]
    #[error("unknown transport {transport:?}: the transports are oci, oci-archive and docker")]
    UnknownTransport {
        /// The transport given.
        transport: String,
    },
    /// No image has this tag or manifest digest.
    #[serde(rename = "io.cfsd.Oci.ImageNotFound")]
    #[error("no image {image:?} in the repository")]
    ImageNotFound {
        /// The tag or digest asked for.
        image: String,
    },
    /// No layer with this diff_id is stored.
    #[serde(rename = "io.cfsd.Oci.LayerNotFound")]
    #[error("no layer {diff_id} in the repository")]
    LayerNotFound {
        /// The diff_id asked for.
        #[serde(rename = "diffId")]
        diff_id: String,
    },
    /// The output the call writes into failed: its reader stopped reading
    /// for longer than the daemon waits, or closed its end.
    #[serde(rename = "io.cfsd.Oci.OutputFailed")]
    #[error("{operation} failed: the output failed: {reason}")]
    OutputFailed {
        /// What was being written.
        operation: String,
        /// How the output failed.
        reason: String,
    },
    /// A platform that is not `os/arch[/variant]`.
    #[serde(rename = "io.cfsd.Oci.InvalidPlatform")]
    #[error("invalid platform {platform:?}: expected os/arch or os/arch/variant, e.g. linux/amd64")]
    InvalidPlatform {
        /// The text given.
        platform: String,
    },
    /// A tag that cannot name an image.
    #[serde(rename = "io.cfsd.Oci.InvalidTag")]
    #[error("invalid tag {tag:?}: {reason}")]
    InvalidTag {
        /// The tag given.
        tag: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An `oci-archive` compressed as a whole.
    #[serde(rename = "io.cfsd.Oci.CompressedArchive")]
    #[error(
        "the archive is {compression}-compressed; an oci-archive source must be an uncompressed tar"
    )]
    CompressedArchive {
        /// The compression found.
        compression: String,
    },
    /// The source is not an OCI image layout.
    #[serde(rename = "io.cfsd.Oci.InvalidSource")]
    #[error("not an OCI image layout: {reason}")]
    InvalidSource {
        /// What is wrong.
        reason: String,
    },
    /// The source lacks a blob that its index or a manifest names.
    #[serde(rename = "io.cfsd.Oci.BlobMissing")]
    #[error("the source has no blob {digest}, which its index or manifest names")]
    BlobMissing {
        /// The blob's digest.
        digest: String,
    },
    /// A JSON document of the source is unreadable.
    #[serde(rename = "io.cfsd.Oci.InvalidJson")]
    #[error("invalid {what}: {reason}")]
    InvalidJson {
        /// Which document.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// No manifest of the source matches the reference.
    #[serde(rename = "io.cfsd.Oci.ManifestNotFound")]
    #[error(
        "no manifest {reference:?} in the source (it has: {})",
        list(available)
    )]
    ManifestNotFound {
        /// The reference asked for.
        reference: String,
        /// What the source offers.
        available: Vec<String>,
    },
    /// The source's index has no image for the platform.
    #[serde(rename = "io.cfsd.Oci.PlatformNotFound")]
    #[error(
        "no image for platform {platform} in the source (it has: {})",
        list(available)
    )]
    PlatformNotFound {
        /// The platform asked for.
        platform: String,
        /// The platforms the index offers.
        available: Vec<String>,
    },
    /// A media type cfsd cannot handle.
    #[serde(rename = "io.cfsd.Oci.UnsupportedMediaType")]
    #[error("unsupported media type {media_type:?} for {what}")]
    UnsupportedMediaType {
        /// What carried it.
        what: String,
        /// The media type.
        #[serde(rename = "mediaType")]
        media_type: String,
    },
    /// Content does not match the digest, size or diff_id that names it.
    #[serde(rename = "io.cfsd.Oci.DigestMismatch")]
    #[error("{what} is corrupt: expected {expected}, found {actual}")]
    DigestMismatch {
        /// Which content.
        what: String,
        /// What was declared.
        expected: String,
        /// What was found.
        actual: String,
    },
    /// A layer's compressed data or tar stream is damaged.
    #[serde(rename = "io.cfsd.Oci.InvalidLayer")]
    #[error("layer {layer} is damaged: {reason}")]
    InvalidLayer {
        /// The layer's digest.
        layer: String,
        /// What is wrong.
        reason: String,
    },
    /// Every layer is sound, but together they make no filesystem.
    #[serde(rename = "io.cfsd.Oci.InvalidImage")]
    #[error("the image's layers do not make a filesystem: {reason}")]
    InvalidImage {
        /// What is wrong.
        reason: String,
    },
    /// Mounting the image failed.
    #[serde(rename = "io.cfsd.Oci.MountFailed")]
    #[error("mounting {image} failed: {reason}")]
    MountFailed {
        /// The image.
        image: String,
        /// Why.
        reason: String,
    },
    /// Reading or writing the repository failed.
    #[serde(rename = "io.cfsd.Oci.StorageFailed")]
    #[error("{operation} failed: {reason}")]
    StorageFailed {
        /// What was being done.
        operation: String,
        /// Why it failed.
        reason: String,
    },
    /// A delta applies to an image the repository does not hold.
    #[serde(rename = "io.cfsd.Oci.DeltaSourceMissing")]
    #[error(
        "the delta applies to the image {}with config {config}, which is not in the repository",
        image.as_ref().map(|m| format!("{m} ")).unwrap_or_default()
    )]
    DeltaSourceMissing {
        /// The source image's config digest.
        config: String,
        /// The source image's manifest digest, when the delta names it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image: Option<String>,
    },
    /// An oci-delta artifact that breaks the delta format's rules.
    #[serde(rename = "io.cfsd.Oci.InvalidDelta")]
    #[error("invalid oci-delta artifact: {reason}")]
    InvalidDelta {
        /// What is wrong.
        reason: String,
    },
    /// A layer's tar-diff cannot be applied to the delta's source image.
    #[serde(rename = "io.cfsd.Oci.TarDiffFailed")]
    #[error("the tar-diff of layer {layer} cannot be applied: {reason}")]
    TarDiffFailed {
        /// The target layer's digest.
        layer: String,
        /// What is wrong.
        reason: String,
    },
    /// A layer is larger than the daemon allows one layer to be.
    #[serde(rename = "io.cfsd.Oci.LayerTooLarge")]
    #[error("layer {layer} is too large: its {what} exceeds the limit of {limit} bytes")]
    LayerTooLarge {
        /// The layer's digest.
        layer: String,
        /// What grew too large.
        what: String,
        /// The limit, in bytes.
        limit: u64,
    },
    /// A prefix of a digest or image id names more than one image.
    #[serde(rename = "io.cfsd.Oci.AmbiguousImage")]
    #[error("{image:?} names more than one image ({})", list(matches))]
    AmbiguousImage {
        /// The prefix given.
        image: String,
        /// The manifest digests of the images it matches.
        matches: Vec<String>,
    },
    /// No tag of this name exists.
    #[serde(rename = "io.cfsd.Oci.TagNotFound")]
    #[error("no tag {tag:?} in the repository")]
    TagNotFound {
        /// The tag asked for.
        tag: String,
    },
    /// A registry reference that is not `HOST[:PORT]/NAME[:TAG|@DIGEST]`.
    #[serde(rename = "io.cfsd.Oci.InvalidReference")]
    #[error("invalid registry reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An auth file, registries.conf or certs.d entry that cannot be read.
    #[serde(rename = "io.cfsd.Oci.InvalidRegistryConfig")]
    #[error("invalid {what}: {reason}")]
    InvalidRegistryConfig {
        /// Which file or setting.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// The registry refused the credentials, or wanted some.
    #[serde(rename = "io.cfsd.Oci.RegistryAuthFailed")]
    #[error("registry {registry} refused access: {reason}")]
    RegistryAuthFailed {
        /// `HOST[:PORT]`.
        registry: String,
        /// What it answered.
        reason: String,
    },
    /// The registry's certificate could not be verified.
    #[serde(rename = "io.cfsd.Oci.RegistryTlsFailed")]
    #[error("TLS with registry {registry} failed: {reason}")]
    RegistryTlsFailed {
        /// `HOST[:PORT]`.
        registry: String,
        /// Why the handshake failed.
        reason: String,
    },
    /// The registry could not be reached, or the connection kept failing.
    #[serde(rename = "io.cfsd.Oci.RegistryUnreachable")]
    #[error("registry {registry} is unreachable: {reason}")]
    RegistryUnreachable {
        /// `HOST[:PORT]`.
        registry: String,
        /// The last failure.
        reason: String,
    },
    /// The registry answered with an error status, after retries.
    #[serde(rename = "io.cfsd.Oci.RegistryError")]
    #[error("registry {registry} answered HTTP {status} for {what}: {reason}")]
    RegistryError {
        /// `HOST[:PORT]`.
        registry: String,
        /// The HTTP status.
        status: u16,
        /// What was asked for.
        what: String,
        /// The registry's message.
        reason: String,
    },
    /// The signature policy rejects the image.
    #[serde(rename = "io.cfsd.Oci.PolicyRejected")]
    #[error("the signature policy rejects this image (scope {scope})")]
    PolicyRejected {
        /// The policy scope that decided.
        scope: String,
    },
    /// The policy requires a signature and the image has none.
    #[serde(rename = "io.cfsd.Oci.SignatureMissing")]
    #[error(
        "{image} has no signature, and the signature policy requires one ({requirement}, scope {scope})"
    )]
    SignatureMissing {
        /// The policy scope that decided.
        scope: String,
        /// The requirement, e.g. `signedBy`.
        requirement: String,
        /// The image, with its manifest digest.
        image: String,
    },
    /// No signature of the image is by a key the scope trusts.
    #[serde(rename = "io.cfsd.Oci.SignatureUntrusted")]
    #[error("no signature is by a key that scope {scope} trusts ({requirement}): {reason}")]
    SignatureUntrusted {
        /// The policy scope that decided.
        scope: String,
        /// The requirement, e.g. `signedBy`.
        requirement: String,
        /// Why the signature was not accepted.
        reason: String,
    },
    /// A trusted signature is for another manifest.
    #[serde(rename = "io.cfsd.Oci.SignatureDigestMismatch")]
    #[error("the signature is for manifest {signed}, not {manifest} (scope {scope})")]
    SignatureDigestMismatch {
        /// The policy scope that decided.
        scope: String,
        /// The digest the signature names.
        signed: String,
        /// The manifest's digest.
        manifest: String,
    },
    /// A trusted signature is for another image name than the scope
    /// admits.
    #[serde(rename = "io.cfsd.Oci.SignatureIdentityMismatch")]
    #[error("the signature is for {signed}, and scope {scope} requires {expected}")]
    SignatureIdentityMismatch {
        /// The policy scope that decided.
        scope: String,
        /// The name the signature claims.
        signed: String,
        /// What the scope's signedIdentity asks for.
        expected: String,
    },
    /// A signature that is not a well-formed signed simple-signing
    /// document.
    #[serde(rename = "io.cfsd.Oci.SignatureInvalid")]
    #[error("an invalid signature (scope {scope}): {reason}")]
    SignatureInvalid {
        /// The policy scope that decided.
        scope: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The pull pinned a digest and the source's manifest has another.
    #[serde(rename = "io.cfsd.Oci.PinnedDigestMismatch")]
    #[error("the manifest is {manifest}, not the pinned {pinned}")]
    PinnedDigestMismatch {
        /// The digest asked for.
        pinned: String,
        /// The manifest's digest (a delta's target's, for a delta).
        manifest: String,
    },
    /// The signature policy is missing or does not parse.
    #[serde(rename = "io.cfsd.Oci.InvalidPolicy")]
    #[error("invalid signature policy {path}: {reason}")]
    InvalidPolicy {
        /// The policy file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The repository's filesystem is full, or its quota used up.
    #[serde(rename = "io.cfsd.Oci.NoSpace")]
    #[error("{operation} failed: no space left in the repository's filesystem: {reason}")]
    NoSpace {
        /// What was being done.
        operation: String,
        /// Why it failed.
        reason: String,
    },
    /// The repository's filesystem is mounted read-only.
    #[serde(rename = "io.cfsd.Oci.ReadOnlyFilesystem")]
    #[error("{operation} failed: the repository's filesystem is read-only: {reason}")]
    ReadOnlyFilesystem {
        /// What was being done.
        operation: String,
        /// Why it failed.
        reason: String,
    },
    /// The device under the repository failed to read or write.
    #[serde(rename = "io.cfsd.Oci.IoError")]
    #[error("{operation} failed: an I/O error on the repository's device: {reason}")]
    IoError {
        /// What was being done.
        operation: String,
        /// Why it failed.
        reason: String,
    },
    /// The image cannot be made bootable.
    #[serde(rename = "io.cfsd.Oci.NotBootable")]
    #[error("image {image} cannot be made bootable: {reason}")]
    NotBootable {
        /// The image, as the caller named it.
        image: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An ID map that cannot be used.
    #[serde(rename = "io.cfsd.Oci.InvalidIdMap")]
    #[error("invalid {map}: {reason}")]
    InvalidIdMap {
        /// Which map, as given.
        map: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file's owner that the map does not cover.
    #[serde(rename = "io.cfsd.Oci.UnmappedId")]
    #[error("{image} has a file of {kind} {id}, which {kind}map {map} does not map")]
    UnmappedId {
        /// The image.
        image: String,
        /// `uid` or `gid`.
        kind: String,
        /// The id.
        id: u32,
        /// The map, as given.
        map: String,
    },
    /// No stage has this id.
    #[serde(rename = "io.cfsd.Oci.StageNotFound")]
    #[error("no stage {stage} in the repository")]
    StageNotFound {
        /// The stage id.
        stage: String,
    },
    /// The stage's pull never finished; it cannot be committed.
    #[serde(rename = "io.cfsd.Oci.StageIncomplete")]
    #[error("stage {stage} is incomplete: its pull never finished")]
    StageIncomplete {
        /// The stage id.
        stage: String,
    },
    /// Objects the staged image needs are gone.
    #[serde(rename = "io.cfsd.Oci.StageObjectsMissing")]
    #[error("stage {stage} lacks {missing} of the objects its image needs (the first: {first})")]
    StageObjectsMissing {
        /// The stage id.
        stage: String,
        /// How many are missing.
        missing: u64,
        /// The first one, as a path under the repository.
        first: String,
    },
    /// The stage id is not 32 lowercase hex digits.
    #[serde(rename = "io.cfsd.Oci.InvalidStageId")]
    #[error("invalid stage id {stage:?}: {reason}")]
    InvalidStageId {
        /// The id given.
        stage: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The other repository of a Copy or a Pull's sourceRepo cannot be
    /// used.
    #[serde(rename = "io.cfsd.Oci.InvalidSourceRepository")]
    #[error("the source repository cannot be used: {reason}")]
    InvalidSourceRepository {
        /// What is wrong.
        reason: String,
    },
}

/// Who may do what was refused, for the PermissionDenied message.
fn permission_denied(method: &str, uid: u32, option: Option<&str>) -> String {
    match option {
        Some(option) => format!("uid {uid} may not set {option} in {method}, which needs root"),
        None if method.ends_with(".Mount") => {
            format!("uid {uid} may not call {method}, which needs root")
        }
        None => {
            format!("uid {uid} may not call {method}, which needs root or the daemon's admin group")
        }
    }
}

/// A list for an error message; an empty one says so rather than
/// printing nothing between the parentheses.
fn list(items: &[String]) -> String {
    if items.is_empty() {
        "nothing".to_owned()
    } else {
        items.join(", ")
    }
}

/// The methods of `io.cfsd.Oci`, by their unqualified names.
pub const METHODS: &[&str] = &[
    "Pull",
    "ListImages",
    "Inspect",
    "Tag",
    "Untag",
    "Remove",
    "ComputeId",
    "Mount",
    "CreateDelta",
    "Push",
    "PushDelta",
    "Dump",
    "ExportLayer",
    "Export",
    "MakeBootable",
    "KernelArgument",
    "Idmap",
    "ListStages",
    "Commit",
    "Abort",
    "Copy",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_replies_carry_only_what_is_set() {
        let progress = PullReply {
            progress: Some(LayerProgress {
                layer: "sha256:ab".into(),
                stage: "importing".into(),
                done: 1,
                total: 2,
            }),
            result: None,
        };
        assert_eq!(
            serde_json::to_value(&progress).unwrap(),
            serde_json::json!({"progress": {"layer": "sha256:ab", "stage": "importing", "done": 1, "total": 2}})
        );
    }

    #[test]
    fn delta_methods_are_lowercase_names() {
        let params: CreateDeltaParams = serde_json::from_value(
            serde_json::json!({"source": "a", "target": "b", "method": "bsdiff"}),
        )
        .unwrap();
        assert_eq!(params.method, Some(DeltaMethod::Bsdiff));
        assert_eq!(
            serde_json::to_value(DeltaMethod::Zstd).unwrap(),
            serde_json::json!("zstd")
        );
        let odd = serde_json::json!({"source": "a", "target": "b", "method": "xdelta"});
        assert!(serde_json::from_value::<CreateDeltaParams>(odd).is_err());
    }

    #[test]
    fn errors_describe_the_problem() {
        let e = OciError::PlatformNotFound {
            platform: "linux/s390x".into(),
            available: vec!["linux/amd64".into(), "linux/arm64".into()],
        };
        assert_eq!(
            e.to_string(),
            "no image for platform linux/s390x in the source (it has: linux/amd64, linux/arm64)"
        );
        let wire = serde_json::to_value(&e).unwrap();
        assert_eq!(wire["error"], "io.cfsd.Oci.PlatformNotFound");
    }
}
