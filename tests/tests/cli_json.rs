//! `cfsctl --json`: stdout carries only JSON lines and ends with the
//! result or with `{"error": NAME, "parameters": {...}}`; progress goes to
//! stderr unless `--progress=json` asks for it on stdout.

use cfsd_tests::{
    Daemon, cfsctl,
    oci::{Compression, Layout, Written, small_image},
    ocictl::{PrivateRepo, Target},
    stderr, stdout,
};
use serde_json::Value;

/// Every line of `text`, each of which must be one JSON value.
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}\nall:\n{text}"))
        })
        .collect()
}

/// The one JSON line a failing `cfsctl --json ARGS` printed, checked to
/// be an error of `name`; it must exit 1 and explain itself on stderr.
fn error_line(target: &impl Target, args: &[&str], name: &str) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = target.run(&all);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
    assert!(!stderr(&out).trim().is_empty(), "{args:?}: no message");
    let lines = json_lines(&stdout(&out));
    assert_eq!(lines.len(), 1, "{args:?}: {lines:?}");
    let line = lines.into_iter().next().unwrap();
    assert_eq!(line["error"], name, "{line}");
    assert!(line["parameters"].is_object(), "{line}");
    line
}

fn image() -> Written {
    let (layout, _) = Layout::single(&small_image(Compression::Gzip, "json\n"), None);
    Written::new(&layout)
}

#[test]
fn cli_json_pull_prints_only_its_result_and_progress_goes_to_stderr() {
    let repo = PrivateRepo::init("sha256");
    let written = image();
    let out = repo.run(&["--json", "oci", "pull", &written.archive(None), "a"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&stdout(&out));
    assert_eq!(lines.len(), 1, "stdout: {lines:?}");
    assert!(
        lines[0]["result"]["manifestDigest"].is_string(),
        "{}",
        lines[0]
    );
    // Outside a terminal, progress is plain lines on stderr.
    let err = stderr(&out);
    assert!(err.contains("sha256:") && err.contains("done"), "{err}");

    // Asked for, progress comes first on stdout, the result last.
    let out = repo.run(&[
        "--json",
        "--progress=json",
        "oci",
        "pull",
        &written.archive(None),
        "b",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&stdout(&out));
    let (last, before) = lines.split_last().unwrap();
    assert!(last["result"].is_object(), "{last}");
    assert!(!before.is_empty(), "no progress lines");
    assert!(
        before.iter().all(|l| l["progress"]["layer"].is_string()),
        "{before:?}"
    );
    assert!(!stderr(&out).contains("sha256:"), "{}", stderr(&out));

    // --progress=none shows nothing anywhere.
    let out = repo.run(&[
        "--progress=none",
        "oci",
        "pull",
        &written.archive(None),
        "c",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
    assert!(stdout(&out).contains("Image ID:"), "{}", stdout(&out));
}

#[test]
fn cli_json_replies_are_single_lines() {
    let repo = PrivateRepo::init("sha256");
    for args in [
        &["info"][..],
        &["oci", "images"],
        &["fsck"],
        &["gc", "--dry-run"],
    ] {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = repo.run(&all);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let lines = json_lines(&stdout(&out));
        assert_eq!(lines.len(), 1, "{args:?}: {lines:?}");
        assert!(lines[0].is_object());
    }
}

#[test]
fn cli_json_errors_are_typed_lines_on_stdout() {
    let daemon = Daemon::start_initialised(&[]);
    let line = error_line(
        &daemon,
        &["oci", "inspect", "nothing-here"],
        "io.cfsd.Oci.ImageNotFound",
    );
    assert_eq!(line["parameters"]["image"], "nothing-here");

    let line = error_line(
        &daemon,
        &["oci", "untag", "gone"],
        "io.cfsd.Oci.TagNotFound",
    );
    assert_eq!(line["parameters"]["tag"], "gone");

    let uninitialised = Daemon::start(&[]);
    let line = error_line(
        &uninitialised,
        &["info"],
        "io.cfsd.Repository.NotInitialized",
    );
    assert!(line["parameters"]["path"].is_string(), "{line}");

    // Failures in cfsctl itself have names of their own.
    let line = error_line(
        &daemon,
        &["oci", "pull", "dir:/x"],
        "io.cfsd.cfsctl.InvalidSource",
    );
    assert_eq!(line["parameters"]["argument"], "dir:/x");
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.tar");
    let source = format!("oci-archive:{}", missing.display());
    let line = error_line(
        &daemon,
        &["oci", "pull", &source],
        "io.cfsd.cfsctl.OpenFailed",
    );
    assert_eq!(line["parameters"]["path"], missing.display().to_string());

    // An unreachable daemon is a failure too, with JSON all the same.
    let out = cfsctl(&[
        "--json",
        "--address",
        &format!("unix:{}", dir.path().join("none.sock").display()),
        "info",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let lines = json_lines(&stdout(&out));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("io.cfsd.cfsctl.")
    );
}

#[test]
fn cli_json_a_usage_error_exits_2() {
    let out = cfsctl(&["--json", "oci", "frobnicate"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn cli_json_delta_create_shows_how_much_it_has_written() {
    let repo = PrivateRepo::init("sha256");
    for (content, tag) in [("delta a\n", "a"), ("delta b\n", "b")] {
        let (layout, _) = Layout::single(&small_image(Compression::Gzip, content), None);
        let out = repo.run(&["oci", "pull", &Written::new(&layout).archive(None), tag]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let dest = format!("oci-archive:{}", repo.dir().join("d.tar").display());
    let out = repo.run(&[
        "--json",
        "--progress=json",
        "oci",
        "delta",
        "create",
        "a",
        "b",
        &dest,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&stdout(&out));
    let (last, progress) = lines.split_last().unwrap();
    let written = last["deltaBytes"].as_u64().expect("the result last");
    let sizes: Vec<u64> = progress
        .iter()
        .map(|l| l["progress"]["written"].as_u64().expect("a progress line"))
        .collect();
    assert_eq!(sizes.last(), Some(&written), "{sizes:?}");
    assert!(sizes.windows(2).all(|w| w[0] <= w[1]), "{sizes:?}");
    // For people, the same goes to stderr.
    let out = repo.run(&["oci", "delta", "create", "a", "b", &dest]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("writing ") && err.contains("d.tar"), "{err}");
}
