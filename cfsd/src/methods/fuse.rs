//! `io.cfsd.Oci.MountFuse`: an image served over FUSE on a `/dev/fuse`
//! that the peer mounted with its own rights.
//!
//! Each mount is served by a process of its own, this binary run with
//! `--serve-fuse` and handed the `/dev/fuse`, the image's EROFS and the
//! repository's `objects/` as fds 3 to 5. A process, not a thread,
//! because the call must be able to end the mount at any moment: a
//! thread blocked reading `/dev/fuse` cannot be stopped, while killing
//! the process closes its `/dev/fuse`, which aborts the connection
//! (reads in the mount then fail with ENOTCONN). It also gives back what
//! composefs-fuse keeps for the life of its process (the image, leaked
//! to serve it by reference), and a fault in the server cannot take the
//! daemon down.
//!
//! The call lasts as long as the mount: its first reply says the mount is
//! served, its last that the peer unmounted it (the server then exits on
//! its own). When the peer hangs up first, or dies, the connection stops
//! taking replies and the server is killed. Fd 6 is the read end of a
//! pipe whose write end only the daemon holds: should the daemon die,
//! the server sees the pipe close and exits too.

use std::{
    os::fd::{AsFd, FromRawFd, OwnedFd},
    process::{ExitCode, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use cfsd_varlink::{
    idl::OCI_INTERFACE,
    oci::{MountFuseParams, MountFuseReply, OciError},
};
use command_fds::{CommandFdExt, FdMapping};
use rustix::event::{PollFd, PollFlags};
use serde_json::Value;
use tokio::{process::Child, sync::mpsc};

use super::oci::{blocking, open, wire_error};
use crate::{
    access::Peer,
    dispatch::{self, Outcome, Streamed},
    server::Daemon,
};

/// The fds a server process is handed, in order from 3.
const PASSED: [i32; 4] = [3, 4, 5, 6];

/// How many FUSE mounts are served, and how many may be.
#[derive(Debug)]
pub struct FuseMounts {
    limit: usize,
    served: AtomicUsize,
}

/// One served mount's place in [`FuseMounts`], given back when dropped.
struct Slot(Arc<FuseMounts>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.served.fetch_sub(1, Ordering::AcqRel);
    }
}

impl FuseMounts {
    /// At most `limit` mounts served at once.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(FuseMounts {
            limit,
            served: AtomicUsize::new(0),
        })
    }

    fn take(self: &Arc<Self>) -> Result<Slot, OciError> {
        let limit = self.limit;
        self.served
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .map(|_| Slot(self.clone()))
            .map_err(|_| OciError::TooManyFuseMounts {
                limit: limit as u64,
            })
    }
}

/// Handle `MountFuse`, which dispatch lets through only when called with
/// `more`, and without a turn of its caller's: it lasts as long as its
/// mount.
pub async fn mount_fuse(
    daemon: &Daemon,
    peer: &Peer,
    params: Option<Value>,
    fds: Vec<OwnedFd>,
) -> Outcome {
    let params = match dispatch::params::<MountFuseParams>(params) {
        Ok(params) => params,
        Err(e) => return Outcome::error(&e),
    };
    match start(daemon, peer, params, fds).await {
        Ok(outcome) => outcome,
        Err(e) => Outcome::error(&e),
    }
}

async fn start(
    daemon: &Daemon,
    peer: &Peer,
    params: MountFuseParams,
    fds: Vec<OwnedFd>,
) -> Result<Outcome, OciError> {
    let dev_fuse = fds.into_iter().next().ok_or_else(|| OciError::MissingFd {
        method: format!("{OCI_INTERFACE}.MountFuse"),
        expected: "the /dev/fuse of a FUSE mount waiting for its server".to_owned(),
    })?;
    // Asks the kernel's cache and polls without waiting: fine here.
    cfsd_repo::fuse::check_fuse_device(dev_fuse.as_fd()).map_err(wire_error)?;
    let slot = daemon.fuse_mounts.take()?;
    let repo = open(daemon).await?;
    let image = params.image.clone();
    let served = blocking(move || repo.fuse_image(&image)).await?;
    let image_id = served.image_id.clone();
    let (child, watch) = spawn_server(dev_fuse, served.erofs, served.objects).map_err(|e| {
        OciError::StorageFailed {
            operation: "starting a FUSE server".to_owned(),
            reason: e.to_string(),
        }
    })?;
    tracing::info!(uid = peer.uid, pid = peer.pid, image = %params.image, %image_id, "serving a FUSE mount");
    let (replies, receiver) = mpsc::channel(1);
    let lease = Lease {
        _connection: crate::work::hold(),
        _slot: slot,
        _served: served.served,
        _watch: watch,
    };
    tokio::spawn(serve(child, lease, params.image, image_id, replies));
    Ok(Outcome::Stream(receiver))
}

