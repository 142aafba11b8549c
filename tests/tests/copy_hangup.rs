//! `Oci.Copy` against a client that hangs up mid-copy and a source
//! repository that would stall the daemon's reads: the copy stops soon
//! after the hang-up and leaves nothing named (no tag, no layer stream,
//! nothing gc keeps), and an object file that is a FUSE file whose reads
//! never return is refused without a read. The daemon serves on.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use cfsd_tests::{
    Daemon, bin,
    fuse::{Fuse, FuseFile},
    hangup::assert_stops_soon_after_hang_up,
    oci::{Compression, Entry, Image, Layer, Layout, Written, small_image},
    ocictl::{PrivateRepo, Target, json, object_count, published, pull},
    peer::{NOBODY, spawn_call_with_fd},
    repo_files::{file_of_size, tmp_leftovers},
    stalled::finished_within,
    stderr, stdout,
};
use serde_json::{Value, json};

const ADMINS: u32 = 4242;

/// The size of the one large file of the image copied and cut short.
const LARGE: u64 = 512 << 20;

/// A source repository of `algorithm` holding `image` as `img`.
fn source_repo(algorithm: &str, image: &Image) -> PrivateRepo {
    let mut layout = Layout::new();
    layout.add_image(image, Some("img"));
    let source = PrivateRepo::init(algorithm);
    pull(&source, &[&Written::new(&layout).oci(Some("img")), "img"]);
    source
}

/// `cfsctl oci copy --from SOURCE img TAG` as root, to `daemon`.
fn copy_command(daemon: &Daemon, source: &Path, tag: &str) -> Command {
    let mut command = Command::new(bin("cfsctl"));
    command
        .args(["--address", &daemon.address(), "oci", "copy", "--from"])
        .arg(source)
        .args(["img", tag])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Nothing is tagged or staged, and gc leaves no layer stream, object
/// or temporary file.
fn assert_nothing_named_and_gc_empties(daemon: &Daemon) {
    let tags = published(&daemon.repo()).tags;
    assert!(tags.is_empty(), "{tags:?}");
    let stages = json(daemon, &["oci", "staged"]);
    assert_eq!(stages["stages"], json!([]), "{stages}");
    let collected = json(daemon, &["gc"]);
    let streams = published(&daemon.repo()).streams_starting("oci-layer-");
    assert!(streams.is_empty(), "gc kept a layer stream: {streams:?}");
    assert_eq!(
        object_count(&daemon.repo()),
        0,
        "gc kept objects: {collected}"
    );
    let leftovers = tmp_leftovers(&daemon.repo());
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_client_hanging_up_mid_copy_stops_it_soon_and_leaves_nothing() {
    let image = Image::new(vec![Layer::new(
        Compression::None,
        vec![
            Entry::dir("usr"),
            Entry::file("usr/large", vec![0x5a; LARGE as usize]),
        ],
    )]);
    // Across algorithms every byte is read from the source and hashed
    // again: the longest copy there is.
    let source = source_repo("sha256", &image);
    let large = file_of_size(&source.repo_path().join("objects"), LARGE);
    let daemon = Daemon::start_initialised(&[]);
    let start = Instant::now();
    let out = copy_command(&daemon, &source.repo_path(), "whole")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let whole = start.elapsed();
    assert!(daemon.cfsctl(&["oci", "rm", "whole"]).status.success());
    assert_nothing_named_and_gc_empties(&daemon);

    let child = copy_command(&daemon, &source.repo_path(), "cut")
        .spawn()
        .unwrap();
    assert_stops_soon_after_hang_up(&daemon, child, &large, whole, "the copy");
    assert_nothing_named_and_gc_empties(&daemon);
    // The source was only read, and the daemon serves on: the same copy
    // goes through.
    let out = copy_command(&daemon, &source.repo_path(), "again")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A copy of `source`'s repository in a directory of the daemon's that
/// nobody may read, owned by nobody.
fn nobodys_copy(source: &PrivateRepo, daemon: &Daemon) -> PathBuf {
    let dir = daemon.dir().join("peer");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.join("repo");
    for (program, args) in [
        ("cp", vec!["-a".to_owned()]),
        ("chown", vec!["-R".to_owned(), format!("{NOBODY}:{NOBODY}")]),
    ] {
        let mut command = Command::new(program);
        command.args(args);
        if program == "cp" {
            command.arg(source.repo_path());
        }
        assert!(command.arg(&copy).status().unwrap().success());
    }
    copy
}

/// Unmounts a bind mount when dropped, before the FUSE filesystem under
/// it goes.
struct Bound(PathBuf);

impl Drop for Bound {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

#[test]
fn an_object_that_is_a_stalling_fuse_file_is_refused_without_a_read() {
    let daemon = Daemon::start_for_nobody(&["--allow-group", &ADMINS.to_string()]);
    assert!(daemon.cfsctl(&["init"]).status.success());
    let source = source_repo("sha256", &small_image(Compression::Gzip, "stall"));
    let copy = nobodys_copy(&source, &daemon);
    let object = file_of_size(&copy.join("objects"), 10_000);
    let mountpoint = daemon.dir().join("fuse");
    std::fs::create_dir(&mountpoint).unwrap();
    std::fs::set_permissions(&mountpoint, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Every read of it waits until the filesystem goes: a read by the
    // daemon would hold its thread, and this copy, for ever.
    let fuse = Fuse::mount(&mountpoint, vec![FuseFile::stalling("object", 10_000)]);
    rustix::mount::mount_bind(mountpoint.join("object"), &object).unwrap();
    let bound = Bound(object.clone());
    let call = json!({"method": "io.cfsd.Oci.Copy", "parameters": {"image": "img", "tag": "mine"}});
    let path = copy.to_str().unwrap();
    let child = spawn_call_with_fd(&daemon, NOBODY, &[ADMINS], path, &call);
    let out =
        finished_within(child, Duration::from_secs(30)).expect("the copy waited on the FUSE file");
    let reply: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(
        reply["error"], "io.cfsd.Oci.InvalidSourceRepository",
        "{reply}"
    );
    let reason = reply["parameters"]["reason"].as_str().unwrap();
    let relative = object.strip_prefix(&copy).unwrap().display().to_string();
    assert!(
        reason.contains(&relative) && reason.contains("onto another mount"),
        "{reply}"
    );
    assert_eq!(fuse.reads(), 0);
    assert_nothing_named_and_gc_empties(&daemon);
    drop(bound);
    drop(fuse);
    // With the object its own file again the copy goes through.
    let reply = cfsd_tests::peer::reply_with_fd(&daemon, NOBODY, &[ADMINS], path, &call);
    assert_eq!(reply["parameters"]["result"]["tag"], "mine", "{reply}");
}
