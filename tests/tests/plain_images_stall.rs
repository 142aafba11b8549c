//! Plain images (`Repository.CreateImage`, `ComputeImageId`) from a tree
//! an admin-group member hands over that would stall or outlast the
//! call: a file that is a bind mount of a FUSE file whose reads never
//! return is refused without a read, and a client hanging up in the
//! middle of a CreateImage stops the work soon, names no image and
//! leaves nothing gc keeps. The daemon serves on.

use std::{os::unix::fs::PermissionsExt, path::Path, process::Command, time::Instant};

use cfsd_tests::{
    Daemon, bin,
    fuse::{Fuse, FuseFile},
    hangup::assert_stops_soon_after_hang_up,
    ocictl::{json, object_count},
    peer::{NOBODY, as_nobody, reply_within, spawn_call_with_fd},
    plain_tree::{ADMINS, admin_daemon, tree},
    repo_files::tmp_leftovers,
    stderr, stdout,
};
use serde_json::{Value, json};

fn call(method: &str, parameters: Value) -> Value {
    json!({"method": format!("io.cfsd.Repository.{method}"), "parameters": parameters})
}

/// Nothing is named, and gc leaves no object.
fn assert_nothing_left(daemon: &Daemon) {
    assert_eq!(json(daemon, &["images"])["images"], json!([]));
    let collected = json(daemon, &["gc"]);
    assert_eq!(
        object_count(&daemon.repo()),
        0,
        "gc kept objects: {collected}"
    );
    let leftovers = tmp_leftovers(&daemon.repo());
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Unmounts a bind mount when dropped, before the FUSE filesystem under
/// it goes.
struct Bound<'a>(&'a Path);

impl Drop for Bound<'_> {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

#[test]
fn a_file_bind_mounted_from_a_stalling_fuse_file_is_refused_without_a_read() {
    let daemon = admin_daemon();
    // Large enough to be stored as an object, not kept inline: a read of
    // it is what would wait.
    let tree = tree(|root| std::fs::write(root.join("usr/large"), vec![2u8; 1 << 20]).unwrap());
    let mountpoint = tempfile::tempdir().unwrap();
    let fuse = Fuse::mount(mountpoint.path(), vec![FuseFile::stalling("big", 1 << 20)]);
    let large = tree.path().join("usr/large");
    rustix::mount::mount_bind(mountpoint.path().join("big"), &large).unwrap();
    let bound = Bound(&large);
    let path = tree.path().to_str().unwrap();
    for method in ["CreateImage", "ComputeImageId"] {
        let parameters = if method == "CreateImage" {
            json!({"name": "stalled"})
        } else {
            json!({})
        };
        let child = spawn_call_with_fd(&daemon, NOBODY, &[ADMINS], path, &call(method, parameters));
        let reply = reply_within(child, std::time::Duration::from_secs(20));
        assert_eq!(reply["error"], "io.cfsd.Repository.InvalidTree", "{reply}");
        assert_eq!(reply["parameters"]["path"], "./usr/large", "{reply}");
        let reason = reply["parameters"]["reason"].as_str().unwrap();
        assert!(reason.contains("mount point"), "{reply}");
    }
    assert_eq!(fuse.reads(), 0);
    assert_nothing_left(&daemon);
    drop(bound);
    drop(fuse);
    // The same tree, its file its own again, makes an image.
    let child = spawn_call_with_fd(
        &daemon,
        NOBODY,
        &[ADMINS],
        path,
        &call("CreateImage", json!({"name": "whole"})),
    );
    let reply = reply_within(child, std::time::Duration::from_secs(60));
    assert!(reply["parameters"]["imageId"].is_string(), "{reply}");
}

/// `cfsctl ARGS TREE` as an admin-group member.
fn admin_cfsctl(daemon: &Daemon, args: &[&str], tree: &Path) -> Command {
    let mut command = as_nobody(&[ADMINS], bin("cfsctl").to_str().unwrap());
    command
        .args(["--address", &daemon.address()])
        .args(args)
        .arg(tree);
    command
}

#[test]
fn a_client_hanging_up_mid_create_image_stops_it_soon_and_leaves_nothing() {
    let daemon = admin_daemon();
    // Half a GiB of one byte: long to read, hash and store.
    let tree = tree(|root| {
        let big = root.join("usr/big");
        std::fs::write(&big, vec![7u8; 512 << 20]).unwrap();
        std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o644)).unwrap();
    });
    let big = tree.path().join("usr/big");
    // The whole of the reading and hashing, without storing: less than a
    // CreateImage does.
    let start = Instant::now();
    let out = admin_cfsctl(&daemon, &["compute-id"], tree.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let whole = start.elapsed();

    let child = admin_cfsctl(&daemon, &["create-image"], tree.path())
        .spawn()
        .unwrap();
    assert_stops_soon_after_hang_up(&daemon, child, &big, whole, "compute-id");
    assert_nothing_left(&daemon);
    // The daemon serves on: the same tree makes an image.
    let out = admin_cfsctl(&daemon, &["create-image"], tree.path())
        .arg("again")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).trim().len() >= 64, "{}", stdout(&out));
}
