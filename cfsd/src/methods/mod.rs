//! The methods of each interface cfsd serves.

pub mod oci;
pub mod repository;
pub mod service;

/// Run disk work on a blocking thread, so that other clients' calls are
/// answered meanwhile. A task that panicked is a storage failure.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> cfsd_repo::Result<T> + Send + 'static,
) -> cfsd_repo::Result<T> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
        Err(cfsd_repo::Error::Storage {
            operation: "repository task",
            reason: e.to_string(),
        })
    })
}
