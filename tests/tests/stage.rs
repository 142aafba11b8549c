//! Stage now, commit later (issue #14 item 1): `oci pull --stage` imports
//! and verifies an image and names nothing; `oci staged` lists it,
//! `oci commit` publishes it with one tag change, `oci abort` drops it.
//! Checked through real daemons: restarts, GC, deleted objects, crafted
//! ids, unprivileged peers and a client that hangs up mid-pull.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use cfsd_tests::{
    Daemon, bin,
    oci::{Compression, Entry, Image, Layer, Layout, Written, noise},
    ocictl::{fails, json, object_count, pull, typed_refusal_of},
    peer::raw_calls_as,
};
use cfsd_varlink::oci::{OciError, PullParams};
use serde_json::{Value, json};

/// A group for `--allow-group`.
const ADMINS: u32 = 4242;

fn image(seed: u64, size: usize) -> Image {
    // Large ones uncompressed, so that writing them is quick.
    let compression = match size {
        0..1_000_000 => Compression::Gzip,
        _ => Compression::None,
    };
    Image::new(vec![Layer::new(
        compression,
        vec![
            Entry::dir("usr"),
            Entry::file("usr/big", noise(seed, size)),
            Entry::file("usr/small", "small\n"),
        ],
    )])
    .label("seed", &seed.to_string())
}

/// The image written as an archive: its source argument, its manifest
/// digest, and what keeps the files.
fn source(seed: u64, size: usize) -> (String, String, Written) {
    let (layout, built) = Layout::single(&image(seed, size), None);
    let written = Written::new(&layout);
    (written.archive(None), built.manifest_digest, written)
}

/// `oci pull --stage SOURCE`: the stage id; the result sets no tag.
fn stage(daemon: &Daemon, source: &str) -> String {
    let pulled = pull(daemon, &[source, "--stage"]);
    assert_eq!(pulled.str("tag"), "");
    pulled.str("stage").to_owned()
}

fn staged(daemon: &Daemon) -> Vec<Value> {
    json(daemon, &["oci", "staged"])["stages"]
        .as_array()
        .unwrap()
        .clone()
}

fn call(method: &str, parameters: Value) -> Value {
    json!({"method": format!("io.cfsd.Oci.{method}"), "parameters": parameters})
}

/// The typed error of one raw call, or `None` if it succeeded.
fn error_of(daemon: &Daemon, method: &str, parameters: Value) -> Option<(String, Value)> {
    let reply = daemon.raw().call(call(method, parameters));
    let name = reply.get("error")?.as_str()?.to_owned();
    Some((name, reply["parameters"].clone()))
}

fn tags(daemon: &Daemon) -> Vec<String> {
    json(daemon, &["oci", "images"])["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_stage_survives_a_restart_and_gc_and_commits_to_the_pulled_image() {
    let (source, manifest, _w) = source(1, 300_000);
    let mut daemon = Daemon::start_initialised(&[]);
    let id = stage(&daemon, &source);
    assert_eq!(id.len(), 32);
    assert!(tags(&daemon).is_empty(), "a staged pull names nothing");
    daemon.kill_and_restart();
    json(&daemon, &["gc"]);
    let listed = staged(&daemon);
    assert_eq!(listed.len(), 1);
    let s = &listed[0];
    assert_eq!(
        (s["id"].as_str(), s["state"].as_str()),
        (Some(&*id), Some("complete"))
    );
    assert_eq!(s["manifestDigest"], manifest.as_str());
    assert!(s["size"].as_u64().unwrap() > 300_000 / 2, "{s}");
    assert!(s["bytesNew"].as_u64().unwrap() >= 300_000, "{s}");
    assert!(s["created"].as_u64().unwrap() > 1_700_000_000, "{s}");

    let committed = json(&daemon, &["oci", "commit", &id, "app:v1"]);
    assert_eq!(committed["manifestDigest"], manifest.as_str());
    assert_eq!(tags(&daemon), ["app:v1"]);
    assert!(staged(&daemon).is_empty(), "a committed stage is gone");
    // The same image pulled plainly has the same id.
    let other = Daemon::start_initialised(&[]);
    let direct = pull(&other, &[&source, "direct"]);
    assert_eq!(committed["imageId"], direct.str("imageId"));
    let recomputed = json(&daemon, &["oci", "compute-id", "app:v1"]);
    assert_eq!(recomputed["imageId"], direct.str("imageId"));
    let (name, params) = error_of(&daemon, "Commit", json!({"stage": id, "tag": "again"})).unwrap();
    assert_eq!(
        (name.as_str(), &params["stage"]),
        ("io.cfsd.Oci.StageNotFound", &json!(id))
    );
}

#[test]
fn gc_after_abort_frees_what_the_stage_held() {
    let (source, _, _w) = source(2, 400_000);
    let daemon = Daemon::start_initialised(&[]);
    let id = stage(&daemon, &source);
    json(&daemon, &["gc"]);
    let kept = object_count(&daemon.repo());
    assert!(kept > 0);
    json(&daemon, &["oci", "abort", &id]);
    assert!(staged(&daemon).is_empty());
    let dry = json(&daemon, &["gc", "--dry-run"]);
    let done = json(&daemon, &["gc"]);
    assert_eq!(dry["objectsRemoved"], done["objectsRemoved"]);
    assert_eq!(done["objectsRemoved"].as_u64().unwrap() as usize, kept);
    assert_eq!(object_count(&daemon.repo()), 0);
    let (name, _) = error_of(&daemon, "Abort", json!({"stage": id})).unwrap();
    assert_eq!(name, "io.cfsd.Oci.StageNotFound");
}

/// The path under the repository of the object of `size` bytes.
fn object_of_size(repo: &Path, size: u64) -> std::path::PathBuf {
    std::fs::read_dir(repo.join("objects"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).into_iter().flatten())
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::metadata(p).unwrap().len() == size)
        .expect("an object of that size")
}

