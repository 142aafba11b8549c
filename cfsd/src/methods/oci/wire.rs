//! The repository's reports and errors as `io.cfsd.Oci` puts them on
//! the wire.

use cfsd_repo::{
    self as repo, DiskFault,
    oci::{ImageDetails, ImageSummary, PullReport},
};
use cfsd_varlink::oci::{
    AppliedDelta, DeltaDiscovery, Image, InspectReply, OciError, PartialPull, PullResult,
};

pub(super) fn wire_report(r: PullReport, shared_import: bool) -> PullResult {
    PullResult {
        manifest_digest: r.manifest_digest,
        config_digest: r.config_digest,
        image_id: r.image_id,
        tag: r.tag,
        layers: r.layers,
        layers_present: r.layers_present,
        objects_new: r.objects_new,
        objects_present: r.objects_present,
        bytes_new: r.bytes_new,
        already_present: r.already_present,
        shared_import,
        delta: r.delta.map(|d| AppliedDelta {
            manifest_digest: d.manifest_digest,
            source_config: d.source_config,
            source_manifest: d.source_manifest,
        }),
        delta_discovery: r.discovery.map(|d| DeltaDiscovery {
            used: d.used,
            manifest: d.manifest,
            reason: d.reason,
        }),
        stage: r.stage,
        partial_pull: r.partial.map(|p| PartialPull {
            layers: p.layers,
            files_reused: p.files_reused,
            chunks_reused: p.chunks_reused,
            bytes_fetched: p.bytes_fetched,
            bytes_received: p.bytes_received,
            requests: p.requests,
            single_ranges: p.single_ranges,
            reason: p.reason,
        }),
    }
}

pub(super) fn wire_image(i: ImageSummary) -> Image {
    Image {
        name: i.name,
        manifest_digest: i.manifest_digest,
        config_digest: i.config_digest,
        os: i.os,
        architecture: i.architecture,
        created: i.created,
        layers: i.layers,
        image_id: i.image_id,
    }
}

pub(super) fn wire_details(d: ImageDetails) -> InspectReply {
    InspectReply {
        manifest_digest: d.manifest_digest,
        config_digest: d.config_digest,
        image_id: d.image_id,
        tags: d.tags,
        manifest: d.manifest,
        config: d.config,
        bootable_image_id: d.bootable_image_id,
    }
}

