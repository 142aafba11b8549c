//! `cfsctl oci pull` of broken oci-delta artifacts: each is refused with
//! a typed error, publishing nothing, and the daemon serves on. The
//! fixture is `cfsd_tests::oci_delta_fixture`.

use std::{collections::BTreeSet, fs::File};

use cfsd_tests::{
    Daemon,
    delta::{
        DeltaSpec, Encoding, HEADER_V1, MAX_ADD_DATA, OP_ADD_DATA, OP_DATA, Ops, Part,
        encode_tar_diff, tar_diff_ops,
    },
    oci::{Compression, Layout, Written, sha256_digest},
    oci_delta_fixture::{Fixture, daemon_with_source, source_image, written},
    ocictl::{json, published, pull, pull_fails, typed_pull_refusal},
};
use cfsd_varlink::oci::{OciError, TRANSPORT_ARCHIVE};
use serde_json::Value;

// ---------------------------------------------------------------------
// Refusals.
// ---------------------------------------------------------------------

/// What a daemon's repository publishes, and its layer streams.
fn snapshot(daemon: &Daemon) -> (cfsd_tests::ocictl::Published, Value) {
    (published(&daemon.repo()), json(daemon, &["oci", "images"]))
}

/// Pull the delta of `spec` from `daemon` in both forms with cfsctl, and
/// over the wire; each must fail, publish nothing, add no layer stream,
/// and leave the daemon serving. Returns cfsctl's message for the archive
/// and the typed error.
fn refused(daemon: &Daemon, spec: &DeltaSpec<'_>) -> (String, OciError) {
    refused_layout(daemon, &spec.layout().0, &BTreeSet::new())
}

/// As [`refused`], for a delta layout; layer streams named in `may_appear`
/// (layers that rebuild correctly next to the broken one) may be added.
fn refused_layout(
    daemon: &Daemon,
    layout: &Layout,
    may_appear: &BTreeSet<String>,
) -> (String, OciError) {
    let delta = Written::new(layout);
    let (before, images_before) = snapshot(daemon);
    let mut messages = Vec::new();
    for source in [delta.archive(None), delta.oci(None)] {
        let err = pull_fails(daemon, &[&source, "target"]);
        eprintln!("refused {source}: {err}");
        messages.push(err);
    }
    let archive = File::open(delta.archive_path()).unwrap();
    let typed = typed_pull_refusal(daemon, TRANSPORT_ARCHIVE, archive.into(), "typed");
    eprintln!("typed: {typed:?}");
    let (after, images_after) = snapshot(daemon);
    assert_eq!(after.tags, before.tags, "a tag appeared");
    assert_eq!(after.images, before.images, "an EROFS image appeared");
    let before_layers = before.streams_starting("oci-layer-");
    let new_layers: Vec<String> = after
        .streams_starting("oci-layer-")
        .into_iter()
        .filter(|s| !before_layers.contains(s) && !may_appear.contains(s))
        .collect();
    assert!(
        new_layers.is_empty(),
        "layer streams appeared: {new_layers:?}"
    );
    assert_eq!(images_after, images_before);
    let info = json(daemon, &["info"]);
    assert!(info["info"].is_object(), "{info}");
    // Both forms say the same.
    assert_eq!(messages[0], messages[1]);
    (messages.remove(0), typed)
}

/// After refusals, the real delta still applies on the same daemon.
fn still_applies(daemon: &Daemon, fixture: &Fixture) {
    let delta =
        written(&fixture.spec(fixture.parts(Encoding::AddData, Part::Whole(Compression::Gzip))));
    let pulled = pull(daemon, &[&delta.archive(None), "target"]);
    assert_eq!(pulled.str("manifestDigest"), fixture.target.manifest_digest);
    assert_eq!(pulled.u64("layersPresent"), 2);
    let fsck = json(daemon, &["fsck"]);
    assert_eq!(fsck["ok"], true, "{fsck}");
}

