//! One process per repository: the lock file that says which one.
//!
//! A collection must see every import in flight, and only the process
//! doing them can: another process's imports look like garbage to it,
//! and composefs's own lock (shared on open, exclusive for GC) makes a
//! second process's GC wait forever. So a repository has one owning
//! process. Opening takes `.cfsd-lock` in the repository with a
//! non-blocking exclusive `flock` and writes the owner's pid and its
//! self-description into it; a second opener is refused at once with
//! [`Error::RepositoryInUse`] naming them. The kernel drops the lock when
//! its process dies, however it dies, so a stale file never locks anyone
//! out. Within one process, every open of the same directory shares one
//! handle (see [`crate::Repository`]).

use std::{
    fs::File,
    io::{Read, Write},
    os::fd::{AsFd, OwnedFd},
    path::Path,
};

use rustix::{
    fs::{FlockOperation, Mode, OFlags},
    io::Errno,
};
use serde::{Deserialize, Serialize};

use crate::Error;

/// The lock file's name in the repository.
pub(crate) const LOCK_FILE: &str = ".cfsd-lock";

/// Who opens a repository, as a second opener is told.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owner {
    /// What the process is, e.g. "cfsd serving unix:/run/cfsd/cfsd.sock".
    pub description: String,
    /// The socket it serves, so that others can reach it instead.
    pub address: Option<String>,
}

impl Owner {
    /// This process, described by its command line.
    pub fn this_process() -> Self {
        let cmdline = std::fs::read("/proc/self/cmdline").unwrap_or_default();
        let words: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|w| !w.is_empty())
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect();
        Owner {
            description: words.join(" "),
            address: None,
        }
    }
}

/// What the lock file records.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    pid: u32,
    owner: String,
    address: Option<String>,
}

/// The held lock; released when dropped (or the process dies).
#[derive(Debug)]
pub(crate) struct OwnerLock {
    _file: Option<File>,
}

/// Take the repository at `dir` (an open directory at `path`) for this
/// process, or say who has it.
pub(crate) fn take(dir: &OwnedFd, path: &Path, owner: &Owner) -> Result<OwnerLock, Error> {
    // The lock is held on a read-only descriptor, so that a daemon does
    // not keep its repository's filesystem from being remounted
    // read-only; the record is written through a second one.
    let flags = OFlags::RDONLY | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let fd = match rustix::fs::openat(dir, LOCK_FILE, flags, Mode::from_raw_mode(0o600)) {
        Ok(fd) => fd,
        // A repository on a read-only filesystem without the file can
        // still be served for reading.
        Err(e @ (Errno::ROFS | Errno::ACCESS | Errno::PERM)) => {
            tracing::warn!(
                "cannot create {LOCK_FILE} in {}: {e}; other processes are not kept out",
                path.display()
            );
            return Ok(OwnerLock { _file: None });
        }
        Err(e) => {
            return Err(Error::storage(
                "locking the repository",
                std::io::Error::from(e),
            ));
        }
    };
    let mut file = File::from(fd);
    match rustix::fs::flock(file.as_fd(), FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(Errno::WOULDBLOCK) => return Err(in_use(&mut file, path)),
        Err(e) => {
            return Err(Error::storage(
                "locking the repository",
                std::io::Error::from(e),
            ));
        }
    }
    if let Err(e) = record(dir, owner) {
        // Read-only: the lock still keeps other daemons out.
        tracing::warn!("cannot record this daemon in {LOCK_FILE}: {e}");
    }
    Ok(OwnerLock { _file: Some(file) })
}

/// Write who holds the lock into the lock file, through a descriptor of
/// its own that is closed at once.
fn record(dir: &OwnedFd, owner: &Owner) -> std::io::Result<()> {
    let flags = OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let mut file = File::from(rustix::fs::openat(dir, LOCK_FILE, flags, Mode::empty())?);
    let record = Record {
        pid: std::process::id(),
        owner: owner.description.clone(),
        address: owner.address.clone(),
    };
    file.set_len(0)?;
    serde_json::to_writer(&mut file, &record)?;
    file.write_all(b"\n")
}

/// The refusal for a repository whose lock file `file` someone holds.
fn in_use(file: &mut File, path: &Path) -> Error {
    let mut text = String::new();
    let record: Record = file
        .read_to_string(&mut text)
        .ok()
        .and_then(|_| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    Error::RepositoryInUse {
        path: path.to_owned(),
        pid: record.pid,
        owner: if record.owner.is_empty() {
            "it has not said what it is".to_owned()
        } else {
            record.owner
        },
        address: record.address,
    }
}
