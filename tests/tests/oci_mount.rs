//! `cfsctl oci mount` shows exactly the files of the image: the layers
//! extracted in order by GNU tar, with the whiteouts applied, compared file
//! by file with the mounted composefs image.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::fs::{FileTypeExt, MetadataExt},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use cfsd_tests::{
    Daemon,
    mounted::{Mounted, mount},
    oci::{Image, Layout, Written, cap_net_raw, everything_image, long_paths},
    ocictl::{PrivateRepo, Published, Target, json, object_count, published, pull, succeeds},
    skip, stderr,
};

/// What is compared of one file.
#[derive(Debug, PartialEq, Eq)]
struct Meta {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    /// Regular files: the content; symlinks: the target.
    data: Vec<u8>,
    rdev: u64,
    /// Regular files only: directory mtimes change as later layers are
    /// extracted into them.
    mtime: Option<i64>,
}

/// Every path under `root` (relative, not `root` itself) with its
/// metadata, and the groups of regular files that share an inode.
fn scan(root: &Path) -> (BTreeMap<String, Meta>, BTreeSet<BTreeSet<String>>) {
    let mut files = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let md = std::fs::symlink_metadata(&path).unwrap();
            let ft = md.file_type();
            let (kind, data) = if ft.is_dir() {
                stack.push(path.clone());
                ("dir", Vec::new())
            } else if ft.is_file() {
                inodes
                    .entry((md.dev(), md.ino()))
                    .or_default()
                    .insert(rel.clone());
                ("file", std::fs::read(&path).unwrap())
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                ("symlink", target.into_os_string().into_encoded_bytes())
            } else if ft.is_char_device() {
                ("char", Vec::new())
            } else if ft.is_block_device() {
                ("block", Vec::new())
            } else if ft.is_fifo() {
                ("fifo", Vec::new())
            } else {
                ("other", Vec::new())
            };
            let meta = Meta {
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                data,
                rdev: if kind == "char" || kind == "block" {
                    md.rdev()
                } else {
                    0
                },
                mtime: (kind == "file").then(|| md.mtime()),
            };
            files.insert(rel, meta);
        }
    }
    let links = inodes.into_values().filter(|g| g.len() > 1).collect();
    (files, links)
}

/// The image's tree as GNU tar makes it: each layer's whiteouts applied to
/// what is below, then the layer extracted without them; and `/run`
/// emptied, as composefs does for OCI images.
fn extract(image: &Image, tars: &[Vec<u8>], scratch: &Path) -> PathBuf {
    let root = scratch.join("root");
    std::fs::create_dir_all(&root).unwrap();
    for (i, (layer, tar)) in image.layers.iter().zip(tars).enumerate() {
        for entry in layer.entries.iter().filter(|e| e.is_whiteout()) {
            let (dir, name) = entry.path.rsplit_once('/').unwrap_or(("", &entry.path));
            let dir = root.join(dir);
            if name == ".wh..wh..opq" {
                for child in std::fs::read_dir(&dir).unwrap() {
                    remove(&child.unwrap().path());
                }
            } else {
                remove(&dir.join(name.strip_prefix(".wh.").unwrap()));
            }
        }
        let file = scratch.join(format!("layer{i}.tar"));
        std::fs::write(&file, tar).unwrap();
        let out = Command::new("tar")
            .args(["--extract", "--numeric-owner", "--same-owner"])
            .args(["--same-permissions", "--exclude=.wh.*", "--file"])
            .arg(&file)
            .arg("--directory")
            .arg(&root)
            .output()
            .unwrap();
        assert!(out.status.success(), "tar: {}", stderr(&out));
    }
    let run = root.join("run");
    for child in std::fs::read_dir(&run).unwrap() {
        remove(&child.unwrap().path());
    }
    root
}

fn remove(path: &Path) {
    let md = std::fs::symlink_metadata(path).unwrap();
    if md.is_dir() {
        std::fs::remove_dir_all(path).unwrap();
    } else {
        std::fs::remove_file(path).unwrap();
    }
}

