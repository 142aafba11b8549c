//! One client: read calls, check them, answer them in order.

use std::{
    os::fd::{AsFd, OwnedFd},
    sync::Arc,
    time::Duration,
};

use cfsd_varlink::repository::RepositoryError;
use serde_json::Value;
use tokio::{net::UnixStream, sync::mpsc};
use zlink::{Connection, Reply, tokio::unix::Stream};

use crate::{
    access::Peer,
    call_log::CallLog,
    dispatch::{self, Incoming, Outcome, Streamed},
    framing::Limited,
    hangup::Hangup,
    server::Daemon,
};

/// A client connection, its messages capped at the daemon's limit.
pub type Conn = Connection<Limited>;

/// How long a client turned away has to make the call that its refusal
/// answers, and to take that answer.
const REFUSAL_WAIT: Duration = Duration::from_secs(5);

/// Take a newly connected client and learn who it is.
pub async fn open(daemon: &Daemon, stream: UnixStream) -> Option<(Conn, Peer)> {
    let stream = match Stream::try_from(stream) {
        Ok(stream) => stream,
        Err(e) => {
            tracing::warn!("cannot set up a client socket, closing: {e}");
            return None;
        }
    };
    let mut conn = Connection::new(Limited::new(stream, daemon.max_message));
    let peer = match conn.peer_credentials().await {
        Ok(creds) => Peer::from_credentials(creds, daemon.admin_group, &daemon.subuids),
        Err(e) => {
            tracing::warn!("cannot read peer credentials, closing: {e}");
            return None;
        }
    };
    Some((conn, peer))
}

/// Turn a client away: answer its first call with `refusal`, then close.
/// A client learns of an error only in reply to a call, and one that sent
/// its call to a socket already closed would see only a broken pipe.
pub async fn refuse(mut conn: Conn, refusal: RepositoryError) {
    let first = tokio::time::timeout(REFUSAL_WAIT, conn.receive_call::<Incoming>()).await;
    let wants_reply = match first {
        Ok(Ok((call, _fds))) => !call.oneway(),
        Ok(Err(zlink::Error::Json(_))) => true,
        _ => false,
    };
    if wants_reply {
        let error = dispatch::error_value(&refusal);
        let _ = within(REFUSAL_WAIT, conn.send_error(&error, vec![])).await;
    }
}

/// Serve one client until it hangs up, falls silent for too long, breaks
/// the protocol beyond repair, or the daemon shuts down.
pub async fn serve(daemon: Arc<Daemon>, mut conn: Conn, peer: Peer) {
    let hangup = match Hangup::watch(conn.read().read_half().as_fd()) {
        Ok(hangup) => hangup,
        Err(e) => {
            tracing::warn!(uid = peer.uid, "cannot watch a client socket, closing: {e}");
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
            Ok(Err(zlink::Error::BufferOverflow)) => {
                too_large(&mut conn, &peer, daemon.max_message, daemon.client_timeout).await;
                break;
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
        let (oneway, more) = (call.oneway(), call.more());
        if oneway {
            let outcome = dispatch::handle(&daemon, &peer, call.method(), fds, false).await;
            finish_unanswered(outcome).await;
            continue;
        }
        let log = CallLog::start(&peer, &call.method().method);
        // Dropping a call's work cancels it: nobody is left to answer.
        let outcome = tokio::select! {
            outcome = dispatch::handle(&daemon, &peer, call.method(), fds, more) => outcome,
            () = hangup.closed() => {
                tracing::info!(uid = peer.uid, "client hung up during {}, cancelled", call.method().method);
                break;
            }
        };
        let mut replier = Replier {
            conn: &mut conn,
            timeout: daemon.client_timeout,
            hangup: &hangup,
            log: &log,
        };
        if let Err(e) = replier.answer(outcome, more).await {
            tracing::debug!(uid = peer.uid, "cannot reply, closing: {e}");
            break;
        }
    }
}

/// Tell a client that its message is over the limit. Its remaining bytes
/// cannot be told from a next message, so the caller then closes.
async fn too_large(conn: &mut Conn, peer: &Peer, limit: usize, timeout: Duration) {
    tracing::warn!(
        uid = peer.uid,
        "closing a client whose message is longer than {limit} bytes"
    );
    let error = dispatch::error_value(&RepositoryError::MessageTooLarge {
        limit: limit as u64,
    });
    let _ = within(timeout, conn.send_error(&error, vec![])).await;
}

/// Sends a call's replies, giving up on a client that does not take one
/// within the idle timeout: nothing else would ever stop the wait.
struct Replier<'c> {
    conn: &'c mut Conn,
    timeout: Duration,
    hangup: &'c Hangup,
    log: &'c CallLog,
}

impl Replier<'_> {
    /// Send a call's outcome. Of a stream, replies that more follow go
    /// only to a call made with `more`; the last one always goes.
    async fn answer(&mut self, outcome: Outcome, more: bool) -> zlink::Result<()> {
        match outcome {
            Outcome::Stream(replies) => self.stream(replies, more).await,
            single => self.single(single).await,
        }
    }

    /// Forward a stream until its last reply. Returning early drops the
    /// receiver, which cancels the work behind the stream.
    async fn stream(
        &mut self,
        mut replies: mpsc::Receiver<Streamed>,
        more: bool,
    ) -> zlink::Result<()> {
        loop {
            let streamed = tokio::select! {
                streamed = replies.recv() => streamed,
                () = self.hangup.closed() => {
                    return Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe).into());
                }
            };
            let Some(streamed) = streamed else { break };
            match streamed {
                Streamed::More(params, fds) if more => self.reply(params, fds, true).await?,
                Streamed::More(..) => {}
                Streamed::Last(outcome) => return self.single(outcome).await,
            }
        }
        Err(std::io::Error::other("a call's work ended without a final reply").into())
    }

    async fn single(&mut self, outcome: Outcome) -> zlink::Result<()> {
        self.log.finished(&outcome);
        match outcome {
            Outcome::Reply(params, fds) => self.reply(params, fds, false).await,
            Outcome::Error(error) => {
                within(self.timeout, self.conn.send_error(&error, vec![])).await
            }
            Outcome::Stream(_) => {
                Err(std::io::Error::other("a stream's last reply is another stream").into())
            }
        }
    }

    async fn reply(
        &mut self,
        params: Value,
        fds: Vec<OwnedFd>,
        continues: bool,
    ) -> zlink::Result<()> {
        let reply = Reply::new(Some(params)).set_continues(continues.then_some(true));
        within(self.timeout, self.conn.send_reply(&reply, fds)).await
    }
}

/// A send that fails when the client has not taken it within `timeout`.
async fn within(
    timeout: Duration,
    send: impl Future<Output = zlink::Result<()>>,
) -> zlink::Result<()> {
    tokio::time::timeout(timeout, send)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client took no reply for {timeout:?}"),
            )
            .into())
        })
}

/// A `oneway` call wants no reply, but its work still runs to the end:
/// a stream is drained rather than dropped, which would cancel it.
async fn finish_unanswered(outcome: Outcome) {
    if let Outcome::Stream(mut replies) = outcome {
        while replies.recv().await.is_some() {}
    }
}
