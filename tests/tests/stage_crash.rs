//! Crash safety of staged pulls (issue #14 item 1): cfsd is SIGKILLed at
//! spread-out points of `oci pull --stage`, as `crash.rs` does for plain
//! pulls (each kill point a fraction of an uninterrupted run's time),
//! and restarted on the same repository. Whatever phase a kill hit:
//!
//! - no tag is ever published;
//! - there is no stage (killed before its record was written), or one
//!   that is complete and commits to the image id of an uninterrupted
//!   run, or one that the restart found unfinished: its record on disk
//!   says `incomplete`, `Commit` refuses it with `StageIncomplete`, and
//!   `gc` removes it and every object it held, leaving the repository as
//!   empty as before the pull.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use cfsd_tests::{
    Daemon, bin,
    oci::{Compression, Entry, Image, Layer, Layout, Written, noise},
    ocictl::{json, object_count},
    stderr,
};
use serde_json::{Value, json};

/// Kill points per image.
const ROUNDS: u32 = 6;

/// Two layers, a large compressed one and one of many small files, so
/// that kills land in reading, splitting, and building the image.
fn image() -> Image {
    let mut many = vec![Entry::dir("etc")];
    for i in 0..400 {
        many.push(Entry::file(&format!("etc/f{i}"), noise(10 + i, 2000)));
    }
    Image::new(vec![
        Layer::new(
            Compression::Zstd,
            vec![
                Entry::dir("usr"),
                Entry::file("usr/big", noise(1, 12 << 20)),
            ],
        ),
        Layer::new(Compression::Gzip, many),
    ])
}

fn spawn_stage(daemon: &Daemon, source: &str) -> Child {
    Command::new(bin("cfsctl"))
        .arg("--address")
        .arg(daemon.address())
        .args(["--json", "oci", "pull", "--stage", source])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running cfsctl")
}

/// An uninterrupted staged pull: its time and the image id committing
/// it gives.
fn reference(source: &str) -> (Duration, String) {
    let daemon = Daemon::start_initialised(&[]);
    let start = Instant::now();
    let out = spawn_stage(&daemon, source).wait_with_output().unwrap();
    let took = start.elapsed();
    assert!(out.status.success(), "{}", stderr(&out));
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    let stage = reply["result"]["stage"].as_str().unwrap().to_owned();
    let committed = json(&daemon, &["oci", "commit", &stage, "ref"]);
    (took, committed["imageId"].as_str().unwrap().to_owned())
}

/// What a kill left, as the restarted daemon and the disk tell.
#[derive(Debug, PartialEq, Eq)]
enum Left {
    Nothing,
    Complete,
    Incomplete,
}

fn commit_error(daemon: &Daemon, stage: &str) -> Option<String> {
    let call = json!({
        "method": "io.cfsd.Oci.Commit",
        "parameters": {"stage": stage, "tag": "committed"},
    });
    let reply = daemon.raw().call(call);
    reply.get("error").map(|e| e.as_str().unwrap().to_owned())
}

/// Check what the restarted `daemon` shows after a kill; `image_id` is
/// an uninterrupted run's.
fn check(daemon: &Daemon, image_id: &str) -> Left {
    let images = json(daemon, &["oci", "images"]);
    assert_eq!(images["images"], json!([]), "a staged pull published a tag");
    let stages = json(daemon, &["oci", "staged"])["stages"].clone();
    let stages = stages.as_array().unwrap();
    let Some(stage) = stages.first() else {
        json(daemon, &["gc"]);
        assert_eq!(object_count(&daemon.repo()), 0);
        return Left::Nothing;
    };
    assert_eq!(stages.len(), 1);
    let id = stage["id"].as_str().unwrap();
    match stage["state"].as_str().unwrap() {
        "complete" => {
            assert_eq!(commit_error(daemon, id), None);
            let computed = json(daemon, &["oci", "compute-id", "committed"]);
            assert_eq!(computed["imageId"], image_id);
            Left::Complete
        }
        "incomplete" => {
            // Recognised at start-up: the record itself says so.
            let record = std::fs::read(daemon.repo().join("stages").join(id)).unwrap();
            let record: Value = serde_json::from_slice(&record).unwrap();
            assert_eq!(record["state"], "incomplete");
            assert_eq!(
                commit_error(daemon, id).as_deref(),
                Some("io.cfsd.Oci.StageIncomplete")
            );
            json(daemon, &["gc"]);
            assert_eq!(json(daemon, &["oci", "staged"])["stages"], json!([]));
            assert_eq!(object_count(&daemon.repo()), 0, "GC left what it held");
            assert_eq!(json(daemon, &["oci", "images"])["images"], json!([]));
            Left::Incomplete
        }
        other => panic!("a restarted daemon lists a stage as {other}"),
    }
}

#[test]
fn sigkill_during_a_staged_pull_leaves_no_stage_that_commits_wrongly() {
    let (layout, _) = Layout::single(&image(), None);
    let written = Written::new(&layout);
    let source = written.archive(None);
    let (took, image_id) = reference(&source);
    let mut left = Vec::new();
    for round in 1..=ROUNDS {
        let mut daemon = Daemon::start_initialised(&[]);
        let client = spawn_stage(&daemon, &source);
        let delay = took * round / (ROUNDS + 1);
        std::thread::sleep(delay);
        daemon.kill_and_restart();
        let out = client.wait_with_output().unwrap();
        eprintln!("killed at {delay:?} of {took:?}: client {}", out.status);
        left.push(check(&daemon, &image_id));
    }
    eprintln!("{left:?}");
    // The kills must have met unfinished stages, or nothing was shown.
    assert!(left.contains(&Left::Incomplete), "{left:?}");
}
