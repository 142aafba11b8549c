//! One log event per answered call, with the fields an operator filters
//! on: who called (`peer_uid`, `peer_pid`), what (`method`), how long it
//! took (`duration_ms`), what it made (`manifest_digest`, `image_id`,
//! `bytes_new`, `delta`) or how it failed (`error`, the varlink error
//! name). Under journald each becomes a journal field.

use std::time::Instant;

use serde_json::Value as Json;

use crate::{access::Peer, dispatch::Outcome};

/// A call being served, to be logged when its last reply goes out.
#[derive(Debug)]
pub struct CallLog {
    method: String,
    uid: u32,
    pid: u32,
    started: Instant,
}

impl CallLog {
    /// Start timing `method` called by `peer`.
    pub fn start(peer: &Peer, method: &str) -> Self {
        CallLog {
            method: method.to_owned(),
            uid: peer.uid,
            pid: peer.pid,
            started: Instant::now(),
        }
    }

    /// Log the call's final outcome: info for a reply, warning for an
    /// error, since a refused or failed call is what an operator looks for.
    pub fn finished(&self, outcome: &Outcome) {
        let duration_ms = self.started.elapsed().as_millis() as u64;
        match outcome {
            Outcome::Reply(params, _) => {
                // A pull's reply carries its result; others are flat.
                let made = params.get("result").unwrap_or(params);
                let text = |key: &str| made.get(key).and_then(Json::as_str);
                tracing::info!(
                    peer_uid = self.uid,
                    peer_pid = self.pid,
                    method = self.method,
                    duration_ms,
                    manifest_digest = text("manifestDigest"),
                    image_id = text("imageId"),
                    bytes_new = made.get("bytesNew").and_then(Json::as_u64),
                    delta = made
                        .get("delta")
                        .and_then(|d| d.get("manifestDigest"))
                        .and_then(Json::as_str),
                    "call answered"
                );
            }
            Outcome::Error(error) => tracing::warn!(
                peer_uid = self.uid,
                peer_pid = self.pid,
                method = self.method,
                duration_ms,
                error = error.get("error").and_then(Json::as_str),
                parameters = %error.get("parameters").unwrap_or(&Json::Null),
                "call failed"
            ),
            Outcome::Stream(_) => {}
        }
    }
}