/// The expected tree of the everything image, checked for what it must
/// show: the oracle itself is tested first.
fn expected_tree(scratch: &Path) -> (BTreeMap<String, Meta>, BTreeSet<BTreeSet<String>>) {
    let image = everything_image();
    let tars: Vec<Vec<u8>> = image.layers.iter().map(|l| l.tar()).collect();
    let root = extract(&image, &tars, scratch);
    let (expected, links) = scan(&root);
    // Whiteouts applied, an overwritten file's old hard link kept, long
    // names present.
    assert!(!expected.contains_key("etc/removed"));
    assert!(!expected.contains_key("olddir"));
    assert!(!expected.contains_key("opaque/a"));
    assert!(!expected.contains_key("opaque/sub"));
    assert!(!expected.contains_key("usr/bin/setgid-tool"));
    assert!(!expected.contains_key("run/leftover"));
    assert!(expected.contains_key("opaque/new"));
    assert_eq!(
        expected["etc/shared-hardlink"].data,
        b"replaced in layer 1; its hard link keeps this\n"
    );
    assert_eq!(expected["etc/shared"].data, b"layer 1's own shared\n");
    for path in long_paths() {
        assert!(expected.contains_key(&path), "{path}");
    }
    assert!(
        links.contains(&BTreeSet::from([
            "usr/lib/big.bin".to_owned(),
            "usr/lib/big-hardlink".to_owned(),
            "usr/bin/big-hardlink-2".to_owned(),
        ])),
        "{links:?}"
    );
    (expected, links)
}

/// Compare the image mounted at `mountpoint` with `expected`, file by file.
fn check_mounted(
    mountpoint: &Path,
    (expected, expected_links): &(BTreeMap<String, Meta>, BTreeSet<BTreeSet<String>>),
) {
    let (mounted, mounted_links) = scan(mountpoint);

    let expected_paths: BTreeSet<_> = expected.keys().collect();
    let mounted_paths: BTreeSet<_> = mounted.keys().collect();
    assert_eq!(
        mounted_paths
            .difference(&expected_paths)
            .collect::<Vec<_>>(),
        Vec::<&&String>::new(),
        "in the mount but not in the layers"
    );
    assert_eq!(
        expected_paths
            .difference(&mounted_paths)
            .collect::<Vec<_>>(),
        Vec::<&&String>::new(),
        "in the layers but not in the mount"
    );
    for (path, want) in expected {
        let got = &mounted[path];
        // Compare piecewise so that a failure does not print megabytes.
        assert_eq!(got.kind, want.kind, "{path}");
        assert_eq!(
            (got.mode, got.uid, got.gid, got.rdev, got.mtime),
            (want.mode, want.uid, want.gid, want.rdev, want.mtime),
            "{path}: (mode, uid, gid, rdev, mtime)"
        );
        assert!(
            got.data == want.data,
            "{path}: content differs ({} vs {} bytes)",
            got.data.len(),
            want.data.len()
        );
    }
    assert_eq!(&mounted_links, expected_links, "hard-link groups");

    // `/` takes `/usr`'s metadata.
    let root = std::fs::metadata(mountpoint).unwrap();
    let usr = std::fs::metadata(mountpoint.join("usr")).unwrap();
    assert_eq!(
        (root.mode(), root.uid(), root.gid()),
        (usr.mode(), usr.uid(), usr.gid())
    );
    assert_eq!(usr.mode() & 0o7777, 0o751);

    // security.capability is kept; other xattrs of OCI content are not.
    let ping = mountpoint.join("usr/bin/ping");
    let mut buf = vec![0u8; 256];
    let n = rustix::fs::lgetxattr(&ping, "security.capability", &mut buf[..])
        .expect("security.capability on /usr/bin/ping");
    assert_eq!(&buf[..n], &cap_net_raw()[..]);
    let err = rustix::fs::lgetxattr(&ping, "user.comment", &mut buf[..]).unwrap_err();
    assert_eq!(err, rustix::io::Errno::NODATA);

    // Read-only.
    let err = std::fs::write(mountpoint.join("etc/new"), b"x").unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(rustix::io::Errno::ROFS.raw_os_error())
    );
}

#[test]
fn oci_mount_shows_the_layers_as_tar_extracts_them() {
    let (layout, _) = Layout::single(&everything_image(), None);
    let written = Written::new(&layout);
    let repo = PrivateRepo::init("sha512");
    pull(&repo, &[&written.archive(None), "everything"]);

    let scratch = tempfile::tempdir().unwrap();
    let expected = expected_tree(scratch.path());
    let mountpoint = scratch.path().join("mnt");
    let Some(_mounted) = mount(&repo, "everything", &mountpoint) else {
        return;
    };
    check_mounted(&mountpoint, &expected);
}

