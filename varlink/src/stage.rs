//! The staged-pull methods of `io.cfsd.Oci`: `ListStages`, `Commit` and
//! `Abort`; `Pull` with `stage` makes the stages.

use serde::{Deserialize, Serialize};

/// A staged pull, kept until committed or aborted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stage {
    /// The stage id, 32 lowercase hex digits.
    pub id: String,
    /// `pulling`, `complete` or `incomplete`.
    pub state: String,
    /// The digest of the staged image's manifest.
    pub manifest_digest: String,
    /// The digest of its config.
    pub config_digest: String,
    /// The composefs image id in hex, once complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// Bytes of the config and layer blobs its manifest lists.
    pub size: u64,
    /// Bytes of the objects its pull wrote.
    pub bytes_new: u64,
    /// When its pull began, in seconds since the Unix epoch.
    pub created: u64,
}

/// The reply of `ListStages`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListStagesReply {
    /// Every stage, by id.
    pub stages: Vec<Stage>,
}

/// The parameters of `Commit`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitParams {
    /// The stage id.
    pub stage: String,
    /// The tag to publish the image as.
    pub tag: String,
}

/// The reply of `Commit`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommitReply {
    /// The digest of the image's manifest.
    pub manifest_digest: String,
    /// The digest of its config.
    pub config_digest: String,
    /// The composefs image id in hex.
    pub image_id: String,
    /// The tag set.
    pub tag: String,
}

/// The parameters of `Abort`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageParams {
    /// The stage id.
    pub stage: String,
}
