//! What a peer who may pull can make cfsd open through the source it
//! hands over: only the layout's own regular files, never a link to a
//! file the peer cannot read (issue 19 item 3), never a FIFO that would
//! hold a thread (item 4), and nothing at all on FUSE (the suspected
//! route). Every peer here is a real process of another uid.

use std::{
    os::unix::fs::{PermissionsExt, symlink},
    path::Path,
    time::{Duration, Instant},
};

use cfsd_tests::{
    Daemon,
    fuse::{Fuse, FuseFile},
    oci::{Compression, Entry, Image, Layer, Layout},
    ocictl::{self, published},
    peer::{
        NOBODY, open_path_to, pull_call, reply_with_fd, reply_within, spawn_call_with_fd,
        threads_in_syscall,
    },
};
use serde_json::Value;

/// A group nobody is given on top, for `--allow-group`.
const ADMINS: u32 = 4243;

/// openat2 on x86-64.
const OPENAT2: u64 = 437;

/// What only root may read: a layer whose file is the secret.
const SECRET: &str = "root:$6$only-root-may-read-this-hash:19000:0:99999:7:::\n";

fn image_of(path: &str, content: &str) -> Image {
    Image::new(vec![Layer::new(
        Compression::Gzip,
        vec![
            Entry::dir("usr"),
            Entry::dir("etc"),
            Entry::file(path, content),
        ],
    )])
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.filter_map(Result::ok) {
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            found.extend(files_containing(&entry.path(), needle));
        } else if kind.is_file() {
            let bytes = std::fs::read(entry.path()).unwrap();
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(entry.path().display().to_string());
            }
        }
    }
    found
}

/// A peer's layout naming two images: "real", whose layer is exactly a
/// root-only file (digest and size right, so following the link would
/// pull it), and "decoy", whose layer is something else (so following
/// the link would report the file's size or digest). Both layer blobs
/// are symlinks to that file, kept 0600 in a sticky directory the peer
/// may write to.
struct LinkedLayout {
    _scratch: tempfile::TempDir,
    dir: std::path::PathBuf,
    decoy_blob: Vec<u8>,
    secret_blob: Vec<u8>,
    secret_hex: String,
    decoy_hex: String,
}

