//! Work done on several threads but used in order. Each changed file of
//! a layer is diffed on its own, and the diffs are what takes a delta's
//! time; the op stream, though, must name the files in tar order, and it
//! is compressed by one encoder. A large file diffed only when the op
//! stream reaches it would leave that encoder, and the other threads,
//! waiting on it: so the heaviest work in reach is started first.

use std::{
    any::Any,
    cmp::Reverse,
    collections::{BinaryHeap, VecDeque},
    panic::{AssertUnwindSafe, catch_unwind, resume_unwind},
    sync::{Condvar, Mutex, MutexGuard},
};

/// How far the threads may reach past the item the taker waits for.
pub(super) struct Ahead<W> {
    /// The most weight of items in reach and not yet taken. One item is
    /// always in reach, however heavy.
    pub budget: u64,
    /// An item's weight: what working on it and holding its result cost.
    pub weight: W,
}

/// Run `work` on every item of `items` on `jobs` threads, and hand each
/// result to `take`, on the calling thread, in the items' order. The
/// threads reach only as far past the item `take` waits for as `ahead`
/// allows, which bounds what results hold in memory, and within that
/// reach take the heaviest item first (the earliest of equals). The first
/// error of `take` stops the work and is returned; a panic in `work` is
/// raised again here.
pub(super) fn in_order<T: Sync, R: Send, E>(
    items: &[T],
    jobs: usize,
    ahead: Ahead<impl Fn(&T) -> u64 + Sync>,
    work: impl Fn(&T) -> R + Sync,
    mut take: impl FnMut(&T, R) -> Result<(), E>,
) -> Result<(), E> {
    let window = Window {
        state: Mutex::new(State {
            reach: 0,
            waiting: BinaryHeap::new(),
            taken: 0,
            owed: 0,
            done: VecDeque::new(),
            stopped: false,
        }),
        ready: Condvar::new(),
        room: Condvar::new(),
        ahead,
        len: items.len(),
    };
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, items.len().max(1)) {
            scope.spawn(|| window.serve(items, &work));
        }
        let taken = (0..items.len()).try_for_each(|i| match window.next(items) {
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
struct Window<W, R> {
    state: Mutex<State<R>>,
    /// A result was stored.
    ready: Condvar,
    /// A result was taken, or the work stopped.
    room: Condvar,
    ahead: Ahead<W>,
    len: usize,
}

struct State<R> {
    /// The items before this one are or were in reach.
    reach: usize,
    /// The items in reach that no thread has begun, heaviest on top.
    waiting: BinaryHeap<(u64, Reverse<usize>)>,
    /// Results taken so far.
    taken: usize,
    /// The weight of the items in reach and not yet taken.
    owed: u64,
    /// The results from item `taken` on, as they come.
    done: VecDeque<Option<Outcome<R>>>,
    stopped: bool,
}

/// A result, or the panic that took its place.
type Outcome<R> = Result<R, Box<dyn Any + Send>>;

impl<W, R> Window<W, R> {
    fn lock(&self) -> MutexGuard<'_, State<R>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A thread's loop: take the heaviest item in reach, work on it
    /// unlocked, store the result.
    fn serve<T>(&self, items: &[T], work: &(impl Fn(&T) -> R + Sync))
    where
        W: Fn(&T) -> u64,
    {
        let mut state = self.lock();
        loop {
            if state.stopped {
                return;
            }
            self.extend(&mut state, items);
            let Some((_, Reverse(i))) = state.waiting.pop() else {
                if state.reach >= self.len {
                    return;
                }
                state = self.room.wait(state).unwrap_or_else(|e| e.into_inner());
                continue;
            };
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

    /// Bring items into reach while the budget allows.
    fn extend<T>(&self, state: &mut State<R>, items: &[T])
    where
        W: Fn(&T) -> u64,
    {
        while state.reach < self.len {
            let weight = (self.ahead.weight)(&items[state.reach]);
            let alone = state.reach == state.taken;
            if !alone && state.owed.saturating_add(weight) > self.ahead.budget {
                return;
            }
            state.waiting.push((weight, Reverse(state.reach)));
            state.owed += weight;
            state.reach += 1;
        }
    }

    /// The next result in order, once it is there.
    fn next<T>(&self, items: &[T]) -> Outcome<R>
    where
        W: Fn(&T) -> u64,
    {
        let mut state = self.lock();
        loop {
            if let Some(Some(_)) = state.done.front() {
                let outcome = state.done.pop_front().flatten();
                state.owed -= (self.ahead.weight)(&items[state.taken]);
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
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    /// A window of `n` items of any kind.
    fn count<T>(n: u64) -> Ahead<impl Fn(&T) -> u64 + Sync> {
        Ahead {
            budget: n,
            weight: |_: &T| 1,
        }
    }

    #[test]
    fn results_come_in_order_whatever_order_they_finish_in() {
        let items: Vec<u64> = (0..200).collect();
        let mut seen = Vec::new();
        let result: Result<(), ()> = in_order(
            &items,
            4,
            count(8),
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
            count(5),
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
            count(4),
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
            count(4),
            |&i| assert!(i != 7, "item {i}"),
            |_, ()| Ok::<(), ()>(()),
        );
    }

    #[test]
    fn no_items_need_no_threads_to_finish() {
        let result = in_order(&[] as &[u8], 4, count(4), |_| (), |_, ()| Err(()));
        assert_eq!(result, Ok(()));
    }

    #[test]
    fn the_heaviest_item_in_reach_is_begun_first() {
        let weights: [u64; 7] = [3, 9, 1, 9, 4, 20, 2];
        let items: Vec<usize> = (0..weights.len()).collect();
        let begun = Mutex::new(Vec::new());
        let result: Result<(), ()> = in_order(
            &items,
            1,
            Ahead {
                budget: u64::MAX,
                weight: |&i: &usize| weights[i],
            },
            |&i| begun.lock().unwrap().push(i),
            |_, ()| Ok(()),
        );
        assert_eq!(result, Ok(()));
        // By weight, the earlier of the two 9s first.
        assert_eq!(begun.into_inner().unwrap(), [5, 1, 3, 4, 0, 6, 2]);
    }

    #[test]
    fn the_weight_in_reach_stays_in_the_budget_but_one_item_may_exceed_it() {
        // Sizes in tar order: a file larger than the budget among small ones.
        let sizes: Vec<u64> = (0..300)
            .map(|i| if i % 50 == 7 { 900 } else { 10 + i % 13 })
            .collect();
        let owed = AtomicU64::new(0);
        let worst = AtomicU64::new(0);
        let result: Result<(), ()> = in_order(
            &sizes,
            3,
            Ahead {
                budget: 100,
                weight: |&s: &u64| s,
            },
            |&s| {
                let now = owed.fetch_add(s, Ordering::SeqCst) + s;
                worst.fetch_max(now, Ordering::SeqCst);
                if s == 900 {
                    // Unbounded, the others would run far past it now.
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                s
            },
            |_, s| {
                owed.fetch_sub(s, Ordering::SeqCst);
                Ok(())
            },
        );
        assert_eq!(result, Ok(()));
        // The heavy item runs alone. This count lags the window's by the
        // item the taker holds, which may be the heavy one just taken: at
        // most 900 past the budget, where unbounded threads would pile the
        // 42 items up to the next heavy one behind it (some 1,570).
        let worst = worst.load(Ordering::SeqCst);
        assert!((900..=1000).contains(&worst), "{worst}");
    }
}
