//! GC holds (`io.cfsd.Repository.Hold`, `cfsctl transaction`): while a
//! client holds GC off, a collection waits and then fails naming the
//! hold's reason, and removes nothing; `info` shows who holds it; the
//! hold ends with its connection, also when the client is SIGKILLed, and
//! GC then collects. Only root, the daemon's user and the admin group may
//! hold GC off.

use std::{
    os::unix::fs::PermissionsExt,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use cfsd_tests::{
    Daemon, bin,
    oci::{Layout, Written, everything_image},
    ocictl::{json, object_count, pull, succeeds},
    peer::{NOBODY, as_nobody, raw_calls_as},
    stderr, stdout,
};
use serde_json::{Value, json};

/// The admin group given to nobody with `--allow-group`.
const ADMINS: u32 = 4242;

/// A daemon whose repository holds garbage: an image pulled and removed.
fn daemon_with_garbage(args: &[&str]) -> Daemon {
    let (layout, _) = Layout::single(&everything_image(), None);
    let written = Written::new(&layout);
    let daemon = Daemon::start_for_nobody(args);
    succeeds(&daemon, &["init"]);
    pull(&daemon, &[&written.archive(None), "doomed"]);
    succeeds(&daemon, &["oci", "rm", "doomed"]);
    daemon
}

/// What holds GC off, as `cfsctl info --json` says.
fn holders(daemon: &Daemon) -> Vec<String> {
    let info = json(daemon, &["info"]);
    serde_json::from_value(info["info"]["gcHolders"].clone()).expect("gcHolders is a list")
}

/// Wait until `holders` satisfies `done`, for at most 30 s.
fn wait_for_holders(daemon: &Daemon, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = holders(daemon);
        if done(&now) || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `cfsctl transaction ARGS` against `daemon`, running in the background.
fn spawn_transaction(daemon: &Daemon, args: &[&str]) -> Child {
    Command::new(bin("cfsctl"))
        .arg("--address")
        .arg(daemon.address())
        .arg("transaction")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning cfsctl")
}

#[test]
fn a_hold_keeps_gc_off_until_its_client_is_killed() {
    let daemon = daemon_with_garbage(&["--gc-wait", "1"]);
    let objects = object_count(&daemon.repo());
    let mut holder = spawn_transaction(&daemon, &["--reason", "staging update 7"]);
    let expected = format!("staging update 7 (uid 0, pid {})", holder.id());
    let held = wait_for_holders(&daemon, |h| h.contains(&expected));
    assert_eq!(held, vec![expected.clone()], "info shows the hold");

    let gc = daemon.cfsctl(&["--json", "gc"]);
    assert_eq!(gc.status.code(), Some(1), "gc ran under a hold");
    let reply: Value = serde_json::from_str(stdout(&gc).trim()).expect("a JSON error");
    assert_eq!(
        reply["error"], "io.cfsd.Repository.RepositoryBusy",
        "{reply}"
    );
    assert_eq!(reply["parameters"]["holders"], json!([expected]), "{reply}");
    assert!(stderr(&gc).contains("staging update 7"), "{}", stderr(&gc));
    assert_eq!(object_count(&daemon.repo()), objects, "GC removed objects");
    // A dry run only reads: the hold does not stop it.
    let dry = json(&daemon, &["gc", "--dry-run"]);
    assert!(dry["objectsRemoved"].as_u64().unwrap() > 0, "{dry}");

    // SIGKILL leaves no chance to let go: the connection's end does it.
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(
        wait_for_holders(&daemon, <[String]>::is_empty),
        Vec::<String>::new()
    );
    let collected = json(&daemon, &["gc"]);
    assert_eq!(
        collected["objectsRemoved"], dry["objectsRemoved"],
        "{collected}"
    );
    assert!(object_count(&daemon.repo()) < objects);
}

#[test]
fn transaction_runs_its_command_under_the_hold_and_exits_as_it_does() {
    let daemon = daemon_with_garbage(&["--gc-wait", "1"]);
    let seen = daemon.dir().join("seen.json");
    let script = format!(
        "{} --address {} --json info > {}; exit 3",
        bin("cfsctl").display(),
        daemon.address(),
        seen.display()
    );
    let out = daemon.cfsctl(&["transaction", "--", "sh", "-c", &script]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let seen: Value = serde_json::from_slice(&std::fs::read(&seen).unwrap()).unwrap();
    let during = seen["info"]["gcHolders"].as_array().unwrap();
    assert_eq!(during.len(), 1, "{seen}");
    let reason = during[0].as_str().unwrap();
    assert!(
        reason.starts_with("cfsctl transaction: sh -c ") && reason.contains("(uid 0, pid "),
        "{reason}"
    );
    // The command has ended, and the hold with it.
    assert_eq!(
        wait_for_holders(&daemon, <[String]>::is_empty),
        Vec::<String>::new()
    );
    let collected = json(&daemon, &["gc"]);
    assert!(
        collected["objectsRemoved"].as_u64().unwrap() > 0,
        "{collected}"
    );
}

#[test]
fn only_peers_who_may_collect_may_hold_and_a_hold_needs_more() {
    let daemon = daemon_with_garbage(&["--allow-group", &ADMINS.to_string()]);
    let hold = |reason: &str, more: bool| json!({"method": "io.cfsd.Repository.Hold", "parameters": {"reason": reason}, "more": more});
    let refused = raw_calls_as(&daemon, &[], &[hold("mine", true)]);
    assert_eq!(
        refused[0]["error"], "io.cfsd.Repository.PermissionDenied",
        "{refused:?}"
    );
    assert_eq!(refused[0]["parameters"]["uid"], NOBODY);
    assert_eq!(holders(&daemon), Vec::<String>::new(), "nobody holds GC");

    let bad = raw_calls_as(
        &daemon,
        &[ADMINS],
        &[
            hold("once", false),
            hold("two\nlines", true),
            hold("", true),
        ],
    );
    for (reply, parameter) in bad.iter().zip(["more", "reason", "reason"]) {
        assert_eq!(
            reply["error"], "org.varlink.service.InvalidParameter",
            "{reply}"
        );
        let named = reply["parameters"]["parameter"].as_str().unwrap();
        assert!(named.starts_with(parameter), "{reply}");
    }
    assert_eq!(
        holders(&daemon),
        Vec::<String>::new(),
        "a refused hold stayed"
    );

    // An admin-group member holds it, through its own cfsctl.
    let cfsctl = daemon.dir().join("cfsctl");
    std::fs::copy(bin("cfsctl"), &cfsctl).unwrap();
    std::fs::set_permissions(&cfsctl, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut admin = as_nobody(&[ADMINS], cfsctl.to_str().unwrap())
        .args([
            "--address",
            &daemon.address(),
            "transaction",
            "--reason",
            "admin",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning setpriv");
    let held = wait_for_holders(&daemon, |h| !h.is_empty());
    assert_eq!(held.len(), 1, "{held:?}");
    assert!(
        held[0].starts_with(&format!("admin (uid {NOBODY}, pid ")),
        "{held:?}"
    );
    admin.kill().unwrap();
    admin.wait().unwrap();
    assert_eq!(
        wait_for_holders(&daemon, <[String]>::is_empty),
        Vec::<String>::new()
    );
}
