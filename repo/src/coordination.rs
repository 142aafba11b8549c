//! How work inside one process shares a repository with garbage
//! collection, and how identical pulls share one import.
//!
//! Every operation that adds or names content, or hands out a mount, is a
//! *holder* while it runs: an import, a tag change, a mount not yet
//! attached, a dry-run collection. A collection runs only when no holder
//! does, and holders that arrive while it runs wait for it to end.
//!
//! A collection that is *waiting* holds up nobody: holders keep starting
//! while it waits, so a slow holder (a pull from a slow disk, a mount its
//! client never attaches) delays only the collection, and only for
//! [`DEFAULT_GC_WAIT`] at most; then it fails with
//! [`Error::RepositoryBusy`], naming the holders. The alternative, a
//! writer-preferring lock, lets one stuck holder stop every other writer
//! behind the collection that waits for it: that is how one blocked
//! delta once held up root's Tag. Starving a collection costs only a
//! retry; a collection cannot corrupt anything by failing.
//!
//! Work that only reads (listing, inspecting, creating deltas, fsck) is
//! no holder at all: a collection may remove an untagged image it reads,
//! and the read then fails; it never publishes anything.
//! See "Concurrency and GC" in `docs/reliability.md`.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Condvar, Mutex, MutexGuard, Weak,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use crate::Error;

/// How long a collection waits for holders by default.
pub const DEFAULT_GC_WAIT: Duration = Duration::from_secs(30);

/// The wait of repositories opened from now on in this process, in
/// milliseconds; see [`set_default_gc_wait`].
static GC_WAIT_MS: AtomicU64 = AtomicU64::new(DEFAULT_GC_WAIT.as_millis() as u64);

/// Set how long collections in repositories opened from now on wait for
/// holders (a daemon's `--gc-wait`).
pub fn set_default_gc_wait(wait: Duration) {
    GC_WAIT_MS.store(
        wait.as_millis().try_into().unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

/// The holders and collections of one repository in this process.
#[derive(Debug)]
pub(crate) struct Coordinator {
    state: Mutex<State>,
    changed: Condvar,
    gc_wait: Mutex<Duration>,
}

#[derive(Debug, Default)]
struct State {
    /// A collection is running (not merely waiting).
    collecting: bool,
    /// Collections waiting for their turn or running, so that two never
    /// run at once.
    collections: usize,
    holders: BTreeMap<u64, String>,
    next: u64,
}

impl Default for Coordinator {
    fn default() -> Self {
        Coordinator {
            state: Mutex::default(),
            changed: Condvar::new(),
            gc_wait: Mutex::new(Duration::from_millis(GC_WAIT_MS.load(Ordering::Relaxed))),
        }
    }
}

/// Keeps garbage collection of a repository off until dropped, and is
/// named by its reason meanwhile: in the repository's description, and in
/// the [`Error::RepositoryBusy`] of a collection that gave up waiting.
#[derive(Debug)]
pub struct Hold {
    coordinator: Arc<Coordinator>,
    id: u64,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut state = self.coordinator.lock();
        state.holders.remove(&self.id);
        drop(state);
        self.coordinator.changed.notify_all();
    }
}

impl Coordinator {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Set how long a collection waits for holders before it gives up.
    pub(crate) fn set_gc_wait(&self, wait: Duration) {
        *self.gc_wait.lock().unwrap_or_else(|e| e.into_inner()) = wait;
    }

    /// How long a collection waits for holders.
    pub(crate) fn gc_wait(&self) -> Duration {
        *self.gc_wait.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Become a holder described by `what`, waiting first for a running
    /// collection to end (never for a waiting one). Blocks.
    pub(crate) fn hold(self: &Arc<Self>, what: impl Into<String>) -> Hold {
        let mut state = self.lock();
        while state.collecting {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        let id = state.next;
        state.next += 1;
        state.holders.insert(id, what.into());
        Hold {
            coordinator: self.clone(),
            id,
        }
    }

    /// [`Coordinator::hold`] from async code: the wait runs on a blocking
    /// thread.
    pub(crate) async fn hold_async(self: &Arc<Self>, what: String) -> Result<Hold, Error> {
        let coordinator = self.clone();
        tokio::task::spawn_blocking(move || coordinator.hold(what))
            .await
            .map_err(|e| Error::storage("waiting for a collection", std::io::Error::other(e)))
    }

    /// Run `collect` once no holder and no other collection runs, keeping
    /// holders off meanwhile. Waits at most [`Coordinator::gc_wait`] for
    /// that moment, then fails with [`Error::RepositoryBusy`].
    pub(crate) fn collect<T>(
        &self,
        operation: &'static str,
        collect: impl FnOnce() -> Result<T, Error>,
    ) -> Result<T, Error> {
        let deadline = Instant::now() + self.gc_wait();
        let mut state = self.lock();
        state.collections += 1;
        // Another collection ahead of this one counts as a holder.
        while state.collecting || !state.holders.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                let holders = if state.collecting {
                    vec!["another garbage collection".to_owned()]
                } else {
                    state.holders.values().cloned().collect()
                };
                state.collections -= 1;
                return Err(Error::RepositoryBusy {
                    operation: operation.to_owned(),
                    holders,
                });
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        state.collecting = true;
        drop(state);
        let _running = Running(self);
        collect()
    }

    /// The holders now, by the reasons they gave.
    pub(crate) fn holders(&self) -> Vec<String> {
        self.lock().holders.values().cloned().collect()
    }
}

/// Ends a running collection when dropped, also by a panic.
struct Running<'a>(&'a Coordinator);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.collecting = false;
        state.collections -= 1;
        drop(state);
        self.0.changed.notify_all();
    }
}

