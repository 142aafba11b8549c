//! `oci dump` and `oci layer` (`io.cfsd.Oci.Dump`, `ExportLayer`): the
//! bytes upstream `cfsctl` 0.9.4 writes for the same repository, a layer
//! tar whose sha256 is its diff_id and which is the layer's original tar;
//! typed errors for what is not there; refused to peers who may not read
//! image files; and a client that stalls or hangs up costs the daemon
//! nothing lasting.

use std::process::{Command, Output, Stdio};

use cfsd_tests::{
    Daemon,
    oci::{
        Compression, Entry, Image, Layer, Layout, Written, everything_image, noise, sha256_digest,
    },
    ocictl::{json, pull, succeeds},
    peer::{NOBODY, raw_calls_as},
    pipe_client::pipe_client,
    stderr,
    upstream::upstream,
};
use serde_json::{Value, json};

/// The admin group given to nobody with `--allow-group`.
const ADMINS: u32 = 4242;

/// A daemon holding `image` as `it`, for peers of the nobody group too.
fn daemon_with(image: &Image, args: &[&str]) -> Daemon {
    let written = Written::new(&Layout::single(image, None).0);
    let daemon = Daemon::start_for_nobody(args);
    succeeds(&daemon, &["init"]);
    pull(&daemon, &[&written.archive(None), "it"]);
    daemon
}

