//! Between the kernel and composefs-fuse: the requests it gets wrong are
//! answered here, the rest are passed through a socket pair.
//!
//! composefs-fuse 0.9.4 fails `open` of an empty regular file with EIO:
//! it looks for the overlay redirect that composefs writes only for files
//! with content, and an empty one has none. The kernel mount shows such a
//! file empty, so this side answers its `open`, `read` and `release`
//! itself, by a file handle composefs-fuse never gives out. Everything
//! else is forwarded unchanged, except that the kernel is not offered
//! FUSE_MAX_PAGES: replies then stay within 128 KiB, which one message of
//! the socket pair always holds.

use std::{
    io,
    os::fd::{AsFd, OwnedFd},
};

use composefs::erofs::{
    format::{S_IFMT, S_IFREG},
    reader::{Image, InodeHeader},
};
use rustix::{
    event::{PollFd, PollFlags},
    io::Errno,
    net::{RecvFlags, SendFlags},
};

/// The FUSE opcodes looked at here (`linux/fuse.h`).
const OPEN: u32 = 14;
const READ: u32 = 15;
const RELEASE: u32 = 18;
const INIT: u32 = 26;

/// FUSE_MAX_PAGES, in `fuse_init_in.flags`.
const MAX_PAGES: u32 = 1 << 22;

/// FOPEN_KEEP_CACHE: the content never changes.
const KEEP_CACHE: u32 = 1 << 1;

/// `sizeof(struct fuse_in_header)`.
const IN_HEADER: usize = 40;

/// The file handle of an empty file opened here; composefs-fuse counts
/// its own from 0.
const EMPTY_FILE: u64 = u64::MAX;

/// Enough for any request the kernel may send, which it checks against
/// the largest write composefs-fuse accepts (16 MiB) before it sends one.
const REQUEST_BUFFER: usize = (16 << 20) + 4096;

/// The inodes of the image, to tell empty regular files.
pub(super) struct Files<'a>(pub(super) Image<'a>);

impl Files<'_> {
    /// Whether FUSE node `nodeid` is a regular file of no bytes.
    fn is_empty_file(&self, nodeid: u64) -> bool {
        let nid = match nodeid {
            0 => return false,
            1 => u64::from(self.0.sb.root_nid.get()),
            n => n - 2,
        };
        self.0
            .inode(nid)
            .is_ok_and(|inode| inode.mode().0.get() & S_IFMT == S_IFREG && inode.size() == 0)
    }
}

/// Pass requests between `dev_fuse` and `server` (composefs-fuse's end of
/// the socket pair) until the mount goes or the server stops.
pub(super) fn run(dev_fuse: &OwnedFd, server: &OwnedFd, files: &Files<'_>) -> io::Result<()> {
    let mut buffer = vec![0u8; REQUEST_BUFFER];
    loop {
        let mut polled = [
            PollFd::new(dev_fuse, PollFlags::IN),
            PollFd::new(server, PollFlags::IN),
        ];
        match rustix::event::poll(&mut polled, None) {
            Ok(_) => {}
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let (kernel, reply) = (polled[0].revents(), polled[1].revents());
        if !kernel.is_empty() {
            match rustix::io::read(dev_fuse, &mut buffer) {
                Ok(n) => request(dev_fuse, server, files, &mut buffer[..n])?,
                // Unmounted, or the connection aborted.
                Err(Errno::NODEV) => return Ok(()),
                Err(Errno::INTR | Errno::AGAIN | Errno::NOENT) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if !reply.is_empty() {
            match rustix::net::recv(server, &mut buffer, RecvFlags::empty()) {
                // The server ended its session.
                Ok((0, _)) => return Ok(()),
                Ok((n, _)) => answer(dev_fuse, &buffer[..n]),
                Err(Errno::INTR | Errno::AGAIN) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Answer one request from the kernel, or pass it on.
fn request(
    dev_fuse: &OwnedFd,
    server: &OwnedFd,
    files: &Files<'_>,
    request: &mut [u8],
) -> io::Result<()> {
    if request.len() < IN_HEADER {
        return Err(io::Error::other("a FUSE request shorter than its header"));
    }
    let opcode = u32_at(request, 4);
    let unique = u64_at(request, 8);
    let nodeid = u64_at(request, 16);
    match opcode {
        INIT if request.len() >= IN_HEADER + 16 => {
            let flags = u32_at(request, IN_HEADER + 12) & !MAX_PAGES;
            request[IN_HEADER + 12..IN_HEADER + 16].copy_from_slice(&flags.to_ne_bytes());
        }
        OPEN if files.is_empty_file(nodeid) => {
            // struct fuse_open_out: fh, open_flags, backing_id.
            let mut open = EMPTY_FILE.to_ne_bytes().to_vec();
            open.extend_from_slice(&KEEP_CACHE.to_ne_bytes());
            open.extend_from_slice(&0u32.to_ne_bytes());
            answer(dev_fuse, &reply(unique, &open));
            return Ok(());
        }
        READ | RELEASE
            if request.len() >= IN_HEADER + 8 && u64_at(request, IN_HEADER) == EMPTY_FILE =>
        {
            // No bytes to read; nothing to release.
            answer(dev_fuse, &reply(unique, &[]));
            return Ok(());
        }
        _ => {}
    }
    match rustix::net::send(server, request, SendFlags::empty()) {
        Ok(_) => Ok(()),
        // The server is gone: the next poll sees it.
        Err(Errno::PIPE | Errno::CONNRESET) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A successful reply to request `unique` carrying `body`.
fn reply(unique: u64, body: &[u8]) -> Vec<u8> {
    let len = (16 + body.len()) as u32;
    let mut out = len.to_ne_bytes().to_vec();
    out.extend_from_slice(&0i32.to_ne_bytes());
    out.extend_from_slice(&unique.to_ne_bytes());
    out.extend_from_slice(body);
    out
}

/// Write one reply to the kernel. A request interrupted meanwhile is
/// answered for nothing (ENOENT), which is no failure of the mount's.
fn answer(dev_fuse: impl AsFd, reply: &[u8]) {
    if let Err(e) = rustix::io::write(dev_fuse, reply)
        && e != Errno::NOENT
    {
        tracing::debug!("a FUSE reply was refused: {e}");
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap_or_default())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(bytes[at..at + 8].try_into().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_is_its_header_and_body() {
        let out = reply(7, &[1, 2, 3]);
        assert_eq!(u32_at(&out, 0), 19);
        assert_eq!(u32_at(&out, 4), 0);
        assert_eq!(u64_at(&out, 8), 7);
        assert_eq!(&out[16..], &[1, 2, 3]);
    }
}
