//! `cfsctl oci pull` from `oci:` directories and `oci-archive:` tars: what
//! it reports, what it writes, which manifest it picks, and what it reuses.

use std::collections::BTreeSet;

use cfsd_tests::{
    oci::{
        Compression, Entry, Image, Layer, Layout, Written, everything_image, host_architecture,
        noise, small_image,
    },
    ocictl::{PrivateRepo, Target, encode_tag, fails, json, published, pull, pull_fails, succeeds},
};

/// The image id is 64 (sha256) or 128 (sha512) lowercase hex digits.
fn assert_hex_id(id: &str, algorithm: &str) {
    let len = if algorithm == "sha256" { 64 } else { 128 };
    assert_eq!(id.len(), len, "{id}");
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{id}"
    );
}

#[test]
fn oci_directory_pull_reports_and_publishes_the_image() {
    let (layout, built) = Layout::single(&everything_image(), None);
    let written = Written::new(&layout);
    let repo = PrivateRepo::init("sha512");
    let source = written.oci(None);

    let pulled = pull(&repo, &[&source]);
    assert_eq!(pulled.str("manifestDigest"), built.manifest_digest);
    assert_eq!(pulled.str("configDigest"), built.config_digest);
    // NAME defaults to the source string, as upstream cfsctl does.
    assert_eq!(pulled.str("tag"), source);
    assert_eq!(pulled.u64("layers"), 3);
    assert_eq!(pulled.u64("layersPresent"), 0);
    assert!(!pulled.bool("alreadyPresent"));
    assert!(pulled.u64("objectsNew") > 0, "{}", pulled.result);
    // At least the distinct large files: 3 MiB + 2 MiB + 100 kB + ...
    assert!(
        pulled.u64("bytesNew") > 5 * 1024 * 1024,
        "{}",
        pulled.result
    );
    let image_id = pulled.str("imageId");
    assert_hex_id(image_id, "sha512");

    let state = published(&repo.repo_path());
    assert_eq!(
        state.tags.get(&encode_tag(&source)).map(String::as_str),
        Some(format!("../../oci-manifest-{}", built.manifest_digest).as_str()),
        "{:?}",
        state.tags
    );
    assert_eq!(state.tags.len(), 1, "{:?}", state.tags);
    assert!(state.images.contains(image_id), "{:?}", state.images);
    let layer_streams: BTreeSet<String> = built
        .diff_ids
        .iter()
        .map(|d| format!("oci-layer-{d}"))
        .collect();
    assert_eq!(state.streams_starting("oci-layer-"), layer_streams);
    assert_eq!(
        state.streams_starting("oci-config-"),
        BTreeSet::from([format!("oci-config-{}", built.config_digest)])
    );
    assert_eq!(
        state.streams_starting("oci-manifest-"),
        BTreeSet::from([format!("oci-manifest-{}", built.manifest_digest)])
    );

    let fsck = json(&repo, &["fsck"]);
    assert_eq!(fsck["ok"], true, "{fsck}");
}

#[test]
fn oci_archive_and_directory_give_the_same_image() {
    let mut layout = Layout::new();
    let built = layout.add_image(&everything_image(), Some("latest"));
    let written = Written::new(&layout);

    let from_dir = PrivateRepo::init("sha512");
    let a = pull(&from_dir, &[&written.oci(None), "everything"]);
    let from_archive = PrivateRepo::init("sha512");
    let b = pull(&from_archive, &[&written.archive(None), "everything"]);
    assert_eq!(b.str("manifestDigest"), built.manifest_digest);
    assert_eq!(b.str("tag"), "everything");
    assert_eq!(a.str("imageId"), b.str("imageId"));
    assert_eq!(
        published(&from_dir.repo_path()).stable(),
        published(&from_archive.repo_path()).stable()
    );

    // The archive into the repository that already has it from the
    // directory: nothing new, only another tag.
    let again = pull(&from_dir, &[&written.archive(Some("latest")), "second"]);
    assert_eq!(again.u64("layersPresent"), 3);
    assert_eq!(again.u64("objectsNew"), 0);
    assert_eq!(again.u64("bytesNew"), 0);
    assert_eq!(again.str("imageId"), a.str("imageId"));
    let tags = published(&from_dir.repo_path()).tags;
    assert_eq!(
        tags.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from(["everything".to_owned(), "second".to_owned()])
    );
    assert_eq!(tags["everything"], tags["second"]);
    // The image was complete before: only the tag is new (io.cfsd.Oci
    // PullResult.alreadyPresent).
    assert!(again.bool("alreadyPresent"), "{}", again.result);
}