tokio::task_local! {
    /// Told when the pull of this task waits for an identical one.
    static IMPORT_WAIT: Arc<dyn Fn() + Send + Sync>;
}

/// Run `pull` (a [`Repository::pull`](crate::Repository::pull) or
/// `pull_prepared`), calling `notice` if it waits for another pull of the
/// same manifest to finish its import; it then finds the image present
/// and only tags it. A caller uses it to tell its user that the pull
/// shared an import already in progress, which the report's
/// `already_present` alone cannot tell from a pull of an image imported
/// long before.
pub async fn noticing_import_wait<F: Future>(
    notice: impl Fn() + Send + Sync + 'static,
    pull: F,
) -> F::Output {
    IMPORT_WAIT.scope(Arc::new(notice), pull).await
}

/// The pulls in flight, by the manifest digest each imports: identical
/// pulls take turns, so that the later ones find the image complete and
/// only tag it. Waiting for a turn is no [`Hold`], so it holds off no
/// collection.
#[derive(Debug, Default)]
pub(crate) struct Pulls(Mutex<HashMap<String, Weak<Turn>>>);

/// The turns of one manifest.
#[derive(Debug, Default)]
struct Turn {
    lock: Arc<AsyncMutex<()>>,
    /// Pulls waiting for the one that has the turn.
    waiting: AtomicUsize,
}

/// A pull's turn at its manifest; the next pull of it waits until this is
/// dropped.
#[derive(Debug)]
pub(crate) struct PullTurn {
    _guard: OwnedMutexGuard<()>,
    _turn: Arc<Turn>,
}

impl Pulls {
    /// Wait for the pulls of `manifest` before this one to end.
    pub(crate) async fn turn(&self, manifest: &str) -> PullTurn {
        let turn = {
            let mut turns = self.0.lock().unwrap_or_else(|e| e.into_inner());
            turns.retain(|_, turn| turn.strong_count() > 0);
            match turns.get(manifest).and_then(Weak::upgrade) {
                Some(turn) => turn,
                None => {
                    let turn = Arc::new(Turn::default());
                    turns.insert(manifest.to_owned(), Arc::downgrade(&turn));
                    turn
                }
            }
        };
        turn.waiting.fetch_add(1, Ordering::SeqCst);
        let guard = match turn.lock.clone().try_lock_owned() {
            Ok(guard) => guard,
            Err(_) => {
                // Another pull of this manifest is importing it now.
                let _ = IMPORT_WAIT.try_with(|notice| notice());
                turn.lock.clone().lock_owned().await
            }
        };
        turn.waiting.fetch_sub(1, Ordering::SeqCst);
        PullTurn {
            _guard: guard,
            _turn: turn,
        }
    }

