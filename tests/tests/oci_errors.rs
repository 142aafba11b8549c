//! `oci pull` refuses damaged or unusable sources with a typed error that
//! says what is wrong, publishes nothing, and leaves the daemon serving.

use cfsd_tests::{
    Daemon,
    oci::{
        Compression, Image, Layer, Layout, Written, compress, media, sha256_digest, small_image,
    },
    ocictl::{Published, json, published, pull, pull_fails, typed_source_refusal},
};
use cfsd_varlink::oci::OciError;

/// Pull `args` (SOURCE TAG) from `daemon` twice, through cfsctl and
/// through the typed client, which must both fail; check that nothing was
/// published and that the daemon still serves; return cfsctl's message
/// and the typed error.
fn refused(daemon: &Daemon, args: &[&str]) -> (String, OciError) {
    let before = published(&daemon.repo());
    let images_before = json(daemon, &["oci", "images"]);
    let err = pull_fails(daemon, args);
    eprintln!("refused {args:?}: {err}");
    let typed = typed_source_refusal(daemon, args[0], args[1]);
    assert!(
        err.contains(&typed.to_string()),
        "cfsctl reports another error than the daemon's {typed:?}: {err}"
    );
    let after = published(&daemon.repo());
    assert_eq!(after.tags, before.tags, "a tag appeared: {err}");
    assert_eq!(
        after.images, before.images,
        "an EROFS image appeared: {err}"
    );
    // The same daemon answers the next calls.
    assert_eq!(json(daemon, &["oci", "images"]), images_before);
    let info = json(daemon, &["info"]);
    assert!(info["info"].is_object(), "{info}");
    (err, typed)
}

/// That `typed` is `DigestMismatch` of `expected` against `actual`.
fn digest_mismatch(typed: &OciError, expected: &str, actual: &str) -> String {
    match typed {
        OciError::DigestMismatch {
            what,
            expected: e,
            actual: a,
        } => {
            assert_eq!((e.as_str(), a.as_str()), (expected, actual), "{typed:?}");
            what.clone()
        }
        other => panic!("not DigestMismatch: {other:?}"),
    }
}

/// After a refusal, a good image still pulls on the same daemon.
fn still_pulls(daemon: &Daemon) {
    let (layout, built) = Layout::single(&small_image(Compression::Gzip, "good\n"), None);
    let written = Written::new(&layout);
    let pulled = pull(daemon, &[&written.archive(None), "good"]);
    assert_eq!(pulled.str("manifestDigest"), built.manifest_digest);
    let fsck = json(daemon, &["fsck"]);
    assert_eq!(fsck["ok"], true, "{fsck}");
}

fn no_layer_stream(state: &Published, diff_id: &str) {
    assert!(
        !state.streams.contains_key(&format!("oci-layer-{diff_id}")),
        "the bad layer was registered: {:?}",
        state.streams
    );
}

#[test]
fn oci_a_layer_with_one_byte_flipped_is_a_digest_mismatch() {
    let daemon = Daemon::start_initialised(&[]);
    // An uncompressed layer that is mostly one file: the flipped byte is
    // file data, so the tar still parses and only the digest can tell.
    let (mut layout, built) = Layout::single(&small_image(Compression::None, "flip\n"), None);
    let digest = built.layer_digests[0].clone();
    layout.corrupt_blob(&digest);
    let actual = sha256_digest(layout.blob(&digest).unwrap());
    let written = Written::new(&layout);
    for source in [written.oci(None), written.archive(None)] {
        let (err, typed) = refused(&daemon, &[&source, "flipped"]);
        assert!(err.contains(&digest), "expected digest not named: {err}");
        assert!(err.contains(&actual), "actual digest not named: {err}");
        let what = digest_mismatch(&typed, &digest, &actual);
        assert!(what.contains("layer"), "{what}");
        no_layer_stream(&published(&daemon.repo()), &built.diff_ids[0]);
    }
    still_pulls(&daemon);
}

#[test]
fn oci_a_config_or_manifest_with_one_byte_flipped_is_a_digest_mismatch() {
    let daemon = Daemon::start_initialised(&[]);
    let image = small_image(Compression::Gzip, "config\n");
    for part in ["config", "manifest"] {
        let (mut layout, built) = Layout::single(&image, None);
        let digest = match part {
            "config" => built.config_digest.clone(),
            _ => built.manifest_digest.clone(),
        };
        // Flip a byte inside a JSON string, so the document still parses.
        let blob = layout.blob(&digest).unwrap().to_vec();
        let middle = blob.len() / 2;
        let at = (middle..blob.len())
            .find(|&i| blob[i].is_ascii_alphanumeric())
            .unwrap();
        let mut changed = blob.clone();
        changed[at] = if changed[at] == b'0' { b'1' } else { b'0' };
        let actual = sha256_digest(&changed);
        layout.drop_blob(&digest);
        // Store it under the old name, as a corrupted disk would.
        let written = Written::new(&layout);
        let hex = digest.strip_prefix("sha256:").unwrap();
        std::fs::write(
            written.dir.path().join("layout/blobs/sha256").join(hex),
            &changed,
        )
        .unwrap();
        let (err, typed) = refused(&daemon, &[&written.oci(None), part]);
        assert!(err.contains(&digest), "{part}: {err}");
        assert!(err.contains(&actual), "{part}: {err}");
        let what = digest_mismatch(&typed, &digest, &actual);
        assert!(what.contains(part), "{part}: {what}");
    }
    still_pulls(&daemon);
}