#[test]
fn oci_pull_of_each_layer_compression() {
    for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let image = small_image(compression, &format!("{compression:?}\n"));
        let (layout, built) = Layout::single(&image, None);
        let written = Written::new(&layout);
        let repo = PrivateRepo::init("sha256");
        let pulled = pull(&repo, &[&written.archive(None), "img"]);
        assert_eq!(pulled.str("manifestDigest"), built.manifest_digest);
        assert_hex_id(pulled.str("imageId"), "sha256");
        // The stream is named by the diff_id of the uncompressed tar, not
        // by the compressed blob's digest.
        let state = published(&repo.repo_path());
        assert_eq!(
            state.streams_starting("oci-layer-"),
            BTreeSet::from([format!("oci-layer-{}", built.diff_ids[0])]),
            "{compression:?}"
        );
        let fsck = json(&repo, &["fsck"]);
        assert_eq!(fsck["ok"], true, "{compression:?}: {fsck}");
    }
}

#[test]
fn oci_reference_by_name_by_digest_or_omitted() {
    let mut layout = Layout::new();
    let one = layout.add_image(&small_image(Compression::Gzip, "one\n"), Some("one"));
    let two = layout.add_image(&small_image(Compression::Zstd, "two\n"), Some("two"));
    let written = Written::new(&layout);
    let repo = PrivateRepo::init("sha512");

    for source in [written.oci(Some("two")), written.archive(Some("two"))] {
        let pulled = pull(&repo, &[&source]);
        assert_eq!(
            pulled.str("manifestDigest"),
            two.manifest_digest,
            "{source}"
        );
        assert_eq!(pulled.str("tag"), source);
    }
    for source in [
        written.oci(Some(&one.manifest_digest)),
        written.archive(Some(&one.manifest_digest)),
    ] {
        let pulled = pull(&repo, &[&source, "by-digest"]);
        assert_eq!(
            pulled.str("manifestDigest"),
            one.manifest_digest,
            "{source}"
        );
    }

    // Two manifests and no reference: which one is not guessed.
    let err = pull_fails(&repo, &[&written.oci(None), "none"]);
    assert!(err.contains("one") && err.contains("two"), "{err}");
    assert!(!published(&repo.repo_path()).tags.contains_key("none"));

    // With a single manifest the reference may be left out, and may
    // still be given.
    let (single, built) = Layout::single(&small_image(Compression::None, "x\n"), Some("only"));
    let single = Written::new(&single);
    let a = pull(&repo, &[&single.oci(None), "a"]);
    let b = pull(&repo, &[&single.oci(Some("only")), "b"]);
    assert_eq!(a.str("manifestDigest"), built.manifest_digest);
    assert_eq!(b.str("manifestDigest"), built.manifest_digest);
}

fn platform_images(docker: bool) -> Vec<Image> {
    let mut images: Vec<Image> = ["linux/amd64", "linux/arm64", "linux/arm/v7"]
        .iter()
        .map(|p| {
            let compression = Compression::Gzip;
            let mut image = small_image(compression, &format!("built for {p}\n")).platform(p);
            if docker {
                image = image.docker();
            }
            image
        })
        .collect();
    // On a host that is none of these, the default pick is its own.
    if !["amd64", "arm64"].contains(&host_architecture()) {
        let mut own = small_image(Compression::Gzip, "host\n");
        own.docker = docker;
        images.push(own);
    }
    images
}

