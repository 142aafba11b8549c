//! The socket cfsd reads calls through: zlink's Unix stream, with a cap on
//! the bytes of one message.
//!
//! zlink buffers a message until its NUL, up to 100 MiB. A client could
//! make every connection cost that much, so the read half here refuses to
//! take more than the daemon's limit of a message that has not ended yet.

use std::os::fd::{AsFd, BorrowedFd};

use zlink::{
    connection::socket::{self, ReadResult, Socket},
    tokio::unix::Stream,
};

type InnerRead = <Stream as Socket>::ReadHalf;

/// A Unix stream whose messages may be at most `limit` bytes long, not
/// counting the NUL that ends each.
#[derive(Debug)]
pub struct Limited {
    stream: Stream,
    limit: usize,
}

impl Limited {
    /// Wrap `stream`, allowing messages of up to `limit` bytes.
    pub fn new(stream: Stream, limit: usize) -> Self {
        Limited { stream, limit }
    }
}

impl Socket for Limited {
    type ReadHalf = LimitedRead;
    type WriteHalf = <Stream as Socket>::WriteHalf;

    const CAN_TRANSFER_FDS: bool = true;

    fn split(self) -> (Self::ReadHalf, Self::WriteHalf) {
        let (read, write) = self.stream.split();
        let read = LimitedRead {
            inner: read,
            limit: self.limit,
            unterminated: 0,
        };
        (read, write)
    }
}

/// The read half of [`Limited`]. Reading fails with
/// [`zlink::Error::BufferOverflow`] once a message runs past the limit.
#[derive(Debug)]
pub struct LimitedRead {
    inner: InnerRead,
    limit: usize,
    /// Bytes read since the last NUL: the part of a message seen so far.
    unterminated: usize,
}

impl socket::ReadHalf for LimitedRead {
    async fn read(&mut self, buf: &mut [u8]) -> zlink::Result<ReadResult> {
        // One byte past the limit is enough to know a message is too
        // long, so no more than that is ever taken off the socket.
        let room = (self.limit + 1).saturating_sub(self.unterminated).max(1);
        let len = buf.len().min(room);
        let result = self.inner.read(&mut buf[..len]).await?;
        self.unterminated = unterminated_after(self.unterminated, &buf[..result.bytes_read()]);
        if self.unterminated > self.limit {
            return Err(zlink::Error::BufferOverflow);
        }
        Ok(result)
    }
}

/// The unterminated length after reading `read`, given `before`.
fn unterminated_after(before: usize, read: &[u8]) -> usize {
    match read.iter().rposition(|&b| b == 0) {
        Some(nul) => read.len() - nul - 1,
        None => before + read.len(),
    }
}

impl AsFd for LimitedRead {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

/// Peer credentials come from the socket's fd, as for zlink's own stream.
impl socket::UnixSocket for LimitedRead {}

#[cfg(test)]
mod tests {
    use super::unterminated_after;

    #[test]
    fn only_bytes_after_the_last_nul_count() {
        assert_eq!(unterminated_after(0, b"abc"), 3);
        assert_eq!(unterminated_after(5, b"abc"), 8);
        assert_eq!(unterminated_after(5, b"ab\0c"), 1);
        assert_eq!(unterminated_after(5, b"a\0b\0"), 0);
        assert_eq!(unterminated_after(5, b""), 5);
    }
}
