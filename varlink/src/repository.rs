//! `io.cfsd.Repository`: describing, creating, checking and collecting
//! the repository.

use serde::{Deserialize, Serialize};

/// How far the repository's content is protected by fs-verity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verity {
    /// Every object must carry fs-verity and reads are checked by the kernel.
    pub enforced: bool,
    /// Why fs-verity is not enforced; `None` when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// How many entries of one kind there are, and the bytes of their objects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Number of entries.
    pub count: u64,
    /// Bytes of the objects behind them.
    pub bytes: u64,
}

/// A description of the repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepositoryInfo {
    /// The repository directory, as the daemon was told it.
    pub path: String,
    /// The fs-verity algorithm that names objects.
    pub algorithm: String,
    /// Whether fs-verity protects the content.
    pub verity: Verity,
    /// Content-addressed files.
    pub objects: Usage,
    /// Split streams.
    pub streams: Usage,
    /// EROFS images.
    pub images: Usage,
    /// What keeps garbage collection off now, each by its reason.
    #[serde(rename = "gcHolders", default)]
    pub gc_holders: Vec<String>,
}

/// The reply of `Info`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InfoReply {
    /// The description.
    pub info: RepositoryInfo,
}

/// The parameters of `Init`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitParams {
    /// `sha256`, `sha512` or a full `fsverity-<hash>-<lg-block>` name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
}

/// The reply of `Init`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitReply {
    /// The repository as it now is.
    pub info: RepositoryInfo,
    /// False when the repository already existed with this algorithm.
    pub created: bool,
}

/// The parameters of `Fsck`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FsckParams {
    /// Check references only, without reading object contents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_only: Option<bool>,
}

/// One inconsistency found by `Fsck`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// A stable kebab-case name for the kind of problem.
    pub kind: String,
    /// What is wrong and where.
    pub detail: String,
}

/// The reply of `Fsck`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FsckReply {
    /// No problem was found.
    pub ok: bool,
    /// Objects whose contents were verified.
    pub objects_checked: u64,
    /// Objects whose contents do not match their name.
    pub objects_corrupted: u64,
    /// Streams checked.
    pub streams_checked: u64,
    /// Streams found damaged.
    pub streams_corrupted: u64,
    /// Images checked.
    pub images_checked: u64,
    /// Images found damaged.
    pub images_corrupted: u64,
    /// References that point nowhere.
    pub broken_links: u64,
    /// Objects referred to but absent.
    pub missing_objects: u64,
    /// Every problem, in the order found.
    pub problems: Vec<Problem>,
}

/// The parameters of `Gc`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GcParams {
    /// Only report what would be removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
}

/// The reply of `Gc`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GcReply {
    /// Whether this was only a report.
    pub dry_run: bool,
    /// Objects removed, or that would be.
    pub objects_removed: u64,
    /// Bytes of those objects.
    pub bytes_freed: u64,
    /// Dangling image references removed.
    pub images_pruned: u64,
    /// Dangling stream references removed.
    pub streams_pruned: u64,
}

/// The parameters of `Hold`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldParams {
    /// Why garbage collection must wait, for whoever sees the hold.
    pub reason: String,
}

/// The reply of `Hold`, once the hold is in place.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldReply {
    /// Everything that keeps garbage collection off now, this hold too.
    pub holders: Vec<String>,
}

/// A plain composefs image that has a name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamedImage {
    /// Its name under `images/refs/`.
    pub name: String,
    /// The fs-verity digest of its EROFS, hex.
    pub image_id: String,
}

/// The parameters of `CreateImage`; the tree travels as the call's fd.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateImageParams {
    /// The name to give the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Keep the root's own metadata and skip the OCI transformation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_propagate_usr: Option<bool>,
    /// Keep `user.*` xattrs too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_user_xattrs: Option<bool>,
}

