//! `io.cfsd.Oci`: pulling OCI images into the repository, naming,
//! describing, removing and mounting them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

mod error;

pub use error::OciError;

pub use crate::export::{
    DumpParams, ExportImageReply, ExportLayerParams, ExportParams, ExportReply, LayerFormat,
};
pub use crate::fuse::{MountFuseParams, MountFuseReply};
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
    /// For [`TRANSPORT_REGISTRY`]: `true` pulls zstd:chunked layers in
    /// full, never in part.
    #[serde(default, rename = "noPartial", skip_serializing_if = "Option::is_none")]
    pub no_partial: Option<bool>,
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
    /// For a registry pull of zstd:chunked layers: what pulling them in
    /// part fetched, and why layers were pulled in full.
    #[serde(
        default,
        rename = "partialPull",
        skip_serializing_if = "Option::is_none"
    )]
    pub partial_pull: Option<PartialPull>,
}

/// What a registry pull fetched of the zstd:chunked layers it pulled in
/// part.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartialPull {
    /// Layers pulled in part.
    pub layers: u64,
    /// Their files read from stored objects instead of fetched.
    pub files_reused: u64,
    /// Chunks of their other files read from stored objects or known to
    /// be zeros instead of fetched.
    pub chunks_reused: u64,
    /// Their blob bytes fetched, without the tables of contents.
    pub bytes_fetched: u64,
    /// Body bytes received for them, tables of contents included.
    pub bytes_received: u64,
    /// Range requests sent for them.
    pub requests: u64,
    /// The registry refused multi-range requests.
    pub single_ranges: bool,
    /// Why other layers were pulled in full, if any was.
    pub reason: String,
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
    "MountFuse",
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
