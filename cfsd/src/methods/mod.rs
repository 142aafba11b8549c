//! The methods of each interface cfsd serves.

pub use fuse::FuseMounts;
pub use hold::hold;

use std::sync::Arc;

use cfsd_repo::Repository;

use crate::server::Daemon;

mod content_index;
mod copy;
mod export;
pub mod fuse;
mod hold;
mod idmap;
pub mod oci;
pub mod plain;
mod push;
mod registry;
pub mod repository;
pub mod service;
mod stage;

/// Run disk work on a blocking thread, so that other clients' calls are
/// answered meanwhile. A task that panicked is a storage failure.
///
/// The thread holds its call's permit and its connection's share
/// ([`crate::work::hold`]) until the work has returned, even when the
/// caller stops waiting for it before then.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> cfsd_repo::Result<T> + Send + 'static,
) -> cfsd_repo::Result<T> {
    let held = crate::work::hold();
    tokio::task::spawn_blocking(move || {
        let _held = held;
        work()
    })
    .await
    .unwrap_or_else(|e| {
        Err(cfsd_repo::Error::Storage {
            operation: "repository task",
            reason: e.to_string(),
            fault: cfsd_repo::DiskFault::Other,
        })
    })
}

/// The daemon's repository. Opening it (on first use, or after Init
/// created it) reads the disk, so it runs on a blocking thread like any
/// other disk work.
async fn repository(daemon: &Daemon) -> cfsd_repo::Result<Arc<Repository>> {
    let dir = daemon.dir.clone();
    blocking(move || dir.repository()).await
}