#[test]
fn oci_delta_without_its_source_image_names_the_missing_config() {
    let fixture = Fixture::new();
    let daemon = Daemon::start_initialised(&[]);
    let spec = fixture.spec(fixture.parts(Encoding::AddData, Part::Whole(Compression::Gzip)));
    let (err, typed) = refused(&daemon, &spec);
    assert!(err.contains(&fixture.source.config_digest), "{err}");
    assert!(
        matches!(&typed, OciError::DeltaSourceMissing { config, .. } if *config == fixture.source.config_digest),
        "{typed:?}"
    );
    // Another image with the same layers is not the source either.
    let other = source_image().label("image", "not the source");
    let (layout, _) = Layout::single(&other, None);
    pull(&daemon, &[&Written::new(&layout).archive(None), "other"]);
    let (err, typed) = refused(&daemon, &spec);
    assert!(err.contains(&fixture.source.config_digest), "{err}");
    assert!(
        matches!(typed, OciError::DeltaSourceMissing { .. }),
        "{typed:?}"
    );
    // Once it is there, the delta applies.
    pull(&daemon, &[&fixture.source_written.archive(None), "source"]);
    still_applies(&daemon, &fixture);
}

/// A delta whose layer 2 is the tar-diff `blob` (and layer 3, if the
/// target has one, whole).
fn with_layer2<'f>(fixture: &'f Fixture, blob: Vec<u8>) -> DeltaSpec<'f> {
    fixture.spec(fixture.parts_with(Part::TarDiff(blob), Part::Whole(Compression::Gzip)))
}

/// The refusal of `blob` as layer 2's tar-diff must be TarDiffFailed for
/// target layer 2, with a reason containing `reason`.
fn tar_diff_refused(daemon: &Daemon, fixture: &Fixture, blob: Vec<u8>, reason: &str) {
    let (err, typed) = refused(daemon, &with_layer2(fixture, blob));
    let layer = &fixture.target.layer_digests[2];
    assert!(err.contains(layer), "{err}");
    assert!(err.contains(reason), "{reason:?} not in {err}");
    match typed {
        OciError::TarDiffFailed {
            layer: l,
            reason: r,
        } => {
            assert_eq!(&l, layer);
            assert!(r.contains(reason), "{reason:?} not in {r}");
        }
        other => panic!("not TarDiffFailed: {other:?}"),
    }
}

#[test]
fn oci_delta_corrupt_tar_diff_streams_are_refused() {
    let fixture = Fixture::one_change();
    let daemon = daemon_with_source(&fixture);
    let good = tar_diff_ops(
        &fixture.target.layer_tars[2],
        &fixture.files,
        Encoding::AddData,
    );

    // An op code tar-diff does not have, after valid ops.
    let mut bad_op = good.clone();
    bad_op.op(9, 0, b"");
    tar_diff_refused(
        &daemon,
        &fixture,
        bad_op.encode(HEADER_V1),
        "unknown tar-diff op 9",
    );

    // ZSTD_DICT under a tardf1 header.
    let zstd_dict = tar_diff_ops(
        &fixture.target.layer_tars[2],
        &fixture.files,
        Encoding::ZstdDict,
    );
    tar_diff_refused(
        &daemon,
        &fixture,
        zstd_dict.encode(HEADER_V1),
        "needs tardf2",
    );

    // A header that is neither.
    tar_diff_refused(
        &daemon,
        &fixture,
        good.encode(b"tardf9\n\0"),
        "not a tar-diff",
    );

    // The op stream cut inside an op: DATA promising more than follows.
    let mut cut = Ops::new();
    cut.data(b"0123").op(OP_DATA, 100, b"only this");
    tar_diff_refused(&daemon, &fixture, cut.encode(HEADER_V1), "ends inside DATA");

    // The compressed stream cut short.
    let whole = good.encode(HEADER_V1);
    tar_diff_refused(
        &daemon,
        &fixture,
        whole[..whole.len() - 7].to_vec(),
        "ends inside",
    );

    // A size varint of eleven bytes.
    let mut overflow = Ops::new();
    overflow.raw(&[OP_DATA]).raw(&[0xff; 10]).raw(&[0x01]);
    tar_diff_refused(&daemon, &fixture, overflow.encode(HEADER_V1), "overflows");

    // ADD_DATA one byte over oci-delta's and tar-patch's limit.
    let mut big = Ops::new();
    big.open("opt/app/data")
        .op(OP_ADD_DATA, MAX_ADD_DATA + 1, b"");
    tar_diff_refused(&daemon, &fixture, big.encode(HEADER_V1), "larger than");

    // COPY past the end of the source file.
    let mut past = Ops::new();
    past.open("etc/conf").copy(9);
    tar_diff_refused(&daemon, &fixture, past.encode(HEADER_V1), "past the end");

    still_applies(&daemon, &fixture);
}

