//! How much of the daemon one peer's work can hold (issue 19 item 4 and
//! the suspected subuid route): blocking threads stuck in reads that
//! never return are bounded per account, root is served meanwhile,
//! SIGTERM ends a daemon with a stuck thread within the grace, and every
//! uid of a subordinate range counts against its owner.
//!
//! A read that never returns comes from the test's own FUSE server
//! (`tests/src/fuse.rs`) seen through an overlay: cfsd refuses a source
//! on FUSE itself, but not every filesystem that waits on one can be
//! told apart, which is why the bound is needed at all.

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, Command},
    time::{Duration, Instant},
};

use cfsd_tests::{
    Daemon,
    fuse::{Fuse, FuseFile},
    peer::{
        NOBODY, open_path_to, pull_call, spawn_call_with_root_fd, spawn_holding_call,
        threads_in_syscall,
    },
};
use cfsd_varlink::repository::GcParams;
use serde_json::{Value, json};

/// A group nobody is given on top, for `--allow-group`.
const ADMINS: u32 = 4244;

/// read and pread64 on x86-64.
const READS: [u64; 2] = [0, 17];

/// openat2 on x86-64.
const OPENAT2: u64 = 437;

/// A layout directory whose `oci-layout` is a FUSE file that never
/// answers a read, seen through an overlay (which is not FUSE itself).
struct StallingLayout {
    overlay: std::path::PathBuf,
    fuse: Option<Fuse>,
    _scratch: tempfile::TempDir,
}

impl StallingLayout {
    fn new() -> Self {
        let scratch = tempfile::tempdir().unwrap();
        open_path_to(scratch.path());
        let [lower, empty, overlay] = ["fuse", "empty", "overlay"].map(|d| {
            let path = scratch.path().join(d);
            std::fs::create_dir(&path).unwrap();
            path
        });
        let fuse = Fuse::mount(&lower, vec![FuseFile::stalling("oci-layout", 30)]);
        let options = format!("lowerdir={}:{}", lower.display(), empty.display());
        let status = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &options])
            .arg(&overlay)
            .status()
            .unwrap();
        assert!(status.success(), "mounting the overlay");
        StallingLayout {
            overlay,
            fuse: Some(fuse),
            _scratch: scratch,
        }
    }

    fn path(&self) -> &str {
        self.overlay.to_str().unwrap()
    }

    fn fuse(&self) -> &Fuse {
        self.fuse.as_ref().unwrap()
    }
}

impl Drop for StallingLayout {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.overlay).status();
        drop(self.fuse.take());
    }
}

/// Poll `what` until it holds, at most `limit`.
fn eventually(limit: Duration, mut what: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if what() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    what()
}

/// Root's Info, ListImages and a collecting Gc answer while the
/// admin-group peer's calls wait; one more call of that peer, a Tag,
/// waits for its turn before it takes the GC lock, so that Gc goes on.
/// Returns the Tag's client.
async fn root_is_served_while_the_peer_waits(daemon: &Daemon) -> Child {
    let mut client = daemon.client().await;
    let within = Duration::from_secs(5);
    let info = tokio::time::timeout(within, client.info()).await;
    assert!(info.expect("root's Info answered").is_ok());
    let images = tokio::time::timeout(within, client.list_images()).await;
    assert!(images.expect("root's ListImages answered").is_ok());
    let tag = json!({"method": "io.cfsd.Oci.Tag", "parameters": {"image": "t0", "tag": "u"}});
    let pid = daemon.pid();
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let before = fds();
    let tagging = spawn_call_with_root_fd(daemon, (NOBODY, &[ADMINS]), "-", &tag, false);
    // Served: its socket and the duplicate that watches for a hang-up.
    assert!(eventually(Duration::from_secs(10), || fds() >= before + 2));
    let gc = GcParams {
        dry_run: Some(false),
    };
    let gc = tokio::time::timeout(within, client.gc(&gc)).await;
    assert!(gc.expect("root's Gc answered").is_ok());
    tagging
}

