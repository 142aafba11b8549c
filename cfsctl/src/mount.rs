//! `oci mount` and `oci umount`: the daemon makes a detached mount, this
//! process attaches it in its own mount namespace, and detaches it again.

use std::{os::fd::AsFd, path::Path, process::ExitCode};

use cfsd_varlink::{
    CallError, Client,
    oci::{EmptyReply, MountParams, OciError},
};
use rustix::{
    fs::CWD,
    mount::{MoveMountFlags, move_mount},
};

use crate::{failure::Local, render::Output};

/// `cfsctl oci mount`: the daemon mounts, this process attaches the
/// mount in its own mount namespace.
pub async fn mount(
    client: &mut Client,
    out: Output,
    params: &MountParams,
    dir: &Path,
) -> anyhow::Result<ExitCode> {
    let image = &params.image;
    let failed = |reason: String| Local::MountFailed {
        operation: "attaching a mount at".to_owned(),
        dir: dir.display().to_string(),
        reason,
    };
    // Checked before the call: the daemon would make a mount for nothing.
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(
                failed("it is not a directory; an image is mounted on a directory".into()).into(),
            );
        }
        Err(e) => return Err(failed(e.to_string()).into()),
    }
    let mount = client.mount(params).await.map_err(mount_hint)?;
    move_mount(
        mount.as_fd(),
        "",
        CWD,
        dir,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| failed(std::io::Error::from(e).to_string()))?;
    out.show(&EmptyReply {}, |_| {
        println!("Mounted {image} at {}", dir.display())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// A daemon without the privilege to mount fails with EPERM; say who
/// may mount rather than just that.
fn mount_hint(e: CallError<OciError>) -> anyhow::Error {
    let unprivileged = !rustix::process::geteuid().is_root();
    match e {
        CallError::Interface(OciError::MountFailed { ref reason, .. })
            if unprivileged && reason.contains("Operation not permitted") =>
        {
            let uid = rustix::process::geteuid().as_raw();
            anyhow::Error::new(e).context(format!(
                "only root may mount images (mounting needs CAP_SYS_ADMIN, which uid {uid} \
                 lacks): run cfsctl as root, or against a system cfsd that runs as root"
            ))
        }
        e => e.into(),
    }
}

/// `cfsctl oci umount`: detach the image mounted at `dir` from this
/// process's mount namespace, as umount(8) would; only a composefs mount
/// is detached, so a mistyped directory cannot unmount something else.
pub fn umount(out: Output, dir: &Path) -> anyhow::Result<ExitCode> {
    let failed = |reason: String| Local::MountFailed {
        operation: "unmounting".to_owned(),
        dir: dir.display().to_string(),
        reason,
    };
    let canonical = std::fs::canonicalize(dir).map_err(|e| failed(e.to_string()))?;
    let mounts =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| failed(e.to_string()))?;
    match mount_at(&mounts, &canonical) {
        Some(MountEntry { fs_type, source }) if is_composefs(&fs_type, &source) => {}
        Some(MountEntry { fs_type, source }) => {
            return Err(failed(format!(
                "the mount there is {fs_type} from {source}, not an image cfsd mounted"
            ))
            .into());
        }
        None => return Err(failed("nothing is mounted there".into()).into()),
    }
    rustix::mount::unmount(&canonical, rustix::mount::UnmountFlags::NOFOLLOW)
        .map_err(|e| failed(std::io::Error::from(e).to_string()))?;
    out.show(&EmptyReply {}, |_| println!("Unmounted {}", dir.display()))?;
    Ok(ExitCode::SUCCESS)
}

/// The type and source of the topmost mount at `dir`, from mountinfo.
#[derive(Debug, PartialEq, Eq)]
struct MountEntry {
    fs_type: String,
    source: String,
}

fn mount_at(mountinfo: &str, dir: &Path) -> Option<MountEntry> {
    let wanted = dir.to_str()?;
    // The last entry for a mount point is the one on top.
    mountinfo.lines().rev().find_map(|line| {
        // "id parent major:minor root mountpoint options [optional...] - type source super"
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split(' ').nth(4)?;
        let mut right = right.split(' ');
        let (fs_type, source) = (right.next()?, right.next()?);
        (unescape_octal(mount_point) == wanted).then(|| MountEntry {
            fs_type: fs_type.to_owned(),
            source: unescape_octal(source),
        })
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(field: &str) -> String {
    let mut out = String::new();
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let code = rest
            .get(at + 1..at + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[at + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Whether a mount is one composefs makes: an overlay over the image's
/// EROFS whose source composefs names "composefs:NAME".
fn is_composefs(fs_type: &str, source: &str) -> bool {
    fs_type == "overlay" && source.starts_with("composefs:")
}