/// The oracle and the comparison are right: composefs-rs's own pull and
/// mount of the same archive pass the same check.
#[test]
fn oci_mount_check_holds_for_composefs_rs_itself() {
    use composefs::{
        fsverity::{Algorithm, FsVerityHashValue, Sha256HashValue},
        repository::{Repository, RepositoryConfig},
    };

    let (layout, _) = Layout::single(&everything_image(), None);
    let written = Written::new(&layout);
    let scratch = tempfile::tempdir().unwrap();
    let expected = expected_tree(&scratch.path().join("tar"));

    let config = RepositoryConfig::new(Algorithm::for_hash::<Sha256HashValue>()).set_insecure();
    let (repo, _) = Repository::<Sha256HashValue>::init_path(
        rustix::fs::CWD,
        scratch.path().join("repo"),
        config,
    )
    .unwrap();
    let repo = std::sync::Arc::new(repo);
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(composefs_oci::pull(
            &repo,
            &written.archive(None),
            Some("everything"),
            Default::default(),
        ))
        .unwrap();
    let image = composefs_oci::OciImage::open_ref(&repo, "everything").unwrap();
    let mountpoint = scratch.path().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let id = image.image_ref(repo.erofs_version()).unwrap().to_hex();
    if let Err(e) = repo.mount_at(&id, &mountpoint, &Default::default()) {
        let reason = format!("{e:#}");
        if reason.contains("Operation not permitted") || reason.contains("not implemented") {
            skip(&format!("the kernel refused the mount: {reason}"));
            return;
        }
        panic!("upstream mount failed: {reason}");
    }
    let _mounted = Mounted(mountpoint.clone());
    check_mounted(&mountpoint, &expected);
}

