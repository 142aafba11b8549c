//! `oci mount --fuse`: this process mounts an empty FUSE filesystem with
//! its caller's own rights (Debian's `fusermount3`), and the daemon
//! serves the image on the `/dev/fuse` of that mount.
//!
//! cfsctl stays in the foreground for as long as the mount is served:
//! the daemon serves it for as long as this call lasts, and aborts it if
//! cfsctl goes. `fusermount3 -u DIR` (or `umount DIR` as root) ends it and
//! cfsctl with it; SIGINT or SIGTERM make cfsctl unmount it itself.

use std::{
    io::IoSliceMut,
    mem::MaybeUninit,
    os::{fd::OwnedFd, unix::net::UnixStream},
    path::Path,
    process::{Command, ExitCode, Stdio},
};

use cfsd_varlink::{
    CallError, Client,
    oci::{MountFuseParams, MountFuseReply, OciError},
};
use command_fds::{CommandFdExt, FdMapping};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use tokio::signal::unix::{SignalKind, signal};

use crate::{failure::Local, render::Output};

/// The helper that mounts FUSE filesystems for users who may not mount.
const FUSERMOUNT: &str = "fusermount3";

/// The options of the empty mount: read-only, with the kernel checking
/// the image's modes as an EROFS mount does; nosuid and nodev as every
/// unprivileged FUSE mount is (fusermount3 adds them for users anyway).
const OPTIONS: &str = "ro,nosuid,nodev,default_permissions,fsname=cfsd,subtype=composefs";

/// `cfsctl oci mount --fuse IMAGE DIR`.
pub async fn mount_fuse(
    client: &mut Client,
    out: Output,
    image: String,
    dir: &Path,
) -> anyhow::Result<ExitCode> {
    let failed = |reason: String| Local::MountFailed {
        operation: "mounting over FUSE at".to_owned(),
        dir: dir.display().to_string(),
        reason,
    };
    if !std::fs::metadata(dir)
        .map_err(|e| failed(e.to_string()))?
        .is_dir()
    {
        return Err(failed("it is not a directory".into()).into());
    }
    let dev_fuse = fusermount(dir).map_err(failed)?;
    let params = MountFuseParams { image };
    let (reply, mut replies) = match client.mount_fuse(&params, dev_fuse).await {
        Ok(served) => served,
        Err(e) => {
            // Nothing serves the empty mount: it would only fail reads.
            let _ = unmount(dir);
            return Err(e.into());
        }
    };
    out.show(&reply, |r| {
        eprintln!(
            "Serving {} (image {}) at {} over FUSE until it is unmounted \
             (fusermount3 -u {}, or Ctrl-C here)",
            params.image,
            r.image_id,
            dir.display(),
            dir.display()
        )
    })?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let unmounted = tokio::select! {
        last = replies.next::<MountFuseReply, OciError>() => return ended(out, dir, last),
        _ = interrupt.recv() => unmount(dir),
        _ = terminate.recv() => unmount(dir),
    };
    unmounted.map_err(failed)?;
    let last = replies.next::<MountFuseReply, OciError>().await;
    ended(out, dir, last)
}

/// What the call's last reply may be.
type LastReply = Option<Result<(MountFuseReply, Vec<OwnedFd>), CallError<OciError>>>;

/// The call's last reply: the mount has gone.
fn ended(out: Output, dir: &Path, last: LastReply) -> anyhow::Result<ExitCode> {
    match last {
        Some(Ok((reply, _))) => {
            out.show(&reply, |_| eprintln!("Unmounted {}", dir.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Err(e @ CallError::Interface(_))) => Err(e.into()),
        // The daemon went: it took the mount's server with it.
        Some(Err(e)) => Err(anyhow::Error::new(e).context(stopped(dir))),
        None => Err(anyhow::anyhow!(stopped(dir))),
    }
}

fn stopped(dir: &Path) -> String {
    format!(
        "the daemon stopped serving {} before it was unmounted; \
         its files now fail with ENOTCONN: unmount it with fusermount3 -u {}",
        dir.display(),
        dir.display()
    )
}

/// Mount an empty read-only FUSE filesystem at `dir` with fusermount3,
/// with this process's rights, and take its `/dev/fuse`: fusermount3
/// passes it back over the socket named by `_FUSE_COMMFD`, with
/// SCM_RIGHTS, as libfuse's own mounts receive it.
fn fusermount(dir: &Path) -> Result<OwnedFd, String> {
    let (ours, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
    let mut command = Command::new(FUSERMOUNT);
    command
        .arg("-o")
        .arg(OPTIONS)
        .arg("--")
        .arg(dir)
        .env("_FUSE_COMMFD", "3")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
        .fd_mappings(vec![FdMapping {
            parent_fd: OwnedFd::from(theirs),
            child_fd: 3,
        }])
        .map_err(|e| e.to_string())?;
    let output = command
        .output()
        .map_err(|e| format!("cannot run {FUSERMOUNT} (Debian's fuse3 package): {e}"))?;
    drop(command);
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stderr);
        return Err(format!(
            "{FUSERMOUNT} failed ({}): {}",
            output.status,
            said.trim()
        ));
    }
    receive_fd(&ours).map_err(|e| format!("{FUSERMOUNT} passed no /dev/fuse: {e}"))
}

/// The one fd a message on `socket` carries.
fn receive_fd(socket: &UnixStream) -> std::io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(&mut byte)];
    rustix::net::recvmsg(socket, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)?;
    let mut fds = control.drain().filter_map(|message| match message {
        RecvAncillaryMessage::ScmRights(fds) => Some(fds),
        _ => None,
    });
    fds.next()
        .and_then(|mut fds| fds.next())
        .ok_or_else(|| std::io::Error::other("the message carried no fd"))
}

/// `fusermount3 -u DIR`, with this process's rights.
fn unmount(dir: &Path) -> Result<(), String> {
    let output = Command::new(FUSERMOUNT)
        .arg("-u")
        .arg("--")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run {FUSERMOUNT} -u: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        let said = String::from_utf8_lossy(&output.stderr);
        Err(format!("{FUSERMOUNT} -u failed: {}", said.trim()))
    }
}