#[test]
fn oci_a_wrong_diff_id_is_a_digest_mismatch_naming_it() {
    let daemon = Daemon::start_initialised(&[]);
    let mut image = small_image(Compression::Zstd, "diff_id\n");
    image.wrong_diff_id = Some(0);
    let (layout, built) = Layout::single(&image, None);
    let config: serde_json::Value = serde_json::from_slice(&built.config).unwrap();
    let claimed = config["rootfs"]["diff_ids"][0].as_str().unwrap().to_owned();
    assert_ne!(claimed, built.diff_ids[0]);
    let written = Written::new(&layout);
    for source in [written.oci(None), written.archive(None)] {
        let (err, typed) = refused(&daemon, &[&source, "wrong"]);
        let what = digest_mismatch(&typed, &claimed, &built.diff_ids[0]);
        assert!(what.contains("diff_id"), "{what}");
        assert!(err.contains("diff_id"), "{err}");
        assert!(
            err.contains(&claimed),
            "the claimed diff_id is not named: {err}"
        );
        assert!(
            err.contains(&built.diff_ids[0]),
            "the actual diff_id is not named: {err}"
        );
        let state = published(&daemon.repo());
        no_layer_stream(&state, &claimed);
        no_layer_stream(&state, &built.diff_ids[0]);
    }
    still_pulls(&daemon);
}

#[test]
fn oci_a_missing_blob_is_named() {
    let daemon = Daemon::start_initialised(&[]);
    let image = Image::new(vec![
        small_image(Compression::Gzip, "lower\n").layers.remove(0),
        Layer::new(
            Compression::Gzip,
            vec![cfsd_tests::oci::Entry::file("usr/top", "top\n")],
        ),
    ]);
    for missing in ["layer", "config"] {
        let (mut layout, built) = Layout::single(&image, None);
        let digest = match missing {
            "layer" => built.layer_digests[1].clone(),
            _ => built.config_digest.clone(),
        };
        layout.drop_blob(&digest);
        let written = Written::new(&layout);
        for source in [written.oci(None), written.archive(None)] {
            let (err, typed) = refused(&daemon, &[&source, "missing"]);
            assert!(err.contains(&digest), "{missing}: {err}");
            assert!(
                matches!(&typed, OciError::BlobMissing { digest: d } if *d == digest),
                "{missing}: {typed:?}"
            );
        }
    }
    still_pulls(&daemon);
}

/// Every compression cfsd recognises on an `oci-archive:` is named, and
/// the archive refused before anything is read as tar.
#[test]
fn oci_a_compressed_archive_is_refused_naming_its_compression() {
    let daemon = Daemon::start_initialised(&[]);
    let (layout, _) = Layout::single(&small_image(Compression::Gzip, "gz\n"), None);
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("image.tar");
    layout.write_archive(&plain);
    let gzip = dir.path().join("image.tar.gz");
    layout.write_gzip_archive(&gzip);
    let zstd = dir.path().join("image.tar.zst");
    std::fs::write(
        &zstd,
        compress(&std::fs::read(&plain).unwrap(), Compression::Zstd),
    )
    .unwrap();
    let mut archives = vec![("gzip", gzip), ("zstd", zstd)];
    for (name, tool) in [("xz", "xz"), ("bzip2", "bzip2")] {
        let out = std::process::Command::new(tool)
            .args(["--keep", "--force"])
            .arg(&plain)
            .output()
            .unwrap_or_else(|e| panic!("{tool} (Debian's {tool} package): {e}"));
        assert!(out.status.success(), "{tool}: {out:?}");
        let suffix = if name == "xz" { "xz" } else { "bz2" };
        archives.push((name, dir.path().join(format!("image.tar.{suffix}"))));
    }
    for (compression, path) in archives {
        let (err, typed) = refused(&daemon, &[&format!("oci-archive:{}", path.display()), "c"]);
        assert!(err.contains(compression), "{err}");
        assert!(
            matches!(&typed, OciError::CompressedArchive { compression: c } if c == compression),
            "{compression}: {typed:?}"
        );
    }
    still_pulls(&daemon);
}

