//! The pipe between a layer's producer and its parser: the tar's bytes in
//! chunks, and, beside them, the producer's claims that some of those
//! bytes are the whole content of an object the repository already holds.
//!
//! A claim lets the parser refer to that object instead of hashing and
//! storing the bytes again (a delta copies most files whole from its
//! source image). The bytes still travel, so that the tar's digest is
//! computed over all of it: a claim changes which object an entry refers
//! to, never what the tar is. It is honoured only where an entry's content
//! starts exactly at the claimed position and is exactly as long.

use std::{
    collections::VecDeque,
    io::{self, Write},
    sync::mpsc::{Receiver, SyncSender, sync_channel},
};

use composefs::INLINE_CONTENT_MAX_V0;

/// How much decompressed tar one chunk of the [`Pipe`] carries.
pub(super) const CHUNK_BYTES: usize = 256 << 10;

/// How many chunks may wait in the [`Pipe`]: with [`CHUNK_BYTES`], the
/// tar in flight between the producer and the parser.
const PIPE_CHUNKS: usize = 4;

/// The producer's word that the tar bytes at `at..at + size` are all of
/// the stored object `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Claim<H> {
    /// Where in the tar the object's bytes start.
    pub at: u64,
    /// How many they are: the object's size.
    pub size: u64,
    /// The object.
    pub id: H,
}

/// What one send carries: tar bytes, and the claims made since the last
/// send. A claim travels with the chunk that holds its first byte or an
/// earlier one, so the parser has it once it has that byte.
pub(crate) struct Chunk<H> {
    pub(super) bytes: Vec<u8>,
    pub(super) claims: Vec<Claim<H>>,
}

/// The sending end of the pipe between a layer's producer and its parser.
pub(crate) struct Pipe<H> {
    chunk: Vec<u8>,
    claims: Vec<Claim<H>>,
    /// Bytes written so far: where the next one lies in the tar.
    written: u64,
    tx: Option<SyncSender<Chunk<H>>>,
}

impl<H> Pipe<H> {
    /// Say that the next `size` bytes written are all of the stored object
    /// `id`, exactly: the caller read them from that object, which it has
    /// checked is what its name says (measured by fs-verity where the
    /// repository enforces it). Contents the splitter keeps inline are not
    /// claimed: it would not look.
    pub(crate) fn object_follows(&mut self, id: H, size: u64) {
        if size > INLINE_CONTENT_MAX_V0 as u64 {
            let at = self.written;
            self.claims.push(Claim { at, size, id });
        }
    }

    /// Send what is buffered and close the pipe: the parser sees the end
    /// of the tar.
    pub(crate) fn close(&mut self) -> io::Result<()> {
        self.send()?;
        self.tx = None;
        Ok(())
    }

    fn send(&mut self) -> io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let chunk = Chunk {
            bytes: std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK_BYTES)),
            claims: std::mem::take(&mut self.claims),
        };
        self.tx
            .as_ref()
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "the pipe is closed"))?
            .send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the tar parser stopped"))
    }
}

impl<H> Write for Pipe<H> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(CHUNK_BYTES - self.chunk.len());
        self.chunk.extend_from_slice(&buf[..n]);
        self.written += n as u64;
        // Never left full: a claim made next belongs with the bytes that
        // follow, which then go into this same chunk.
        if self.chunk.len() == CHUNK_BYTES {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A pipe: the producer writes the layer's tar into the [`Pipe`], and
/// [`super::split`] reads it from the receiver.
pub(crate) fn pipe<H>() -> (Pipe<H>, Receiver<Chunk<H>>) {
    let (tx, rx) = sync_channel(PIPE_CHUNKS);
    let pipe = Pipe {
        chunk: Vec::with_capacity(CHUNK_BYTES),
        claims: Vec::new(),
        written: 0,
        tx: Some(tx),
    };
    (pipe, rx)
}

/// The claims the parser has received and not yet passed, in tar order.
pub(super) struct Claims<H>(VecDeque<Claim<H>>);

impl<H> Claims<H> {
    /// None yet.
    pub(super) fn new() -> Self {
        Claims(VecDeque::new())
    }

    /// Add the claims of a chunk just received, dropping those that start
    /// before `position`, where the parser is: nothing can match them now,
    /// and they would only pile up inside a large entry.
    pub(super) fn receive(&mut self, claims: Vec<Claim<H>>, position: u64) {
        self.0.extend(claims);
        self.pass(position);
    }

    /// The object claimed to be the `size` bytes at `at`, if one is; the
    /// claims before `at` are dropped.
    pub(super) fn take(&mut self, at: u64, size: u64) -> Option<H> {
        self.pass(at);
        let front = self.0.front()?;
        if front.at != at || front.size != size {
            return None;
        }
        self.0.pop_front().map(|claim| claim.id)
    }

    fn pass(&mut self, position: u64) {
        while self.0.front().is_some_and(|claim| claim.at < position) {
            self.0.pop_front();
        }
    }
}