#[test]
fn oci_delta_open_of_anything_but_a_source_file_is_refused() {
    let fixture = Fixture::one_change();
    let daemon = daemon_with_source(&fixture);
    for (path, reason) in [
        ("usr/bin", "is not a regular file"),
        ("/usr/share/doc/", "is not a regular file"),
        ("usr/bin/link", "is not a regular file"),
        ("usr/linkdir/big.bin", "leads through the symlink"),
        ("usr/bin/missing", "has no file"),
        // A file only the target has.
        ("opt/app/new.bin", "has no file"),
        ("../etc/conf", "above the image root"),
        ("usr/../../etc/conf", "above the image root"),
    ] {
        let mut ops = Ops::new();
        ops.data(b"x").open(path).copy(1);
        tar_diff_refused(&daemon, &fixture, ops.encode(HEADER_V1), reason);
    }
    still_applies(&daemon, &fixture);
}

#[test]
fn oci_delta_rebuilding_other_bytes_is_a_diff_id_mismatch() {
    let fixture = Fixture::one_change();
    let daemon = daemon_with_source(&fixture);
    // A well-formed tar-diff of a layer with one byte of a file changed.
    let mut wrong = fixture.target.layer_tars[2].clone();
    let at = wrong.len() / 2;
    wrong[at] ^= 0x20;
    let actual = sha256_digest(&wrong);
    for encoding in [Encoding::AllData, Encoding::AddData] {
        let blob = encode_tar_diff(&wrong, &fixture.files, encoding);
        let (err, typed) = refused(&daemon, &with_layer2(&fixture, blob));
        assert!(err.contains("diff_id"), "{err}");
        assert!(err.contains(&fixture.target.diff_ids[2]), "{err}");
        assert!(err.contains(&actual), "{err}");
        match typed {
            OciError::DigestMismatch {
                what,
                expected,
                actual: found,
            } => {
                assert!(what.contains("diff_id"), "{what}");
                assert_eq!(expected, fixture.target.diff_ids[2]);
                assert_eq!(found, actual);
            }
            other => panic!("not DigestMismatch: {other:?}"),
        }
    }
    // A whole layer blob (of the right digest) holding that other tar.
    let spec = fixture.spec(vec![(
        2,
        Part::Raw {
            media_type: cfsd_tests::oci::media::OCI_LAYER.to_owned(),
            blob: wrong,
        },
    )]);
    let (err, typed) = refused(&daemon, &spec);
    assert!(err.contains(&fixture.target.diff_ids[2]), "{err}");
    assert!(err.contains(&actual), "{err}");
    assert!(
        matches!(&typed, OciError::DigestMismatch { expected, .. } if *expected == fixture.target.diff_ids[2]),
        "{typed:?}"
    );
    still_applies(&daemon, &fixture);
}

