//! `io.cfsd.Repository.Hold`: garbage collection kept off for as long as
//! a connection stays open.
//!
//! The hold belongs to the call, and the call to its connection: when the
//! client hangs up or dies, the connection stops forwarding the call's
//! replies, which drops their receiver, which ends the task that keeps the
//! hold. Nothing the client leaves behind, no lock file and no stale
//! process, can keep the repository from being collected.

use cfsd_varlink::{
    repository::{HoldParams, HoldReply},
    service::ServiceError,
};
use serde_json::Value;
use tokio::sync::mpsc;

use super::repository::{open, wire_error};
use crate::{
    access::Peer,
    dispatch::{self, Outcome, Streamed},
    server::Daemon,
};

/// The longest reason a hold may give: it is shown in every description
/// of the repository and every busy error while the hold lasts.
const MAX_REASON: usize = 200;

/// Handle `Hold`, which dispatch lets through only when called with
/// `more`.
pub async fn hold(daemon: &Daemon, peer: &Peer, params: Option<Value>) -> Outcome {
    let params = match dispatch::params::<HoldParams>(params) {
        Ok(params) => params,
        Err(e) => return Outcome::error(&e),
    };
    if let Err(reason) = check_reason(&params.reason) {
        return invalid(&format!("reason: {reason}"));
    }
    let repo = match open(daemon).await {
        Ok(repo) => repo,
        Err(e) => return Outcome::error(&e),
    };
    let holder = format!("{} (uid {}, pid {})", params.reason, peer.uid, peer.pid);
    let hold = match repo.hold_gc(holder.clone()).await {
        Ok(hold) => hold,
        Err(e) => return Outcome::error(&wire_error(e)),
    };
    tracing::info!(uid = peer.uid, "GC held: {holder}");
    let reply = HoldReply {
        holders: repo.gc_holders(),
    };
    let (replies, receiver) = mpsc::channel(1);
    tokio::spawn(async move {
        let _hold = hold;
        let reply = serde_json::to_value(&reply).unwrap_or_default();
        if replies
            .send(Streamed::More(reply, Vec::new()))
            .await
            .is_ok()
        {
            replies.closed().await;
        }
        tracing::info!("GC hold released: {holder}");
    });
    Outcome::Stream(receiver)
}

/// A reason is one line of text a person can read, of at most
/// [`MAX_REASON`] bytes.
fn check_reason(reason: &str) -> Result<(), String> {
    if reason.trim().is_empty() {
        Err("it is empty".to_owned())
    } else if reason.len() > MAX_REASON {
        Err(format!("it is longer than {MAX_REASON} bytes"))
    } else if reason.chars().any(char::is_control) {
        Err("it contains control characters".to_owned())
    } else {
        Ok(())
    }
}

fn invalid(parameter: &str) -> Outcome {
    Outcome::error(&ServiceError::InvalidParameter {
        parameter: parameter.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_one_short_readable_line() {
        check_reason("updater: staging 42").unwrap();
        check_reason(&"x".repeat(MAX_REASON)).unwrap();
        for bad in ["", "   ", "two\nlines", "bell\u{7}"] {
            assert!(check_reason(bad).is_err(), "{bad:?}");
        }
        assert!(check_reason(&"x".repeat(MAX_REASON + 1)).is_err());
    }
}