impl LinkedLayout {
    fn new() -> Self {
        let mut layout = Layout::new();
        let real = layout.add_image(&image_of("etc/shadow", SECRET), Some("real"));
        let decoy = layout.add_image(&image_of("etc/decoy", "decoy\n"), Some("decoy"));
        let scratch = tempfile::tempdir().unwrap();
        open_path_to(scratch.path());
        let dir = scratch.path().join("layout");
        layout.write_dir(&dir);
        for d in [&dir, &dir.join("blobs"), &dir.join("blobs/sha256")] {
            std::os::unix::fs::chown(d, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        let sticky = dir.join("tmp");
        std::fs::create_dir(&sticky).unwrap();
        std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let secret_blob = layout.blob(&real.layer_digests[0]).unwrap().to_vec();
        let secret = sticky.join("shadow.layer");
        std::fs::write(&secret, &secret_blob).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let hex = |digest: &str| digest.trim_start_matches("sha256:").to_owned();
        let linked = LinkedLayout {
            decoy_blob: layout.blob(&decoy.layer_digests[0]).unwrap().to_vec(),
            secret_blob,
            secret_hex: hex(&real.layer_digests[0]),
            decoy_hex: hex(&decoy.layer_digests[0]),
            dir,
            _scratch: scratch,
        };
        for hex in [&linked.secret_hex, &linked.decoy_hex] {
            std::fs::remove_file(linked.blob(hex)).unwrap();
            symlink("../../tmp/shadow.layer", linked.blob(hex)).unwrap();
        }
        linked
    }

    fn blob(&self, hex: &str) -> std::path::PathBuf {
        self.dir.join("blobs/sha256").join(hex)
    }

    /// Pull image `reference` from it as nobody in the admin group.
    fn pull(&self, daemon: &Daemon, reference: &str) -> Value {
        let mut call = pull_call("oci", reference);
        call["parameters"]["reference"] = reference.into();
        reply_with_fd(daemon, NOBODY, &[ADMINS], self.dir.to_str().unwrap(), &call)
    }
}

#[test]
fn a_layout_blob_linked_to_a_root_only_file_is_refused_and_tells_nothing_of_it() {
    let admins = ADMINS.to_string();
    let daemon = Daemon::start_for_nobody(&["--allow-group", &admins]);
    assert!(daemon.cfsctl(&["init"]).status.success());
    let linked = LinkedLayout::new();
    for (reference, hex) in [("decoy", &linked.decoy_hex), ("real", &linked.secret_hex)] {
        let reply = linked.pull(&daemon, reference);
        assert_eq!(reply["error"], "io.cfsd.Oci.InvalidSource", "{reply}");
        // The reason names the peer's own path and nothing else: no
        // size, no digest of what the link leads to.
        let reason = format!(
            "blobs/sha256/{hex} is or passes through a symbolic link, which cfsd does not follow"
        );
        assert_eq!(
            reply["parameters"]["reason"], reason,
            "{reference}: {reply}"
        );
        if reference == "decoy" {
            assert!(!reply.to_string().contains(&linked.secret_hex), "{reply}");
        }
    }
    // Nothing of the file entered the repository.
    let published = published(&daemon.repo());
    assert!(
        published.tags.is_empty() && published.streams.is_empty(),
        "{published:?}"
    );
    assert_eq!(ocictl::object_count(&daemon.repo()), 0);
    for needle in [SECRET.as_bytes(), &linked.secret_blob[..64]] {
        assert_eq!(
            files_containing(&daemon.repo(), needle),
            Vec::<String>::new()
        );
    }
    // With the decoy's own blob in place of its link, the same peer
    // pulls it: only the link was refused.
    std::fs::remove_file(linked.blob(&linked.decoy_hex)).unwrap();
    std::fs::write(linked.blob(&linked.decoy_hex), &linked.decoy_blob).unwrap();
    let reply = linked.pull(&daemon, "decoy");
    assert!(
        reply["parameters"]["result"]["imageId"].is_string(),
        "{reply}"
    );
}

#[test]
fn fifos_in_a_layout_are_refused_at_once_and_hold_no_thread() {
    let daemon = Daemon::start_initialised(&[]);
    let mut layout = Layout::new();
    let built = layout.add_image(&image_of("etc/hostname", "fifo\n"), None);
    let blob = |digest: &str| format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    let cases = [
        "oci-layout".to_owned(),
        "index.json".to_owned(),
        blob(&built.manifest_digest),
        blob(&built.config_digest),
        blob(&built.layer_digests[0]),
    ];
    let scratch = tempfile::tempdir().unwrap();
    for (i, fifo) in cases.iter().enumerate() {
        let dir = scratch.path().join(i.to_string());
        layout.write_dir(&dir);
        std::fs::remove_file(dir.join(fifo)).unwrap();
        rustix::fs::mkfifoat(rustix::fs::CWD, dir.join(fifo), rustix::fs::Mode::RUSR).unwrap();
        let started = Instant::now();
        let child = spawn_call_with_fd(
            &daemon,
            0,
            &[],
            dir.to_str().unwrap(),
            &pull_call("oci", "f"),
        );
        let reply = reply_within(child, Duration::from_secs(10));
        assert_eq!(
            reply["error"], "io.cfsd.Oci.InvalidSource",
            "{fifo}: {reply}"
        );
        assert_eq!(
            reply["parameters"]["reason"],
            format!("{fifo} is not a regular file"),
            "{reply}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{fifo}: {:?}",
            started.elapsed()
        );
    }
    // No thread of the daemon is left waiting in an open for a writer.
    assert_eq!(threads_in_syscall(daemon.pid(), &[OPENAT2]), 0);
    assert!(ocictl::object_count(&daemon.repo()) == 0);
    // And the daemon still pulls the same layout without the FIFO.
    let dir = scratch.path().join("good");
    layout.write_dir(&dir);
    ocictl::pull(&daemon, &[&format!("oci:{}", dir.display()), "good"]);
}

#[test]
fn a_source_on_fuse_is_refused_without_a_read_or_a_question_to_its_server() {
    let admins = ADMINS.to_string();
    let daemon = Daemon::start_for_nobody(&["--allow-group", &admins]);
    assert!(daemon.cfsctl(&["init"]).status.success());
    let (layout, _) = Layout::single(&image_of("etc/hostname", "fuse\n"), None);
    let scratch = tempfile::tempdir().unwrap();
    open_path_to(scratch.path());
    let mountpoint = scratch.path().join("fuse");
    std::fs::create_dir(&mountpoint).unwrap();
    // Every read of these waits forever: a read by the daemon would
    // hang the call.
    let archive = layout.archive();
    let fuse = Fuse::mount(
        &mountpoint,
        vec![
            FuseFile::stalling("image.tar", archive.len()),
            FuseFile::stalling("oci-layout", 30),
        ],
    );
    let cases = [
        ("oci-archive", mountpoint.join("image.tar")),
        ("oci", mountpoint.clone()),
    ];
    for (transport, path) in cases {
        let child = spawn_call_with_fd(
            &daemon,
            NOBODY,
            &[ADMINS],
            path.to_str().unwrap(),
            &pull_call(transport, "f"),
        );
        let reply = reply_within(child, Duration::from_secs(10));
        assert_eq!(
            reply["error"], "io.cfsd.Oci.InvalidSource",
            "{transport}: {reply}"
        );
        let reason = reply["parameters"]["reason"].as_str().unwrap();
        assert!(
            reason.contains("FUSE filesystem (fuse.cfsdtest)"),
            "{reason}"
        );
    }
    // The refusal came from the mount table, not from the server.
    assert_eq!(fuse.reads(), 0);
    assert_eq!(
        fuse.asked.statfs.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(ocictl::object_count(&daemon.repo()), 0);
    drop(fuse);
}