/// What `cfsctl ARGS` printed, demanding success.
fn ours(daemon: &Daemon, args: &[&str]) -> Vec<u8> {
    let out = daemon.cfsctl(args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    out.stdout
}

/// What upstream `cfsctl --repo REPO ARGS` printed, demanding success.
fn theirs(daemon: &Daemon, args: &[&str]) -> Vec<u8> {
    let out: Output = Command::new(upstream())
        .arg("--repo")
        .arg(daemon.repo())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running upstream cfsctl");
    assert!(out.status.success(), "upstream {args:?}: {}", stderr(&out));
    out.stdout
}

/// The image's diff_ids, from its config as stored.
fn diff_ids(daemon: &Daemon) -> Vec<String> {
    let inspect = json(daemon, &["oci", "inspect", "it"]);
    let config: Value = match &inspect["config"] {
        Value::String(text) => serde_json::from_str(text).unwrap(),
        other => other.clone(),
    };
    serde_json::from_value(config["rootfs"]["diff_ids"].clone()).expect("diff_ids")
}

#[test]
fn an_images_dumpfile_is_upstreams_byte_for_byte() {
    let daemon = daemon_with(&everything_image(), &[]);
    let mine = ours(&daemon, &["oci", "dump", "it"]);
    assert!(
        mine.starts_with(b"/ "),
        "{}",
        String::from_utf8_lossy(&mine)
    );
    assert_eq!(
        String::from_utf8_lossy(&mine),
        String::from_utf8_lossy(&theirs(&daemon, &["oci", "dump", "it"]))
    );
}

#[test]
fn a_layer_is_its_original_tar_and_its_dumpfile_is_upstreams() {
    let image = everything_image();
    let daemon = daemon_with(&image, &[]);
    let ids = diff_ids(&daemon);
    assert_eq!(ids.len(), image.layers.len());
    for (layer, diff_id) in image.layers.iter().zip(&ids) {
        let tar = ours(&daemon, &["oci", "layer", diff_id]);
        assert_eq!(&sha256_digest(&tar), diff_id);
        assert!(
            tar == layer.tar(),
            "layer {diff_id} is not the tar it was made from"
        );
        assert!(
            tar == theirs(&daemon, &["oci", "layer", diff_id]),
            "{diff_id}"
        );
        let dump = ours(&daemon, &["oci", "layer", "--dumpfile", diff_id]);
        let upstream_dump = theirs(&daemon, &["oci", "layer", "--dumpfile", diff_id]);
        assert_eq!(
            String::from_utf8_lossy(&dump),
            String::from_utf8_lossy(&upstream_dump)
        );
    }
}

#[test]
fn what_is_not_there_is_named_and_nothing_is_written() {
    let daemon = daemon_with(&everything_image(), &[]);
    let missing = format!("sha256:{}", "0".repeat(64));
    let out = daemon.cfsctl(&["--json", "oci", "layer", &missing]);
    assert_eq!(out.status.code(), Some(1));
    let error: Value = serde_json::from_slice(out.stdout.trim_ascii()).expect("a JSON error");
    assert_eq!(error["error"], "io.cfsd.Oci.LayerNotFound", "{error}");
    assert_eq!(error["parameters"]["diffId"], missing.as_str());
    let out = daemon.cfsctl(&["oci", "dump", "nothing"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "a dump of nothing wrote something");
    assert!(
        stderr(&out).contains("no image \"nothing\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn only_peers_who_may_read_image_files_may_export_them_and_only_with_more() {
    let daemon = daemon_with(&everything_image(), &["--allow-group", "4242"]);
    assert_eq!(ADMINS, 4242);
    let diff_id = diff_ids(&daemon).remove(0);
    let dump = |more: bool| json!({"method": "io.cfsd.Oci.Dump", "parameters": {"image": "it"}, "more": more});
    let layer = json!({"method": "io.cfsd.Oci.ExportLayer", "parameters": {"diffId": diff_id}, "more": true});
    for reply in raw_calls_as(&daemon, &[], &[dump(true), layer]) {
        assert_eq!(reply["error"], "io.cfsd.Oci.PermissionDenied", "{reply}");
        assert_eq!(reply["parameters"]["uid"], NOBODY, "{reply}");
        assert!(
            reply.get("continues").is_none(),
            "a pipe went to nobody: {reply}"
        );
    }
    let without_more = raw_calls_as(&daemon, &[ADMINS], &[dump(false)]);
    assert_eq!(
        without_more[0]["error"], "org.varlink.service.InvalidParameter",
        "{without_more:?}"
    );
}

/// An image with one layer far larger than a pipe holds.
fn large_image() -> Image {
    Image::new(vec![Layer::new(
        Compression::Gzip,
        vec![Entry::dir("usr"), Entry::file("usr/big", noise(7, 4 << 20))],
    )])
}

/// A pipe client of ExportLayer for `diff_id`, as an admin-group member.
fn stalling_client(daemon: &Daemon, diff_id: &str, read: usize, how: &str) -> Output {
    let call = json!({"method": "io.cfsd.Oci.ExportLayer",
        "parameters": {"diffId": diff_id}, "more": true});
    pipe_client(daemon, &[ADMINS], &call, read, how)
}

#[test]
fn a_reader_that_stalls_is_given_up_on_and_the_daemon_serves_on() {
    let daemon = daemon_with(
        &large_image(),
        &["--client-timeout", "2", "--allow-group", "4242"],
    );
    let diff_id = diff_ids(&daemon).remove(0);
    let out = stalling_client(&daemon, &diff_id, 1000, "stall");
    assert!(out.status.success(), "{}", stderr(&out));
    let last: Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
    assert_eq!(last["error"], "io.cfsd.Oci.OutputFailed", "{last}");
    let reason = last["parameters"]["reason"].as_str().unwrap();
    assert!(reason.contains("read nothing for 2s"), "{last}");
    // The daemon serves on, and the same layer goes to a reader that reads.
    let tar = ours(&daemon, &["oci", "layer", &diff_id]);
    assert_eq!(sha256_digest(&tar), diff_id);
}

#[test]
fn a_reader_that_hangs_up_mid_layer_gives_back_its_turn() {
    // One call at a time for the admin group's member: an export whose
    // writing outlived its hung-up client would keep the next one waiting
    // for ever.
    let daemon = daemon_with(
        &large_image(),
        &["--allow-group", "4242", "--max-blocking-per-uid", "1"],
    );
    let diff_id = diff_ids(&daemon).remove(0);
    for _ in 0..3 {
        let out = stalling_client(&daemon, &diff_id, 100_000, "hang-up");
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = stalling_client(&daemon, &diff_id, 0, "read-all");
    assert!(out.status.success(), "{}", stderr(&out));
    let last: Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
    let whole = large_image().layers[0].tar().len() as u64;
    assert_eq!(last["parameters"]["bytes"], whole, "{last}");
}

#[test]
fn an_exported_archive_is_the_same_image_to_skopeo_upstream_and_cfsd() {
    let image = everything_image();
    let daemon = daemon_with(&image, &[]);
    let id = json(&daemon, &["oci", "inspect", "it"])["imageId"].clone();
    let config = json(&daemon, &["oci", "inspect", "it"])["configDigest"].clone();
    for compression in ["gzip", "zstd"] {
        let archive = daemon.dir().join(format!("it-{compression}.tar"));
        let dest = format!("oci-archive:{}:exported", archive.display());
        let args = [
            "--json",
            "oci",
            "export",
            "it",
            &dest,
            "--compression",
            compression,
        ];
        let reply: Value = serde_json::from_slice(&ours(&daemon, &args)).unwrap();
        assert_eq!(reply["configDigest"], config, "{reply}");
        assert_eq!(
            reply["bytes"],
            std::fs::metadata(&archive).unwrap().len(),
            "{reply}"
        );
        // skopeo reads it as an image with the same config.
        let out = Command::new("skopeo")
            .args(["inspect", "--raw"])
            .arg(format!("oci-archive:{}:exported", archive.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "skopeo: {}", stderr(&out));
        let manifest: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(manifest["config"]["digest"], config, "{manifest}");
        assert_eq!(sha256_digest(&out.stdout), reply["manifestDigest"]);
        assert!(
            manifest["layers"][0]["mediaType"]
                .as_str()
                .unwrap()
                .ends_with(compression),
            "{manifest}"
        );
        // Upstream cfsctl and cfsd, each in a fresh repository, import it
        // as the same composefs image.
        let theirs_repo = daemon.dir().join(format!("upstream-{compression}"));
        let run_upstream = |args: &[&str]| {
            let out = Command::new(upstream())
                .arg("--repo")
                .arg(&theirs_repo)
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "upstream {args:?}: {}", stderr(&out));
            out.stdout
        };
        run_upstream(&["init", "--insecure"]);
        run_upstream(&["oci", "pull", &dest, "again"]);
        let upstream_id = run_upstream(&["oci", "compute-id", "again"]);
        assert_eq!(
            String::from_utf8_lossy(&upstream_id).trim(),
            id,
            "{compression}"
        );
        let fresh = Daemon::start_initialised(&[]);
        let pulled = pull(&fresh, &[&dest, "again"]);
        assert_eq!(pulled.str("imageId"), id.as_str().unwrap(), "{compression}");
    }
    // Nobody outside the admin group gets the image's files this way.
    let denied = raw_calls_as(
        &daemon,
        &[],
        &[json!({"method": "io.cfsd.Oci.Export", "parameters": {"image": "it"}})],
    );
    assert_eq!(
        denied[0]["error"], "io.cfsd.Oci.PermissionDenied",
        "{denied:?}"
    );
}
