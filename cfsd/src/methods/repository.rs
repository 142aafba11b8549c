//! `io.cfsd.Repository`: describe, create, check and collect.

use std::sync::Arc;

use cfsd_repo::{self as repo, HashAlgorithm, Repository};
use cfsd_varlink::{
    idl::REPOSITORY_INTERFACE,
    repository::{
        FsckParams, FsckReply, GcParams, GcReply, InfoReply, InitParams, InitReply, Problem,
        RepositoryError, RepositoryInfo, Usage, Verity,
    },
    service::ServiceError,
};
use serde::Serialize;
use serde_json::Value;

use crate::{
    access::Peer,
    dispatch::{self, NoParams, Outcome},
    server::Daemon,
};

/// Handle `method` of `io.cfsd.Repository`.
pub async fn handle(daemon: &Daemon, peer: &Peer, method: &str, params: Option<Value>) -> Outcome {
    match method {
        "Info" => run(params, |_: NoParams| info(daemon)).await,
        "Init" => run(params, |p: InitParams| init(daemon, p)).await,
        "Fsck" => run(params, |p: FsckParams| fsck(daemon, p)).await,
        "Gc" => {
            run(params, |p: GcParams| async move {
                gc(daemon, peer, p.dry_run.unwrap_or(false)).await
            })
            .await
        }
        "IndexContent" => super::content_index::index_content(daemon).await,
        _ => dispatch::method_not_found(REPOSITORY_INTERFACE, method),
    }
}

/// Parse the parameters, then run the method; invalid parameters are an
/// `org.varlink.service` error, anything after that the interface's own.
async fn run<P, R, F, Fut>(params: Option<Value>, method: F) -> Outcome
where
    P: serde::de::DeserializeOwned,
    R: Serialize,
    F: FnOnce(P) -> Fut,
    Fut: Future<Output = Result<R, RepositoryError>>,
{
    match dispatch::params::<P>(params) {
        Ok(p) => method(p).await.into(),
        Err(e @ ServiceError::InvalidParameter { .. }) => Outcome::error(&e),
        Err(e) => Outcome::error(&e),
    }
}

/// What the daemon itself may not do, its repository's files being
/// another user's (a private cfsd of a user who does not own them), is
/// refused to the caller as PermissionDenied, like what the caller may not
/// ask for.
fn denied(e: repo::Error, peer: &Peer, method: &str) -> RepositoryError {
    match e {
        repo::Error::AccessDenied { operation, reason } => {
            tracing::info!(uid = peer.uid, "{operation} failed: {reason}");
            RepositoryError::PermissionDenied {
                method: format!("{REPOSITORY_INTERFACE}.{method}"),
                uid: peer.uid,
            }
        }
        e => wire_error(e),
    }
}

async fn info(daemon: &Daemon) -> Result<InfoReply, RepositoryError> {
    let repo = open(daemon).await?;
    let info = blocking(move || repo.info()).await?;
    Ok(InfoReply {
        info: wire_info(info),
    })
}

async fn init(daemon: &Daemon, params: InitParams) -> Result<InitReply, RepositoryError> {
    let algorithm = match params.algorithm.as_deref() {
        Some(name) => name.parse::<HashAlgorithm>().map_err(wire_error)?,
        None => HashAlgorithm::default(),
    };
    // The directory is shared by every connection: Init runs on a
    // blocking thread but holds the directory's lock for its duration.
    let dir = daemon.dir.clone();
    let (repo, created) = super::blocking(move || dir.init(algorithm))
        .await
        .map_err(wire_error)?;
    let info = blocking(move || repo.info()).await?;
    Ok(InitReply {
        info: wire_info(info),
        created,
    })
}

async fn fsck(daemon: &Daemon, params: FsckParams) -> Result<FsckReply, RepositoryError> {
    let repo = open(daemon).await?;
    let metadata_only = params.metadata_only.unwrap_or(false);
    let report = repo.fsck(metadata_only).await.map_err(wire_error)?;
    Ok(FsckReply {
        ok: report.is_ok(),
        objects_checked: report.objects_checked,
        objects_corrupted: report.objects_corrupted,
        streams_checked: report.streams_checked,
        streams_corrupted: report.streams_corrupted,
        images_checked: report.images_checked,
        images_corrupted: report.images_corrupted,
        broken_links: report.broken_links,
        missing_objects: report.missing_objects,
        problems: report
            .problems
            .into_iter()
            .map(|p| Problem {
                kind: p.kind,
                detail: p.detail,
            })
            .collect(),
    })
}

