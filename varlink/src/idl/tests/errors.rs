//! One value of every error variant of each interface, so that the
//! golden test sees them all; a `match` without a wildcard makes a new
//! variant fail to compile until it is added here.

use crate::{oci::OciError, repository::RepositoryError, service::ServiceError};

/// Each error once, with every optional field set. The match makes
/// adding a variant without adding it here a compile error.
pub(super) fn every_repository_error() -> Vec<RepositoryError> {
    let s = || "x".to_owned();
    let all = vec![
        RepositoryError::NotInitialized { path: s() },
        RepositoryError::AlgorithmMismatch {
            path: s(),
            existing: s(),
            requested: s(),
        },
        RepositoryError::UnsupportedAlgorithm { algorithm: s() },
        RepositoryError::VerityRequired {
            path: s(),
            reason: s(),
        },
        RepositoryError::Unreadable {
            path: s(),
            reason: s(),
        },
        RepositoryError::PermissionDenied {
            method: s(),
            uid: 1,
        },
        RepositoryError::MessageTooLarge { limit: 1 },
        RepositoryError::TooManyConnections {
            limit: 1,
            uid: 1,
            per_uid: true,
        },
        RepositoryError::StorageFailed {
            operation: s(),
            reason: s(),
        },
        RepositoryError::RepositoryInUse {
            path: s(),
            pid: 1,
            owner: s(),
            address: Some(s()),
        },
        RepositoryError::RepositoryBusy {
            operation: s(),
            holders: vec![s()],
        },
        RepositoryError::NoSpace {
            operation: s(),
            reason: s(),
        },
        RepositoryError::ReadOnlyFilesystem {
            operation: s(),
            reason: s(),
        },
        RepositoryError::IoError {
            operation: s(),
            reason: s(),
        },
        RepositoryError::MissingFd {
            method: s(),
            expected: s(),
        },
        RepositoryError::ImageNotFound { image: s() },
        RepositoryError::InvalidTree {
            path: s(),
            reason: s(),
        },
        RepositoryError::InvalidImageName {
            name: s(),
            reason: s(),
        },
        RepositoryError::MountFailed {
            image: s(),
            reason: s(),
        },
    ];
    for e in &all {
        match e {
            RepositoryError::NotInitialized { .. }
            | RepositoryError::AlgorithmMismatch { .. }
            | RepositoryError::UnsupportedAlgorithm { .. }
            | RepositoryError::VerityRequired { .. }
            | RepositoryError::Unreadable { .. }
            | RepositoryError::PermissionDenied { .. }
            | RepositoryError::MessageTooLarge { .. }
            | RepositoryError::TooManyConnections { .. }
            | RepositoryError::StorageFailed { .. }
            | RepositoryError::RepositoryInUse { .. }
            | RepositoryError::RepositoryBusy { .. }
            | RepositoryError::NoSpace { .. }
            | RepositoryError::ReadOnlyFilesystem { .. }
            | RepositoryError::IoError { .. }
            | RepositoryError::MissingFd { .. }
            | RepositoryError::ImageNotFound { .. }
            | RepositoryError::InvalidTree { .. }
            | RepositoryError::InvalidImageName { .. }
            | RepositoryError::MountFailed { .. } => {}
        }
    }
    all
}

