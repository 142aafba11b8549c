//! The wire types of `io.cfsd.Oci.Push` and `PushDelta`, re-exported from
//! [`crate::oci`] with the rest of the interface.

use serde::{Deserialize, Serialize};

use crate::oci::{DeltaLayer, DeltaMethod};

/// How `Push` compresses layers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PushCompression {
    /// gzip, which every client reads.
    #[default]
    Gzip,
    /// zstd.
    Zstd,
    /// zstd:chunked (current variant): zstd cut at the files, with a
    /// TOC and tar-split, for partial pulls.
    #[serde(rename = "zstd:chunked")]
    ZstdChunked,
}

/// The parameters of `Push`. The caller's auth file, if any, travels as
/// the call's first fd.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushParams {
    /// The image to push: a tag or manifest digest.
    pub image: String,
    /// `HOST[:PORT]/NAME[:TAG]`, without `docker://`; `latest` when no
    /// tag is given.
    pub reference: String,
    /// How layers are compressed; gzip when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<PushCompression>,
    /// As for `Pull`: `false` allows plain HTTP and unverified TLS,
    /// `true` verifies even an insecure registry, `None` follows
    /// registries.conf.
    #[serde(default, rename = "tlsVerify", skip_serializing_if = "Option::is_none")]
    pub tls_verify: Option<bool>,
}

/// The reply of `Push`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PushReply {
    /// `HOST[:PORT]/NAME:TAG` pushed to.
    pub reference: String,
    /// The digest of the manifest pushed.
    pub manifest_digest: String,
    /// The digest of the config, as in the repository.
    pub config_digest: String,
    /// Layers of the image.
    pub layers: u64,
    /// Layers uploaded; the registry had the others.
    pub layers_uploaded: u64,
    /// Bytes of the blobs uploaded.
    pub bytes_uploaded: u64,
}

/// The parameters of `PushDelta`. The caller's auth file, if any,
/// travels as the call's first fd.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushDeltaParams {
    /// The image the delta applies to: a tag or manifest digest.
    pub source: String,
    /// The image the delta rebuilds: a tag or manifest digest.
    pub target: String,
    /// `HOST[:PORT]/NAME[:TAG]` to push the artifact to, without
    /// `docker://`.
    pub reference: String,
    /// The most layers encoded at once; `None` or 0 means one per CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs: Option<u64>,
    /// How changed files are encoded; zstd when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<DeltaMethod>,
    /// As for `Push`.
    #[serde(default, rename = "tlsVerify", skip_serializing_if = "Option::is_none")]
    pub tls_verify: Option<bool>,
}

/// The reply of `PushDelta`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PushDeltaReply {
    /// `HOST[:PORT]/NAME:TAG` of the artifact.
    pub reference: String,
    /// The digest of the delta artifact's manifest.
    pub manifest_digest: String,
    /// The digest of the source image's manifest.
    pub source_digest: String,
    /// The digest of the target image's manifest: the artifact's subject.
    pub target_digest: String,
    /// Whether the registry's repository holds that manifest.
    pub subject_in_registry: bool,
    /// The referrers tag-schema tag that lists the delta.
    pub referrers_tag: String,
    /// Bytes of the delta as an archive.
    pub delta_bytes: u64,
    /// Bytes of the blobs uploaded.
    pub bytes_uploaded: u64,
    /// Layers of the target image.
    pub layers: u64,
    /// Layers the delta carries.
    pub layers_changed: u64,
    /// Each carried layer, in target order.
    pub changed: Vec<DeltaLayer>,
}
