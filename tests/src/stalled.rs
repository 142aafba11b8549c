//! A daemon whose repository is on a [`StallFs`], and cfsctl calls to it
//! that must be answered in time while the disk holds a write.

use std::{
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::{Daemon, bin, peer::NOBODY, stall::StallFs, stderr, stdout};

/// How long a client waits for an answer before the test calls the
/// daemon stalled: far longer than any of these calls takes.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// A daemon whose repository is on a [`StallFs`].
pub struct Stalled {
    // Dropped in this order: the daemon goes before its disk.
    /// The daemon.
    pub daemon: Daemon,
    /// The filesystem its repository is on.
    pub fs: StallFs,
    _backing: tempfile::TempDir,
    /// Holds the daemon's stderr (its log), outside the stalled disk.
    logs: tempfile::TempDir,
}

impl Stalled {
    /// cfsd with one worker, reachable by nobody, its repository
    /// initialised on the passthrough.
    pub fn start() -> Self {
        let logs = tempfile::tempdir().unwrap();
        // The log is also copied to the test's stderr, where nextest shows
        // it when the test fails.
        let script = format!(
            "exec env TOKIO_WORKER_THREADS=1 \"$@\" 2> >(tee {} >&2)",
            logs.path().join("cfsd.log").display()
        );
        let daemon = Daemon::start_under(
            &["bash", "-c", &script, "bash"],
            &["--socket-group", &NOBODY.to_string()],
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(daemon.dir(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let backing = tempfile::tempdir().unwrap();
        std::fs::create_dir(daemon.repo()).unwrap();
        let fs = StallFs::mount(backing.path(), &daemon.repo());
        let init = daemon.cfsctl(&["init"]);
        assert!(init.status.success(), "init: {}", stderr(&init));
        Stalled {
            daemon,
            fs,
            _backing: backing,
            logs,
        }
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Wait until the daemon has logged a line containing `text`.
    pub fn wait_for_log(&self, text: &str, timeout: Duration) {
        let start = Instant::now();
        while !self.log().contains(text) {
            assert!(
                start.elapsed() < timeout,
                "cfsd did not log {text:?} within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn log_path(&self) -> PathBuf {
        self.logs.path().join("cfsd.log")
    }

    /// `cfsctl --json --progress=json oci pull ARGS`, running.
    pub fn spawn_pull(&self, args: &[&str]) -> Child {
        Command::new(bin("cfsctl"))
            .arg("--address")
            .arg(self.daemon.address())
            .args(["--json", "--progress=json", "oci", "pull"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning cfsctl")
    }

    /// `cfsctl --json ARGS`, which must answer within [`ANSWER_WITHIN`]
    /// and succeed; its output as JSON.
    pub fn answered(&self, args: &[&str]) -> serde_json::Value {
        let child = Command::new(bin("cfsctl"))
            .arg("--address")
            .arg(self.daemon.address())
            .arg("--json")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning cfsctl");
        let out = finished_within(child, ANSWER_WITHIN)
            .unwrap_or_else(|| panic!("cfsd did not answer {args:?} while a write was held"));
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        serde_json::from_str(&stdout(&out)).unwrap()
    }
}

/// The child's output once it has exited, or `None` (and the child
/// killed) if it has not within `timeout`.
pub fn finished_within(mut child: Child, timeout: Duration) -> Option<Output> {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Some(child.wait_with_output().unwrap())
}

impl Drop for Stalled {
    /// Let held writes go first: a daemon thread waiting in one cannot
    /// be killed, so the daemon could not be stopped.
    fn drop(&mut self) {
        self.fs.release();
    }
}