pub(super) fn every_oci_error() -> Vec<OciError> {
    let s = || "x".to_owned();
    let all = vec![
        OciError::NotInitialized { path: s() },
        OciError::PermissionDenied {
            method: s(),
            uid: 1,
            option: Some(s()),
        },
        OciError::MissingFd {
            method: s(),
            expected: s(),
        },
        OciError::UnknownTransport { transport: s() },
        OciError::ImageNotFound { image: s() },
        OciError::LayerNotFound { diff_id: s() },
        OciError::OutputFailed {
            operation: s(),
            reason: s(),
        },
        OciError::InvalidPlatform { platform: s() },
        OciError::InvalidTag {
            tag: s(),
            reason: s(),
        },
        OciError::CompressedArchive { compression: s() },
        OciError::InvalidSource { reason: s() },
        OciError::BlobMissing { digest: s() },
        OciError::InvalidJson {
            what: s(),
            reason: s(),
        },
        OciError::ManifestNotFound {
            reference: s(),
            available: vec![s()],
        },
        OciError::PlatformNotFound {
            platform: s(),
            available: vec![s()],
        },
        OciError::UnsupportedMediaType {
            what: s(),
            media_type: s(),
        },
        OciError::DigestMismatch {
            what: s(),
            expected: s(),
            actual: s(),
        },
        OciError::InvalidLayer {
            layer: s(),
            reason: s(),
        },
        OciError::InvalidImage { reason: s() },
        OciError::MountFailed {
            image: s(),
            reason: s(),
        },
        OciError::StorageFailed {
            operation: s(),
            reason: s(),
        },
        OciError::DeltaSourceMissing {
            config: s(),
            image: Some(s()),
        },
        OciError::InvalidDelta { reason: s() },
        OciError::TarDiffFailed {
            layer: s(),
            reason: s(),
        },
        OciError::LayerTooLarge {
            layer: s(),
            what: s(),
            limit: 1,
        },
        OciError::AmbiguousImage {
            image: s(),
            matches: vec![s()],
        },
        OciError::TagNotFound { tag: s() },
        OciError::NoSpace {
            operation: s(),
            reason: s(),
        },
        OciError::ReadOnlyFilesystem {
            operation: s(),
            reason: s(),
        },
        OciError::IoError {
            operation: s(),
            reason: s(),
        },
        OciError::InvalidIdMap {
            map: s(),
            reason: s(),
        },
        OciError::UnmappedId {
            image: s(),
            kind: s(),
            id: 0,
            map: s(),
        },
        OciError::InvalidReference {
            reference: s(),
            reason: s(),
        },
        OciError::InvalidRegistryConfig {
            what: s(),
            reason: s(),
        },
        OciError::RegistryAuthFailed {
            registry: s(),
            reason: s(),
        },
        OciError::RegistryTlsFailed {
            registry: s(),
            reason: s(),
        },
        OciError::RegistryUnreachable {
            registry: s(),
            reason: s(),
        },
        OciError::RegistryError {
            registry: s(),
            status: 503,
            what: s(),
            reason: s(),
        },
        OciError::PolicyRejected { scope: s() },
        OciError::SignatureMissing {
            scope: s(),
            requirement: s(),
            image: s(),
        },
        OciError::SignatureUntrusted {
            scope: s(),
            requirement: s(),
            reason: s(),
        },
        OciError::SignatureDigestMismatch {
            scope: s(),
            signed: s(),
            manifest: s(),
        },
        OciError::SignatureIdentityMismatch {
            scope: s(),
            signed: s(),
            expected: s(),
        },
        OciError::SignatureInvalid {
            scope: s(),
            reason: s(),
        },
        OciError::PinnedDigestMismatch {
            pinned: s(),
            manifest: s(),
        },
        OciError::InvalidPolicy {
            path: s(),
            reason: s(),
        },
        OciError::NotBootable {
            image: s(),
            reason: s(),
        },
        OciError::StageNotFound { stage: s() },
        OciError::StageIncomplete { stage: s() },
        OciError::StageObjectsMissing {
            stage: s(),
            missing: 1,
            first: s(),
        },
        OciError::InvalidStageId {
            stage: s(),
            reason: s(),
        },
        OciError::InvalidSourceRepository { reason: s() },
        OciError::InvalidChunkedToc {
            layer: s(),
            kind: s(),
            reason: s(),
        },
        OciError::NotFuseDevice { reason: s() },
        OciError::FuseNotMounted { reason: s() },
        OciError::TooManyFuseMounts { limit: 1 },
    ];
    for e in &all {
        match e {
            OciError::NotInitialized { .. }
            | OciError::PermissionDenied { .. }
            | OciError::MissingFd { .. }
            | OciError::UnknownTransport { .. }
            | OciError::ImageNotFound { .. }
            | OciError::LayerNotFound { .. }
            | OciError::OutputFailed { .. }
            | OciError::InvalidPlatform { .. }
            | OciError::InvalidTag { .. }
            | OciError::CompressedArchive { .. }
            | OciError::InvalidSource { .. }
            | OciError::BlobMissing { .. }
            | OciError::InvalidJson { .. }
            | OciError::ManifestNotFound { .. }
            | OciError::PlatformNotFound { .. }
            | OciError::UnsupportedMediaType { .. }
            | OciError::DigestMismatch { .. }
            | OciError::InvalidLayer { .. }
            | OciError::InvalidImage { .. }
            | OciError::MountFailed { .. }
            | OciError::StorageFailed { .. }
            | OciError::DeltaSourceMissing { .. }
            | OciError::InvalidDelta { .. }
            | OciError::TarDiffFailed { .. }
            | OciError::LayerTooLarge { .. }
            | OciError::AmbiguousImage { .. }
            | OciError::TagNotFound { .. }
            | OciError::NoSpace { .. }
            | OciError::ReadOnlyFilesystem { .. }
            | OciError::IoError { .. }
            | OciError::InvalidReference { .. }
            | OciError::InvalidRegistryConfig { .. }
            | OciError::RegistryAuthFailed { .. }
            | OciError::RegistryTlsFailed { .. }
            | OciError::RegistryUnreachable { .. }
            | OciError::RegistryError { .. }
            | OciError::PolicyRejected { .. }
            | OciError::SignatureMissing { .. }
            | OciError::SignatureUntrusted { .. }
            | OciError::SignatureDigestMismatch { .. }
            | OciError::SignatureIdentityMismatch { .. }
            | OciError::SignatureInvalid { .. }
            | OciError::PinnedDigestMismatch { .. }
            | OciError::InvalidPolicy { .. }
            | OciError::NotBootable { .. }
            | OciError::InvalidIdMap { .. }
            | OciError::UnmappedId { .. }
            | OciError::StageNotFound { .. }
            | OciError::StageIncomplete { .. }
            | OciError::StageObjectsMissing { .. }
            | OciError::InvalidStageId { .. }
            | OciError::InvalidSourceRepository { .. }
            | OciError::InvalidChunkedToc { .. }
            | OciError::NotFuseDevice { .. }
            | OciError::FuseNotMounted { .. }
            | OciError::TooManyFuseMounts { .. } => {}
        }
    }
    all
}

pub(super) fn every_service_error() -> Vec<ServiceError> {
    let s = || "x".to_owned();
    let all = vec![
        ServiceError::InterfaceNotFound { interface: s() },
        ServiceError::MethodNotFound { method: s() },
        ServiceError::MethodNotImplemented { method: s() },
        ServiceError::InvalidParameter { parameter: s() },
        ServiceError::PermissionDenied {},
        ServiceError::ExpectedMore {},
    ];
    for e in &all {
        match e {
            ServiceError::InterfaceNotFound { .. }
            | ServiceError::MethodNotFound { .. }
            | ServiceError::MethodNotImplemented { .. }
            | ServiceError::InvalidParameter { .. }
            | ServiceError::PermissionDenied {}
            | ServiceError::ExpectedMore {} => {}
        }
    }
    all
}
