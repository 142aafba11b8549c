//! The errors of `io.cfsd.Oci`, as they travel: each variant one varlink
//! error, with the message a person reads.

use serde::{Deserialize, Serialize};

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
    /// The zstd:chunked metadata of a layer blob lies or is too large.
    #[serde(rename = "io.cfsd.Oci.InvalidChunkedToc")]
    #[error("the zstd:chunked metadata of layer {layer} cannot be used: {reason}")]
    InvalidChunkedToc {
        /// The layer blob's digest.
        layer: String,
        /// The kind of fault: checksum, bounds, overlap, too-large, ...
        kind: String,
        /// What is wrong.
        reason: String,
    },
    /// MountFuse's fd is not `/dev/fuse` open for reading and writing.
    #[serde(rename = "io.cfsd.Oci.NotFuseDevice")]
    #[error("not a /dev/fuse file descriptor: {reason}")]
    NotFuseDevice {
        /// What it is instead.
        reason: String,
    },
    /// MountFuse's `/dev/fuse` is no mount waiting for its server.
    #[serde(rename = "io.cfsd.Oci.FuseNotMounted")]
    #[error("the /dev/fuse is not a FUSE mount waiting for its server: {reason}")]
    FuseNotMounted {
        /// What was found.
        reason: String,
    },
    /// The daemon serves as many FUSE mounts as it may.
    #[serde(rename = "io.cfsd.Oci.TooManyFuseMounts")]
    #[error("the daemon serves {limit} FUSE mounts already, as many as it may")]
    TooManyFuseMounts {
        /// The most it serves at once.
        limit: u64,
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
