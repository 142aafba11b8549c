//! The wire types of `io.cfsd.Oci.Dump` and `ExportLayer`, re-exported
//! from [`crate::oci`] with the rest of the interface.
//!
//! Both are called with `more`. Their first reply, which continues, is
//! empty and carries one fd: the read end of a pipe the daemon writes the
//! output into. The last reply comes once all of it was written, with what
//! was written; an error in its place means the output is not to be used.

use serde::{Deserialize, Serialize};

/// The parameters of `Dump`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DumpParams {
    /// The image: a tag, a manifest digest or a unique prefix.
    pub image: String,
}

/// How `ExportLayer` writes a layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerFormat {
    /// Its tar, checked against its diff_id as it is written.
    #[default]
    Tar,
    /// The composefs dumpfile of its entries.
    Dumpfile,
}

/// The parameters of `ExportLayer`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportLayerParams {
    /// The layer's diff_id, `sha256:<hex>`.
    #[serde(rename = "diffId")]
    pub diff_id: String,
    /// How to write it; a tar when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<LayerFormat>,
}

/// A reply of `Dump` or `ExportLayer`: empty in the first one, which
/// carries the pipe; the bytes written in the last.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportReply {
    /// Bytes written to the pipe, in the last reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

/// The parameters of `Export`. The archive is the call's first fd: a
/// regular file the caller owns, opened for writing.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    /// The image: a tag, a manifest digest or a unique prefix.
    pub image: String,
    /// How its layers are compressed; gzip when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<crate::oci::PushCompression>,
    /// The name the archive's index gives the image
    /// (`org.opencontainers.image.ref.name`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// The reply of `Export`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportImageReply {
    /// The digest of the archive's manifest, new as its layer blobs are.
    pub manifest_digest: String,
    /// The digest of the config, the same as in the repository.
    pub config_digest: String,
    /// Bytes of the archive.
    pub bytes: u64,
}
