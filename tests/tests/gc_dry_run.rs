//! `gc --dry-run` predicts exactly what the collection that follows it
//! removes: objects, bytes, and the image and stream names it prunes.

use cfsd_tests::{
    oci::{Compression, Entry, Image, Layer, Layout, Written, noise},
    ocictl::{PrivateRepo, Target, json, pull},
};
use serde_json::Value;

/// The counts of a dry run, then of the real run after it, which must
/// agree in every field but `dryRun`.
fn dry_then_real(repo: &PrivateRepo) -> (Value, Value) {
    let mut dry = json(repo, &["gc", "--dry-run"]);
    let mut real = json(repo, &["gc"]);
    assert_eq!(dry["dryRun"], true, "{dry}");
    assert_eq!(real["dryRun"], false, "{real}");
    dry.as_object_mut().unwrap().remove("dryRun");
    real.as_object_mut().unwrap().remove("dryRun");
    assert_eq!(dry, real, "the dry run did not predict the collection");
    (dry, real)
}

fn layer(seed: u64, name: &str) -> Layer {
    Layer::new(
        Compression::Gzip,
        vec![
            Entry::dir("usr"),
            Entry::file(&format!("usr/{name}"), noise(seed, 50_000)),
            Entry::file(&format!("usr/{name}.small"), noise(seed + 1, 300)),
        ],
    )
}

#[test]
fn a_dry_run_predicts_the_collection_on_several_repositories() {
    let shared = layer(1, "shared");
    let a = Image::new(vec![shared.clone(), layer(2, "a")]);
    let b = Image::new(vec![shared, layer(3, "b")]);
    let c = Image::new(vec![layer(4, "c")]);
    let mut layout = Layout::new();
    for (image, name) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        layout.add_image(image, Some(name));
    }
    let written = Written::new(&layout);

    // The case: pull a, remove it, collect.
    let repo = PrivateRepo::init("sha512");
    pull(&repo, &[&written.oci(Some("a")), "a"]);
    json(&repo, &["oci", "rm", "a"]);
    let (predicted, _) = dry_then_real(&repo);
    assert!(
        predicted["objectsRemoved"].as_u64().unwrap() > 0,
        "{predicted}"
    );
    assert_eq!(predicted["imagesPruned"], 1, "{predicted}");
    // Two layer streams, the config and the manifest.
    assert_eq!(predicted["streamsPruned"], 4, "{predicted}");
    // Nothing is left to predict afterwards.
    let (after, _) = dry_then_real(&repo);
    assert_eq!(after["objectsRemoved"], 0, "{after}");

    // Two images sharing a layer; one removed, one tagged twice.
    let repo = PrivateRepo::init("sha256");
    pull(&repo, &[&written.oci(Some("a")), "a"]);
    pull(&repo, &[&written.oci(Some("b")), "b"]);
    pull(&repo, &[&written.oci(Some("b")), "b2"]);
    json(&repo, &["oci", "rm", "a"]);
    let (predicted, _) = dry_then_real(&repo);
    assert_eq!(predicted["imagesPruned"], 1, "{predicted}");
    assert_eq!(
        predicted["streamsPruned"], 3,
        "the shared layer stays: {predicted}"
    );

    // Everything removed, and a tag that dangles already.
    let repo = PrivateRepo::init("sha512");
    for name in ["a", "c"] {
        pull(&repo, &[&written.oci(Some(name)), name]);
    }
    json(&repo, &["oci", "untag", "c"]);
    json(&repo, &["oci", "rm", "a"]);
    // A stream whose object is gone already, as a crash can leave one.
    let missing = format!("../objects/ab/{}", "0".repeat(126));
    let streams = repo.repo_path().join("streams");
    std::os::unix::fs::symlink(missing, streams.join("oci-layer-sha256:0")).unwrap();
    let (predicted, _) = dry_then_real(&repo);
    assert_eq!(predicted["imagesPruned"], 2, "{predicted}");
    assert_eq!(predicted["streamsPruned"], 3 + 4 + 1, "{predicted}");

    // A repository with nothing to collect.
    let repo = PrivateRepo::init("sha256");
    pull(&repo, &[&written.oci(Some("c")), "c"]);
    json(&repo, &["gc"]);
    let (predicted, _) = dry_then_real(&repo);
    assert_eq!(predicted["objectsRemoved"], 0, "{predicted}");
}