#[test]
fn commit_refuses_a_stage_whose_objects_were_deleted() {
    let (source, _, _w) = source(3, 250_000);
    let daemon = Daemon::start_initialised(&[]);
    let id = stage(&daemon, &source);
    let object = object_of_size(&daemon.repo(), 250_000);
    std::fs::remove_file(&object).unwrap();
    let (name, params) = error_of(&daemon, "Commit", json!({"stage": id, "tag": "app"})).unwrap();
    assert_eq!(name, "io.cfsd.Oci.StageObjectsMissing");
    assert_eq!(params["stage"], id.as_str());
    assert_eq!(params["missing"], 1);
    let first = params["first"].as_str().unwrap();
    assert!(
        object.ends_with(first.strip_prefix("objects/").unwrap()),
        "{first}"
    );
    assert!(tags(&daemon).is_empty(), "nothing was published");
    let err = fails(&daemon, &["oci", "commit", &id, "app"]);
    assert!(err.contains("lacks 1 of the objects"), "{err}");
    // The daemon keeps serving; the stage can still be aborted.
    json(&daemon, &["oci", "abort", &id]);
}

#[test]
fn crafted_stage_ids_get_typed_errors_and_reach_no_file() {
    let daemon = Daemon::start_initialised(&[]);
    let victim = daemon.repo().join("victim");
    std::fs::write(&victim, b"{\"state\":\"complete\"}").unwrap();
    std::fs::create_dir_all(daemon.repo().join("stages")).unwrap();
    let long = "a".repeat(4096);
    for crafted in [
        "../victim",
        "..",
        "",
        "/etc/passwd",
        "ABCDEF0123456789ABCDEF0123456789",
        &long,
    ] {
        for (method, params) in [
            ("Commit", json!({"stage": crafted, "tag": "t"})),
            ("Abort", json!({"stage": crafted})),
        ] {
            let (name, p) = error_of(&daemon, method, params).unwrap();
            assert_eq!(name, "io.cfsd.Oci.InvalidStageId", "{method} {crafted:?}");
            assert_eq!(p["stage"], crafted);
        }
    }
    assert!(victim.exists());
    let unknown = "0123456789abcdef0123456789abcdef";
    let (name, _) = error_of(&daemon, "Commit", json!({"stage": unknown, "tag": "t"})).unwrap();
    assert_eq!(name, "io.cfsd.Oci.StageNotFound");
    // A staged pull names no tag: asking for one is refused before import.
    let (source, _, _w) = source(4, 1000);
    let path = source.strip_prefix("oci-archive:").unwrap();
    let params = PullParams {
        transport: "oci-archive".into(),
        tag: Some("named".into()),
        stage: Some(true),
        ..PullParams::default()
    };
    let fd = std::fs::File::open(path).unwrap().into();
    match typed_refusal_of(&daemon, &params, fd) {
        OciError::InvalidTag { tag, reason } => {
            assert_eq!(tag, "named");
            assert!(reason.contains("staged pull sets no tag"), "{reason}");
        }
        other => panic!("{other}"),
    }
    assert!(
        !daemon
            .repo()
            .join("stages")
            .read_dir()
            .unwrap()
            .any(|_| true)
    );
    assert_eq!(object_count(&daemon.repo()), 0);
    assert!(tags(&daemon).is_empty());
}