/// What a served mount holds until its server has exited: a share of
/// its connection's work (see [`crate::work::Work`]), its place in the
/// limit, the image's lease against GC, and the pipe whose closing
/// tells the server the daemon is gone.
struct Lease {
    _connection: crate::work::Held,
    _slot: Slot,
    _served: cfsd_repo::fuse::Served,
    _watch: OwnedFd,
}

/// Start the server process of one mount, handing it its fds.
fn spawn_server(
    dev_fuse: OwnedFd,
    erofs: OwnedFd,
    objects: OwnedFd,
) -> std::io::Result<(Child, OwnedFd)> {
    let (watched, watch) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let mut command = tokio::process::Command::new("/proc/self/exe");
    command
        .arg("--serve-fuse")
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    let mappings = [dev_fuse, erofs, objects, watched]
        .into_iter()
        .zip(PASSED)
        .map(|(parent_fd, child_fd)| FdMapping {
            parent_fd,
            child_fd,
        })
        .collect();
    command
        .fd_mappings(mappings)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let child = command.spawn()?;
    // The parent's copies go with the command: the mount's connection
    // must end when the server does.
    drop(command);
    Ok((child, watch))
}

/// Reply that the mount is served, then wait for its server to exit (the
/// peer unmounted) or for the peer to hang up (then kill it).
async fn serve(
    mut child: Child,
    lease: Lease,
    image: String,
    image_id: String,
    replies: mpsc::Sender<Streamed>,
) {
    let first = serde_json::to_value(MountFuseReply {
        image_id: image_id.clone(),
        ended: false,
    })
    .unwrap_or_default();
    let first = replies.send(Streamed::More(first, Vec::new()));
    let ended = if first.await.is_ok() {
        tokio::select! {
            _ = replies.closed() => None,
            status = child.wait() => Some(status),
        }
    } else {
        None
    };
    match ended {
        None => {
            tracing::info!(%image_id, "the FUSE mount's client hung up; aborting its connection");
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        Some(Ok(status)) if status.success() => {
            tracing::info!(%image_id, "the FUSE mount was unmounted");
            let last = Outcome::reply(&MountFuseReply {
                image_id: image_id.clone(),
                ended: true,
            });
            let _ = replies.send(Streamed::Last(last)).await;
        }
        Some(status) => {
            let reason = match status {
                Ok(status) => format!("its server stopped: {status}"),
                Err(e) => format!("waiting for its server: {e}"),
            };
            tracing::warn!(%image_id, "FUSE mount: {reason}");
            let failed = OciError::MountFailed { image, reason };
            let _ = replies.send(Streamed::Last(Outcome::error(&failed))).await;
        }
    }
    drop(lease);
}

/// `cfsd --serve-fuse`: serve the mount on fds 3 to 5 until it is
/// unmounted, or exit as soon as fd 6 shows the daemon gone.
pub fn serve_passed() -> ExitCode {
    let [dev_fuse, erofs, objects, watched] = PASSED.map(|fd| {
        #[allow(unsafe_code)]
        // SAFETY: the daemon passed these fds for this process to own
        // (spawn_server), and nothing else in it takes them.
        unsafe {
            OwnedFd::from_raw_fd(fd)
        }
    });
    let watching = std::thread::Builder::new()
        .name("daemon-watch".into())
        .spawn(move || {
            // Nothing is ever written: the pipe closes when the daemon
            // does.
            let mut polled = [PollFd::new(&watched, PollFlags::IN)];
            let _ = rustix::event::poll(&mut polled, None);
            std::process::exit(0);
        });
    if let Err(e) = watching {
        eprintln!("cfsd --serve-fuse: cannot watch the daemon: {e}");
        return ExitCode::FAILURE;
    }
    // An image FUSE_INIT never came for (the peer's mount aborted first)
    // is not a failure of the image; the rest is worth a log line.
    match cfsd_repo::fuse::serve(dev_fuse, erofs, objects) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::NotConnected => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cfsd --serve-fuse: {e}");
            ExitCode::FAILURE
        }
    }
}
