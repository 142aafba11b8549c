//! Outputs an admin-group member hands the daemon that never take the
//! bytes: a file on a FUSE filesystem whose writes its server never
//! answers (`Export`, `CreateDelta`), and a dumpfile pipe the client
//! never reads or hangs up on (`Dump`). Each ends with a typed error or
//! the client's hang-up, writes nothing, and leaves the peer's turn and
//! the daemon's threads free for the next call.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Child,
    time::Duration,
};

use cfsd_tests::{
    Daemon,
    oci::{Compression, Entry, Image, Layer, Layout, Written},
    ocictl::{pull, succeeds},
    peer::NOBODY,
    pipe_client::{pipe_client, spawn_file_client},
    stall::StallFs,
    stalled::finished_within,
    stderr, stdout,
};
use serde_json::{Value, json};

/// The admin group given to nobody with `--allow-group`.
const ADMINS: u32 = 4242;

/// Far longer than any of these calls takes when it is refused.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// A daemon holding `image` as `it`, for admin-group members, one
/// blocking call at a time each: a call whose work outlived its client
/// would keep the next one waiting.
fn daemon_with(image: &Image, args: &[&str]) -> Daemon {
    let mut all = vec!["--allow-group", "4242", "--max-blocking-per-uid", "1"];
    all.extend_from_slice(args);
    let written = Written::new(&Layout::single(image, None).0);
    let daemon = Daemon::start_for_nobody(&all);
    succeeds(&daemon, &["init"]);
    pull(&daemon, &[&written.archive(None), "it"]);
    daemon
}

fn small_image() -> Image {
    Image::new(vec![Layer::new(
        Compression::Gzip,
        vec![Entry::dir("usr"), Entry::file("usr/a", "some bytes\n")],
    )])
}

/// An empty file nobody owns and may write, at `dir/name`.
fn nobodys_file(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, b"").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    rustix::fs::chown(&path, Some(rustix::fs::Uid::from_raw(NOBODY)), None).unwrap();
    path
}

/// Lets every held write go when dropped, so that a daemon thread
/// waiting in one (if the test fails) does not keep the daemon alive.
struct Releasing<'a>(&'a StallFs);

impl Drop for Releasing<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// The last reply of `child`, which must come within [`ANSWER_WITHIN`].
fn reply_of(child: Child, what: &str) -> Value {
    let out = finished_within(child, ANSWER_WITHIN)
        .unwrap_or_else(|| panic!("{what}: no reply within {ANSWER_WITHIN:?}"));
    assert!(out.status.success(), "{what}: {}", stderr(&out));
    serde_json::from_str(stdout(&out).trim()).unwrap()
}

#[test]
fn an_output_on_fuse_whose_writes_never_return_is_refused_before_a_write() {
    let daemon = daemon_with(&small_image(), &[]);
    let backing = tempfile::tempdir().unwrap();
    std::fs::set_permissions(backing.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mountpoint = daemon.dir().join("stall");
    std::fs::create_dir(&mountpoint).unwrap();
    let fs = StallFs::mount(backing.path(), &mountpoint);
    let _release = Releasing(&fs);
    let export = json!({"method": "io.cfsd.Oci.Export", "parameters": {"image": "it"}});
    let delta = json!({"method": "io.cfsd.Oci.CreateDelta",
        "parameters": {"source": "it", "target": "it"}});
    for (call, name) in [(&export, "export.tar"), (&delta, "delta.tar")] {
        let output = nobodys_file(&mountpoint, name);
        fs.hold_writes();
        let reply = reply_of(spawn_file_client(&daemon, &[ADMINS], &output, call), name);
        assert_eq!(reply["error"], "io.cfsd.Oci.MissingFd", "{reply}");
        let expected = reply["parameters"]["expected"].as_str().unwrap();
        assert!(
            expected.contains("FUSE") && expected.contains("fuse.cfsdstall"),
            "{reply}"
        );
        assert_eq!(fs.held(), 0, "{name}: the daemon wrote into the FUSE file");
        assert_eq!(
            std::fs::metadata(backing.path().join(name)).unwrap().len(),
            0
        );
        fs.release();
    }
    // The peer's one turn is free: the same export into a file of its
    // own on the daemon's disk goes through.
    let out = daemon.dir().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = nobodys_file(&out, "export.tar");
    let reply = reply_of(
        spawn_file_client(&daemon, &[ADMINS], &file, &export),
        "export",
    );
    assert_eq!(
        reply["parameters"]["bytes"],
        std::fs::metadata(&file).unwrap().len(),
        "{reply}"
    );
    assert!(daemon.cfsctl(&["info"]).status.success());
}

/// An image whose dumpfile is far larger than a pipe and a socket hold.
fn many_files_image() -> Image {
    let mut entries = vec![Entry::dir("usr")];
    entries.extend((0..4000).map(|i| Entry::file(&format!("usr/file-{i:05}"), format!("{i}\n"))));
    Image::new(vec![Layer::new(Compression::Gzip, entries)])
}

/// A pipe client of Dump as an admin-group member; its last reply, if it
/// waited for one.
fn dump_client(daemon: &Daemon, read: usize, how: &str) -> Option<Value> {
    let call = json!({"method": "io.cfsd.Oci.Dump", "parameters": {"image": "it"}, "more": true});
    let out = pipe_client(daemon, &[ADMINS], &call, read, how);
    assert!(out.status.success(), "{how}: {}", stderr(&out));
    let text = stdout(&out);
    (!text.trim().is_empty()).then(|| serde_json::from_str(text.trim()).unwrap())
}

/// The dumpfile as cfsctl prints it.
fn whole_dump(daemon: &Daemon) -> Vec<u8> {
    let out = daemon.cfsctl(&["oci", "dump", "it"]);
    assert!(out.status.success(), "{}", stderr(&out));
    out.stdout
}

#[test]
fn a_dump_reader_that_stalls_is_given_up_on_and_the_daemon_serves_on() {
    let daemon = daemon_with(&many_files_image(), &["--client-timeout", "2"]);
    let whole = whole_dump(&daemon);
    assert!(whole.len() > 200_000, "{} bytes", whole.len());
    let last = dump_client(&daemon, 1000, "stall").unwrap();
    assert_eq!(last["error"], "io.cfsd.Oci.OutputFailed", "{last}");
    let reason = last["parameters"]["reason"].as_str().unwrap();
    assert!(reason.contains("read nothing for 2s"), "{last}");
    // The peer's one turn is free again, and the next reader gets it all.
    let last = dump_client(&daemon, 0, "read-all").unwrap();
    assert_eq!(last["parameters"]["bytes"], whole.len(), "{last}");
}

#[test]
fn a_dump_reader_that_hangs_up_gives_back_its_turn() {
    let daemon = daemon_with(&many_files_image(), &[]);
    let whole = whole_dump(&daemon);
    for _ in 0..3 {
        assert_eq!(dump_client(&daemon, 10_000, "hang-up"), None);
    }
    // With the turn still taken, this one would wait for ever.
    let last = dump_client(&daemon, 0, "read-all").unwrap();
    assert_eq!(last["parameters"]["bytes"], whole.len(), "{last}");
    assert_eq!(whole_dump(&daemon), whole);
}
