//! A secondary repository is untrusted input, read by a root daemon on
//! behalf of its client: links, FIFOs and damaged objects are typed
//! refusals with nothing published, and a client gets through `Copy`
//! nothing it could not read itself. Who may call it is the access
//! table's `Change`; reading past the client's own rights is
//! `ReadClientFiles` (root and the daemon's user only).

use std::{
    os::unix::fs::{PermissionsExt, symlink},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use cfsd_tests::{
    Daemon,
    oci::{Compression, Layout, Written, small_image},
    ocictl::{PrivateRepo, Target, published, pull},
    peer::{NOBODY, reply_with_fd},
    repo_files::file_of_size,
    stdout,
};
use serde_json::{Value, json};

const ADMINS: u32 = 4242;

fn written() -> Written {
    let mut layout = Layout::new();
    layout.add_image(&small_image(Compression::Gzip, "hostile"), Some("img"));
    Written::new(&layout)
}

/// A source repository of `algorithm` holding the small image as `img`.
fn source_repo(algorithm: &str) -> PrivateRepo {
    let source = PrivateRepo::init(algorithm);
    pull(&source, &[&written().oci(Some("img")), "img"]);
    source
}

/// `cfsctl --json oci copy --from FROM img mine` into `dest`, which must
/// fail; its typed error.
fn refused(dest: &impl Target, from: &Path) -> Value {
    let from = from.to_str().unwrap();
    let out = dest.run(&["--json", "oci", "copy", "--from", from, "img", "mine"]);
    assert_eq!(out.status.code(), Some(1), "{}", cfsd_tests::stderr(&out));
    let error: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert!(
        published(&dest.repo_path()).tags.is_empty(),
        "something was published"
    );
    error
}

/// The link of the image's one layer stream in `streams`.
fn layer_stream(streams: &std::path::Path) -> PathBuf {
    std::fs::read_dir(streams)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("oci-layer-")
        })
        .unwrap()
}

fn reason(error: &Value) -> &str {
    error["parameters"]["reason"].as_str().unwrap_or_default()
}

#[test]
fn an_object_that_is_a_symlink_is_refused_without_being_followed() {
    let source = source_repo("sha256");
    let object = file_of_size(&source.repo_path().join("objects"), 10_000);
    std::fs::remove_file(&object).unwrap();
    symlink("/etc/passwd", &object).unwrap();
    let dest = PrivateRepo::init("sha256");
    let error = refused(&dest, &source.repo_path());
    assert_eq!(
        error["error"], "io.cfsd.Oci.InvalidSourceRepository",
        "{error}"
    );
    assert!(reason(&error).contains("symbolic link"), "{error}");
    assert!(!reason(&error).contains("passwd"), "{error}");
}

#[test]
fn an_object_that_is_a_fifo_is_refused_at_once() {
    let source = source_repo("sha512");
    let object = file_of_size(&source.repo_path().join("objects"), 10_000);
    std::fs::remove_file(&object).unwrap();
    rustix::fs::mkfifoat(rustix::fs::CWD, &object, rustix::fs::Mode::RUSR).unwrap();
    let dest = PrivateRepo::init("sha256");
    let started = Instant::now();
    let error = refused(&dest, &source.repo_path());
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(
        error["error"], "io.cfsd.Oci.InvalidSourceRepository",
        "{error}"
    );
    assert!(reason(&error).contains("not a regular file"), "{error}");
}

#[test]
fn an_object_with_other_bytes_is_a_digest_mismatch_in_either_algorithm() {
    for to in ["sha256", "sha512"] {
        let source = source_repo("sha256");
        let object = file_of_size(&source.repo_path().join("objects"), 10_000);
        let mut bytes = std::fs::read(&object).unwrap();
        bytes[5000] ^= 0xff;
        std::fs::remove_file(&object).unwrap();
        std::fs::write(&object, bytes).unwrap();
        let dest = PrivateRepo::init(to);
        let error = refused(&dest, &source.repo_path());
        assert_eq!(
            error["error"], "io.cfsd.Oci.DigestMismatch",
            "{to}: {error}"
        );
        let what = error["parameters"]["what"].as_str().unwrap();
        assert!(what.contains("of the source repository"), "{error}");
        let streams = published(&dest.repo_path()).streams_starting("oci-layer-");
        assert!(streams.is_empty(), "a layer stream was named: {streams:?}");
    }
}

#[test]
fn a_stream_linking_out_of_the_objects_is_refused() {
    let source = source_repo("sha256");
    let streams = source.repo_path().join("streams");
    let layer = layer_stream(&streams);
    std::fs::remove_file(&layer).unwrap();
    symlink("../../../../etc/passwd", &layer).unwrap();
    let dest = PrivateRepo::init("sha256");
    let error = refused(&dest, &source.repo_path());
    assert_eq!(
        error["error"], "io.cfsd.Oci.InvalidSourceRepository",
        "{error}"
    );
    assert!(reason(&error).contains("not to an object"), "{error}");
}