#[test]
fn only_peers_who_may_tag_commit_or_abort_stages() {
    let (source, _, _w) = source(5, 100_000);
    let admins = ADMINS.to_string();
    let daemon = Daemon::start_for_nobody(&["--allow-group", &admins]);
    json(&daemon, &["init"]);
    let first = stage(&daemon, &source);
    let commit = call("Commit", json!({"stage": first, "tag": "stolen"}));
    let abort = call("Abort", json!({"stage": first}));
    let list = call("ListStages", json!({}));
    let replies = raw_calls_as(&daemon, &[], &[commit.clone(), abort.clone(), list]);
    for reply in &replies[..2] {
        assert_eq!(reply["error"], "io.cfsd.Oci.PermissionDenied", "{reply}");
        assert_eq!(reply["parameters"]["uid"], 65534);
    }
    // Listing is reading, open to every peer.
    assert_eq!(replies[2]["parameters"]["stages"][0]["id"], first.as_str());
    assert_eq!(
        staged(&daemon)[0]["state"],
        "complete",
        "the stage is untouched"
    );
    assert!(tags(&daemon).is_empty());
    // A member of the admin group may, as it may tag and untag.
    let admin = raw_calls_as(&daemon, &[ADMINS], &[commit]);
    assert_eq!(admin[0]["parameters"]["tag"], "stolen", "{}", admin[0]);
    let second = stage(&daemon, &source);
    let admin = raw_calls_as(
        &daemon,
        &[ADMINS],
        &[call("Abort", json!({"stage": second}))],
    );
    assert!(admin[0].get("error").is_none(), "{}", admin[0]);
    assert!(staged(&daemon).is_empty());
}

#[test]
fn a_client_hanging_up_mid_stage_pull_leaves_nothing_commit_accepts() {
    // Large enough that its import is far from done when the client goes.
    let entries = (0..12)
        .map(|i| Entry::file(&format!("usr/f{i}"), noise(60 + i, 8 << 20)))
        .chain([Entry::dir("usr")]);
    let mut entries: Vec<Entry> = entries.collect();
    entries.rotate_right(1);
    let big = Image::new(vec![Layer::new(Compression::None, entries)]);
    let (layout, _) = Layout::single(&big, None);
    let _w = Written::new(&layout);
    let source = _w.archive(None);
    let daemon = Daemon::start_initialised(&[]);
    let mut client = Command::new(bin("cfsctl"))
        .arg("--address")
        .arg(daemon.address())
        .args(["--json", "oci", "pull", "--jobs", "1", "--stage", &source])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stages = daemon.repo().join("stages");
    let record = wait_for(Duration::from_secs(60), || {
        std::fs::read_dir(&stages)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().into_string().unwrap())
            .find(|n| n.len() == 32)
    });
    client.kill().unwrap();
    client.wait().unwrap();
    let settled = wait_for(Duration::from_secs(60), || {
        let listed = staged(&daemon);
        let state = listed[0]["state"].as_str().unwrap().to_owned();
        (state != "pulling").then_some(state)
    });
    assert_eq!(settled, "incomplete");
    let (name, _) = error_of(&daemon, "Commit", json!({"stage": record, "tag": "t"})).unwrap();
    assert_eq!(name, "io.cfsd.Oci.StageIncomplete");
    json(&daemon, &["gc"]);
    assert!(
        staged(&daemon).is_empty(),
        "GC collects an incomplete stage"
    );
    assert!(!daemon.repo().join("stages").join(&record).exists());
    // The cancelled import's object writers finished before its GC hold
    // went, so the collection found every object it wrote.
    assert_eq!(object_count(&daemon.repo()), 0);
    assert!(tags(&daemon).is_empty());
}

/// Poll `check` until it gives a value, failing after `timeout`.
fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(5));
    }
}
