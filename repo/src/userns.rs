//! A user namespace with given ID maps, for an idmapped mount.
//!
//! `mount_setattr(MOUNT_ATTR_IDMAP)` takes the maps from a user
//! namespace's fd. A thread of a multi-threaded process cannot unshare
//! its user namespace, and forking with a pre-exec hook is unsafe code,
//! which the workspace denies; so a helper process does it: util-linux's
//! `unshare --user` runs a shell in a new user namespace, which says it
//! is there, and then waits on its stdin. The daemon writes the maps
//! into `/proc/PID/uid_map` and `gid_map` (as root in the parent
//! namespace it may map any ids, with no `setgroups` restriction), opens
//! `/proc/PID/ns/user`, and closes the helper's stdin, which ends it. The
//! namespace lives on as long as its fd.

use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    os::fd::OwnedFd,
    process::{Child, Command, Stdio},
};

use crate::{Error, idmap::IdMapping};

/// What the helper prints once it runs in its namespace.
const READY: &str = "ready";

/// A new user namespace whose maps are `mapping`'s.
pub(crate) fn user_namespace(mapping: &IdMapping) -> Result<OwnedFd, Error> {
    let failed = |e: std::io::Error| Error::storage("making the ID map's user namespace", e);
    let mut helper = Command::new("unshare")
        .args(["--user", "--", "/bin/sh", "-c"])
        .arg(format!("echo {READY} && exec cat >/dev/null"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(failed)?;
    let result = configure(&mut helper, mapping).map_err(failed);
    // Closing its stdin ends the helper; the namespace stays with its fd.
    drop(helper.stdin.take());
    let _ = helper.wait();
    result
}

fn configure(helper: &mut Child, mapping: &IdMapping) -> std::io::Result<OwnedFd> {
    let mut line = String::new();
    let stdout = helper.stdout.take().expect("piped stdout");
    BufReader::new(stdout).read_line(&mut line)?;
    if line.trim_end() != READY {
        return Err(std::io::Error::other(
            "unshare --user did not start its helper (no user namespaces?)",
        ));
    }
    let proc = format!("/proc/{}", helper.id());
    for (file, map) in [("uid_map", &mapping.uid), ("gid_map", &mapping.gid)] {
        // One write, as the kernel demands of these files.
        File::options()
            .write(true)
            .open(format!("{proc}/{file}"))?
            .write_all(map.proc_text().as_bytes())?;
    }
    Ok(File::open(format!("{proc}/ns/user"))?.into())
}
