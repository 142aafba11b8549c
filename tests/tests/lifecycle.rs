//! How cfsd starts, listens and stops, and how cfsctl finds it.

use std::{
    os::unix::{fs::PermissionsExt, net::UnixListener},
    time::Duration,
};

use cfsd_tests::{Daemon, bin, cfsctl, stderr, stdout};
use rustix::process::Signal;
use serde_json::Value;

#[test]
fn socket_is_0660_and_removed_on_sigterm() {
    let mut daemon = Daemon::start(&[]);
    let mode = std::fs::metadata(daemon.socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660);
    let status = daemon.stop_with(Signal::TERM, Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(!daemon.socket().exists(), "socket left behind");
}

#[test]
fn sigint_exits_cleanly_too() {
    let mut daemon = Daemon::start(&[]);
    let status = daemon.stop_with(Signal::INT, Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(!daemon.socket().exists(), "socket left behind");
}

/// The cfsd processes, other than the test's own daemons, whose command
/// line names `repo`.
fn daemons_serving(repo: &std::path::Path) -> Vec<u32> {
    let needle = repo.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
            exe.is_some_and(|e| e.ends_with("cfsd"))
                && cmdline.windows(needle.len()).any(|w| w == needle)
        })
        .collect()
}

/// Each `cfsctl --repo` call's private daemon has exited by the time
/// cfsctl has, whether the call succeeded or failed.
#[test]
fn a_private_daemon_is_gone_when_its_cfsctl_is() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("private");
    let repo_arg = repo.to_str().unwrap();
    for args in [
        &["info"][..],
        &["init"],
        &["info"],
        &["oci", "inspect", "missing"],
        &["gc"],
    ] {
        let mut all = vec!["--repo", repo_arg];
        all.extend_from_slice(args);
        cfsctl(&all);
        assert_eq!(daemons_serving(&repo), Vec::<u32>::new(), "after {args:?}");
    }
}

#[test]
fn sigterm_with_a_connected_client_still_exits_zero() {
    let mut daemon = Daemon::start_initialised(&[]);
    let mut conn = daemon.raw();
    let reply = conn.call(serde_json::json!({"method": "io.cfsd.Repository.Info"}));
    assert!(reply["parameters"]["info"].is_object());
    let status = daemon.stop_with(Signal::TERM, Duration::from_secs(10));
    assert!(status.success(), "{status}");
    // The idle client is hung up on rather than kept waiting.
    assert!(conn.receive().is_none());
}

#[test]
fn idle_exit_waits_for_clients_to_leave() {
    let mut daemon = Daemon::start(&["--idle-exit", "1"]);
    let mut conn = daemon.raw();
    // Connected: well past the idle period, still serving.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        daemon.wait(Duration::ZERO).is_none(),
        "exited with a client connected"
    );
    let reply = conn.call(serde_json::json!({"method": "org.varlink.service.GetInfo"}));
    assert!(reply["parameters"]["interfaces"].is_array());
    drop(conn);
    let status = daemon.wait(Duration::from_secs(10)).expect("no idle exit");
    assert!(status.success(), "{status}");
    assert!(!daemon.socket().exists());
}

#[test]
fn a_stale_socket_is_replaced_but_a_live_one_is_not_stolen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    drop(UnixListener::bind(&path).unwrap());
    let address = format!("unix:{}", path.display());
    let repo = dir.path().join("repo");
    let mut first = std::process::Command::new(bin("cfsd"))
        .args(["--repo", repo.to_str().unwrap(), "--address", &address])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&path).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "first daemon never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = std::process::Command::new(bin("cfsd"))
        .args(["--repo", repo.to_str().unwrap(), "--address", &address])
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(
        stderr(&second).contains("already listening"),
        "{}",
        stderr(&second)
    );
    let out = cfsctl(&["--address", &address, "info"]);
    assert!(
        stderr(&out).contains("no composefs repository"),
        "{}",
        stderr(&out)
    );
    first.kill().unwrap();
    first.wait().unwrap();
}

