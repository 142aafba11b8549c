//! Where clients come from: a socket cfsd binds, sockets systemd hands
//! over, or one client already connected on fd 3.

use std::{
    fs,
    os::{
        fd::{AsFd, FromRawFd, OwnedFd},
        unix::{
            fs::PermissionsExt,
            net::{UnixListener, UnixStream},
        },
    },
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use cfsd_varlink::Address;
use rustix::{
    fs::Mode,
    net::sockopt,
    process::{Gid, getpid, umask},
};

/// The first fd passed by socket activation, and the fd a spawning client
/// hands its end of a socketpair on.
const FIRST_PASSED_FD: i32 = 3;

/// The socket clients arrive on.
#[derive(Debug)]
pub enum Socket {
    /// A listening socket; `owned_path` is removed on exit when cfsd
    /// created it.
    Listening {
        /// The socket.
        listener: UnixListener,
        /// The path cfsd bound and must remove.
        owned_path: Option<PathBuf>,
    },
    /// One client, already connected; cfsd exits when it hangs up.
    Connected(UnixStream),
}

/// Take the socket to serve on: `--address` if given, else the one systemd
/// passed, else a socket already on fd 3.
pub fn acquire(address: Option<&Address>, socket_group: Option<Gid>) -> anyhow::Result<Socket> {
    if let Some(Address::Unix(path)) = address {
        return bind(path, socket_group);
    }
    let activated = activation_fds()?;
    if activated == 0 && !fd3_is_socket() {
        bail!(
            "no socket to serve: pass --address unix:/path, start cfsd under socket activation, \
             or pass a connected socket on fd 3"
        );
    }
    if activated > 1 {
        tracing::warn!("{activated} sockets passed; serving only the first");
    }
    adopt_fd3()
}

/// Bind `path` as a 0660 socket, owned by `socket_group` if given.
fn bind(path: &Path, socket_group: Option<Gid>) -> anyhow::Result<Socket> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    remove_stale(path)?;
    // The umask keeps the socket from ever being wider than 0660; cfsd
    // creates no other file while it is changed.
    let previous = umask(Mode::from_raw_mode(0o117));
    let bound = UnixListener::bind(path);
    umask(previous);
    let listener = bound.with_context(|| format!("binding {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o660))?;
    if let Some(gid) = socket_group {
        rustix::fs::chown(path, None, Some(gid))
            .with_context(|| format!("giving {} to gid {}", path.display(), gid.as_raw()))?;
    }
    Ok(Socket::Listening {
        listener,
        owned_path: Some(path.to_owned()),
    })
}

/// Remove a socket left by a daemon that died, but never steal one that a
/// live daemon still answers on.
fn remove_stale(path: &Path) -> anyhow::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    if UnixStream::connect(path).is_ok() {
        bail!("another daemon is already listening on {}", path.display());
    }
    fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))
}

/// How many fds systemd passed to this very process.
fn activation_fds() -> anyhow::Result<i32> {
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|pid| pid.parse::<i32>().ok())
        .is_some_and(|pid| pid == getpid().as_raw_nonzero().get());
    if !for_us {
        return Ok(0);
    }
    let count = std::env::var("LISTEN_FDS")
        .context("LISTEN_PID is set but LISTEN_FDS is not")?
        .parse::<i32>()
        .context("LISTEN_FDS is not a number")?;
    Ok(count.max(0))
}

fn fd3_is_socket() -> bool {
    rustix::io::fcntl_getfd(borrowed_fd3()).is_ok() && sockopt::socket_type(borrowed_fd3()).is_ok()
}

#[allow(unsafe_code)]
fn borrowed_fd3() -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: only used to ask the kernel about fd 3; a closed fd yields
    // EBADF, which the callers treat as "no socket".
    unsafe { std::os::fd::BorrowedFd::borrow_raw(FIRST_PASSED_FD) }
}

/// Take ownership of fd 3 and tell whether it listens or is connected.
fn adopt_fd3() -> anyhow::Result<Socket> {
    #[allow(unsafe_code)]
    // SAFETY: fd 3 was passed to this process to own (systemd's protocol,
    // or a spawning client's), it is open (checked by the caller or
    // LISTEN_FDS), and nothing else in the process takes it.
    let fd = unsafe { OwnedFd::from_raw_fd(FIRST_PASSED_FD) };
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)?;
    let listening = sockopt::socket_acceptconn(fd.as_fd()).context("fd 3 is not a socket")?;
    if listening {
        Ok(Socket::Listening {
            listener: UnixListener::from(fd),
            owned_path: None,
        })
    } else {
        Ok(Socket::Connected(UnixStream::from(fd)))
    }
}
