//! A stalled disk does not stall the daemon (issue #16 item 5): with the
//! repository on a FUSE passthrough that holds every data write, a pull
//! (full, or applying a delta) waits in a held write while other clients,
//! on other connections, still get their answers: repository info, the
//! image list, an image inspected, and a typed refusal. Once the writes
//! are let through, the pull completes with the image a lone pull gives.
//!
//! cfsd runs with one tokio worker (`TOKIO_WORKER_THREADS=1`), so that a
//! call blocking an async thread on the disk would stall every other
//! call rather than hide behind a second worker.

use std::time::Duration;

use cfsd_tests::{
    Daemon,
    delta::tar_diff_delta,
    oci::{Compression, Entry, Image, Layer, Layout, Written, noise, small_image},
    ocictl::{parse_pull, pull},
    peer::raw_calls_as,
    stalled::{Stalled, finished_within},
    stderr, stdout,
};
use serde_json::json;

/// With the writes held, start the pull `args`, wait until it is stuck in
/// a held write, and check that every other client is answered while it
/// stays stuck; then let the writes through. Returns the pull's output.
fn answers_while_stuck(stalled: &Stalled, args: &[&str], present: &str) -> String {
    stalled.fs.hold_writes();
    let mut stuck = stalled.spawn_pull(args);
    stalled
        .fs
        .wait_for_held_write(Duration::from_secs(60), "the pull");

    let info = stalled.answered(&["info"]);
    assert!(
        info["info"]["objects"]["count"].as_u64().unwrap() > 0,
        "{info}"
    );
    let images = stalled.answered(&["oci", "images"]);
    let names: Vec<_> = images["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.iter().any(|n| n == present), "{images}");
    let inspected = stalled.answered(&["oci", "inspect", present]);
    assert!(
        inspected["manifestDigest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "{inspected}"
    );
    // An unprivileged peer's GC is refused, typed, at once.
    let refused = raw_calls_as(
        &stalled.daemon,
        &[],
        &[json!({"method": "io.cfsd.Repository.Gc", "parameters": {}})],
    );
    assert_eq!(
        refused[0]["error"], "io.cfsd.Repository.PermissionDenied",
        "{refused:?}"
    );

    // All of that was answered while the pull was still waiting on its
    // write: the write is still held, and the pull has not replied.
    assert!(stalled.fs.held() > 0, "the held write was let go");
    assert!(
        stuck.try_wait().unwrap().is_none(),
        "the pull finished while its write was held"
    );
    stalled.fs.release();
    let out = finished_within(stuck, Duration::from_secs(120))
        .expect("the pull did not finish once its writes were let through");
    assert!(out.status.success(), "pull {args:?}: {}", stderr(&out));
    stdout(&out)
}

/// Every tag names an image and fsck is clean.
fn repository_is_sound(stalled: &Stalled, tags: &[&str]) {
    let fsck = stalled.answered(&["fsck"]);
    assert_eq!(fsck["ok"], true, "{fsck}");
    for tag in tags {
        let inspected = stalled.answered(&["oci", "inspect", tag]);
        assert!(inspected["imageId"].is_string(), "{tag}: {inspected}");
    }
}

#[test]
fn a_pull_stuck_in_a_held_write_leaves_the_daemon_answering() {
    let stalled = Stalled::start();
    let (present, _) = Layout::single(&small_image(Compression::Gzip, "present\n"), None);
    let present = Written::new(&present);
    pull(&stalled.daemon, &[&present.archive(None), "present"]);

    let image = Image::new(vec![Layer::new(
        Compression::Gzip,
        vec![
            Entry::dir("usr"),
            Entry::file("usr/data.bin", noise(3, 600_000)),
            Entry::file("usr/small", "small\n"),
        ],
    )]);
    let (layout, built) = Layout::single(&image, None);
    let written = Written::new(&layout);
    let text = answers_while_stuck(&stalled, &[&written.archive(None), "stuck"], "present");
    let pulled = parse_pull(&text);
    assert_eq!(pulled.str("manifestDigest"), built.manifest_digest);
    assert_eq!(pulled.result["alreadyPresent"], false, "{}", pulled.result);

    // The image is the one a lone pull into a plain repository gives.
    let lone = Daemon::start_initialised(&[]);
    let alone = pull(&lone, &[&written.archive(None), "stuck"]);
    assert_eq!(pulled.str("imageId"), alone.str("imageId"));
    repository_is_sound(&stalled, &["present", "stuck"]);
    assert!(stalled.fs.written() > 0);
}

#[test]
fn a_delta_apply_stuck_in_a_held_write_leaves_the_daemon_answering() {
    let stalled = Stalled::start();
    let base = Image::new(vec![Layer::new(
        Compression::Gzip,
        vec![
            Entry::dir("usr"),
            Entry::file("usr/data.bin", noise(5, 400_000)),
        ],
    )]);
    let mut changed = noise(5, 400_000);
    for b in &mut changed[1000..1200] {
        *b = b.wrapping_add(1);
    }
    let target = Image::new(vec![
        base.layers[0].clone(),
        Layer::new(
            Compression::Zstd,
            vec![
                Entry::dir("usr"),
                Entry::file("usr/data.bin", changed),
                Entry::file("usr/new.bin", noise(6, 300_000)),
            ],
        ),
    ]);
    let (base_layout, base_built) = Layout::single(&base, None);
    let base_written = Written::new(&base_layout);
    pull(&stalled.daemon, &[&base_written.archive(None), "base"]);
    let (target_layout, target_built) = Layout::single(&target, None);
    let delta = Written::new(&tar_diff_delta(&base, &base_built, &target_built, 1));

    let text = answers_while_stuck(&stalled, &[&delta.archive(None), "target"], "base");
    let pulled = parse_pull(&text);
    assert_eq!(pulled.str("manifestDigest"), target_built.manifest_digest);
    assert!(pulled.result["delta"].is_object(), "{}", pulled.result);

    let lone = Daemon::start_initialised(&[]);
    let alone = pull(
        &lone,
        &[&Written::new(&target_layout).archive(None), "target"],
    );
    assert_eq!(pulled.str("imageId"), alone.str("imageId"));
    repository_is_sound(&stalled, &["base", "target"]);
}
