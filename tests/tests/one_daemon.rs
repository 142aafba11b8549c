//! One daemon per repository, and nothing that hangs silently: a second
//! daemon is refused at once with the first one's pid and socket, GC
//! waits a bounded time for other processes, and a private cfsd never
//! outlives the cfsctl that started it.

use std::{
    fs::File,
    io::Read,
    os::fd::AsFd,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use cfsd_tests::{Daemon, bin, cfsctl as run_cfsctl, stderr};
use rustix::fs::FlockOperation;

/// Run `child` to its end, failing the test if it takes over `limit`.
fn finish_within(mut child: Child, limit: Duration) -> (ExitStatus, String, String) {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut out = String::new();
            let mut err = String::new();
            if let Some(mut o) = child.stdout.take() {
                o.read_to_string(&mut out).unwrap();
            }
            if let Some(mut e) = child.stderr.take() {
                e.read_to_string(&mut err).unwrap();
            }
            return (status, out, err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running after {limit:?}: it hangs");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn_cfsctl(args: &[&str]) -> Child {
    Command::new(bin("cfsctl"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Hold the repository directory locked shared, as any other process
/// with the repository open (upstream cfsctl, say) does.
fn hold_shared(repo: &Path) -> File {
    let dir = File::open(repo).unwrap();
    rustix::fs::flock(dir.as_fd(), FlockOperation::LockShared).unwrap();
    dir
}

#[test]
fn a_second_daemon_on_a_served_repository_is_refused_at_once_with_its_pid() {
    let daemon = Daemon::start_initialised(&[]);
    let repo = daemon.repo();
    let repo = repo.to_str().unwrap();
    for command in [
        &["gc"][..],
        &["gc", "--dry-run"],
        &["info"],
        &["oci", "images"],
    ] {
        let mut args = vec!["--repo", repo];
        args.extend_from_slice(command);
        let (status, _, err) = finish_within(spawn_cfsctl(&args), Duration::from_secs(20));
        assert!(!status.success(), "{command:?}: {err}");
        assert!(
            err.contains(&format!("in use by process {}", daemon.pid())),
            "{command:?}: {err}"
        );
        assert!(
            err.contains(&format!("--address {}", daemon.address())),
            "{command:?}: no hint: {err}"
        );
    }
    let second = Command::new(bin("cfsd"))
        .args(["--repo", repo, "--address"])
        .arg(format!(
            "unix:{}",
            daemon.dir().join("second.sock").display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (status, _, err) = finish_within(second, Duration::from_secs(20));
    assert!(!status.success());
    assert!(err.contains(&format!("process {}", daemon.pid())), "{err}");
    assert!(!daemon.dir().join("second.sock").exists());
    // The first daemon was not disturbed.
    let out = daemon.cfsctl(&["gc"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn gc_waits_a_bounded_time_for_another_process_and_names_it() {
    let daemon = Daemon::start_initialised(&["--gc-wait", "1"]);
    let held = hold_shared(&daemon.repo());
    let address = daemon.address();
    let started = Instant::now();
    let (status, _, err) = finish_within(
        spawn_cfsctl(&["--address", &address, "gc"]),
        Duration::from_secs(20),
    );
    assert!(!status.success(), "{err}");
    assert!(err.contains("gave up waiting"), "{err}");
    assert!(
        err.contains(&format!("process {} ", std::process::id())),
        "the holder is not named: {err}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(
        !daemon.repo().join(".cfsd-gc-running").exists(),
        "the marker was written before the lock was held"
    );
    // The raw error is typed.
    let reply = daemon
        .raw()
        .call(serde_json::json!({"method": "io.cfsd.Repository.Gc"}));
    assert_eq!(
        reply["error"], "io.cfsd.Repository.RepositoryBusy",
        "{reply}"
    );
    drop(held);
    let out = daemon.cfsctl(&["gc"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Start `cfsctl --repo R gc` whose private cfsd then waits for `held`;
/// return cfsctl and the pid of its private cfsd.
// The child is returned for the caller to wait for.
#[allow(clippy::zombie_processes)]
fn private_gc_that_waits(repo: &Path) -> (Child, u32) {
    let mut cfsctl = spawn_cfsctl(&["--repo", repo.to_str().unwrap(), "gc"]);
    let lock = repo.join(".cfsd-lock");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&lock).unwrap_or_default();
        let pid = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["pid"].as_u64())
            .map(|p| p as u32);
        if let Some(pid) = pid.filter(|p| parent_of(*p) == Some(cfsctl.id())) {
            return (cfsctl, pid);
        }
        if Instant::now() > deadline {
            let _ = cfsctl.kill();
            let _ = cfsctl.wait();
            panic!("no private cfsd took the repository");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The parent of `pid`, while it lives (and is no zombie).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    (fields.first() != Some(&"Z")).then(|| fields.get(1)?.parse().ok())?
}

/// Wait until `pid` is gone (or a zombie), failing after 10 s.
fn gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while parent_of(pid).is_some() {
        assert!(
            Instant::now() < deadline,
            "the private cfsd {pid} outlived its cfsctl"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn initialised_repo() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let out = run_cfsctl(&["--repo", repo.to_str().unwrap(), "init"]);
    assert!(out.status.success(), "{}", stderr(&out));
    (dir, repo)
}

#[test]
fn a_private_cfsd_dies_with_its_cfsctl_and_never_holds_its_stdout() {
    let (_dir, repo) = initialised_repo();
    let _held = hold_shared(&repo);
    let (mut cfsctl, private) = private_gc_that_waits(&repo);
    let mut stdout = cfsctl.stdout.take().unwrap();
    cfsctl.kill().unwrap();
    cfsctl.wait().unwrap();
    gone(private);
    // `out=$(cfsctl --repo R gc)` returns: nobody holds the pipe open.
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    // The repository is free for the next private daemon.
    let out = run_cfsctl(&["--repo", repo.to_str().unwrap(), "info"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn sigterm_ends_cfsctl_and_its_private_cfsd() {
    let (_dir, repo) = initialised_repo();
    let _held = hold_shared(&repo);
    let (cfsctl, private) = private_gc_that_waits(&repo);
    let pid = rustix::process::Pid::from_raw(cfsctl.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let (status, _, err) = finish_within(cfsctl, Duration::from_secs(5));
    assert_eq!(status.code(), Some(143), "{err}");
    gone(private);
}