#[test]
fn no_socket_at_all_is_a_clear_startup_error() {
    let out = std::process::Command::new(bin("cfsd"))
        .args(["--repo", "/nonexistent/repo"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no socket to serve"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn info_says_the_repository_is_insecure_and_why() {
    let daemon = Daemon::start_initialised(&[]);
    let out = daemon.cfsctl(&["info"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("NOT ENFORCED"), "{text}");
    assert!(text.contains("does not support fs-verity"), "{text}");
    let out = daemon.cfsctl(&["--json", "info"]);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["info"]["verity"]["enforced"], false);
    assert!(
        json["info"]["verity"]["reason"]
            .as_str()
            .unwrap()
            .contains("fs-verity")
    );
}

#[test]
fn require_verity_refuses_an_insecure_repository() {
    let mut daemon = Daemon::start_initialised(&[]);
    let repo = daemon.repo();
    // Stop it but keep its directory, which dropping it would remove.
    daemon.stop_with(Signal::TERM, Duration::from_secs(10));
    let out = std::process::Command::new(bin("cfsd"))
        .args([
            "--repo",
            repo.to_str().unwrap(),
            "--require-verity",
            "--address",
        ])
        .arg(format!(
            "unix:{}/other.sock",
            repo.parent().unwrap().display()
        ))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("fs-verity is required"), "{err}");
    assert!(err.contains("does not support fs-verity"), "{err}");
}

#[test]
fn require_verity_refuses_to_create_an_insecure_repository() {
    let daemon = Daemon::start(&["--require-verity"]);
    let out = daemon.cfsctl(&["init"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("fs-verity is required"),
        "{}",
        stderr(&out)
    );
    assert!(!daemon.repo().join("meta.json").exists());
}

#[test]
fn init_is_idempotent_and_refuses_another_algorithm() {
    let daemon = Daemon::start(&[]);
    let out = daemon.cfsctl(&["--json", "init", "--algorithm", "sha256"]);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["created"], true);
    assert_eq!(json["info"]["algorithm"], "fsverity-sha256-12");
    let out = daemon.cfsctl(&["--json", "init", "--algorithm", "sha256"]);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["created"], false);
    let out = daemon.cfsctl(&["init"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("already uses fsverity-sha256-12"), "{err}");
    let out = daemon.cfsctl(&["init", "--algorithm", "md5"]);
    assert!(
        stderr(&out).contains("unsupported algorithm \"md5\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn cfsctl_prefers_address_flag_then_environment_then_system_socket() {
    let a = Daemon::start_initialised(&[]);
    let b = Daemon::start_initialised(&[]);
    let info = |out: std::process::Output| -> String {
        assert!(out.status.success(), "{}", stderr(&out));
        let json: Value = serde_json::from_slice(&out.stdout).unwrap();
        json["info"]["path"].as_str().unwrap().to_owned()
    };
    let from_env = std::process::Command::new(bin("cfsctl"))
        .args(["--json", "info"])
        .env("CFSD_ADDRESS", a.address())
        .output()
        .unwrap();
    assert_eq!(info(from_env), a.repo().display().to_string());
    let flag_wins = std::process::Command::new(bin("cfsctl"))
        .args(["--json", "--address", &b.address(), "info"])
        .env("CFSD_ADDRESS", a.address())
        .output()
        .unwrap();
    assert_eq!(info(flag_wins), b.repo().display().to_string());
    system_socket_is_the_last_resort();
}

/// Without `--address` or `$CFSD_ADDRESS`, cfsctl goes to the system
/// socket. The test gets a system socket path of its own: a new mount
/// namespace with a fresh tmpfs on /run, where it first finds no daemon
/// and then one it starts there itself.
fn system_socket_is_the_last_resort() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let init = cfsctl(&["--repo", repo.to_str().unwrap(), "init"]);
    assert!(init.status.success(), "{}", stderr(&init));
    let script = r#"
        set -u
        mount -t tmpfs tmpfs /run && mkdir /run/cfsd || exit 100
        "$CFSCTL" info 2>&1; echo "no-daemon-rc=$?"
        "$CFSD" --repo "$REPO" --address unix:/run/cfsd/cfsd.sock 2>/dev/null & pid=$!
        tries=0
        until "$CFSCTL" --json info >"$OUT" 2>&1; do
            tries=$((tries + 1)); [ $tries -lt 200 ] || break; sleep 0.05
        done
        echo "daemon-rc=$?"
        # --system goes there even when $CFSD_ADDRESS names another.
        CFSD_ADDRESS=unix:/nonexistent.sock "$CFSCTL" --system --json info >"$OUT.system" 2>&1
        echo "system-rc=$?"
        kill $pid; wait $pid
    "#;
    let out_file = dir.path().join("info.json");
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .env_remove("CFSD_ADDRESS")
        .env("CFSCTL", bin("cfsctl"))
        .env("CFSD", bin("cfsd"))
        .env("REPO", &repo)
        .env("OUT", &out_file)
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(text.contains("no-daemon-rc=1"), "{text}{}", stderr(&out));
    assert!(
        text.contains(cfsd_varlink::address::SYSTEM_SOCKET),
        "the error should name the system socket: {text}"
    );
    assert!(text.contains("daemon-rc=0"), "{text}{}", stderr(&out));
    let json: Value = serde_json::from_slice(&std::fs::read(&out_file).unwrap()).unwrap();
    assert_eq!(json["info"]["path"], repo.display().to_string());
    assert!(text.contains("system-rc=0"), "{text}");
    let system = std::fs::read(dir.path().join("info.json.system")).unwrap();
    let json: Value = serde_json::from_slice(&system).unwrap();
    assert_eq!(json["info"]["path"], repo.display().to_string());
}

#[test]
fn user_is_the_repository_in_home_that_upstream_user_names() {
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin("cfsctl"))
            .args(args)
            .env("HOME", home.path())
            // $CFSD_ADDRESS gives way to --user.
            .env("CFSD_ADDRESS", "unix:/nonexistent.sock")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        out
    };
    run(&["--user", "init"]);
    let repo = home.path().join(".var/lib/composefs");
    let mode = std::fs::metadata(&repo).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "the user's repository is private");
    let image = cfsd_tests::oci::small_image(cfsd_tests::oci::Compression::Gzip, "mine");
    let written = cfsd_tests::oci::Written::new(&cfsd_tests::oci::Layout::single(&image, None).0);
    run(&["--user", "oci", "pull", &written.archive(None), "mine"]);
    let ours: Value =
        serde_json::from_slice(&run(&["--user", "--json", "oci", "inspect", "mine"]).stdout)
            .unwrap();
    // Upstream cfsctl --user, with the same $HOME, finds the same image.
    let theirs = std::process::Command::new(cfsd_tests::upstream::upstream())
        .args(["--user", "oci", "compute-id", "mine"])
        .env("HOME", home.path())
        .output()
        .unwrap();
    assert!(theirs.status.success(), "{}", stderr(&theirs));
    assert_eq!(stdout(&theirs).trim(), ours["imageId"], "{ours}");
}

#[test]
fn private_daemon_needs_no_setup_and_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("private");
    let repo_arg = repo.to_str().unwrap();
    let out = cfsctl(&["--repo", repo_arg, "info"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cfsctl init"), "{}", stderr(&out));
    let out = cfsctl(&["--repo", repo_arg, "init"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("Created"), "{}", stdout(&out));
    assert!(repo.join("meta.json").exists());
    let out = cfsctl(&["--repo", repo_arg, "--json", "fsck"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ok"], true);
    let out = cfsctl(&["--repo", repo_arg, "gc", "--dry-run"]);
    assert!(
        stdout(&out).contains("Would remove 0 objects"),
        "{}",
        stdout(&out)
    );
}
