//! The blocking work a connection has started, so that its slot is freed
//! only once that work has actually stopped.
//!
//! A call whose client hangs up is dropped, but blocking work it started
//! (a CreateDelta encoding on a thread) runs on until it notices it is
//! cancelled. Until then it still costs the daemon threads, memory and
//! scratch space, so it still counts against its peer's connections.

use std::sync::Arc;

use tokio::sync::{OwnedRwLockReadGuard, RwLock};

tokio::task_local! {
    static CONNECTION: Work;
}

/// The work of one connection: each piece holds a share until it stops.
#[derive(Debug, Clone, Default)]
pub struct Work(Arc<RwLock<()>>);

/// A share of a connection's [`Work`]: move it into the blocking work.
pub type Share = OwnedRwLockReadGuard<()>;

impl Work {
    /// Run `serving` as this connection's task, so that [`Work::share`]
    /// finds it.
    pub async fn scope<F: Future>(&self, serving: F) -> F::Output {
        CONNECTION.scope(self.clone(), serving).await
    }

    /// A share of the current connection's work, if there is one.
    pub fn share() -> Option<Share> {
        CONNECTION
            .try_with(|work| work.0.clone().try_read_owned().ok())
            .ok()
            .flatten()
    }

    /// Wait until every share has been dropped.
    pub async fn stopped(&self) {
        drop(self.0.write().await);
    }
}
