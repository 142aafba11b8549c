//! Noticing that a client has gone while its call is still running.
//!
//! A connection reads nothing while it works on a call, so a client that
//! closes its socket would only be noticed when the reply is sent, and
//! the work behind a call without progress replies (CreateDelta, a Pull
//! between layers) would run on for nobody.

use std::{
    io,
    os::{fd::BorrowedFd, unix::net::UnixStream as StdStream},
    time::Duration,
};

use rustix::net::SendFlags;
use tokio::{io::Interest, net::UnixStream};

/// How often a half-closed socket is checked for being closed entirely.
const HALF_CLOSED_POLL: Duration = Duration::from_millis(250);

/// Watches one client socket for the client closing it.
#[derive(Debug)]
pub struct Hangup {
    socket: UnixStream,
}

impl Hangup {
    /// Watch the socket `fd` through a duplicate of it, registered on its
    /// own so that the connection's reads are not disturbed.
    pub fn watch(fd: BorrowedFd<'_>) -> io::Result<Self> {
        let socket = StdStream::from(fd.try_clone_to_owned()?);
        socket.set_nonblocking(true)?;
        Ok(Hangup {
            socket: UnixStream::from_std(socket)?,
        })
    }

    /// Resolve once the client has closed the socket. A client that only
    /// shut down its writing side is still waiting for a reply, so that
    /// does not count; nor do further calls it sends meanwhile.
    pub async fn closed(&self) {
        loop {
            let Ok(ready) = self.socket.ready(Interest::READABLE).await else {
                // Cannot be watched: never claim the client is gone.
                return std::future::pending().await;
            };
            if peer_closed(&self.socket) {
                return;
            }
            if ready.is_read_closed() {
                // Half closed: tokio keeps reporting that for good, so
                // only asking again now and then can tell when the rest
                // of the socket goes.
                tokio::time::sleep(HALF_CLOSED_POLL).await;
                continue;
            }
            // Readable only because calls wait to be read: wait for the
            // next change instead. A WouldBlock clears the readiness.
            let _ = self.socket.try_io(Interest::READABLE, || {
                Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
            });
        }
    }
}

/// Whether the peer has closed its end entirely: an empty send fails with
/// EPIPE then, and succeeds while the peer may still read.
fn peer_closed(fd: &UnixStream) -> bool {
    let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
    matches!(
        rustix::net::send(fd, &[], flags),
        Err(rustix::io::Errno::PIPE | rustix::io::Errno::CONNRESET)
    )
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    /// An hour on the paused clock: the runtime runs every ready task and
    /// I/O event before it moves the clock on, so a `closed()` still
    /// pending at the end was pending with nothing left to happen.
    const QUIESCENT: Duration = Duration::from_secs(3600);

    #[tokio::test(start_paused = true)]
    async fn a_closed_peer_is_noticed_and_a_half_closed_one_is_not() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let hangup = Hangup::watch(ours.as_fd()).unwrap();
        std::io::Write::write_all(&mut &theirs, b"a call not read yet\0").unwrap();
        let busy = tokio::time::timeout(QUIESCENT, hangup.closed()).await;
        assert!(
            busy.is_err(),
            "a peer with a call waiting was taken for gone"
        );
        // Half closed: the poll runs thousands of times over the hour.
        theirs.shutdown(std::net::Shutdown::Write).unwrap();
        let half = tokio::time::timeout(QUIESCENT, hangup.closed()).await;
        assert!(half.is_err(), "a half-closed peer was taken for gone");
        drop(theirs);
        let start = tokio::time::Instant::now();
        tokio::time::timeout(QUIESCENT, hangup.closed())
            .await
            .expect("a closed peer was not noticed");
        assert!(
            start.elapsed() <= HALF_CLOSED_POLL,
            "noticed only after {:?}",
            start.elapsed()
        );
    }
}
