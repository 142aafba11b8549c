//! Plain composefs images from a directory tree (#18 item 6): the ids,
//! objects and EROFS bytes upstream cfsctl 0.9.4 gives the same tree,
//! listing, naming, and mounting one to read its bytes back. What
//! hostile peers can do with these methods is in plain_images_hostile.rs.

use std::{
    collections::BTreeSet,
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use cfsd_tests::{
    Daemon,
    oci::noise,
    stderr, stdout,
    upstream::{theirs, upstream},
};
use serde_json::Value;

/// Set xattr `name` on `path` (not following a symlink) as root.
fn setxattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setting {name} on {}: {e}", path.display()));
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A tree of every kind of entry upstream reads: regular files around
/// composefs's 64-byte inline limit, empty and large ones, hardlinks,
/// symlinks (out of the tree too), a FIFO, a device node, xattrs,
/// setuid and sticky modes, other owners, nesting, and a `/run` that the
/// OCI transformation empties.
pub fn parity_tree(root: &Path) {
    let dirs = [
        "usr/bin",
        "usr/share/a/b/c/d/e",
        "etc",
        "run/stale",
        "tmp",
        "dev",
    ];
    for dir in dirs {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    let write = |path: &str, data: &[u8]| std::fs::write(root.join(path), data).unwrap();
    write("usr/bin/tool", &noise(1, 3 << 20));
    write("usr/share/empty", b"");
    write("usr/share/inline64", &noise(2, 64));
    write("usr/share/external65", &noise(3, 65));
    write("usr/share/a/b/c/d/e/deep", &noise(4, 4096));
    write("etc/hostname", b"parity\n");
    write("run/stale/pid", b"42\n");
    std::fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool-again")).unwrap();
    std::fs::hard_link(root.join("etc/hostname"), root.join("etc/hostname-link")).unwrap();
    let symlink = |target: &str, path: &str| {
        std::os::unix::fs::symlink(target, root.join(path)).unwrap();
    };
    symlink("/etc/shadow", "etc/shadow-out");
    symlink("../usr/bin/tool", "etc/tool");
    symlink("..", "etc/up");
    symlink("nowhere", "etc/dangling");
    let node = |path: &str, kind, dev| {
        let mode = rustix::fs::Mode::from_raw_mode(0o640);
        rustix::fs::mknodat(rustix::fs::CWD, root.join(path), kind, mode, dev).unwrap();
    };
    node("tmp/fifo", rustix::fs::FileType::Fifo, 0);
    node(
        "dev/null",
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::makedev(1, 3),
    );
    chmod(&root.join("usr/bin/tool"), 0o4755);
    chmod(&root.join("tmp"), 0o1777);
    chmod(&root.join("usr/share/empty"), 0o000);
    let odd = root.join("usr/share/inline64");
    rustix::fs::chown(&odd, Some(rustix::fs::Uid::from_raw(1234)), None).unwrap();
    std::os::unix::fs::lchown(root.join("etc/tool"), Some(4321), Some(8765)).unwrap();
    // A v2 capability set: cap_net_bind_service permitted.
    let caps = [2u32 << 24, 1 << 10, 0, 0, 0]
        .map(u32::to_le_bytes)
        .concat();
    setxattr(&root.join("usr/bin/tool"), "security.capability", &caps);
    setxattr(
        &root.join("usr/share/external65"),
        "user.note",
        b"kept with keep-user-xattrs",
    );
    setxattr(
        &root.join("usr"),
        "user.dir",
        b"on /usr, so on the root too",
    );
    setxattr(
        &root.join("etc/hostname"),
        "trusted.secret",
        b"only root reads this",
    );
}

/// A daemon with an initialised repository, and a tree beside it.
fn daemon_and_tree() -> (Daemon, tempfile::TempDir) {
    let daemon = Daemon::start_initialised(&[]);
    let tree = tempfile::tempdir().unwrap();
    parity_tree(tree.path());
    (daemon, tree)
}

fn ours(daemon: &Daemon, args: &[&str]) -> String {
    let out = daemon.cfsctl(args);
    assert!(out.status.success(), "cfsctl {args:?}: {}", stderr(&out));
    stdout(&out)
}

fn lines(text: &str) -> BTreeSet<String> {
    text.lines().map(str::to_owned).collect()
}

/// The bytes of object `id` (`ALGORITHM:HEX`) in `repo`.
fn object(repo: &Path, id: &str) -> Vec<u8> {
    let hex = id.split_once(':').map_or(id, |(_, hex)| hex);
    std::fs::read(repo.join("objects").join(&hex[..2]).join(&hex[2..])).unwrap()
}

fn upstream_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(upstream())
        .args(["init", "--insecure"])
        .arg(dir.path().join("repo"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    dir
}

#[test]
fn images_of_a_tree_match_upstreams_ids_objects_and_bytes() {
    let (daemon, tree) = daemon_and_tree();
    let path = tree.path().to_str().unwrap();
    let upstream_dir = upstream_repo();
    let their_repo = upstream_dir.path().join("repo");

    let created = ours(&daemon, &["create-image", path, "parity"]);
    assert_eq!(
        created,
        theirs(&their_repo, &["create-image", path, "parity"])
    );
    let hex = created.trim().split_once(':').unwrap().1.to_owned();
    assert_eq!(ours(&daemon, &["compute-id", path]).trim(), hex);
    // Every option, against upstream computing without a repository.
    for options in [
        &[][..],
        &["--xattrs", "keep-user-xattrs"],
        &["--no-propagate-usr-to-root"],
    ] {
        let mut args = vec!["compute-id"];
        args.extend(options);
        args.push(path);
        let upstream_args: Vec<&str> = ["--no-repo"].into_iter().chain(args.clone()).collect();
        let out = std::process::Command::new(upstream())
            .args(&upstream_args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(ours(&daemon, &args), stdout(&out), "{options:?}");
    }

    let objects = ours(&daemon, &["image-objects", "parity"]);
    let upstream_objects = theirs(&their_repo, &["image-objects", "parity"]);
    assert_eq!(lines(&objects), lines(&upstream_objects));
    // tool (and its hardlink), external65 and deep.
    assert_eq!(lines(&objects).len(), 3, "{objects}");
    for id in lines(&objects) {
        assert_eq!(
            object(&daemon.repo(), &id),
            object(&their_repo, &id),
            "{id}"
        );
    }
    let erofs = |repo: &Path| std::fs::read(repo.join("images").join(&hex)).unwrap();
    assert_eq!(erofs(&daemon.repo()), erofs(&their_repo));
    // Upstream reads what cfsd wrote, by name.
    let from_ours = theirs(&daemon.repo(), &["image-objects", "parity"]);
    assert_eq!(lines(&from_ours), lines(&objects));

    let listed: Value = serde_json::from_str(&ours(&daemon, &["--json", "images"])).unwrap();
    assert_eq!(
        listed,
        serde_json::json!({"images": [{"name": "parity", "imageId": hex}]})
    );
    let upstream_listed: Value =
        serde_json::from_str(&theirs(&their_repo, &["images", "--json"])).unwrap();
    assert_eq!(upstream_listed["images"][0]["digest"], hex.as_str());
}

#[test]
fn a_mounted_image_reads_back_the_trees_bytes() {
    let (daemon, tree) = daemon_and_tree();
    let path = tree.path().to_str().unwrap();
    ours(&daemon, &["create-image", path, "os/stable"]);
    let at = tempfile::tempdir().unwrap();
    let mounted = ours(
        &daemon,
        &["mount", "os/stable", at.path().to_str().unwrap()],
    );
    assert!(mounted.starts_with("Mounted os/stable at"), "{mounted}");
    let mount = at.path();
    for file in [
        "usr/bin/tool",
        "usr/share/external65",
        "usr/share/a/b/c/d/e/deep",
    ] {
        let (a, b) = (tree.path().join(file), mount.join(file));
        assert_eq!(
            std::fs::read(&a).unwrap(),
            std::fs::read(&b).unwrap(),
            "{file}"
        );
    }
    assert_eq!(
        std::fs::read(mount.join("etc/hostname")).unwrap(),
        b"parity\n"
    );
    let link = std::fs::read_link(mount.join("etc/shadow-out")).unwrap();
    assert_eq!(link, PathBuf::from("/etc/shadow"));
    let fifo = std::fs::symlink_metadata(mount.join("tmp/fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
    let tool = std::fs::metadata(mount.join("usr/bin/tool")).unwrap();
    assert_eq!(tool.mode() & 0o7777, 0o4755);
    assert_eq!(tool.nlink(), 2, "the hardlink is kept");
    assert!(
        std::fs::read_dir(mount.join("run"))
            .unwrap()
            .next()
            .is_none()
    );
    // nosuid and nodev, as every image mount the daemon makes.
    let st = rustix::fs::statvfs(mount).unwrap();
    let flags = rustix::fs::StatVfsMountFlags::NOSUID | rustix::fs::StatVfsMountFlags::NODEV;
    assert!(st.f_flag.contains(flags), "{:?}", st.f_flag);
    let out = daemon.cfsctl(&["oci", "umount", mount.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A failed cfsctl call's typed error, from `--json`.
fn error_of(daemon: &Daemon, args: &[&str]) -> Value {
    let args: Vec<&str> = ["--json"].into_iter().chain(args.iter().copied()).collect();
    let out = daemon.cfsctl(&args);
    assert!(!out.status.success(), "{args:?} succeeded");
    serde_json::from_str(stdout(&out).trim()).unwrap()
}

#[test]
fn images_are_named_listed_and_looked_up_by_name_or_id() {
    let (daemon, tree) = daemon_and_tree();
    let path = tree.path().to_str().unwrap();
    let e = error_of(&daemon, &["create-image", path, "../escape"]);
    assert_eq!(e["error"], "io.cfsd.Repository.InvalidImageName", "{e}");
    assert_eq!(e["parameters"]["name"], "../escape");
    assert!(
        !daemon.repo().join("images").exists(),
        "nothing was written"
    );

    let id = ours(&daemon, &["create-image", path, "b/two"]);
    assert_eq!(id, ours(&daemon, &["create-image", path, "a-one"]));
    let anonymous = ours(&daemon, &["create-image", path]);
    assert_eq!(anonymous, id);
    let hex = id.trim().split_once(':').unwrap().1;
    let listed: Value = serde_json::from_str(&ours(&daemon, &["--json", "images"])).unwrap();
    let names: Vec<&str> = listed["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            assert_eq!(i["imageId"], hex);
            i["name"].as_str().unwrap()
        })
        .collect();
    assert_eq!(names, ["a-one", "b/two"]);
    let table = ours(&daemon, &["images"]);
    assert!(table.contains(&format!("b/two  {}", &hex[..12])), "{table}");
    let by_name = ours(&daemon, &["image-objects", "b/two"]);
    assert_eq!(by_name, ours(&daemon, &["image-objects", hex]));
    for unknown in ["nothing", "../../etc", &"0".repeat(128)] {
        let e = error_of(&daemon, &["image-objects", unknown]);
        assert_eq!(
            e["error"], "io.cfsd.Repository.ImageNotFound",
            "{unknown}: {e}"
        );
        let e = error_of(&daemon, &["mount", unknown, tree.path().to_str().unwrap()]);
        assert_eq!(
            e["error"], "io.cfsd.Repository.ImageNotFound",
            "{unknown}: {e}"
        );
    }
    // What the OCI transformation needs: a /usr to copy the root's
    // metadata from.
    let bare = tempfile::tempdir().unwrap();
    let e = error_of(
        &daemon,
        &["create-image", bare.path().to_str().unwrap(), "bare"],
    );
    assert_eq!(e["error"], "io.cfsd.Repository.InvalidTree", "{e}");
    let id = ours(
        &daemon,
        &[
            "compute-id",
            "--no-propagate-usr-to-root",
            bare.path().to_str().unwrap(),
        ],
    );
    assert_eq!(id.trim().len(), 128);
}
