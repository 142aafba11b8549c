//! What fsck finds that composefs's own check does not. The fs-verity
//! half of this (objects damaged under a sealed repository) runs in the
//! VM harness, `tests/vm/guest/tamper.sh`, since this kernel has none.

use cfsd_tests::{
    oci::{Compression, Entry, Image, Layer, Layout, Written},
    ocictl::{PrivateRepo, Target, json, pull},
    stdout,
};
use serde_json::Value;

fn image(motd: &str) -> Image {
    Image::new(vec![Layer::new(
        Compression::Gzip,
        vec![
            Entry::dir("etc"),
            Entry::dir("usr"),
            Entry::file("etc/motd", motd.repeat(40).into_bytes()),
        ],
    )])
}

#[test]
fn fsck_names_an_image_swapped_for_another_valid_image() {
    let mut layout = Layout::new();
    layout.add_image(&image("one"), Some("v1"));
    layout.add_image(&image("two"), Some("v2"));
    let written = Written::new(&layout);
    let repo = PrivateRepo::init("sha512");
    let v1 = pull(&repo, &[&written.oci(Some("v1")), "app:v1"]);
    let v2 = pull(&repo, &[&written.oci(Some("v2")), "app:v2"]);
    let (v1, v2) = (v1.str("imageId"), v2.str("imageId"));
    assert_eq!(json(&repo, &["fsck"])["ok"], true);

    let images = repo.repo_path().join("images");
    let other = std::fs::read_link(images.join(v2)).unwrap();
    std::fs::remove_file(images.join(v1)).unwrap();
    std::os::unix::fs::symlink(&other, images.join(v1)).unwrap();

    for args in [
        &["--json", "fsck"][..],
        &["--json", "fsck", "--metadata-only"],
    ] {
        let out = repo.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stdout(&out));
        let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(report["ok"], false, "{report}");
        assert_eq!(report["imagesCorrupted"], 1, "{report}");
        let problems = report["problems"].as_array().unwrap();
        assert_eq!(problems.len(), 1, "{report}");
        assert_eq!(problems[0]["kind"], "image-name-mismatch", "{report}");
        let detail = problems[0]["detail"].as_str().unwrap();
        assert!(detail.starts_with(&format!("images/{v1}: ")), "{detail}");
    }
}

#[test]
fn fsck_names_a_layer_stream_swapped_for_another_valid_stream() {
    let mut layout = Layout::new();
    let one = layout.add_image(&image("one"), Some("v1"));
    let two = layout.add_image(&image("two"), Some("v2"));
    let written = Written::new(&layout);
    let repo = PrivateRepo::init("sha256");
    pull(&repo, &[&written.oci(Some("v1")), "app:v1"]);
    pull(&repo, &[&written.oci(Some("v2")), "app:v2"]);
    assert_eq!(json(&repo, &["fsck"])["ok"], true);

    let streams = repo.repo_path().join("streams");
    let stream = |built: &cfsd_tests::oci::BuiltImage| {
        streams.join(format!("oci-layer-{}", built.diff_ids[0]))
    };
    let other = std::fs::read_link(stream(&two)).unwrap();
    std::fs::remove_file(stream(&one)).unwrap();
    std::os::unix::fs::symlink(&other, stream(&one)).unwrap();

    let out = repo.run(&["--json", "fsck"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["streamsCorrupted"], 1, "{report}");
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{report}");
    assert_eq!(problems[0]["kind"], "layer-stream-mismatch", "{report}");
    let detail = problems[0]["detail"].as_str().unwrap();
    let expected = format!("streams/oci-layer-{}: ", one.diff_ids[0]);
    assert!(detail.starts_with(&expected), "{detail}");
}
