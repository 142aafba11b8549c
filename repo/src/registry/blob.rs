//! A registry blob as a blocking reader, straight from the connection:
//! no copy of it is written anywhere. A connection that drops, or ends
//! before the blob does, is resumed with a Range request from the next
//! byte not yet received; the caller hashes the whole stream, so the
//! digest covers every byte across resumes.
//!
//! The body is received by a task on the runtime that runs ahead of the
//! reader by up to [`AHEAD`] pieces: the client reads its socket only when
//! the body is asked for more, so a reader busy inflating would otherwise
//! leave the connection idle, and wait for a wake-up of the runtime for
//! every piece.

use std::{
    io::{self, Read},
    sync::Arc,
};

use bytes::{Buf, Bytes};
use futures_util::{StreamExt, stream::BoxStream};
use oci_client::client::BlobResponse;
use tokio::sync::mpsc;

use super::{Failure, remote::Remote};
use crate::{Error, oci::digest::Digest};

/// How many times in a row a blob may be resumed without receiving a
/// byte before the pull gives up on the registry.
pub(super) const MAX_RESUMES: u32 = 5;

/// How many pieces of a body are received ahead of the reader. A piece
/// is what the client read from its socket at once, at most its read
/// buffer (hundreds of KiB), so this bounds what a blob holds in memory.
const AHEAD: usize = 32;

/// One blob being received.
pub(crate) struct BlobStream {
    remote: Arc<Remote>,
    digest: String,
    size: u64,
    /// Bytes handed on so far: where a resume starts.
    received: u64,
    /// Bytes still to drop from a body that ignored the Range asked for.
    skip: u64,
    body: Option<mpsc::Receiver<io::Result<Bytes>>>,
    chunk: Bytes,
    /// Resumes since the last byte arrived.
    resumes: u32,
}

impl BlobStream {
    /// The blob `digest` of `size` bytes, not yet requested.
    pub(crate) fn new(remote: Arc<Remote>, digest: &Digest, size: u64) -> Self {
        BlobStream {
            remote,
            digest: digest.to_string(),
            size,
            received: 0,
            skip: 0,
            body: None,
            chunk: Bytes::new(),
            resumes: 0,
        }
    }

    /// Request the blob from `received` on.
    fn open(&mut self) -> Result<(), Error> {
        let what = format!("blob {}", self.digest);
        let (remote, digest, offset) = (&self.remote, self.digest.as_str(), self.received);
        if offset > 0 {
            tracing::info!("resuming {what} at byte {offset}");
        }
        let response = remote.until_stopped(remote.retrying(&what, || {
            remote
                .client
                .pull_blob_stream_partial(&remote.image, &digest, offset, None)
        }))??;
        let (stream, skip) = match response {
            BlobResponse::Partial(stream) => (stream, 0),
            // The registry sent the whole blob: drop what we already have.
            BlobResponse::Full(stream) => (stream, offset),
        };
        self.skip = skip;
        self.body = Some(receive_ahead(remote, stream.stream));
        Ok(())
    }

    /// Wait for the next piece of the body, resuming when it broke.
    fn fill(&mut self) -> Result<(), Error> {
        let Some(body) = self.body.as_mut() else {
            return self.open();
        };
        let next = self.remote.until_stopped(body.recv())?;
        let cut = match next {
            Some(Ok(mut bytes)) => {
                let dropped = self.skip.min(bytes.len() as u64);
                bytes.advance(dropped as usize);
                self.skip -= dropped;
                let len = bytes.len() as u64;
                if self.received + len > self.size {
                    return Err(too_long(&self.digest, self.size));
                }
                if len > 0 {
                    self.resumes = 0;
                }
                self.received += len;
                self.chunk = bytes;
                return Ok(());
            }
            Some(Err(e)) => e.to_string(),
            None => format!(
                "the connection closed after {} of {} bytes",
                self.received, self.size
            ),
        };
        self.body = None;
        let what = format!("blob {}", self.digest);
        count_resume(&mut self.resumes, &self.remote, &what, &cut)
    }
}

/// One more resume of `what` since the last byte arrived, after `cut`:
/// past [`MAX_RESUMES`], the registry is given up on.
pub(super) fn count_resume(
    resumes: &mut u32,
    remote: &Remote,
    what: &str,
    cut: &str,
) -> Result<(), Error> {
    *resumes += 1;
    if *resumes > MAX_RESUMES {
        return Err(Error::RegistryUnreachable {
            registry: remote.host.clone(),
            reason: format!("{what} broke off {MAX_RESUMES} times without progress: {cut}"),
        });
    }
    tracing::warn!("{what}: {cut}");
    Ok(())
}

impl Read for BlobStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            if self.received == self.size {
                // The whole blob is here; what the connection would send
                // beyond it is not part of it.
                self.body = None;
                return Ok(0);
            }
            self.fill().map_err(|e| io::Error::other(Failure(e)))?;
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk.advance(n);
        Ok(n)
    }
}

/// Receive `body` on the runtime into a queue of [`AHEAD`] pieces. The
/// task ends with the body, at its first error, or when the reader lets
/// go of the queue.
pub(super) fn receive_ahead(
    remote: &Remote,
    mut body: BoxStream<'static, io::Result<Bytes>>,
) -> mpsc::Receiver<io::Result<Bytes>> {
    let (ahead, queue) = mpsc::channel(AHEAD);
    remote.handle.spawn(async move {
        loop {
            let piece = tokio::select! {
                piece = body.next() => piece,
                () = ahead.closed() => return,
            };
            let Some(piece) = piece else { return };
            let failed = piece.is_err();
            if ahead.send(piece).await.is_err() || failed {
                return;
            }
        }
    });
    queue
}

fn too_long(digest: &str, size: u64) -> Error {
    Error::DigestMismatch {
        what: format!("size of blob {digest}"),
        expected: size.to_string(),
        actual: format!("more than {size}"),
    }
}
