//! Plain images from a tree a hostile peer hands over (#18 item 6): an
//! unprivileged peer and an admin-group member, with trees holding what
//! they may not read, symlinks out, FIFOs, FUSE mounts whose reads never
//! return, deep nesting, and a hang-up in the middle of a long call.

use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    time::{Duration, Instant},
};

use cfsd_tests::{
    Daemon, bin,
    fuse::{Fuse, FuseFile},
    ocictl::object_count,
    peer::{
        NOBODY, as_nobody, reply_with_fd, reply_within, spawn_call_with_fd, spawn_call_with_root_fd,
    },
    plain_tree::{ADMINS, admin_daemon, tree},
    stderr, stdout, wait_for,
};
use serde_json::{Value, json};

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn call(method: &str, parameters: Value) -> Value {
    json!({"method": format!("io.cfsd.Repository.{method}"), "parameters": parameters})
}

fn create(name: &str) -> Value {
    call("CreateImage", json!({"name": name}))
}

fn named_images(daemon: &Daemon) -> Value {
    let out = daemon.cfsctl(&["--json", "images"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_str::<Value>(&stdout(&out)).unwrap()["images"].clone()
}

fn assert_error(reply: &Value, error: &str) {
    assert_eq!(
        reply["error"],
        format!("io.cfsd.Repository.{error}"),
        "{reply}"
    );
}

#[test]
fn an_unprivileged_peer_may_compute_and_list_but_not_create_or_mount() {
    let daemon = admin_daemon();
    let tree = tree(|_| {});
    let path = tree.path().to_str().unwrap();
    let objects = object_count(&daemon.repo());
    let refused = reply_with_fd(&daemon, NOBODY, &[], path, &create("mine"));
    assert_error(&refused, "PermissionDenied");
    assert_eq!(
        refused["parameters"]["method"],
        "io.cfsd.Repository.CreateImage"
    );
    let mount = reply_with_fd(
        &daemon,
        NOBODY,
        &[],
        "-",
        &call("MountImage", json!({"image": "x"})),
    );
    assert_error(&mount, "PermissionDenied");
    let computed = reply_with_fd(
        &daemon,
        NOBODY,
        &[],
        path,
        &call("ComputeImageId", json!({})),
    );
    let id = computed["parameters"]["imageId"]
        .as_str()
        .unwrap_or_else(|| panic!("{computed}"));
    let root = daemon.cfsctl(&["compute-id", path]);
    assert_eq!(stdout(&root).trim(), id);
    let listed = reply_with_fd(
        &daemon,
        NOBODY,
        &[],
        "-",
        &call("ListNamedImages", json!({})),
    );
    assert_eq!(listed["parameters"]["images"], json!([]), "{listed}");
    // Without the tree's fd, or with a file's, nothing is read.
    let missing = reply_with_fd(
        &daemon,
        NOBODY,
        &[],
        "-",
        &call("ComputeImageId", json!({})),
    );
    assert_error(&missing, "MissingFd");
    let file = tree.path().join("usr/readable");
    let file = reply_with_fd(
        &daemon,
        NOBODY,
        &[],
        file.to_str().unwrap(),
        &call("ComputeImageId", json!({})),
    );
    assert_error(&file, "MissingFd");
    assert_eq!(object_count(&daemon.repo()), objects);
}

/// A tree with a file and a directory only root may read.
fn tree_with_secrets() -> tempfile::TempDir {
    tree(|root| {
        std::fs::write(
            root.join("usr/secret"),
            b"root's eyes only, more than 64 bytes long......",
        )
        .unwrap();
        chmod(&root.join("usr/secret"), 0o600);
        std::fs::create_dir(root.join("private")).unwrap();
        chmod(&root.join("private"), 0o700);
    })
}

#[test]
fn the_tree_is_read_with_the_callers_rights_not_the_daemons() {
    let daemon = admin_daemon();
    let tree = tree_with_secrets();
    let path = tree.path().to_str().unwrap();
    let objects = object_count(&daemon.repo());
    for method in ["CreateImage", "ComputeImageId"] {
        let params = match method {
            "CreateImage" => json!({"name": "s"}),
            _ => json!({}),
        };
        let reply = reply_with_fd(&daemon, NOBODY, &[ADMINS], path, &call(method, params));
        assert_error(&reply, "InvalidTree");
        let where_ = reply["parameters"]["path"].as_str().unwrap();
        assert!(["./usr/secret", "./private"].contains(&where_), "{reply}");
        assert!(
            reply["parameters"]["reason"]
                .as_str()
                .unwrap()
                .contains("may not read"),
            "{reply}"
        );
    }
    // The fd of root's own directory, opened by root and handed to a
    // peer that became the admin-group member: still the peer's rights.
    let child =
        spawn_call_with_root_fd(&daemon, (NOBODY, &[ADMINS]), path, &create("deputy"), false);
    let reply = reply_within(child, Duration::from_secs(30));
    assert_error(&reply, "InvalidTree");
    assert_eq!(named_images(&daemon), json!([]));
    assert_eq!(object_count(&daemon.repo()), objects, "nothing was stored");
    // Root may read it all, and gets the image.
    let out = daemon.cfsctl(&["create-image", path, "root"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn symlinks_out_and_fifos_are_kept_as_themselves_never_followed_or_opened() {
    let daemon = admin_daemon();
    let tree = tree(|root| {
        for (target, name) in [
            ("/etc/shadow", "usr/shadow"),
            ("/etc", "usr/etc"),
            ("..", "usr/up"),
        ] {
            std::os::unix::fs::symlink(target, root.join(name)).unwrap();
        }
        let mode = rustix::fs::Mode::from_raw_mode(0o666);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("usr/fifo"),
            rustix::fs::FileType::Fifo,
            mode,
            0,
        )
        .unwrap();
    });
    let path = tree.path().to_str().unwrap();
    // A reader opening the FIFO would wait for a writer forever.
    let child = spawn_call_with_fd(&daemon, NOBODY, &[ADMINS], path, &create("links"));
    let reply = reply_within(child, Duration::from_secs(30));
    let id = reply["parameters"]["imageId"]
        .as_str()
        .unwrap_or_else(|| panic!("{reply}"));
    let out = daemon.cfsctl(&["image-objects", "links"]);
    // Only usr/readable: nothing of /etc came in through the links.
    assert_eq!(stdout(&out).lines().count(), 1, "{}", stdout(&out));
    let upstream = cfsd_tests::upstream::upstream();
    let theirs = std::process::Command::new(upstream)
        .args(["--no-repo", "compute-id", path])
        .output()
        .unwrap();
    assert_eq!(stdout(&theirs).trim(), id, "{}", stderr(&theirs));
}

#[test]
fn a_tree_on_fuse_or_with_fuse_inside_is_refused_without_a_read() {
    let daemon = admin_daemon();
    let scratch = tree(|root| std::fs::create_dir(root.join("usr/fuse")).unwrap());
    let inside = scratch.path().join("usr/fuse");
    // Every read of this file waits forever: a read would hang the call.
    let fuse = Fuse::mount(&inside, vec![FuseFile::stalling("big", 1 << 20)]);
    let cases = [
        (inside.clone(), "."),
        (scratch.path().to_owned(), "./usr/fuse"),
    ];
    for (tree, at) in cases {
        let child = spawn_call_with_fd(
            &daemon,
            NOBODY,
            &[ADMINS],
            tree.to_str().unwrap(),
            &create("fuse"),
        );
        let reply = reply_within(child, Duration::from_secs(20));
        assert_error(&reply, "InvalidTree");
        assert_eq!(reply["parameters"]["path"], at, "{reply}");
    }
    assert_eq!(fuse.reads(), 0);
    assert_eq!(named_images(&daemon), json!([]));
    drop(fuse);
}

#[test]
fn deep_nesting_is_refused_at_the_limit() {
    let daemon = admin_daemon();
    let tree = tree(|root| {
        let deep: std::path::PathBuf = std::iter::repeat_n("d", 300).collect();
        std::fs::create_dir_all(root.join("usr").join(deep)).unwrap();
    });
    let child = spawn_call_with_fd(
        &daemon,
        NOBODY,
        &[ADMINS],
        tree.path().to_str().unwrap(),
        &create("deep"),
    );
    let reply = reply_within(child, Duration::from_secs(30));
    assert_error(&reply, "InvalidTree");
    assert!(
        reply["parameters"]["reason"]
            .as_str()
            .unwrap()
            .contains("deeper than 256"),
        "{reply}"
    );
}

/// Whether the daemon holds `file` open.
fn daemon_has_open(daemon: &Daemon, file: &Path) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{}/fd", daemon.pid())) else {
        return false;
    };
    fds.flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == file))
}