/// The parameters of `ComputeImageId`; the tree travels as the call's fd.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ComputeImageIdParams {
    /// Keep the root's own metadata and skip the OCI transformation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_propagate_usr: Option<bool>,
    /// Keep `user.*` xattrs too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_user_xattrs: Option<bool>,
}

/// The reply of `CreateImage` and `ComputeImageId`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIdReply {
    /// The image id, hex.
    pub image_id: String,
}

/// The reply of `ListNamedImages`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListNamedImagesReply {
    /// Every named image, by name.
    pub images: Vec<NamedImage>,
}

/// The parameters of `ImageObjects` and `MountImage`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlainImageParams {
    /// An image id or a name.
    pub image: String,
}

/// The reply of `ImageObjects`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageObjectsReply {
    /// `ALGORITHM:HEX` object ids, sorted.
    pub objects: Vec<String>,
}

/// Every error of `io.cfsd.Repository`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "error", content = "parameters")]
pub enum RepositoryError {
    /// The directory holds no repository yet.
    #[serde(rename = "io.cfsd.Repository.NotInitialized")]
    #[error("no composefs repository at {path}")]
    NotInitialized {
        /// The repository directory.
        path: String,
    },
    /// The repository exists with another algorithm.
    #[serde(rename = "io.cfsd.Repository.AlgorithmMismatch")]
    #[error(
        "the repository at {path} already uses {existing}; it cannot be re-initialised with {requested}"
    )]
    AlgorithmMismatch {
        /// The repository directory.
        path: String,
        /// The algorithm it has.
        existing: String,
        /// The algorithm asked for.
        requested: String,
    },
    /// The algorithm is unknown.
    #[serde(rename = "io.cfsd.Repository.UnsupportedAlgorithm")]
    #[error("unsupported algorithm {algorithm:?}: use sha256 or sha512")]
    UnsupportedAlgorithm {
        /// The algorithm asked for.
        algorithm: String,
    },
    /// fs-verity is required but unavailable.
    #[serde(rename = "io.cfsd.Repository.VerityRequired")]
    #[error("fs-verity is required but the repository at {path} cannot have it: {reason}")]
    VerityRequired {
        /// The repository directory.
        path: String,
        /// Why verity is unavailable.
        reason: String,
    },
    /// The repository metadata cannot be used.
    #[serde(rename = "io.cfsd.Repository.Unreadable")]
    #[error("cannot open the repository at {path}: {reason}")]
    Unreadable {
        /// The repository directory.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The caller may not change the repository.
    #[serde(rename = "io.cfsd.Repository.PermissionDenied")]
    #[error(
        "permission denied: uid {uid} may not call {method}, which changes the repository: it needs root or the daemon's admin group, and a daemon that may write the repository's files (one run by their owner, or by root)"
    )]
    PermissionDenied {
        /// The method refused.
        method: String,
        /// The caller's uid.
        uid: u32,
    },
    /// A message was longer than the daemon accepts; the connection is
    /// closed after this error.
    #[serde(rename = "io.cfsd.Repository.MessageTooLarge")]
    #[error("the message is longer than cfsd accepts ({limit} bytes); the connection is closed")]
    MessageTooLarge {
        /// The most bytes a message may have, not counting its NUL.
        limit: u64,
    },
    /// The daemon serves as many connections as it allows; the connection
    /// is closed after this error.
    #[serde(rename = "io.cfsd.Repository.TooManyConnections")]
    #[error(
        "cfsd serves too many connections ({limit}{}); try again later",
        if *per_uid { format!(" for uid {uid}") } else { " in all".to_owned() }
    )]
    TooManyConnections {
        /// The limit reached.
        limit: u64,
        /// The caller's uid.
        uid: u32,
        /// Whether the limit is the one for each uid rather than the
        /// daemon's total.
        #[serde(rename = "perUid")]
        per_uid: bool,
    },
    /// Disk access failed.
    #[serde(rename = "io.cfsd.Repository.StorageFailed")]
    #[error("{operation} failed: {reason}")]
    StorageFailed {
        /// What was being done.
        operation: String,
        /// Why it failed.
        reason: String,
    },
    /// Another process serves the repository; any call may get this.
    #[serde(rename = "io.cfsd.Repository.RepositoryInUse")]
    #[error("the repository at {path} is in use by process {pid} ({owner})")]
    RepositoryInUse {
        /// The repository directory.
        path: String,
        /// The process that has it, 0 when unknown.
        pid: u32,
        /// What that process says it is.
        owner: String,
        /// The socket it serves, if it said.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address: Option<String>,
    },
    /// A collection could not start in time, because of the work listed.
    #[serde(rename = "io.cfsd.Repository.RepositoryBusy")]
    #[error("{operation} gave up waiting for: {}", holders.join("; "))]
    RepositoryBusy {
        /// What could not start.
        operation: String,
        /// What holds the repository.
        holders: Vec<String>,
    },
    /// The repository's filesystem is full, or its quota used up.
    #[serde(rename = "io.cfsd.Repository.NoSpace")]
    #[error("{operation} failed: no space left in the repository's filesystem: {reason}")]
    NoSpace {
        /// What was being done.
        operation: String,
        /// Why it failed.
        reason: String,
    },
    /// The repository's filesystem is mounted read-only.
    #[serde(rename = "io.cfsd.Repository.ReadOnlyFilesystem")]
    #[error("{operation} failed: the repository's filesystem is read-only: {reason}")]
    ReadOnlyFilesystem {
        /// What was being done.
        operation: String,
        /// Why it failed.
        reason: String,
    },
    /// The device under the repository failed to read or write.
    #[serde(rename = "io.cfsd.Repository.IoError")]
    #[error("{operation} failed: an I/O error on the repository's device: {reason}")]
    IoError {
        /// What was being done.
        operation: String,
        /// Why it failed.
        reason: String,
    },
    /// The call needs an fd the client did not pass, or one of another kind.
    #[serde(rename = "io.cfsd.Repository.MissingFd")]
    #[error("{method} needs {expected}")]
    MissingFd {
        /// The method called.
        method: String,
        /// What fd it needs.
        expected: String,
    },
    /// No image of that id or name.
    #[serde(rename = "io.cfsd.Repository.ImageNotFound")]
    #[error("no image {image:?} in the repository")]
    ImageNotFound {
        /// The image asked for.
        image: String,
    },
    /// The tree passed cannot be made an image.
    #[serde(rename = "io.cfsd.Repository.InvalidTree")]
    #[error("the tree cannot be made an image: {path}: {reason}")]
    InvalidTree {
        /// Where in the tree, relative to its root.
        path: String,
        /// What is wrong there.
        reason: String,
    },
    /// The image name cannot be used.
    #[serde(rename = "io.cfsd.Repository.InvalidImageName")]
    #[error("invalid image name {name:?}: {reason}")]
    InvalidImageName {
        /// The name given.
        name: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// Mounting the image failed.
    #[serde(rename = "io.cfsd.Repository.MountFailed")]
    #[error("mounting {image} failed: {reason}")]
    MountFailed {
        /// The image asked for.
        image: String,
        /// Why it failed.
        reason: String,
    },
}

/// The methods of `io.cfsd.Repository`, by their unqualified names.
pub const METHODS: &[&str] = &[
    "Info",
    "Init",
    "Fsck",
    "Gc",
    "Hold",
    "CreateImage",
    "ComputeImageId",
    "ListNamedImages",
    "ImageObjects",
    "MountImage",
    "IndexContent",
];

/// A reply of `IndexContent`: how far building the content index is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexContentReply {
    /// Streams and images indexed so far.
    pub done: u64,
    /// Streams and images that had no index file.
    pub total: u64,
    /// File objects read and hashed so far.
    pub objects_hashed: u64,
}
