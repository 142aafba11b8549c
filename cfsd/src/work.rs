//! How many blocking threads one peer's calls may hold at once.
//!
//! Disk work runs on tokio's blocking threads, of which there are a fixed
//! number ([`BLOCKING_THREADS`]). A thread whose read never returns (a
//! source on a filesystem that does not answer) stays taken after its
//! client has gone, because a running thread cannot be cancelled. So
//! each account other than root and the daemon's own user may run at
//! most a few calls at once, and all of them together so many that
//! their threads fill at most half of the pool ([`untrusted_calls`]):
//! root's calls always find a thread.
//! A call over its account's limit waits, without a thread, for one of
//! that account's own to finish; its client may hang up meanwhile, which
//! drops the wait.
//!
//! The permit is taken when the call starts, before it takes any lock:
//! a call waiting for its turn must not hold up anyone else's (a GC
//! waiting for a lock such a call held would hold up root). The call's
//! blocking work and any task it leaves running share it, and each
//! blocking thread drops its share only when it has really returned, so
//! a stuck thread keeps counting after its caller stopped waiting.

//!
//! A connection's slot, too, is freed only once the blocking work it
//! started has actually stopped ([`Work`]): a call whose client hangs up
//! is dropped, but blocking work it started (a CreateDelta encoding on a
//! thread) runs on until it notices it is cancelled, and until then it
//! still costs the daemon threads, memory and scratch space.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::{OwnedRwLockReadGuard, OwnedSemaphorePermit, RwLock, Semaphore};

/// The size of the runtime's blocking pool (tokio's default, stated so
/// that the share below is a share of something known).
pub const BLOCKING_THREADS: usize = 512;

/// The calls all accounts other than root and the daemon's own user may
/// run together: half the pool, at the most threads one call can use (a
/// Pull imports one layer per core, with two threads each, after one
/// thread that reads its index).
fn untrusted_calls() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (BLOCKING_THREADS / 2 / (2 * cores + 1)).max(1)
}

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
    /// At most `per_account` calls at once for each limited account.
    pub fn new(per_account: usize) -> Arc<Self> {
        let all = untrusted_calls();
        Arc::new(WorkLimits {
            per_account: per_account.clamp(1, all),
            untrusted: Arc::new(Semaphore::new(all)),
            by_account: Mutex::default(),
        })
    }

    /// Wait until `account` may start one more call.
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

/// One call's turn; dropping the last share of it gives it back.
#[derive(Debug)]
pub struct Permit {
    _own: Option<OwnedSemaphorePermit>,
    _shared: Option<OwnedSemaphorePermit>,
}

/// The call being served: the permit of its caller's account, or `None`
/// for root and the daemon's own user, whose work is never held back.
#[derive(Debug, Clone)]
pub struct Caller {
    permit: Option<Arc<Permit>>,
}

impl Caller {
    /// Wait for `account`'s turn (at once for `None`, unlimited).
    pub async fn admit(account: Option<u32>, limits: &WorkLimits) -> Self {
        let permit = match account {
            Some(account) => Some(Arc::new(limits.permit(account).await)),
            None => None,
        };
        Caller { permit }
    }

    /// Run `call` as this caller's.
    pub async fn serve<F: Future>(self, call: F) -> F::Output {
        CALLER.scope(self, call).await
    }
}

/// A share of the current call's permit, for blocking work or a task
/// that may outlive the call (`None`: no limit applies, as for root or
/// work outside any call).
pub fn share() -> Option<Arc<Permit>> {
    CALLER.try_with(|c| c.permit.clone()).ok().flatten()
}

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

/// What blocking work holds while it runs: its call's permit and its
/// connection's share, each given back only when the work has returned.
#[derive(Debug)]
pub struct Held {
    _permit: Option<Arc<Permit>>,
    _share: Option<Share>,
}

/// The permit and share the current call's blocking work must hold.
pub fn hold() -> Held {
    Held {
        _permit: share(),
        _share: Work::share(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn one_account_waits_for_its_own_calls_and_no_one_else_does() {
        let limits = WorkLimits::new(2);
        let first = Caller::admit(Some(7), &limits).await;
        let second = Caller::admit(Some(7), &limits).await;
        // A share outlives its call: the thread that holds it counts.
        let thread = second.clone().serve(async { share() }).await;
        assert!(thread.is_some());
        drop(second);
        // A third call of account 7 waits...
        let limits2 = limits.clone();
        let third = tokio::spawn(async move { Caller::admit(Some(7), &limits2).await });
        tokio::task::yield_now().await;
        assert!(!third.is_finished());
        // ...while another account and root go ahead.
        let other = tokio::time::timeout(Duration::from_secs(5), Caller::admit(Some(8), &limits));
        assert!(other.await.unwrap().permit.is_some());
        let root = Caller::admit(None, &limits).await;
        assert!(root.serve(async { share() }).await.is_none());
        assert!(share().is_none(), "no call, no limit");
        drop(first);
        assert!(!third.is_finished(), "the thread's share still counts");
        drop(thread);
        let third = tokio::time::timeout(Duration::from_secs(5), third).await;
        assert!(third.unwrap().unwrap().permit.is_some());
    }
}