async fn gc(daemon: &Daemon, peer: &Peer, dry_run: bool) -> Result<GcReply, RepositoryError> {
    // The repository keeps collections clear of work in flight. A daemon
    // that may not even open the repository (a private cfsd of a user who
    // does not own it) refuses as it would refuse the call.
    let repo = super::repository(daemon)
        .await
        .map_err(|e| denied(e, peer, "Gc"))?;
    let report = super::blocking(move || repo.gc(dry_run))
        .await
        .map_err(|e| denied(e, peer, "Gc"))?;
    Ok(GcReply {
        dry_run: report.dry_run,
        objects_removed: report.objects_removed,
        bytes_freed: report.bytes_freed,
        images_pruned: report.images_pruned,
        streams_pruned: report.streams_pruned,
    })
}

pub(super) async fn open(daemon: &Daemon) -> Result<Arc<Repository>, RepositoryError> {
    super::repository(daemon).await.map_err(wire_error)
}

/// [`super::blocking`], with the interface's error.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> repo::Result<T> + Send + 'static,
) -> Result<T, RepositoryError> {
    super::blocking(work).await.map_err(wire_error)
}

fn wire_info(info: repo::RepositoryInfo) -> RepositoryInfo {
    let usage = |u: repo::Usage| Usage {
        count: u.count,
        bytes: u.bytes,
    };
    RepositoryInfo {
        path: info.path.display().to_string(),
        algorithm: info.algorithm.to_string(),
        verity: match info.verity {
            repo::VerityStatus::Enforced => Verity {
                enforced: true,
                reason: None,
            },
            repo::VerityStatus::Insecure(reason) => Verity {
                enforced: false,
                reason: Some(reason),
            },
        },
        objects: usage(info.objects),
        streams: usage(info.streams),
        images: usage(info.images),
        gc_holders: info.gc_holders,
    }
}

/// Every repository error as the interface's typed error.
pub fn wire_error(e: repo::Error) -> RepositoryError {
    let path = |p: std::path::PathBuf| p.display().to_string();
    match e {
        repo::Error::NotInitialized { path: p } => {
            RepositoryError::NotInitialized { path: path(p) }
        }
        repo::Error::AlgorithmMismatch {
            path: p,
            existing,
            requested,
        } => RepositoryError::AlgorithmMismatch {
            path: path(p),
            existing,
            requested,
        },
        repo::Error::UnsupportedAlgorithm { algorithm, .. } => {
            RepositoryError::UnsupportedAlgorithm { algorithm }
        }
        repo::Error::VerityRequired { path: p, reason } => RepositoryError::VerityRequired {
            path: path(p),
            reason,
        },
        repo::Error::Unreadable { path: p, reason } => RepositoryError::Unreadable {
            path: path(p),
            reason,
        },
        repo::Error::Storage {
            operation,
            reason,
            fault,
        } => {
            let operation = operation.to_owned();
            match fault {
                repo::DiskFault::NoSpace => RepositoryError::NoSpace { operation, reason },
                repo::DiskFault::ReadOnly => {
                    RepositoryError::ReadOnlyFilesystem { operation, reason }
                }
                repo::DiskFault::Io => RepositoryError::IoError { operation, reason },
                repo::DiskFault::Other => RepositoryError::StorageFailed { operation, reason },
            }
        }
        repo::Error::AccessDenied { operation, reason } => RepositoryError::StorageFailed {
            operation: operation.to_owned(),
            reason,
        },
        repo::Error::RepositoryInUse {
            path: p,
            pid,
            owner,
            address,
        } => RepositoryError::RepositoryInUse {
            path: path(p),
            pid,
            owner,
            address,
        },
        repo::Error::RepositoryBusy { operation, holders } => {
            RepositoryError::RepositoryBusy { operation, holders }
        }
        // Only OCI operations fail in other ways, and io.cfsd.Oci has
        // their typed errors; should one reach here, its message is kept.
        other => RepositoryError::StorageFailed {
            operation: "repository operation".to_owned(),
            reason: other.to_string(),
        },
    }
}