#[test]
fn oci_mount_of_an_unknown_image_fails_and_mounts_nothing() {
    let repo = PrivateRepo::init("sha256");
    let dir = tempfile::tempdir().unwrap();
    let out = repo.run(&["oci", "mount", "nothing", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("nothing"), "{}", stderr(&out));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // Still the same filesystem as its parent: nothing is mounted there.
    let parent = std::fs::metadata(dir.path().parent().unwrap()).unwrap();
    let this = std::fs::metadata(dir.path()).unwrap();
    assert_eq!(parent.dev(), this.dev());
}

/// `images/<id>` of the image tagged `tag`, and its bytes.
fn image_file(daemon: &Daemon, tag: &str) -> (PathBuf, Vec<u8>) {
    let id = json(daemon, &["oci", "inspect", tag])["imageId"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = daemon.repo().join("images").join(id);
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

/// `cfsctl gc`, which must succeed; the objects it removed.
fn gc(daemon: &Daemon) -> u64 {
    json(daemon, &["gc"])["objectsRemoved"].as_u64().unwrap()
}

/// GC keeps what a mount serves, even once no tag names the image and
/// after cfsd restarts, because the mount itself is the root; once the
/// mount is gone, the next GC removes everything.
#[test]
fn gc_keeps_a_mounted_image_until_it_is_unmounted() {
    let (layout, _) = Layout::single(&everything_image(), None);
    let written = Written::new(&layout);
    let mut daemon = Daemon::start_initialised(&[]);
    pull(&daemon, &[&written.archive(None), "everything"]);
    let (image, image_bytes) = image_file(&daemon, "everything");

    let scratch = tempfile::tempdir().unwrap();
    let expected = expected_tree(scratch.path());
    let mountpoint = scratch.path().join("mnt");
    let Some(mounted) = mount(&daemon, "everything", &mountpoint) else {
        return;
    };
    succeeds(&daemon, &["oci", "untag", "everything"]);
    let objects = object_count(&daemon.repo());

    // The config and manifest streams go; the EROFS image and every
    // object it names stay.
    gc(&daemon);
    assert_eq!(std::fs::read(&image).unwrap(), image_bytes);
    check_mounted(&mountpoint, &expected);
    let kept = object_count(&daemon.repo());
    assert!(
        kept > 1 && kept < objects,
        "{kept} of {objects} objects kept"
    );

    // Nothing in the new daemon's memory knows of the mount.
    daemon.kill_and_restart();
    assert_eq!(gc(&daemon), 0, "a restarted cfsd collected a mounted image");
    assert_eq!(std::fs::read(&image).unwrap(), image_bytes);
    check_mounted(&mountpoint, &expected);

    let out = Command::new("umount").arg(&mountpoint).output().unwrap();
    assert!(out.status.success(), "umount: {}", stderr(&out));
    std::mem::forget(mounted);
    assert_eq!(gc(&daemon), kept as u64);
    assert!(!image.exists(), "{} survived its unmount", image.display());
    assert_eq!(object_count(&daemon.repo()), 0);
    assert_eq!(published(&daemon.repo()), Published::default());
}

/// A mount handed to a client is in no mount table until the client
/// attaches it: a GC meanwhile does not run, and afterwards keeps the
/// image.
#[test]
fn gc_waits_for_a_handed_out_mount_to_be_attached() {
    let scratch = tempfile::tempdir().unwrap();
    let expected = expected_tree(scratch.path());
    let mountpoint = scratch.path().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let Some((daemon, detached, objects)) = untagged_mount_holding_off_gc() else {
        return;
    };
    assert_eq!(object_count(&daemon.repo()), objects, "GC removed objects");
    cfsd_tests::attach_mount(&detached, &mountpoint);
    // Attached, it is in the mount table, a root of the next GC.
    let report = json(&daemon, &["gc"]);
    let _mounted = Mounted(mountpoint.clone());
    assert!(report["objectsRemoved"].as_u64().unwrap() > 0, "{report}");
    check_mounted(&mountpoint, &expected);
}

/// How long GC waits for a handed-out mount to be attached: the
/// repository's `ATTACH_WAIT`, which docs/reliability.md promises.
const ATTACH_WAIT: Duration = Duration::from_secs(10);

/// A mount handed out and never attached holds GC off for
/// [`ATTACH_WAIT`], not for ever: GC is refused while it waits,
/// then runs and collects the untagged image (what such a mount served is
/// then gone, as docs/reliability.md says).
#[test]
fn gc_stops_waiting_for_a_mount_never_attached() {
    let Some((daemon, _detached, objects)) = untagged_mount_holding_off_gc() else {
        return;
    };
    let handed_out = Instant::now();
    let mut conn = daemon.raw();
    let gc = serde_json::json!({
        "method": "io.cfsd.Repository.Gc", "parameters": {"dryRun": false}
    });
    // Each refused GC waited its second; one of them runs once the wait
    // for the mount is over.
    let report = loop {
        let reply = conn.call(gc.clone());
        if reply.get("error").is_none() {
            break reply;
        }
        assert_eq!(
            reply["error"], "io.cfsd.Repository.RepositoryBusy",
            "{reply}"
        );
        assert!(
            handed_out.elapsed() < ATTACH_WAIT * 3,
            "GC still waits for the unattached mount after {:?}: {reply}",
            handed_out.elapsed()
        );
    };
    // Measured from after the first refused GC, a second into the wait.
    let waited = handed_out.elapsed();
    assert!(
        waited + Duration::from_secs(3) >= ATTACH_WAIT,
        "GC ran after {waited:?}, before the mount's wait was over"
    );
    let removed = report["parameters"]["objectsRemoved"].clone();
    assert!(removed.as_u64().unwrap() > 0, "{report}");
    assert!(object_count(&daemon.repo()) < objects);
}

/// A daemon (`--gc-wait 1`) that pulled the everything image, handed out
/// a mount of it (returned, detached and never attached) and untagged it;
/// a GC then is refused, waiting for that mount. Also the object count
/// before that GC. `None` when the kernel refuses the mount and skipping
/// is allowed.
fn untagged_mount_holding_off_gc() -> Option<(Daemon, std::os::fd::OwnedFd, usize)> {
    let (layout, _) = Layout::single(&everything_image(), None);
    let written = Written::new(&layout);
    let daemon = Daemon::start_initialised(&["--gc-wait", "1"]);
    pull(&daemon, &[&written.archive(None), "everything"]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let params = cfsd_varlink::oci::MountParams {
        image: "everything".to_owned(),
        ..Default::default()
    };
    let detached = match runtime.block_on(async { daemon.client().await.mount(&params).await }) {
        Ok(fd) => fd,
        Err(e) => {
            let reason = format!("{e:?}");
            if reason.contains("Operation not permitted") || reason.contains("not implemented") {
                skip(&format!("the kernel refused the mount: {reason}"));
                return None;
            }
            panic!("Mount failed: {reason}");
        }
    };
    succeeds(&daemon, &["oci", "untag", "everything"]);
    // GC does not run while the mount is unattached: it gives up after
    // its wait, and says the unattached mount is what it waited for.
    let objects = object_count(&daemon.repo());
    let busy = daemon.raw().call(serde_json::json!({
        "method": "io.cfsd.Repository.Gc", "parameters": {"dryRun": false}
    }));
    assert_eq!(busy["error"], "io.cfsd.Repository.RepositoryBusy", "{busy}");
    let holders = busy["parameters"]["holders"].to_string();
    assert!(holders.contains("not yet attached"), "{holders}");
    assert_eq!(object_count(&daemon.repo()), objects, "GC removed objects");
    Some((daemon, detached, objects))
}
