//! One client: read calls, check them, answer them in order.

use std::sync::Arc;

use tokio::net::UnixStream;
use zlink::{Connection, Reply, tokio::unix::Stream};

use crate::{
    access::Peer,
    dispatch::{self, Incoming, Outcome},
    server::Daemon,
};

/// Serve one client until it hangs up, falls silent for too long, breaks
/// the protocol beyond repair, or the daemon shuts down.
pub async fn serve(daemon: Arc<Daemon>, stream: UnixStream) {
    let Ok(stream) = Stream::try_from(stream) else {
        return;
    };
    let mut conn = Connection::new(stream);
    let peer = match conn.peer_credentials().await {
        Ok(creds) => Peer::from_credentials(creds, daemon.admin_group),
        Err(e) => {
            tracing::warn!("cannot read peer credentials, closing: {e}");
            return;
        }
    };
    tracing::debug!(
        uid = peer.uid,
        privileged = peer.privileged,
        "client connected"
    );
    let mut shutdown = daemon.shutdown.clone();
    loop {
        let received = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            received = tokio::time::timeout(daemon.client_timeout, conn.receive_call::<Incoming>()) => received,
        };
        let (call, fds) = match received {
            Ok(Ok(call)) => call,
            Ok(Err(zlink::Error::Json(e))) => {
                // zlink has already skipped past the message's NUL, so the
                // connection is still in step and can be answered.
                tracing::debug!(uid = peer.uid, "malformed message: {e}");
                let error = dispatch::malformed(&e);
                if conn.send_error(&error, vec![]).await.is_err() {
                    break;
                }
                continue;
            }
            Ok(Err(e)) => {
                tracing::debug!(uid = peer.uid, "client gone: {e}");
                break;
            }
            Err(_) => {
                tracing::info!(
                    uid = peer.uid,
                    "closing a client silent for {:?}",
                    daemon.client_timeout
                );
                break;
            }
        };
        let oneway = call.oneway();
        let outcome = dispatch::handle(&daemon, &peer, call.method(), fds).await;
        if oneway {
            continue;
        }
        let sent = match outcome {
            Outcome::Reply(params, fds) => conn.send_reply(&Reply::new(Some(params)), fds).await,
            Outcome::Error(error) => conn.send_error(&error, vec![]).await,
        };
        if let Err(e) = sent {
            tracing::debug!(uid = peer.uid, "cannot reply, closing: {e}");
            break;
        }
    }
}
