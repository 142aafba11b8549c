//! What a reply promises: when cfsd answers Pull, Tag, Untag or Remove,
//! the change of the tag is on disk. A crash test cannot show this (the
//! page cache survives a killed process), so it is checked on the
//! daemon's own system calls, traced with strace: after the call that
//! changes the tag's name, a `syncfs` completes before the reply is sent.

use cfsd_tests::{
    Daemon, bin,
    oci::{Compression, Layout, Written, small_image},
    ocictl::pull,
};

/// A daemon run under strace, writing the trace to its directory.
fn traced_daemon() -> (Daemon, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap().keep();
    let log = dir.join("strace.log");
    let wrapper = [
        "strace",
        "-f",
        "-qq",
        "-s",
        "0",
        "-e",
        "trace=syncfs,symlinkat,renameat,renameat2,unlinkat,sendmsg",
        "-o",
        log.to_str().unwrap(),
    ];
    let daemon = Daemon::start_under(&wrapper, &[]);
    assert!(daemon.cfsctl(&["init"]).status.success());
    (daemon, log)
}

/// The trace's lines, without the pid column.
fn trace(log: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|line| {
            line.split_once(' ')
                .map_or(line, |(_, rest)| rest)
                .trim()
                .to_owned()
        })
        .collect()
}

/// Check that after the last line that changes the name `streams/refs/
/// oci/TAG` (its creation, a rename onto it or its removal), a syncfs
/// completes before the daemon next sends a message (zlink sends every
/// reply with sendmsg).
fn synced_before_reply(lines: &[String], tag: &str) {
    let name = format!("refs/oci/{tag}\"");
    let changed = lines
        .iter()
        .rposition(|l| {
            ["symlinkat", "renameat", "unlinkat"]
                .iter()
                .any(|call| l.starts_with(call))
                && l.contains(&name)
        })
        .unwrap_or_else(|| panic!("no change of {name} in the trace"));
    let after = &lines[changed + 1..];
    let reply = after
        .iter()
        .position(|l| l.starts_with("sendmsg"))
        .unwrap_or_else(|| panic!("no reply after the change of {name}"));
    let synced = after[..reply].iter().any(|l| {
        (l.starts_with("syncfs(") && l.contains("= 0")) || l.starts_with("<... syncfs resumed>")
    });
    assert!(
        synced,
        "the reply after changing {name} was sent before a syncfs completed:\n{}",
        after[..=reply].join("\n")
    );
}

/// Stop cfsd itself: killing strace, as dropping the daemon does, would
/// only detach it and leave it running.
fn stop_traced(daemon: &Daemon) {
    let strace = daemon.pid();
    let children = format!("/proc/{strace}/task/{strace}/children");
    let pids = std::fs::read_to_string(children).unwrap();
    for pid in pids.split_whitespace() {
        let pid = rustix::process::Pid::from_raw(pid.parse().unwrap()).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::path::Path::new(&format!("/proc/{strace}/task/{strace}/children")).exists()
        && !std::fs::read_to_string(format!("/proc/{strace}/task/{strace}/children"))
            .unwrap_or_default()
            .trim()
            .is_empty()
    {
        assert!(std::time::Instant::now() < deadline, "cfsd did not stop");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_reply_comes_after_the_tag_change_is_synced() {
    if std::process::Command::new("strace")
        .arg("-V")
        .output()
        .is_err()
    {
        panic!("strace is not installed (scripts/setup-deps installs it)");
    }
    assert!(bin("cfsd").exists());
    let (daemon, log) = traced_daemon();
    let (layout, _) = Layout::single(&small_image(Compression::Gzip, "durable\n"), None);
    let written = Written::new(&layout);

    pull(&daemon, &[&written.archive(None), "first"]);
    synced_before_reply(&trace(&log), "first");

    // The same image again: it is present, and only the tag is set.
    pull(&daemon, &[&written.archive(None), "again"]);
    synced_before_reply(&trace(&log), "again");

    assert!(
        daemon
            .cfsctl(&["oci", "tag", "first", "second"])
            .status
            .success()
    );
    synced_before_reply(&trace(&log), "second");

    assert!(daemon.cfsctl(&["oci", "untag", "second"]).status.success());
    synced_before_reply(&trace(&log), "second");

    assert!(daemon.cfsctl(&["oci", "rm", "again"]).status.success());
    synced_before_reply(&trace(&log), "again");
    stop_traced(&daemon);
}
