//! How many blocking threads one peer's calls may hold at once.
//!
//! Disk work runs on tokio's blocking threads, of which there are a fixed
//! number ([`BLOCKING_THREADS`]). A thread whose read never returns (a
//! source on a filesystem that does not answer) stays taken after its
//! client has gone, because a running thread cannot be cancelled. So
//! each account other than root and the daemon's own user may hold at
//! most a few threads at once, and all of them together at most
//! [`UNTRUSTED_SHARE`] of the pool: root's calls always find a thread.
//! A call over its account's limit waits, without a thread, for one of
//! that account's own to finish; its client may hang up meanwhile, which
//! drops the wait.
//!
//! A permit is moved into the blocking work and dropped by the thread
//! that ran it, so a thread counts until it has really stopped, not just
//! until its caller stopped waiting for it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The size of the runtime's blocking pool (tokio's default, stated so
/// that the share below is a share of something known).
pub const BLOCKING_THREADS: usize = 512;

/// The threads all accounts other than root and the daemon's own user
/// may hold together.
const UNTRUSTED_SHARE: usize = BLOCKING_THREADS * 3 / 4;

tokio::task_local! {
    /// Whose call the current task serves, set around each call.
    static CALLER: Caller;
}

/// The limits, and the threads each account holds now.
#[derive(Debug)]
pub struct WorkLimits {
    per_account: usize,
    untrusted: Arc<Semaphore>,
    by_account: Mutex<HashMap<u32, Arc<Semaphore>>>,
}

impl WorkLimits {
    /// At most `per_account` threads for each limited account.
    pub fn new(per_account: usize) -> Arc<Self> {
        Arc::new(WorkLimits {
            per_account: per_account.clamp(1, UNTRUSTED_SHARE),
            untrusted: Arc::new(Semaphore::new(UNTRUSTED_SHARE)),
            by_account: Mutex::default(),
        })
    }

    /// Wait until `account` may start one more blocking task.
    async fn permit(&self, account: u32) -> Permit {
        let mine = {
            let mut by_account = self.by_account.lock().unwrap_or_else(|e| e.into_inner());
            // Forget accounts that hold nothing and that no call waits on.
            by_account.retain(|_, s| Arc::strong_count(s) > 1);
            by_account
                .entry(account)
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_account)))
                .clone()
        };
        // Neither semaphore is ever closed.
        let own = mine.acquire_owned().await.ok();
        let shared = self.untrusted.clone().acquire_owned().await.ok();
        Permit {
            _own: own,
            _shared: shared,
        }
    }
}

/// The right to hold one blocking thread; dropping it gives it back.
#[derive(Debug)]
pub struct Permit {
    _own: Option<OwnedSemaphorePermit>,
    _shared: Option<OwnedSemaphorePermit>,
}

/// The caller of the call being served: its account, or `None` for root
/// and the daemon's own user, whose work is never held back.
#[derive(Debug, Clone)]
pub struct Caller {
    account: Option<u32>,
    limits: Arc<WorkLimits>,
}

impl Caller {
    /// A caller counted against `account`, or unlimited for `None`.
    pub fn new(account: Option<u32>, limits: Arc<WorkLimits>) -> Self {
        Caller { account, limits }
    }

    /// Run `call` as this caller's.
    pub async fn serve<F: Future>(self, call: F) -> F::Output {
        CALLER.scope(self, call).await
    }
}

/// Wait until the current caller may hold one more blocking thread, and
/// return the permit that says so (`None`: no limit applies, as for root
/// or work outside any call).
pub async fn permit() -> Option<Permit> {
    let caller = CALLER.try_with(Caller::clone).ok()?;
    let account = caller.account?;
    Some(caller.limits.permit(account).await)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn one_account_waits_for_its_own_threads_and_no_one_else_does() {
        let limits = WorkLimits::new(2);
        let caller = |account| Caller::new(account, limits.clone());
        let held: Vec<_> = futures_of(2, || caller(Some(7)).serve(permit())).await;
        assert!(held.iter().all(Option::is_some));
        // A third for account 7 waits...
        let third = tokio::spawn(caller(Some(7)).serve(permit()));
        tokio::task::yield_now().await;
        assert!(!third.is_finished());
        // ...while another account and root go ahead.
        let other = tokio::time::timeout(Duration::from_secs(5), caller(Some(8)).serve(permit()));
        assert!(other.await.unwrap().is_some());
        assert!(caller(None).serve(permit()).await.is_none());
        assert!(permit().await.is_none(), "no caller, no limit");
        drop(held);
        let third = tokio::time::timeout(Duration::from_secs(5), third).await;
        assert!(third.unwrap().unwrap().is_some());
    }

    async fn futures_of<F, Fut>(n: usize, f: F) -> Vec<Option<Permit>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Option<Permit>>,
    {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(f().await);
        }
        out
    }
}
