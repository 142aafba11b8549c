//! Naming, listing, describing and removing pulled images: `oci images`,
//! `inspect`, `tag`, `untag`, `rm`, `compute-id`, and what `gc` frees.

use std::collections::BTreeSet;

use cfsd_tests::{
    oci::{
        Compression, Entry, Image, Layer, Layout, Written, everything_image, host_architecture,
        noise,
    },
    ocictl::{
        PrivateRepo, Target, encode_tag, fails, json, object_count, published, pull, succeeds,
    },
};
use serde_json::Value;

/// The names `oci images --json` lists.
fn image_names(repo: &PrivateRepo) -> BTreeSet<String> {
    let list = json(repo, &["oci", "images"]);
    list["images"]
        .as_array()
        .unwrap_or_else(|| panic!("no images list: {list}"))
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn oci_images_and_inspect_describe_the_pulled_image() {
    let (layout, built) = Layout::single(&everything_image(), None);
    let written = Written::new(&layout);
    let repo = PrivateRepo::init("sha512");
    let pulled = pull(&repo, &[&written.oci(None), "app:1"]);
    let image_id = pulled.str("imageId");

    let list = json(&repo, &["oci", "images"]);
    let images = list["images"].as_array().unwrap();
    assert_eq!(images.len(), 1, "{list}");
    let entry = &images[0];
    assert_eq!(entry["name"], "app:1");
    assert_eq!(entry["manifestDigest"], built.manifest_digest.as_str());
    assert_eq!(entry["configDigest"], built.config_digest.as_str());
    assert_eq!(entry["os"], "linux");
    assert_eq!(entry["architecture"], host_architecture());
    assert_eq!(entry["created"], "2024-01-02T03:04:05Z");
    assert_eq!(entry["layers"], 3);
    assert_eq!(entry["imageId"], image_id);

    let text = succeeds(&repo, &["oci", "images"]);
    assert!(text.contains("app:1"), "{text}");

    for name in ["app:1", built.manifest_digest.as_str()] {
        let inspect = json(&repo, &["oci", "inspect", name]);
        assert_eq!(inspect["manifestDigest"], built.manifest_digest.as_str());
        assert_eq!(inspect["configDigest"], built.config_digest.as_str());
        assert_eq!(inspect["imageId"], image_id);
        assert_eq!(inspect["tags"], serde_json::json!(["app:1"]));
        // The documents as stored, not a re-rendering of some of them.
        let manifest: Value = serde_json::from_slice(&built.manifest).unwrap();
        let config: Value = serde_json::from_slice(&built.config).unwrap();
        assert_eq!(inspect["manifest"], manifest);
        assert_eq!(inspect["config"], config);
    }
    let text = succeeds(&repo, &["oci", "inspect", "app:1"]);
    assert!(text.contains(&built.manifest_digest), "{text}");

    let err = fails(&repo, &["oci", "inspect", "app:2"]);
    assert!(err.contains("app:2"), "{err}");
}

#[test]
fn oci_compute_id_equals_the_pull_result() {
    let (layout, built) = Layout::single(&everything_image(), None);
    let written = Written::new(&layout);
    for algorithm in ["sha256", "sha512"] {
        let repo = PrivateRepo::init(algorithm);
        let pulled = pull(&repo, &[&written.archive(None), "x"]);
        for name in ["x", built.manifest_digest.as_str()] {
            let out = succeeds(&repo, &["oci", "compute-id", name]);
            assert_eq!(out.trim(), pulled.str("imageId"), "{algorithm} {name}");
        }
        let err = fails(&repo, &["oci", "compute-id", "y"]);
        assert!(err.contains("\"y\"") || err.contains(" y"), "{err}");
    }
}

#[test]
fn oci_tag_untag_and_rm_only_change_names() {
    let (layout, built) = Layout::single(&everything_image(), None);
    let written = Written::new(&layout);
    let repo = PrivateRepo::init("sha512");
    let pulled = pull(&repo, &[&written.oci(None), "a:1"]);
    let image_id = pulled.str("imageId").to_owned();
    let objects = object_count(&repo.repo_path());

    succeeds(&repo, &["oci", "tag", "a:1", "a:2"]);
    succeeds(&repo, &["oci", "tag", &built.manifest_digest, "team/a:3"]);
    assert_eq!(image_names(&repo), names(&["a:1", "a:2", "team/a:3"]));
    let tags = published(&repo.repo_path()).tags;
    assert_eq!(
        tags.keys().cloned().collect::<BTreeSet<_>>(),
        names(&["a:1", "a:2", &encode_tag("team/a:3")])
    );
    assert!(
        tags.values().all(|t| t.ends_with(&built.manifest_digest)),
        "{tags:?}"
    );
    let inspect = json(&repo, &["oci", "inspect", "a:2"]);
    let listed: BTreeSet<String> = inspect["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, names(&["a:1", "a:2", "team/a:3"]));

    succeeds(&repo, &["oci", "untag", "a:1"]);
    assert_eq!(image_names(&repo), names(&["a:2", "team/a:3"]));
    let err = fails(&repo, &["oci", "inspect", "a:1"]);
    assert!(err.contains("a:1"), "{err}");
    let err = fails(&repo, &["oci", "untag", "a:1"]);
    assert!(err.contains("a:1"), "{err}");
    let err = fails(&repo, &["oci", "tag", "nothing", "b"]);
    assert!(err.contains("nothing"), "{err}");
    let err = fails(&repo, &["oci", "tag", "a:2", "@bad"]);
    assert!(err.contains("@bad"), "{err}");

    // rm drops every tag of the image and says which.
    let removed = json(&repo, &["oci", "rm", "a:2"]);
    let untagged: BTreeSet<String> = removed["untagged"]
        .as_array()
        .unwrap_or_else(|| panic!("{removed}"))
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(untagged, names(&["a:2", "team/a:3"]));
    assert!(image_names(&repo).is_empty());
    assert!(published(&repo.repo_path()).tags.is_empty());
    let err = fails(&repo, &["oci", "rm", "a:2"]);
    assert!(err.contains("a:2"), "{err}");

    // The content stays until gc...
    let state = published(&repo.repo_path());
    assert!(state.images.contains(&image_id));
    assert_eq!(state.streams_starting("oci-layer-").len(), 3);
    assert_eq!(object_count(&repo.repo_path()), objects);

    // ...which frees all of it: nothing else is in this repository.
    let gc = json(&repo, &["gc"]);
    assert!(gc["objectsRemoved"].as_u64().unwrap() > 0, "{gc}");
    assert!(gc["bytesFreed"].as_u64().unwrap() > 5 * 1024 * 1024, "{gc}");
    let state = published(&repo.repo_path());
    assert!(state.images.is_empty(), "{:?}", state.images);
    assert!(state.streams.is_empty(), "{:?}", state.streams);
    assert_eq!(object_count(&repo.repo_path()), 0);
    let fsck = json(&repo, &["fsck"]);
    assert_eq!(fsck["ok"], true, "{fsck}");
}

#[test]
fn oci_gc_keeps_what_a_remaining_image_shares() {
    let shared = Layer::new(
        Compression::Gzip,
        vec![
            Entry::dir("usr"),
            Entry::dir("usr/lib"),
            Entry::file("usr/lib/shared.bin", noise(90, 300_000)),
        ],
    );
    let a = Image::new(vec![
        shared.clone(),
        Layer::new(
            Compression::Zstd,
            vec![Entry::file("usr/lib/a.bin", noise(91, 200_000))],
        ),
    ]);
    let b = Image::new(vec![
        shared,
        Layer::new(
            Compression::None,
            vec![Entry::file("usr/lib/b.bin", noise(92, 200_000))],
        ),
    ]);
    let mut layout = Layout::new();
    let built_a = layout.add_image(&a, Some("a"));
    let built_b = layout.add_image(&b, Some("b"));
    let written = Written::new(&layout);
    let repo = PrivateRepo::init("sha256");
    let pulled_a = pull(&repo, &[&written.oci(Some("a")), "a"]);
    let pulled_b = pull(&repo, &[&written.oci(Some("b")), "b"]);

    // Garbage collection with both images tagged keeps both intact.
    json(&repo, &["gc"]);
    for (name, pulled) in [("a", &pulled_a), ("b", &pulled_b)] {
        let out = succeeds(&repo, &["oci", "compute-id", name]);
        assert_eq!(out.trim(), pulled.str("imageId"));
    }
    let fsck = json(&repo, &["fsck"]);
    assert_eq!(fsck["ok"], true, "{fsck}");

    json(&repo, &["oci", "rm", "a"]);
    let gc = json(&repo, &["gc"]);
    // a's own layer (200 kB of noise) is freed, not the shared one.
    assert!(gc["bytesFreed"].as_u64().unwrap() >= 200_000, "{gc}");
    let state = published(&repo.repo_path());
    let layers = state.streams_starting("oci-layer-");
    let expected: BTreeSet<String> = built_b
        .diff_ids
        .iter()
        .map(|d| format!("oci-layer-{d}"))
        .collect();
    assert_eq!(layers, expected);
    assert!(!layers.contains(&format!("oci-layer-{}", built_a.diff_ids[1])));
    assert!(!state.images.contains(pulled_a.str("imageId")));
    assert!(state.images.contains(pulled_b.str("imageId")));
    let out = succeeds(&repo, &["oci", "compute-id", "b"]);
    assert_eq!(out.trim(), pulled_b.str("imageId"));
    let fsck = json(&repo, &["fsck"]);
    assert_eq!(fsck["ok"], true, "{fsck}");

    // And b can still be pulled again without fetching anything.
    let again = pull(&repo, &[&written.oci(Some("b")), "b"]);
    assert!(again.bool("alreadyPresent"), "{}", again.result);
}
