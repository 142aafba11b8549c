//! Work done on several threads but used in order. Each changed file of
//! a layer is diffed on its own, and the diffs are what takes a delta's
//! time; the op stream, though, must name the files in tar order, and it
//! is compressed by one encoder.

use std::{
    any::Any,
    collections::VecDeque,
    panic::{AssertUnwindSafe, catch_unwind, resume_unwind},
    sync::{Condvar, Mutex, MutexGuard},
};

/// Run `work` on every item of `items` on `jobs` threads, and hand each
/// result to `take`, on the calling thread, in the items' order. The
/// threads run at most `ahead` items past the one `take` waits for, which
/// bounds what results hold in memory. The first error of `take` stops
/// the work and is returned; a panic in `work` is raised again here.
pub(super) fn in_order<T: Sync, R: Send, E>(
    items: &[T],
    jobs: usize,
    ahead: usize,
    work: impl Fn(&T) -> R + Sync,
    mut take: impl FnMut(&T, R) -> Result<(), E>,
) -> Result<(), E> {
    let window = Window {
        state: Mutex::new(State {
            claimed: 0,
            taken: 0,
            done: VecDeque::new(),
            stopped: false,
        }),
        ready: Condvar::new(),
        room: Condvar::new(),
        ahead: ahead.max(1),
        len: items.len(),
    };
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, items.len().max(1)) {
            scope.spawn(|| window.serve(items, &work));
        }
        let taken = (0..items.len()).try_for_each(|i| match window.next() {
            Ok(result) => take(&items[i], result),
            Err(panic) => {
                window.stop();
                resume_unwind(panic)
            }
        });
        // On an error the threads stop before their next item.
        window.stop();
        taken
    })
}

/// What the threads and the taker share.
struct Window<R> {
    state: Mutex<State<R>>,
    /// A result was stored.
    ready: Condvar,
    /// A result was taken, or the work stopped.
    room: Condvar,
    ahead: usize,
    len: usize,
}

struct State<R> {
    /// Items handed to a thread so far.
    claimed: usize,
    /// Results taken so far.
    taken: usize,
    /// The results from item `taken` on, as they come.
    done: VecDeque<Option<Outcome<R>>>,
    stopped: bool,
}

/// A result, or the panic that took its place.
type Outcome<R> = Result<R, Box<dyn Any + Send>>;

impl<R> Window<R> {
    fn lock(&self) -> MutexGuard<'_, State<R>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A thread's loop: claim the next item while there is room, work on
    /// it unlocked, store the result.
    fn serve<T>(&self, items: &[T], work: &(impl Fn(&T) -> R + Sync)) {
        let mut state = self.lock();
        loop {
            if state.stopped || state.claimed >= self.len {
                return;
            }
            if state.claimed >= state.taken + self.ahead {
                state = self.room.wait(state).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            let i = state.claimed;
            state.claimed += 1;
            drop(state);
            let outcome = catch_unwind(AssertUnwindSafe(|| work(&items[i])));
            state = self.lock();
            let slot = i - state.taken;
            if state.done.len() <= slot {
                state.done.resize_with(slot + 1, || None);
            }
            state.done[slot] = Some(outcome);
            self.ready.notify_all();
        }
    }

    /// The next result in order, once it is there.
    fn next(&self) -> Outcome<R> {
        let mut state = self.lock();
        loop {
            if let Some(Some(_)) = state.done.front() {
                let outcome = state.done.pop_front().flatten();
                state.taken += 1;
                self.room.notify_all();
                return outcome.expect("the front result was just seen");
            }
            state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn stop(&self) {
        self.lock().stopped = true;
        self.room.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn results_come_in_order_whatever_order_they_finish_in() {
        let items: Vec<u64> = (0..200).collect();
        let mut seen = Vec::new();
        let result: Result<(), ()> = in_order(
            &items,
            4,
            8,
            |&i| {
                // Later items finish first within each window.
                std::thread::sleep(std::time::Duration::from_micros((200 - i) * 20));
                i * 3
            },
            |&i, r| {
                assert_eq!(r, i * 3);
                seen.push(i);
                Ok(())
            },
        );
        assert_eq!(result, Ok(()));
        assert_eq!(seen, items);
    }

    #[test]
    fn work_never_runs_more_than_ahead_items_past_the_taker() {
        let items: Vec<usize> = (0..100).collect();
        let taken = AtomicUsize::new(0);
        let worst = AtomicUsize::new(0);
        let result: Result<(), ()> = in_order(
            &items,
            3,
            5,
            |&i| {
                let lead = i - taken.load(Ordering::SeqCst);
                worst.fetch_max(lead, Ordering::SeqCst);
            },
            |_, ()| {
                taken.fetch_add(1, Ordering::SeqCst);
                Ok(())
            },
        );
        assert_eq!(result, Ok(()));
        // The window counts an item taken just before `take` sees it.
        assert!(worst.load(Ordering::SeqCst) <= 5, "{worst:?}");
    }

    #[test]
    fn an_error_stops_the_work_and_is_returned() {
        let items: Vec<usize> = (0..10_000).collect();
        let worked = AtomicUsize::new(0);
        let result = in_order(
            &items,
            2,
            4,
            |_| {
                worked.fetch_add(1, Ordering::SeqCst);
            },
            |&i, ()| if i == 10 { Err(i) } else { Ok(()) },
        );
        assert_eq!(result, Err(10));
        // At most the window past the failing item, and a claim per thread.
        assert!(worked.load(Ordering::SeqCst) <= 11 + 4 + 2, "{worked:?}");
    }

    #[test]
    #[should_panic(expected = "item 7")]
    fn a_panic_in_the_work_is_raised_to_the_caller() {
        let items: Vec<usize> = (0..50).collect();
        let _ = in_order(
            &items,
            2,
            4,
            |&i| assert!(i != 7, "item {i}"),
            |_, ()| Ok::<(), ()>(()),
        );
    }

    #[test]
    fn no_items_need_no_threads_to_finish() {
        let result = in_order(&[] as &[u8], 4, 4, |_| (), |_, ()| Err(()));
        assert_eq!(result, Ok(()));
    }
}
