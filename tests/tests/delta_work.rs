//! What an admin-group member's CreateDelta may cost (the least trusted
//! peer that may make deltas): it writes only to a file its peer owns,
//! keeps its scratch files on the repository's filesystem, and stops soon
//! after its client hangs up, leaving no scratch behind.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Instant,
};

use cfsd_tests::{
    Daemon, bin,
    oci::{Compression, Entry, Image, Layer, Layout, Written, noise},
    ocictl, stderr, wait_for,
};

/// The admin group nobody is given on top.
const ADMINS: &str = "4242";

/// A daemon nobody may reach, admin group [`ADMINS`], holding `src` and
/// `dst`; `dst` changes one large layer, so that encoding it is one long
/// round.
fn daemon_with_images(dst_mib: usize) -> Daemon {
    let daemon = Daemon::start_for_nobody(&["--allow-group", ADMINS]);
    let out = daemon.cfsctl(&["init"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let base = Layer::new(
        Compression::Gzip,
        vec![
            Entry::dir("usr"),
            Entry::file("usr/base", noise(1, 1 << 20)),
        ],
    );
    let changed = Layer::new(
        Compression::Gzip,
        (0..dst_mib)
            .map(|i| Entry::file(&format!("usr/f{i}"), noise(100 + i as u64, 1 << 20)))
            .collect(),
    );
    let source = Image::new(vec![base.clone()]);
    let target = Image::new(vec![base, changed]);
    for (image, tag) in [(&source, "src"), (&target, "dst")] {
        let w = Written::new(&Layout::single(image, None).0);
        ocictl::pull(&daemon, &[&w.archive(None), tag]);
    }
    daemon
}

/// A directory nobody may write files into, holding an empty output
/// file owned by `uid` that everyone may write.
fn output(daemon: &Daemon, name: &str, uid: u32) -> PathBuf {
    let dir = daemon.dir().join("out");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, b"").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    rustix::fs::chown(&path, Some(rustix::fs::Uid::from_raw(uid)), None).unwrap();
    path
}

/// `cfsctl oci delta create src dst oci-archive:OUT` as uid 65534 in
/// the admin group.
fn as_nobody(daemon: &Daemon, out: &Path) -> Command {
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid", "65534", "--regid", "65534", "--groups", ADMINS])
        .arg(bin("cfsctl"))
        .args(["--address", &daemon.address(), "oci", "delta", "create"])
        .args(["src", "dst", &format!("oci-archive:{}", out.display())])
        .args(["--jobs", "1"])
        .stdin(Stdio::null());
    command
}

fn run(mut command: Command) -> Output {
    command.output().unwrap()
}

#[test]
fn create_delta_writes_only_to_a_file_its_peer_owns() {
    let daemon = daemon_with_images(2);
    let roots = output(&daemon, "roots.tar", 0);
    let out = run(as_nobody(&daemon, &roots));
    assert!(!out.status.success(), "wrote to root's file");
    assert!(
        stderr(&out).contains("a regular file that uid 65534 owns"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::metadata(&roots).unwrap().len(), 0);

    let own = output(&daemon, "own.tar", 65534);
    let out = run(as_nobody(&daemon, &own));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::metadata(&own).unwrap().len() > 0);
}

/// The daemon's open scratch files: unnamed files in the repository
/// directory (`O_TMPFILE`), and deleted files anywhere else.
fn scratch_fds(daemon: &Daemon) -> (usize, usize) {
    let repo = daemon.repo();
    let (mut in_repo, mut elsewhere) = (0, 0);
    let Ok(fds) = std::fs::read_dir(format!("/proc/{}/fd", daemon.pid())) else {
        return (0, 0);
    };
    for fd in fds.flatten() {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        let text = target.to_string_lossy();
        if !text.ends_with(" (deleted)") {
            continue;
        }
        if target.parent() == Some(repo.as_path()) {
            in_repo += 1;
        } else {
            elsewhere += 1;
        }
    }
    (in_repo, elsewhere)
}

#[test]
fn a_hung_up_create_delta_stops_soon_and_leaves_no_scratch() {
    let daemon = daemon_with_images(48);
    // How long the whole encoding takes here.
    let full = output(&daemon, "full.tar", 65534);
    let start = Instant::now();
    let out = run(as_nobody(&daemon, &full));
    assert!(out.status.success(), "{}", stderr(&out));
    let whole = start.elapsed();

    let cut = output(&daemon, "cut.tar", 65534);
    let mut cfsctl = as_nobody(&daemon, &cut).spawn().unwrap();
    wait_for("a scratch file in the repository", whole * 2, || {
        scratch_fds(&daemon).0 > 0
    });
    let since = Instant::now();
    cfsctl.kill().unwrap();
    cfsctl.wait().unwrap();
    // Stopping takes a buffer's worth of work, not the rest of the layer.
    wait_for("the scratch files to go", whole, || {
        scratch_fds(&daemon) == (0, 0)
    });
    let stopped = since.elapsed();
    eprintln!("whole encoding {whole:?}; stopped {stopped:?} after the hang-up");
    assert!(
        stopped < whole / 3,
        "the work went on for {stopped:?} after the hang-up; all of it takes {whole:?}"
    );
    assert_eq!(std::fs::metadata(&cut).unwrap().len(), 0);
    let leftovers: Vec<_> = std::fs::read_dir(daemon.repo())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
