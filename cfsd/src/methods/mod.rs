//! The methods of each interface cfsd serves.

pub mod oci;
mod registry;
pub mod repository;
pub mod service;

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