#[test]
fn a_hung_up_compute_id_stops_reading_soon() {
    let daemon = admin_daemon();
    // A sparse GiB: long to read and hash, nothing on disk.
    let tree = tree(|root| {
        let big = std::fs::File::create(root.join("usr/big")).unwrap();
        big.set_len(1 << 30).unwrap();
        chmod(&root.join("usr/big"), 0o644);
    });
    let big = tree.path().join("usr/big");
    let cfsctl = || {
        let mut command = as_nobody(&[ADMINS], bin("cfsctl").to_str().unwrap());
        command.args([
            "--address",
            &daemon.address(),
            "compute-id",
            tree.path().to_str().unwrap(),
        ]);
        command
    };
    let start = Instant::now();
    let out = cfsctl().output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let whole = start.elapsed();

    let mut child = cfsctl().spawn().unwrap();
    wait_for("the daemon to open the large file", whole * 2, || {
        daemon_has_open(&daemon, &big)
    });
    let since = Instant::now();
    child.kill().unwrap();
    child.wait().unwrap();
    wait_for("the daemon to close it", whole, || {
        !daemon_has_open(&daemon, &big)
    });
    let stopped = since.elapsed();
    eprintln!("whole compute-id {whole:?}; stopped {stopped:?} after the hang-up");
    assert!(
        stopped < whole / 3,
        "the read went on for {stopped:?} after the hang-up; all of it takes {whole:?}"
    );
    // The daemon serves on.
    assert!(daemon.cfsctl(&["images"]).status.success());
}

#[test]
fn the_callers_groups_count_and_an_admin_may_not_mount() {
    let daemon = admin_daemon();
    let tree = tree(|root| {
        let shared = root.join("usr/for-admins");
        std::fs::write(&shared, vec![9u8; 100]).unwrap();
        chmod(&shared, 0o640);
        rustix::fs::chown(&shared, None, Some(rustix::fs::Gid::from_raw(ADMINS))).unwrap();
    });
    let path = tree.path().to_str().unwrap();
    // Readable through the admin group only: the groups were taken too.
    let made = reply_with_fd(&daemon, NOBODY, &[ADMINS], path, &create("admins"));
    assert!(made["parameters"]["imageId"].is_string(), "{made}");
    let out = daemon.cfsctl(&["image-objects", "admins"]);
    assert_eq!(stdout(&out).lines().count(), 2, "{}", stdout(&out));
    let mount = call("MountImage", json!({"image": "admins"}));
    let refused = reply_with_fd(&daemon, NOBODY, &[ADMINS], "-", &mount);
    assert_error(&refused, "PermissionDenied");
    assert_eq!(
        refused["parameters"]["method"],
        "io.cfsd.Repository.MountImage"
    );
}