#[test]
fn oci_an_unknown_reference_lists_the_available_ones() {
    let daemon = Daemon::start_initialised(&[]);
    let mut layout = Layout::new();
    layout.add_image(&small_image(Compression::Gzip, "one\n"), Some("one"));
    layout.add_image(&small_image(Compression::Gzip, "two\n"), Some("v2.0"));
    let written = Written::new(&layout);
    for source in [written.oci(Some("three")), written.archive(Some("three"))] {
        let (err, typed) = refused(&daemon, &[&source, "three"]);
        assert!(err.contains("three"), "{err}");
        match typed {
            OciError::ManifestNotFound {
                reference,
                mut available,
            } => {
                available.sort();
                assert_eq!(reference, "three");
                // Each name with the digest it stands for.
                assert_eq!(available.len(), 2, "{available:?}");
                assert!(available[0].starts_with("one (sha256:"), "{available:?}");
                assert!(available[1].starts_with("v2.0 (sha256:"), "{available:?}");
            }
            other => panic!("not ManifestNotFound: {other:?}"),
        }
    }
    // A digest that is not there either.
    let absent = sha256_digest(b"absent");
    for source in [written.oci(Some(&absent)), written.archive(Some(&absent))] {
        let (err, typed) = refused(&daemon, &[&source, "absent"]);
        assert!(err.contains(&absent), "{err}");
        assert!(
            matches!(&typed, OciError::ManifestNotFound { reference, .. } if *reference == absent),
            "{typed:?}"
        );
    }
    still_pulls(&daemon);
}

#[test]
fn oci_an_unsupported_layer_media_type_is_named() {
    let daemon = Daemon::start_initialised(&[]);
    let mut image = small_image(Compression::Gzip, "media\n");
    let weird = "application/vnd.oci.image.layer.v1.tar+bzip2";
    image.layers[0].media_type = Some(weird.to_owned());
    let (layout, _) = Layout::single(&image, None);
    let written = Written::new(&layout);
    for source in [written.oci(None), written.archive(None)] {
        let (err, typed) = refused(&daemon, &[&source, "media"]);
        assert!(err.contains(weird), "{err}");
        assert!(
            matches!(&typed, OciError::UnsupportedMediaType { media_type, .. } if media_type == weird),
            "{typed:?}"
        );
    }
    still_pulls(&daemon);
}

#[test]
fn oci_an_unparsable_manifest_is_invalid_json() {
    let daemon = Daemon::start_initialised(&[]);
    let mut layout = Layout::new();
    let broken = layout.add_raw_manifest(
        br#"{"schemaVersion": 2, "mediaType": "#,
        media::OCI_MANIFEST,
        Some("broken"),
    );
    // A manifest that parses as JSON but is not a manifest.
    let wrong_shape = layout.add_raw_manifest(
        br#"{"schemaVersion": 2, "layers": "not a list"}"#,
        media::OCI_MANIFEST,
        Some("wrong-shape"),
    );
    let written = Written::new(&layout);
    for (reference, digest) in [("broken", broken), ("wrong-shape", wrong_shape)] {
        for source in [
            written.oci(Some(reference)),
            written.archive(Some(reference)),
        ] {
            let (err, typed) = refused(&daemon, &[&source, reference]);
            assert!(err.contains("manifest"), "{err}");
            assert!(err.contains(&digest), "{err}");
            match typed {
                OciError::InvalidJson { what, .. } => {
                    assert!(
                        what.contains("manifest") && what.contains(&digest),
                        "{what}"
                    )
                }
                other => panic!("{reference}: not InvalidJson: {other:?}"),
            }
        }
    }
    still_pulls(&daemon);
}

#[test]
fn oci_a_directory_without_a_layout_is_refused() {
    let daemon = Daemon::start_initialised(&[]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("unrelated"), b"x").unwrap();
    let (err, typed) = refused(&daemon, &[&format!("oci:{}", dir.path().display()), "x"]);
    assert!(
        err.contains("index.json") || err.contains("oci-layout"),
        "{err}"
    );
    assert!(
        matches!(
            &typed,
            OciError::InvalidSource { .. } | OciError::BlobMissing { .. }
        ),
        "{typed:?}"
    );
    // A file that is not a tar at all.
    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, vec![b'x'; 4096]).unwrap();
    let (err, typed) = refused(&daemon, &[&format!("oci-archive:{}", junk.display()), "x"]);
    assert!(err.contains("tar"), "{err}");
    assert!(
        matches!(&typed, OciError::InvalidSource { .. }),
        "{typed:?}"
    );
    still_pulls(&daemon);
}
