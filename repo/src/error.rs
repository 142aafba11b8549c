//! Why a repository operation failed.

use std::path::PathBuf;

/// Why a repository operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The directory holds no repository yet.
    #[error("no composefs repository at {}", path.display())]
    NotInitialized {
        /// The repository directory.
        path: PathBuf,
    },
    /// The repository exists with another algorithm than the one asked for.
    #[error("the repository at {} uses {existing}, not {requested}", path.display())]
    AlgorithmMismatch {
        /// The repository directory.
        path: PathBuf,
        /// The algorithm it has.
        existing: String,
        /// The algorithm asked for.
        requested: String,
    },
    /// The algorithm name is not one composefs knows.
    #[error("unsupported algorithm {algorithm:?}: {reason}")]
    UnsupportedAlgorithm {
        /// The name given.
        algorithm: String,
        /// What is wrong with it.
        reason: String,
    },
    /// fs-verity is required and the repository cannot provide it.
    #[error("fs-verity is required at {}: {reason}", path.display())]
    VerityRequired {
        /// The repository directory.
        path: PathBuf,
        /// Why it is unavailable.
        reason: String,
    },
    /// The repository's metadata is damaged or of an unknown format.
    #[error("cannot open the repository at {}: {reason}", path.display())]
    Unreadable {
        /// The repository directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No image has this tag or manifest digest.
    #[error("no image {image:?} in the repository")]
    ImageNotFound {
        /// The tag or digest asked for.
        image: String,
    },
    /// No layer with this diff_id is stored.
    #[error("no layer {diff_id} in the repository")]
    LayerNotFound {
        /// The diff_id asked for.
        diff_id: String,
    },
    /// The writer the caller gave failed: the client stopped reading, or
    /// closed its end. The repository is not at fault.
    #[error("{operation} failed: the output failed: {reason}")]
    OutputFailed {
        /// What was being written.
        operation: &'static str,
        /// How the output failed.
        reason: String,
    },
    /// A platform that is not `os/arch[/variant]`.
    #[error("invalid platform {platform:?}: expected os/arch or os/arch/variant")]
    InvalidPlatform {
        /// The text given.
        platform: String,
    },
    /// A tag that cannot name an image.
    #[error("invalid tag {tag:?}: {reason}")]
    InvalidTag {
        /// The tag given.
        tag: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An `oci-archive:` that is compressed as a whole.
    #[error(
        "the archive is {compression}-compressed; an oci-archive source must be an \
         uncompressed tar"
    )]
    CompressedArchive {
        /// The compression found.
        compression: String,
    },
    /// The source is not an OCI layout.
    #[error("not an OCI image layout: {reason}")]
    InvalidSource {
        /// What is wrong.
        reason: String,
    },
    /// The source lacks a blob that its index or a manifest names.
    #[error("the source has no blob {digest}")]
    BlobMissing {
        /// The blob's digest.
        digest: String,
    },
    /// A JSON document of the source cannot be read.
    #[error("invalid {what}: {reason}")]
    InvalidJson {
        /// Which document.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// No manifest in the index matches the reference.
    #[error("no manifest {reference:?} in the source (it has: {})", available.join(", "))]
    ManifestNotFound {
        /// The reference asked for.
        reference: String,
        /// What the index offers.
        available: Vec<String>,
    },
    /// The image index has no manifest for the platform.
    #[error("no image for platform {platform} (the index has: {})", available.join(", "))]
    PlatformNotFound {
        /// The platform asked for.
        platform: String,
        /// The platforms the index offers.
        available: Vec<String>,
    },
    /// A media type cfsd cannot handle.
    #[error("unsupported media type {media_type:?} for {what}")]
    UnsupportedMediaType {
        /// What carried it.
        what: String,
        /// The media type.
        media_type: String,
    },
    /// Content does not match the digest or size that names it.
    #[error("{what}: expected {expected}, found {actual}")]
    DigestMismatch {
        /// Which content.
        what: String,
        /// The digest or size declared.
        expected: String,
        /// The digest or size found.
        actual: String,
    },
    /// A layer's compressed or tar data is damaged.
    #[error("layer {layer} is damaged: {reason}")]
    InvalidLayer {
        /// The layer's digest.
        layer: String,
        /// What is wrong.
        reason: String,
    },
    /// Every layer is sound, but together they make no filesystem: an
    /// upper layer writes beneath what a lower one made a symlink or a
    /// file.
    #[error("the image's layers do not make a filesystem: {reason}")]
    InvalidImage {
        /// What is wrong.
        reason: String,
    },
    /// Mounting an image failed.
    #[error("mounting {image} failed: {reason}")]
    MountFailed {
        /// The image.
        image: String,
        /// Why.
        reason: String,
    },
    /// Reading or writing the repository failed.
    #[error("{operation} failed: {reason}")]
    Storage {
        /// What was being done.
        operation: &'static str,
        /// Why it failed, with its causes.
        reason: String,
        /// What kind of failure the system reported, for callers that
        /// act on it (free space, remount, replace a disk).
        fault: DiskFault,
    },
    /// A delta applies to an image the repository does not hold.
    #[error(
        "the delta applies to the image {}with config {config}, which is not in the repository",
        image.as_ref().map(|m| format!("{m} ")).unwrap_or_default()
    )]
    DeltaSourceMissing {
        /// The source image's config digest.
        config: String,
        /// The source image's manifest digest, when the delta names it.
        image: Option<String>,
    },
    /// An oci-delta artifact that breaks the delta format's rules.
    #[error("invalid oci-delta artifact: {reason}")]
    InvalidDelta {
        /// What is wrong.
        reason: String,
    },
    /// A layer's tar-diff cannot be applied to the source image.
    #[error("the tar-diff of layer {layer} cannot be applied: {reason}")]
    TarDiff {
        /// The target layer's digest.
        layer: String,
        /// What is wrong.
        reason: String,
    },
    /// A layer, sound or not, is larger than the daemon's limits for one
    /// layer allow; nothing more of it was read.
    #[error("layer {layer} is too large: its {what} exceeds the limit of {limit} bytes")]
    LayerTooLarge {
        /// The layer's digest (for a rebuilt layer, the target's).
        layer: String,
        /// What grew too large.
        what: String,
        /// The limit, in bytes.
        limit: u64,
    },
    /// A prefix of a digest or image id names more than one image.
    #[error("{image:?} names more than one image: {}", matches.join(", "))]
    AmbiguousImage {
        /// The prefix given.
        image: String,
        /// The manifest digests of the images it matches.
        matches: Vec<String>,
    },
    /// No tag of this name exists.
    #[error("no tag {tag:?} in the repository")]
    TagNotFound {
        /// The tag asked for.
        tag: String,
    },
    /// The daemon may not write or read what it needs in the repository:
    /// its files belong to another user.
    #[error("{operation} failed: {reason}")]
    AccessDenied {
        /// What was being done.
        operation: &'static str,
        /// The refusal, with its causes.
        reason: String,
    },
    /// Another process serves the repository: only one may, since
    /// collections in one cannot see the imports of another.
    #[error(
        "the repository at {} is in use by process {pid} ({owner})",
        path.display()
    )]
    RepositoryInUse {
        /// The repository directory.
        path: PathBuf,
        /// The process that has it open, 0 when unknown.
        pid: u32,
        /// What that process said it is, e.g. the socket it serves.
        owner: String,
        /// The socket that process serves, if it said.
        address: Option<String>,
    },
    /// A collection could not start in time: work it must not disturb
    /// kept going, so it gave up rather than wait without bound.
    #[error("{operation} gave up waiting for: {}", holders.join("; "))]
    RepositoryBusy {
        /// What could not start.
        operation: String,
        /// What holds the repository.
        holders: Vec<String>,
    },
    /// A registry reference that is not `HOST[:PORT]/NAME[:TAG|@DIGEST]`.
    #[error("invalid registry reference {reference:?}: {reason}")]
    InvalidReference {
        /// The text given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A registry setting (auth file, registries.conf, certs.d) that
    /// cannot be read.
    #[error("invalid {what}: {reason}")]
    InvalidRegistryConfig {
        /// Which setting.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// The registry refused the credentials, or asked for some and none
    /// were given.
    #[error("registry {registry} refused access: {reason}")]
    RegistryAuth {
        /// `HOST[:PORT]`.
        registry: String,
        /// What the registry answered.
        reason: String,
    },
    /// The registry's TLS certificate could not be verified.
    #[error("TLS with registry {registry} failed: {reason}")]
    RegistryTls {
        /// `HOST[:PORT]`.
        registry: String,
        /// Why the handshake failed.
        reason: String,
    },
    /// The registry could not be reached, or the connection failed and
    /// did not come back within the retries.
    #[error("registry {registry} is unreachable: {reason}")]
    RegistryUnreachable {
        /// `HOST[:PORT]`.
        registry: String,
        /// The last failure.
        reason: String,
    },
    /// The registry answered with an error status, after the retries a
    /// 5xx or 429 answer gets.
    #[error("registry {registry} answered HTTP {status} for {what}: {reason}")]
    RegistryStatus {
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
    #[error("the signature policy rejects this image (scope {scope})")]
    PolicyRejected {
        /// The policy scope that decided.
        scope: String,
    },
    /// The policy requires a signature and the image has none.
    #[error(
        "{image} has no signature, and the signature policy requires one ({requirement}, scope {scope})"
    )]
    SignatureMissing {
        /// The policy scope that decided.
        scope: String,
        /// The requirement type, e.g. `signedBy`.
        requirement: String,
        /// The image, with its manifest digest.
        image: String,
    },
    /// No signature of the image is made by a key the scope trusts.
    #[error("no signature is by a key that scope {scope} trusts ({requirement}): {reason}")]
    SignatureUntrusted {
        /// The policy scope that decided.
        scope: String,
        /// The requirement type, e.g. `signedBy`.
        requirement: String,
        /// Why the signature was not accepted.
        reason: String,
    },
    /// A trusted signature vouches for another manifest than the one the
    /// registry served.
    #[error("the signature is for manifest {signed}, not {manifest} (scope {scope})")]
    SignatureDigestMismatch {
        /// The policy scope that decided.
        scope: String,
        /// The digest the signature names.
        signed: String,
        /// The manifest's digest.
        manifest: String,
    },
    /// A trusted signature vouches for another image name than the policy
    /// admits for the name pulled.
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
    #[error("an invalid signature (scope {scope}): {reason}")]
    SignatureInvalid {
        /// The policy scope that decided.
        scope: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The pull pinned a manifest digest and the source has another.
    #[error("the manifest is {manifest}, not the pinned {pinned}")]
    PinnedDigestMismatch {
        /// The digest asked for.
        pinned: String,
        /// The manifest's digest (a delta's target's, for a delta).
        manifest: String,
    },
    /// The signature policy file is missing or does not parse.
    #[error("invalid signature policy {path}: {reason}")]
    InvalidPolicy {
        /// The policy file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The image cannot be made bootable: it lacks `/usr`, `/boot` or
    /// `/sysroot`, or its SELinux policy is unreadable or too large.
    #[error("image {image} cannot be made bootable: {reason}")]
    NotBootable {
        /// The image, as the caller named it.
        image: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An ID map (`C:H:L` ranges) that cannot be used.
    #[error("invalid {map}: {reason}")]
    InvalidIdMap {
        /// Which map, as given (`uidmap 0:1:2,...`).
        map: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file of the image is owned by an id that the map does not cover.
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
    #[error("no stage {stage} in the repository")]
    StageNotFound {
        /// The stage id asked for.
        stage: String,
    },
    /// The stage's pull never finished: a crash, a hang-up or a failure
    /// stopped it. It can only be aborted, or collected by GC.
    #[error("stage {stage} is incomplete: its pull never finished")]
    StageIncomplete {
        /// The stage id.
        stage: String,
    },
    /// Objects the staged image needs are no longer in the repository.
    #[error("stage {stage} lacks {missing} of the objects its image needs (the first: {first})")]
    StageObjectsMissing {
        /// The stage id.
        stage: String,
        /// How many are missing.
        missing: u64,
        /// The first one missing, as a path under the repository.
        first: String,
    },
    /// A stage id that cannot name a stage.
    #[error("invalid stage id {stage:?}: {reason}")]
    InvalidStageId {
        /// The id given.
        stage: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A directory tree handed over for a plain image cannot be read as
    /// one: the caller may not read part of it, it crosses into another
    /// mount, it is larger than the limits, or it changed while read.
    #[error("the tree cannot be made an image: {path}: {reason}")]
    InvalidTree {
        /// Where in the tree, relative to its root ("." for the root).
        path: String,
        /// What is wrong there.
        reason: String,
    },
    /// A plain image's name cannot be used.
    #[error("invalid image name {name:?}: {reason}")]
    InvalidImageName {
        /// The name given.
        name: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// A secondary repository (`oci copy --from`, a delta's
    /// `--source-repo`) cannot be read as one: it holds a link, a file
    /// that is not regular, one its client could not read, a damaged
    /// stream, or lacks what it should have.
    #[error("the source repository cannot be used: {reason}")]
    SourceRepository {
        /// What is wrong, by paths inside that repository.
        reason: String,
    },
    /// The zstd:chunked metadata of a layer blob (its annotations, footer,
    /// TOC or tar-split) lies or is too large to read.
    #[error("the zstd:chunked metadata of layer {layer} cannot be used: {fault}")]
    InvalidChunkedToc {
        /// The layer blob's digest.
        layer: String,
        /// What is wrong with it.
        fault: crate::chunked::TocFault,
    },
    /// The file descriptor handed over to serve a FUSE mount is not
    /// `/dev/fuse` (a pipe, a file, a socket, another device), or is not
    /// open for reading and writing.
    #[error("not a /dev/fuse file descriptor: {reason}")]
    NotFuseDevice {
        /// What it is instead.
        reason: String,
    },
    /// The `/dev/fuse` handed over is no mount waiting for its server:
    /// never mounted, already unmounted or aborted, or already answered
    /// by another server.
    #[error("the /dev/fuse is not a FUSE mount waiting for its server: {reason}")]
    FuseNotMounted {
        /// What was found.
        reason: String,
    },
}

impl Error {
    /// A storage failure of `operation`, keeping the whole cause chain of
    /// `err` in the message since it is what a person needs to act on,
    /// and the kind of failure the system reported.
    pub(crate) fn storage(operation: &'static str, err: impl Into<StorageCause>) -> Self {
        let cause = err.into();
        match cause.fault {
            None => Error::AccessDenied {
                operation,
                reason: cause.text,
            },
            Some(fault) => Error::Storage {
                operation,
                reason: cause.text,
                fault,
            },
        }
    }

    /// A storage failure that no system call reported: a broken invariant,
    /// or a task that died.
    pub(crate) fn internal(operation: &'static str, reason: String) -> Self {
        Error::Storage {
            operation,
            reason,
            fault: DiskFault::Other,
        }
    }
}

/// The kinds of storage failure a caller acts on differently. ENOSPC,
/// EROFS and EIO read alike as text; they are kept apart up to the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskFault {
    /// The filesystem is full, or the quota used up (ENOSPC, EDQUOT).
    NoSpace,
    /// The filesystem is mounted read-only (EROFS).
    ReadOnly,
    /// The device failed to read or write (EIO).
    Io,
    /// Any other failure.
    #[default]
    Other,
}

/// What one errno means for a storage error: a [`DiskFault`], or `None`
/// for the kernel refusing access (EACCES, EPERM).
fn classify(errno: rustix::io::Errno) -> Option<DiskFault> {
    use rustix::io::Errno;
    Some(match errno {
        Errno::ACCESS | Errno::PERM => return None,
        Errno::NOSPC | Errno::DQUOT => DiskFault::NoSpace,
        Errno::ROFS => DiskFault::ReadOnly,
        Errno::IO => DiskFault::Io,
        _ => DiskFault::Other,
    })
}

/// The errno of the first system error in `chain`.
fn first_errno<'a>(
    mut chain: impl Iterator<Item = &'a (dyn std::error::Error + 'static)>,
) -> Option<rustix::io::Errno> {
    chain.find_map(|e| {
        e.downcast_ref::<std::io::Error>()
            .and_then(errno_of)
            .or_else(|| e.downcast_ref::<rustix::io::Errno>().copied())
    })
}

/// The errno `e` carries; a limit of cfsd's own that stands for a full
/// disk (`StorageFull` without an errno) counts as ENOSPC.
fn errno_of(e: &std::io::Error) -> Option<rustix::io::Errno> {
    match e.raw_os_error() {
        Some(errno) => Some(rustix::io::Errno::from_raw_os_error(errno)),
        None if e.kind() == std::io::ErrorKind::StorageFull => Some(rustix::io::Errno::NOSPC),
        None => None,
    }
}

/// The text of an underlying error with all its causes, and what kind of
/// failure it was: `None` when the kernel refused access.
#[derive(Debug)]
pub(crate) struct StorageCause {
    text: String,
    fault: Option<DiskFault>,
}

impl StorageCause {
    fn new(text: String, errno: Option<rustix::io::Errno>) -> Self {
        StorageCause {
            text,
            fault: errno.map_or(Some(DiskFault::Other), classify),
        }
    }
}

impl From<std::io::Error> for StorageCause {
    fn from(e: std::io::Error) -> Self {
        let errno = errno_of(&e).or_else(|| {
            // An io::Error that wraps another error (composefs makes such)
            // may carry the errno further down.
            let inner = e
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static));
            first_errno(std::iter::successors(inner, |e| e.source()))
        });
        StorageCause::new(e.to_string(), errno)
    }
}

impl From<anyhow::Error> for StorageCause {
    fn from(e: anyhow::Error) -> Self {
        StorageCause::new(format!("{e:#}"), first_errno(e.chain()))
    }
}

#[cfg(test)]
mod tests {
    use rustix::io::Errno;

    use super::*;

    fn fault(cause: impl Into<StorageCause>) -> Option<DiskFault> {
        cause.into().fault
    }

    #[test]
    fn the_kind_of_a_disk_failure_survives_wrapping() {
        // The numbers of Linux's ENOSPC and EROFS, written out so that the
        // test does not lean on the mapping it checks.
        assert_eq!(
            fault(std::io::Error::from_raw_os_error(28)),
            Some(DiskFault::NoSpace)
        );
        let ro = anyhow::Error::from(std::io::Error::from_raw_os_error(30))
            .context("writing an object")
            .context("storing a layer");
        assert_eq!(fault(ro), Some(DiskFault::ReadOnly));
        let eio = anyhow::Error::from(Errno::IO).context("reading");
        assert_eq!(fault(eio), Some(DiskFault::Io));
        let quota = std::io::Error::other(Errno::DQUOT);
        assert_eq!(fault(quota), Some(DiskFault::NoSpace));
        assert_eq!(fault(anyhow::Error::from(Errno::ACCESS)), None);
        assert_eq!(
            fault(std::io::Error::other("no errno at all")),
            Some(DiskFault::Other)
        );
    }
}