/// Every repository error as the interface's typed error. The match is
/// exhaustive so that a new repository error needs a decision here.
pub(in crate::methods) fn wire_error(e: repo::Error) -> OciError {
    use repo::Error as E;
    match e {
        E::NotInitialized { path } => OciError::NotInitialized {
            path: path.display().to_string(),
        },
        // Opening a repository that exists but cannot be used: nothing an
        // OCI caller can fix by changing its call, so reported as storage.
        e @ (E::AlgorithmMismatch { .. }
        | E::UnsupportedAlgorithm { .. }
        | E::VerityRequired { .. }
        | E::Unreadable { .. }) => OciError::StorageFailed {
            operation: "opening the repository".to_owned(),
            reason: e.to_string(),
        },
        E::ImageNotFound { image } => OciError::ImageNotFound { image },
        E::LayerNotFound { diff_id } => OciError::LayerNotFound { diff_id },
        E::OutputFailed { operation, reason } => OciError::OutputFailed {
            operation: operation.to_owned(),
            reason,
        },
        E::InvalidPlatform { platform } => OciError::InvalidPlatform { platform },
        E::InvalidTag { tag, reason } => OciError::InvalidTag { tag, reason },
        E::CompressedArchive { compression } => OciError::CompressedArchive { compression },
        E::InvalidSource { reason } => OciError::InvalidSource { reason },
        E::BlobMissing { digest } => OciError::BlobMissing { digest },
        E::InvalidJson { what, reason } => OciError::InvalidJson { what, reason },
        E::ManifestNotFound {
            reference,
            available,
        } => OciError::ManifestNotFound {
            reference,
            available,
        },
        E::PlatformNotFound {
            platform,
            available,
        } => OciError::PlatformNotFound {
            platform,
            available,
        },
        E::UnsupportedMediaType { what, media_type } => {
            OciError::UnsupportedMediaType { what, media_type }
        }
        E::DigestMismatch {
            what,
            expected,
            actual,
        } => OciError::DigestMismatch {
            what,
            expected,
            actual,
        },
        E::InvalidLayer { layer, reason } => OciError::InvalidLayer { layer, reason },
        E::InvalidImage { reason } => OciError::InvalidImage { reason },
        E::MountFailed { image, reason } => OciError::MountFailed { image, reason },
        E::Storage {
            operation,
            reason,
            fault,
        } => {
            let operation = operation.to_owned();
            match fault {
                DiskFault::NoSpace => OciError::NoSpace { operation, reason },
                DiskFault::ReadOnly => OciError::ReadOnlyFilesystem { operation, reason },
                DiskFault::Io => OciError::IoError { operation, reason },
                DiskFault::Other => OciError::StorageFailed { operation, reason },
            }
        }
        E::AccessDenied { operation, reason } => OciError::StorageFailed {
            operation: operation.to_owned(),
            reason,
        },
        E::DeltaSourceMissing { config, image } => OciError::DeltaSourceMissing { config, image },
        E::InvalidDelta { reason } => OciError::InvalidDelta { reason },
        E::TarDiff { layer, reason } => OciError::TarDiffFailed { layer, reason },
        E::LayerTooLarge { layer, what, limit } => OciError::LayerTooLarge { layer, what, limit },
        E::AmbiguousImage { image, matches } => OciError::AmbiguousImage { image, matches },
        E::TagNotFound { tag } => OciError::TagNotFound { tag },
        E::InvalidIdMap { map, reason } => OciError::InvalidIdMap { map, reason },
        E::UnmappedId {
            image,
            kind,
            id,
            map,
        } => OciError::UnmappedId {
            image,
            kind,
            id,
            map,
        },
        // Only a lazy open (the repository was created after the daemon
        // started) or a GC meets these; io.cfsd.Repository has them typed.
        e @ (E::RepositoryInUse { .. } | E::RepositoryBusy { .. }) => OciError::StorageFailed {
            operation: "opening the repository".to_owned(),
            reason: e.to_string(),
        },
        E::InvalidReference { reference, reason } => {
            OciError::InvalidReference { reference, reason }
        }
        E::InvalidRegistryConfig { what, reason } => {
            OciError::InvalidRegistryConfig { what, reason }
        }
        E::RegistryAuth { registry, reason } => OciError::RegistryAuthFailed { registry, reason },
        E::RegistryTls { registry, reason } => OciError::RegistryTlsFailed { registry, reason },
        E::RegistryUnreachable { registry, reason } => {
            OciError::RegistryUnreachable { registry, reason }
        }
        E::RegistryStatus {
            registry,
            status,
            what,
            reason,
        } => OciError::RegistryError {
            registry,
            status,
            what,
            reason,
        },
        E::PolicyRejected { scope } => OciError::PolicyRejected { scope },
        E::SignatureMissing {
            scope,
            requirement,
            image,
        } => OciError::SignatureMissing {
            scope,
            requirement,
            image,
        },
        E::SignatureUntrusted {
            scope,
            requirement,
            reason,
        } => OciError::SignatureUntrusted {
            scope,
            requirement,
            reason,
        },
        E::SignatureDigestMismatch {
            scope,
            signed,
            manifest,
        } => OciError::SignatureDigestMismatch {
            scope,
            signed,
            manifest,
        },
        E::SignatureIdentityMismatch {
            scope,
            signed,
            expected,
        } => OciError::SignatureIdentityMismatch {
            scope,
            signed,
            expected,
        },
        E::SignatureInvalid { scope, reason } => OciError::SignatureInvalid { scope, reason },
        E::PinnedDigestMismatch { pinned, manifest } => {
            OciError::PinnedDigestMismatch { pinned, manifest }
        }
        E::InvalidPolicy { path, reason } => OciError::InvalidPolicy { path, reason },
        E::NotBootable { image, reason } => OciError::NotBootable { image, reason },
        E::StageNotFound { stage } => OciError::StageNotFound { stage },
        E::StageIncomplete { stage } => OciError::StageIncomplete { stage },
        E::StageObjectsMissing {
            stage,
            missing,
            first,
        } => OciError::StageObjectsMissing {
            stage,
            missing,
            first,
        },
        E::InvalidStageId { stage, reason } => OciError::InvalidStageId { stage, reason },
        // Only io.cfsd.Repository's plain-image methods meet these, and
        // it has them typed.
        e @ (E::InvalidTree { .. } | E::InvalidImageName { .. }) => OciError::InvalidSource {
            reason: e.to_string(),
        },
        E::SourceRepository { reason } => OciError::InvalidSourceRepository { reason },
        E::InvalidChunkedToc { layer, fault } => OciError::InvalidChunkedToc {
            layer,
            kind: fault.kind().to_owned(),
            reason: fault.to_string(),
        },
        E::NotFuseDevice { reason } => OciError::NotFuseDevice { reason },
        E::FuseNotMounted { reason } => OciError::FuseNotMounted { reason },
    }
}