#[tokio::test(flavor = "multi_thread")]
async fn one_peers_stuck_reads_hold_at_most_its_share_and_root_is_served() {
    let admins = ADMINS.to_string();
    let daemon =
        Daemon::start_for_nobody(&["--allow-group", &admins, "--max-blocking-per-uid", "2"]);
    assert!(daemon.cfsctl(&["init"]).status.success());
    let layout = StallingLayout::new();
    let pid = daemon.pid();
    let peers: Vec<Child> = (0..6)
        .map(|i| {
            let call = pull_call("oci", &format!("t{i}"));
            // Through an overlay nobody may not open here; a peer that
            // mounts its own in a user namespace holds such an fd.
            spawn_call_with_root_fd(&daemon, (NOBODY, &[ADMINS]), layout.path(), &call, false)
        })
        .collect();
    // Two of the six calls reach the read that never returns...
    assert!(eventually(Duration::from_secs(10), || layout
        .fuse()
        .reads()
        >= 2));
    assert!(eventually(Duration::from_secs(10), || threads_in_syscall(
        pid, &READS
    ) == 2));
    // ...and root is answered meanwhile, even a collecting Gc while a
    // Tag of that peer waits for its turn.
    let tagging = root_is_served_while_the_peer_waits(&daemon).await;
    assert_eq!(layout.fuse().reads(), 2, "the other four wait for a thread");
    assert_eq!(threads_in_syscall(pid, &READS), 2);
    // Failing the two reads frees their threads; two more calls take
    // them, and so on: the calls were waiting, not lost.
    for expected in [4, 6] {
        layout.fuse().release_stalled();
        assert!(
            eventually(Duration::from_secs(10), || layout.fuse().reads()
                == expected),
            "reads: {}",
            layout.fuse().reads()
        );
        assert!(eventually(Duration::from_secs(10), || threads_in_syscall(
            pid, &READS
        ) == 2));
    }
    layout.fuse().release_stalled();
    let tagged = tagging.wait_with_output().unwrap();
    let tagged: Value = serde_json::from_slice(&tagged.stdout).unwrap();
    assert_eq!(tagged["error"], "io.cfsd.Oci.ImageNotFound", "{tagged}");
    for peer in peers {
        let out = peer.wait_with_output().unwrap();
        let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
        // The stalled reads were failed with EIO, and say so.
        assert_eq!(reply["error"], "io.cfsd.Oci.IoError", "{reply}");
    }
    assert!(eventually(Duration::from_secs(10), || threads_in_syscall(
        pid, &READS
    ) == 0));
}

#[test]
fn sigterm_ends_a_daemon_with_a_stuck_thread_within_the_grace() {
    let mut daemon = Daemon::start_initialised(&["--shutdown-grace", "2"]);
    let layout = StallingLayout::new();
    let pid = daemon.pid();
    let call = pull_call("oci", "t");
    let mut peer = spawn_call_with_root_fd(&daemon, (0, &[]), layout.path(), &call, true);
    let mut line = String::new();
    BufReader::new(peer.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "opened\n");
    // The server takes no more requests: the daemon's lookup of
    // oci-layout waits in openat2 for an answer that never comes.
    layout.fuse().freeze();
    writeln!(peer.stdin.as_mut().unwrap()).unwrap();
    assert!(eventually(Duration::from_secs(10), || threads_in_syscall(
        pid,
        &[OPENAT2]
    ) == 1));
    let started = Instant::now();
    let status = daemon.stop_with(rustix::process::Signal::TERM, Duration::from_secs(10));
    let took = started.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        took >= Duration::from_secs(2),
        "the grace was not given: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    let _ = peer.kill();
    let _ = peer.wait();
}

/// A client of uid `uid` that calls GetInfo and keeps its connection
/// until its stdin closes; and the reply it got.
fn holding_client(daemon: &Daemon, uid: u32) -> (Child, Value) {
    let call = json!({"method": "org.varlink.service.GetInfo"});
    let mut child = spawn_holding_call(daemon, uid, &call);
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    (
        child,
        serde_json::from_str(line.trim()).unwrap_or(Value::Null),
    )
}

fn write_subuids(dir: &Path) -> String {
    let path = dir.join("subuid");
    let mut file = std::fs::File::create(&path).unwrap();
    writeln!(file, "nobody:200000:1000").unwrap();
    path.display().to_string()
}

#[test]
fn every_uid_of_a_subordinate_range_counts_against_its_owner() {
    let scratch = tempfile::tempdir().unwrap();
    let subuids = write_subuids(scratch.path());
    let daemon =
        Daemon::start_for_nobody(&["--subuid-file", &subuids, "--max-connections-per-uid", "2"]);
    let mut held = Vec::new();
    for uid in [NOBODY, 200_001] {
        let (child, reply) = holding_client(&daemon, uid);
        assert!(reply["parameters"]["vendor"].is_string(), "{uid}: {reply}");
        held.push(child);
    }
    // A third uid of nobody's range is nobody's third connection.
    let (child, reply) = holding_client(&daemon, 200_999);
    assert_eq!(
        reply["error"], "io.cfsd.Repository.TooManyConnections",
        "{reply}"
    );
    assert_eq!(
        reply["parameters"],
        json!({"limit": 2, "uid": 200_999, "perUid": true})
    );
    held.push(child);
    // A uid past the range is someone else.
    let (child, reply) = holding_client(&daemon, 201_000);
    assert!(reply["parameters"]["vendor"].is_string(), "{reply}");
    held.push(child);
    for mut child in held {
        drop(child.stdin.take());
        let _ = child.wait();
    }
}
