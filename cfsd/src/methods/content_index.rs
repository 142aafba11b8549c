//! `io.cfsd.Repository.IndexContent`: the content index built for what
//! was stored before it existed, with progress. The repository does the
//! work; this streams its progress and stops it when the client hangs up.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use cfsd_repo::IndexProgress;
use cfsd_varlink::repository::{IndexContentReply, RepositoryError};
use tokio::sync::mpsc;

use super::repository::{open, wire_error};
use crate::{
    dispatch::{Outcome, Streamed},
    server::Daemon,
};

/// Progress replies that may wait for a slow client; more are dropped,
/// the last one never.
const PROGRESS_QUEUE: usize = 16;

/// Handle `IndexContent`.
pub async fn index_content(daemon: &Daemon) -> Outcome {
    let repo = match open(daemon).await {
        Ok(repo) => repo,
        Err(e) => return Outcome::error(&e),
    };
    let held = crate::work::hold();
    let cancelled = Arc::new(AtomicBool::new(false));
    let (replies, receiver) = mpsc::channel(PROGRESS_QUEUE);
    let progress_replies = replies.clone();
    let stop = cancelled.clone();
    let job = tokio::task::spawn_blocking(move || {
        let _held = held;
        let progress = |p: IndexProgress| {
            // A client that stopped reading slows nothing: progress is
            // dropped, and one that hung up stops the work.
            let more = Streamed::More(serde_json::to_value(wire(p)).unwrap_or_default(), vec![]);
            if let Err(mpsc::error::TrySendError::Closed(_)) = progress_replies.try_send(more) {
                stop.store(true, Ordering::Relaxed);
            }
        };
        repo.index_content(&progress, &stop)
    });
    tokio::spawn(async move {
        let _stop_on_drop = StopOnDrop(cancelled.clone());
        let last = tokio::select! {
            done = job => match done {
                Ok(Ok(p)) => Outcome::reply(&wire(p)),
                Ok(Err(e)) => Outcome::error(&wire_error(e)),
                Err(e) => Outcome::error(&RepositoryError::StorageFailed {
                    operation: "building the content index".to_owned(),
                    reason: e.to_string(),
                }),
            },
            () = replies.closed() => return,
        };
        let _ = replies.send(Streamed::Last(last)).await;
    });
    Outcome::Stream(receiver)
}

fn wire(p: IndexProgress) -> IndexContentReply {
    IndexContentReply {
        done: p.done,
        total: p.total,
        objects_hashed: p.objects_hashed,
    }
}

/// Stops the work when the task that forwards its replies ends early.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