    /// How many pulls of `manifest` wait for another one's import.
    #[cfg(test)]
    pub(crate) fn waiting(&self, manifest: &str) -> usize {
        let turns = self.0.lock().unwrap_or_else(|e| e.into_inner());
        turns
            .get(manifest)
            .and_then(Weak::upgrade)
            .map_or(0, |turn| turn.waiting.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pull_waiting_for_an_identical_one_is_told_and_a_lone_one_is_not() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let pulls = Pulls::default();
            let told = Arc::new(AtomicUsize::new(0));
            let telling = |told: &Arc<AtomicUsize>| {
                let told = told.clone();
                move || {
                    told.fetch_add(1, Ordering::SeqCst);
                }
            };
            let first = noticing_import_wait(telling(&told), pulls.turn("m")).await;
            assert_eq!(told.load(Ordering::SeqCst), 0, "a lone pull waited");
            // Another manifest does not wait for this one.
            let other = noticing_import_wait(telling(&told), pulls.turn("n")).await;
            assert_eq!(told.load(Ordering::SeqCst), 0);
            let second = noticing_import_wait(telling(&told), pulls.turn("m"));
            tokio::pin!(second);
            tokio::select! {
                biased;
                _ = &mut second => panic!("the second pull did not wait for the first"),
                () = tokio::task::yield_now() => {}
            }
            assert_eq!(told.load(Ordering::SeqCst), 1);
            assert_eq!(pulls.waiting("m"), 1);
            drop(first);
            let _second = second.await;
            assert_eq!(told.load(Ordering::SeqCst), 1, "told once");
            drop(other);
        });
    }

    #[test]
    fn a_waiting_collection_holds_up_no_holder_and_gives_up_naming_them() {
        let coordinator = Arc::new(Coordinator::default());
        coordinator.set_gc_wait(Duration::from_millis(200));
        let slow = coordinator.hold("a slow pull");
        std::thread::scope(|s| {
            let collecting = s.spawn(|| coordinator.collect("collecting garbage", || Ok(())));
            // While the collection waits, new holders come and go at once.
            for _ in 0..50 {
                drop(coordinator.hold("tagging"));
            }
            let err = collecting.join().unwrap().unwrap_err();
            assert!(
                matches!(&err, Error::RepositoryBusy { holders, .. } if holders == &["a slow pull"]),
                "{err}"
            );
        });
        drop(slow);
        assert_eq!(
            coordinator.collect("collecting garbage", || Ok(7)).unwrap(),
            7
        );
        assert!(coordinator.holders().is_empty());
    }

    #[test]
    fn holders_wait_for_a_running_collection() {
        let coordinator = &Arc::new(Coordinator::default());
        let (started, wait_started) = std::sync::mpsc::channel();
        let (finish, finished) = std::sync::mpsc::channel::<()>();
        let held = &std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let started = started.clone();
            s.spawn(move || {
                coordinator.collect("collecting garbage", || {
                    started.send(()).unwrap();
                    finished.recv().unwrap();
                    Ok(())
                })
            });
            wait_started.recv().unwrap();
            let holder = s.spawn(move || {
                let _hold = coordinator.hold("tagging");
                held.store(true, Ordering::SeqCst);
            });
            // By construction the holder cannot get in while the
            // collection runs; it does once it ends.
            assert!(coordinator.holders().is_empty());
            assert!(!held.load(Ordering::SeqCst));
            finish.send(()).unwrap();
            holder.join().unwrap();
            assert!(held.load(Ordering::SeqCst));
        });
        assert!(!coordinator.lock().collecting);
    }
}