#[test]
fn oci_delta_blob_with_one_byte_flipped_is_a_digest_mismatch() {
    let fixture = Fixture::one_change();
    let daemon = daemon_with_source(&fixture);
    let two = Fixture::new();
    let layer3 = BTreeSet::from([format!("oci-layer-{}", two.target.diff_ids[3])]);
    for (fixture, part, may_appear) in [
        (
            &fixture,
            Part::TarDiff(fixture.tar_diff(2, Encoding::AddData)),
            BTreeSet::new(),
        ),
        (
            &fixture,
            Part::TarDiff(fixture.tar_diff(2, Encoding::ZstdDict)),
            BTreeSet::new(),
        ),
        (&fixture, Part::Whole(Compression::Gzip), BTreeSet::new()),
        (&fixture, Part::Whole(Compression::None), BTreeSet::new()),
        // Next to a good layer 3, which may be stored (it is verified),
        // while the bad layer 2 must not be.
        (
            &two,
            Part::TarDiff(two.tar_diff(2, Encoding::Splice)),
            layer3.clone(),
        ),
    ] {
        let spec = fixture.spec(fixture.parts_with(part, Part::Whole(Compression::Zstd)));
        let (mut layout, built) = spec.layout();
        let digest = built.part_digests[0].clone();
        layout.corrupt_blob(&digest);
        let actual = sha256_digest(layout.blob(&digest).unwrap());
        let (err, typed) = refused_layout(&daemon, &layout, &may_appear);
        assert!(err.contains(&digest), "{err}");
        assert!(err.contains(&actual), "{err}");
        match typed {
            OciError::DigestMismatch {
                expected,
                actual: found,
                ..
            } => {
                assert_eq!(expected, digest);
                assert_eq!(found, actual);
            }
            other => panic!("not DigestMismatch: {other:?}"),
        }
    }
    still_applies(&daemon, &fixture);
}

#[test]
fn oci_delta_embedded_config_must_be_the_target_manifests() {
    let fixture = Fixture::one_change();
    let daemon = daemon_with_source(&fixture);
    let mut spec = fixture.spec(fixture.parts(Encoding::AddData, Part::Whole(Compression::Gzip)));
    spec.embedded_config = Some(fixture.source.config.clone());
    let (err, typed) = refused(&daemon, &spec);
    assert!(err.contains(&fixture.target.config_digest), "{err}");
    assert!(err.contains(&fixture.source.config_digest), "{err}");
    assert!(
        matches!(&typed, OciError::DigestMismatch { what, .. } if what.contains("config")),
        "{typed:?}"
    );
    // The config of the right digest with other bytes in the blob store.
    let spec = fixture.spec(fixture.parts(Encoding::AddData, Part::Whole(Compression::Gzip)));
    let (mut layout, _) = spec.layout();
    layout.corrupt_blob(&fixture.target.config_digest);
    let (err, typed) = refused_layout(&daemon, &layout, &BTreeSet::new());
    assert!(err.contains(&fixture.target.config_digest), "{err}");
    assert!(
        matches!(typed, OciError::DigestMismatch { .. }),
        "{typed:?}"
    );
    still_applies(&daemon, &fixture);
}

#[test]
fn oci_delta_pinned_digest_must_be_its_targets_not_its_own() {
    let fixture = Fixture::one_change();
    let daemon = daemon_with_source(&fixture);
    let delta =
        written(&fixture.spec(fixture.parts(Encoding::AddData, Part::Whole(Compression::Gzip))));
    let index: Value =
        serde_json::from_slice(&std::fs::read(delta.dir.path().join("layout/index.json")).unwrap())
            .unwrap();
    let own = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let before = published(&daemon.repo());
    // Neither the delta's own manifest nor the image it applies to is the
    // image it makes.
    for pinned in [&own, &fixture.source.manifest_digest] {
        let params = cfsd_varlink::oci::PullParams {
            transport: TRANSPORT_ARCHIVE.to_owned(),
            tag: Some("pinned".to_owned()),
            digest: Some(pinned.clone()),
            ..Default::default()
        };
        let archive = File::open(delta.archive_path()).unwrap();
        match cfsd_tests::ocictl::typed_refusal_of(&daemon, &params, archive.into()) {
            OciError::PinnedDigestMismatch {
                pinned: p,
                manifest,
            } => {
                assert_eq!((&p, &manifest), (pinned, &fixture.target.manifest_digest));
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(published(&daemon.repo()), before, "a refusal published");
    let target = &fixture.target.manifest_digest;
    let pulled = pull(
        &daemon,
        &[&delta.archive(None), "target", "--digest", target],
    );
    assert_eq!(pulled.str("manifestDigest"), *target);
}