#[test]
fn oci_platform_is_picked_from_a_multi_platform_index() {
    let mut layout = Layout::new();
    let images = platform_images(false);
    let (_, built) = layout.add_platforms(&images, Some("multi"), false);
    let written = Written::new(&layout);
    let repo = PrivateRepo::init("sha512");

    // By default: the host's platform.
    let host = built
        .iter()
        .find(|b| b.platform == format!("linux/{}", host_architecture()))
        .unwrap();
    let pulled = pull(&repo, &[&written.oci(Some("multi")), "host"]);
    assert_eq!(pulled.str("manifestDigest"), host.manifest_digest);

    for (platform, b) in [("linux/arm64", &built[1]), ("linux/arm/v7", &built[2])] {
        assert_eq!(b.platform, platform);
        let pulled = pull(
            &repo,
            &[
                &written.archive(Some("multi")),
                platform,
                "--platform",
                platform,
            ],
        );
        assert_eq!(
            pulled.str("manifestDigest"),
            b.manifest_digest,
            "{platform}"
        );
        let inspect = json(&repo, &["oci", "inspect", platform]);
        assert_eq!(
            inspect["config"]["architecture"],
            platform.split('/').nth(1).unwrap()
        );
    }

    let before = published(&repo.repo_path());
    let err = pull_fails(
        &repo,
        &[
            &written.oci(Some("multi")),
            "s390x",
            "--platform",
            "linux/s390x",
        ],
    );
    assert!(err.contains("linux/s390x"), "{err}");
    for offered in ["linux/amd64", "linux/arm64", "linux/arm/v7"] {
        assert!(err.contains(offered), "{offered} not listed: {err}");
    }
    assert_eq!(published(&repo.repo_path()), before);

    let err = pull_fails(
        &repo,
        &[&written.oci(Some("multi")), "bad", "--platform", "linux"],
    );
    assert!(err.contains("platform") && err.contains("linux"), "{err}");
    assert_eq!(published(&repo.repo_path()), before);
}