/// A copy of `source`'s repository that nobody owns and may read, in a
/// directory nobody may search.
fn nobodys_copy(source: &PrivateRepo, daemon: &Daemon) -> PathBuf {
    let dir = daemon.dir().join("peer");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.join("repo");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(source.repo_path())
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    let status = std::process::Command::new("chown")
        .args(["-R", &format!("{NOBODY}:{NOBODY}")])
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    copy
}

fn copy_call() -> Value {
    json!({"method": "io.cfsd.Oci.Copy", "parameters": {"image": "img", "tag": "mine"}})
}

fn admin_daemon() -> Daemon {
    let daemon = Daemon::start_for_nobody(&["--allow-group", &ADMINS.to_string()]);
    let out = daemon.cfsctl(&["init"]);
    assert!(out.status.success(), "{}", cfsd_tests::stderr(&out));
    daemon
}

#[test]
fn copy_is_refused_to_a_peer_outside_the_admin_group() {
    let daemon = admin_daemon();
    let source = source_repo("sha256");
    let copy = nobodys_copy(&source, &daemon);
    let reply = reply_with_fd(&daemon, NOBODY, &[], copy.to_str().unwrap(), &copy_call());
    assert_eq!(reply["error"], "io.cfsd.Oci.PermissionDenied", "{reply}");
    assert_eq!(reply["parameters"]["method"], "io.cfsd.Oci.Copy");
    assert!(published(&daemon.repo()).tags.is_empty());
}

#[test]
fn an_admin_copies_only_what_it_could_read_itself() {
    let daemon = admin_daemon();
    let source = source_repo("sha256");
    let copy = nobodys_copy(&source, &daemon);
    // A root-only file in place of an object: a hardlink to someone
    // else's file, as a peer could be left with, reads as that file.
    let object = file_of_size(&copy.join("objects"), 10_000);
    let secret = daemon.dir().join("secret");
    std::fs::write(&secret, std::fs::read(&object).unwrap()).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::remove_file(&object).unwrap();
    std::fs::hard_link(&secret, &object).unwrap();
    let path = copy.to_str().unwrap();
    let reply = reply_with_fd(&daemon, NOBODY, &[ADMINS], path, &copy_call());
    assert_eq!(
        reply["error"], "io.cfsd.Oci.InvalidSourceRepository",
        "{reply}"
    );
    let reason = reply["parameters"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("uid 65534 may not read objects/"),
        "{reply}"
    );
    assert!(published(&daemon.repo()).tags.is_empty());
    // The same bytes in a file of its own: the copy goes through, and is
    // the image the source holds.
    std::fs::remove_file(&object).unwrap();
    std::fs::copy(&secret, &object).unwrap();
    rustix::fs::chown(&object, Some(rustix::fs::Uid::from_raw(NOBODY)), None).unwrap();
    std::fs::set_permissions(&object, std::fs::Permissions::from_mode(0o400)).unwrap();
    let reply = reply_with_fd(&daemon, NOBODY, &[ADMINS], path, &copy_call());
    let result = &reply["parameters"]["result"];
    assert_eq!(result["tag"], "mine", "{reply}");
    let theirs = cfsd_tests::ocictl::json(&source, &["oci", "inspect", "img"]);
    assert_eq!(
        result["manifestDigest"], theirs["manifestDigest"],
        "{theirs}"
    );
}

#[test]
fn a_repository_on_fuse_is_refused_before_anything_is_read() {
    use cfsd_tests::{
        fuse::{Fuse, FuseFile},
        peer::spawn_call_with_fd,
    };
    let daemon = admin_daemon();
    let mountpoint = daemon.dir().join("fuse");
    std::fs::create_dir(&mountpoint).unwrap();
    std::fs::set_permissions(&mountpoint, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Every read of it waits forever: a read by the daemon would hang.
    let fuse = Fuse::mount(&mountpoint, vec![FuseFile::stalling("meta.json", 64)]);
    let path = mountpoint.to_str().unwrap();
    let child = spawn_call_with_fd(&daemon, NOBODY, &[ADMINS], path, &copy_call());
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    let reply: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(reply["error"], "io.cfsd.Oci.InvalidSource", "{reply}");
    let reason = reply["parameters"]["reason"].as_str().unwrap();
    assert!(reason.contains("FUSE"), "{reason}");
    assert_eq!(fuse.reads(), 0);
    drop(fuse);
}

#[test]
fn a_layer_stream_of_garbage_is_refused() {
    let source = source_repo("sha256");
    let streams = source.repo_path().join("streams");
    let layer = layer_stream(&streams);
    // The stream's object, rewritten in place (its link still names it).
    let object = streams.join(std::fs::read_link(&layer).unwrap());
    std::fs::remove_file(&object).unwrap();
    std::fs::write(&object, cfsd_tests::oci::noise(5, 4096)).unwrap();
    let dest = PrivateRepo::init("sha512");
    let error = refused(&dest, &source.repo_path());
    assert_eq!(
        error["error"], "io.cfsd.Oci.InvalidSourceRepository",
        "{error}"
    );
    assert!(reason(&error).contains("oci-layer-"), "{error}");
}