#[test]
fn oci_docker_schema2_manifest() {
    let image = small_image(Compression::Gzip, "docker\n");
    let mut layout = Layout::new();
    let docker = layout.add_image(&image.clone().docker(), Some("docker"));
    let oci = layout.add_image(&image, Some("oci"));
    assert_ne!(docker.manifest_digest, oci.manifest_digest);
    let written = Written::new(&layout);
    let repo = PrivateRepo::init("sha512");

    let pulled = pull(&repo, &[&written.archive(Some("docker")), "docker"]);
    // Stored as the equivalent OCI manifest, as containers/image converts
    // it: same config, same layer blobs, OCI media types.
    assert_ne!(pulled.str("manifestDigest"), docker.manifest_digest);
    assert_eq!(pulled.str("configDigest"), docker.config_digest);
    let inspect = json(&repo, &["oci", "inspect", "docker"]);
    assert_eq!(inspect["manifestDigest"], pulled.str("manifestDigest"));
    assert_eq!(
        inspect["manifest"]["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        inspect["manifest"]["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    assert_eq!(
        inspect["manifest"]["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_eq!(
        inspect["manifest"]["layers"][0]["digest"],
        docker.layer_digests[0]
    );
    let fsck = json(&repo, &["fsck"]);
    assert_eq!(fsck["ok"], true, "{fsck}");

    // The image id depends on the files only: the OCI twin with the same
    // layers has the same id, and shares the layer.
    let twin = pull(&repo, &[&written.oci(Some("oci")), "oci"]);
    assert_eq!(twin.str("manifestDigest"), oci.manifest_digest);
    assert_eq!(twin.u64("layersPresent"), 1);
    assert_eq!(twin.str("imageId"), pulled.str("imageId"));
}

#[test]
fn oci_docker_schema2_manifest_list() {
    let mut layout = Layout::new();
    let (_, listed) = layout.add_platforms(&platform_images(true), Some("list"), true);
    let written = Written::new(&layout);
    let repo = PrivateRepo::init("sha512");

    let pulled = pull(
        &repo,
        &[
            &written.oci(Some("list")),
            "arm",
            "--platform",
            "linux/arm64",
        ],
    );
    // The chosen Docker manifest is stored converted to OCI; its config
    // says which one it was.
    assert_eq!(pulled.str("configDigest"), listed[1].config_digest);
    let host = listed
        .iter()
        .find(|b| b.platform == format!("linux/{}", host_architecture()))
        .unwrap();
    let pulled = pull(&repo, &[&written.archive(Some("list")), "host"]);
    assert_eq!(pulled.str("configDigest"), host.config_digest);
    let err = pull_fails(
        &repo,
        &[
            &written.oci(Some("list")),
            "none",
            "--platform",
            "windows/amd64",
        ],
    );
    assert!(
        err.contains("windows/amd64") && err.contains("linux/arm/v7"),
        "{err}"
    );
}

/// Two images over the same base layer.
fn sharing_images() -> (Image, Image, Vec<u8>) {
    let shared_file = noise(42, 50_000);
    let base = Layer::new(
        Compression::Gzip,
        vec![
            Entry::dir("usr"),
            Entry::dir("usr/lib"),
            Entry::file("usr/lib/base.bin", noise(41, 400_000)),
            Entry::file("usr/lib/shared.bin", shared_file.clone()),
        ],
    );
    let a = Image::new(vec![
        base.clone(),
        Layer::new(
            Compression::Zstd,
            vec![Entry::file("usr/lib/a.bin", noise(43, 30_000))],
        ),
    ]);
    let b = Image::new(vec![
        base,
        Layer::new(
            Compression::None,
            vec![
                Entry::file("usr/lib/b.bin", noise(44, 30_000)),
                // The same content as a file of the base layer: an object
                // the repository already holds.
                Entry::file("usr/lib/copy-of-shared.bin", shared_file.clone()),
            ],
        ),
    ])
    .label("image", "b");
    (a, b, shared_file)
}

#[test]
fn oci_a_second_image_reuses_a_shared_layer_and_objects() {
    let (a, b, _) = sharing_images();
    let mut layout = Layout::new();
    let built_a = layout.add_image(&a, Some("a"));
    let built_b = layout.add_image(&b, Some("b"));
    assert_eq!(built_a.layer_digests[0], built_b.layer_digests[0]);
    let written = Written::new(&layout);
    let repo = PrivateRepo::init("sha512");

    let first = pull(&repo, &[&written.oci(Some("a")), "a"]);
    assert_eq!(first.u64("layersPresent"), 0);
    let streams_after_a = published(&repo.repo_path()).streams_starting("oci-layer-");

    let second = pull(&repo, &[&written.oci(Some("b")), "b"]);
    assert_eq!(second.u64("layers"), 2);
    assert_eq!(second.u64("layersPresent"), 1, "{}", second.result);
    assert!(second.u64("objectsPresent") >= 1, "{}", second.result);
    assert!(second.u64("objectsNew") >= 1, "{}", second.result);
    assert!(!second.bool("alreadyPresent"));
    // b's new bytes are its own layer's, not the base layer's 400 kB.
    assert!(second.u64("bytesNew") < 200_000, "{}", second.result);
    let streams = published(&repo.repo_path()).streams_starting("oci-layer-");
    assert_eq!(streams.len(), 3, "{streams:?}");
    assert!(streams.is_superset(&streams_after_a));
    // The progress of the shared layer says so.
    let shared: Vec<_> = second
        .progress
        .iter()
        .filter(|p| p["layer"] == built_b.layer_digests[0].as_str())
        .collect();
    assert!(shared.iter().any(|p| p["stage"] == "present"), "{shared:?}");

    let third = pull(&repo, &[&written.oci(Some("b")), "b"]);
    assert!(third.bool("alreadyPresent"), "{}", third.result);
    assert_eq!(third.u64("layersPresent"), 2);
    assert_eq!(third.u64("objectsNew"), 0);
    assert_eq!(third.u64("bytesNew"), 0);
    assert_eq!(third.str("imageId"), second.str("imageId"));

    let fsck = json(&repo, &["fsck"]);
    assert_eq!(fsck["ok"], true, "{fsck}");
}

#[test]
fn oci_pull_progress_covers_every_layer_with_its_blob_size() {
    let (layout, built) = Layout::single(&everything_image(), None);
    let written = Written::new(&layout);
    let repo = PrivateRepo::init("sha512");
    let pulled = pull(&repo, &[&written.archive(None), "x"]);

    let known: BTreeSet<&str> = built.layer_digests.iter().map(String::as_str).collect();
    for event in &pulled.progress {
        let layer = event["layer"].as_str().expect("layer");
        assert!(known.contains(layer), "unknown layer in {event}");
        assert!(
            ["queued", "fetching", "importing", "present", "done"]
                .contains(&event["stage"].as_str().unwrap()),
            "{event}"
        );
    }
    for (digest, size) in built.layer_digests.iter().zip(&built.layer_sizes) {
        let events: Vec<_> = pulled
            .progress
            .iter()
            .filter(|p| p["layer"] == digest.as_str())
            .collect();
        assert!(!events.is_empty(), "no progress for {digest}");
        for event in &events {
            assert_eq!(event["total"], *size, "{event}");
            assert!(event["done"].as_u64().unwrap() <= *size, "{event}");
        }
        let last = events.last().unwrap();
        assert_eq!(last["done"], *size, "{digest}: {events:?}");
        // done never goes backwards.
        let done: Vec<u64> = events.iter().map(|e| e["done"].as_u64().unwrap()).collect();
        assert!(done.windows(2).all(|w| w[0] <= w[1]), "{done:?}");
    }

    // Without --json the result is rendered for people, and names the
    // image id.
    let out = succeeds(&repo, &["oci", "pull", &written.archive(None), "y"]);
    assert!(out.contains(pulled.str("imageId")), "{out}");
}

#[test]
fn oci_jobs_do_not_change_the_result() {
    let (layout, _) = Layout::single(&everything_image(), None);
    let written = Written::new(&layout);
    let one = PrivateRepo::init("sha256");
    let a = pull(&one, &[&written.oci(None), "x", "--jobs", "1"]);
    let many = PrivateRepo::init("sha256");
    let b = pull(&many, &[&written.oci(None), "x", "--jobs", "8"]);
    assert_eq!(a.str("imageId"), b.str("imageId"));
    assert_eq!(
        published(&one.repo_path()).stable(),
        published(&many.repo_path()).stable()
    );
}

#[test]
fn oci_pull_of_a_missing_source_names_it() {
    let repo = PrivateRepo::init("sha512");
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing.tar");
    let err = fails(
        &repo,
        &["oci", "pull", &format!("oci-archive:{}", missing.display())],
    );
    assert!(err.contains(&missing.display().to_string()), "{err}");
    let err = fails(&repo, &["oci", "pull", "dir:/x"]);
    assert!(err.contains("unknown transport \"dir\""), "{err}");
    // A registry reference that is not one is refused before any
    // connection (tests reach no address outside 127.0.0.0/8).
    let err = fails(&repo, &["oci", "pull", "docker://127.0.0.1:9/Not_Valid:1"]);
    assert!(err.contains("invalid registry reference"), "{err}");
    assert_eq!(published(&repo.repo_path()), Default::default());
}
