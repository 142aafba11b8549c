//! Pulling oci-delta archives end to end: a source image is pulled, a
//! hand-made delta to a target image is pulled on top, and the result must
//! equal a full pull of the target into another repository.

use std::{
    collections::HashMap,
    fs::File,
    io::{Read, Seek, Write},
    path::Path,
};

use serde_json::json;

use super::tardiff::{
    HEADER_V1, HEADER_V2, OP_ADD_DATA, OP_COPY, OP_DATA, OP_OPEN, OP_ZSTD_DICT,
    tests::{Memory, both, uvarint},
};
use crate::{
    Error, HashAlgorithm, Repository, VerityPolicy,
    oci::{PullOptions, PullReport, Source, digest::Digest},
    test_image::{GZIP_LAYER, TestImage, TestLayer, oci_archive},
};

const TAR_DIFF: &str = "application/vnd.tar-diff";

/// A tar of `entries`: a path ending in `/` is a directory, one starting
/// with `@` a symlink to its data, anything else a regular file.
fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut header = tar::Header::new_ustar();
        header.set_mtime(1_700_000_000);
        if path.ends_with('/') {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            header.set_cksum();
            tar.append_data(&mut header, path, &[][..]).unwrap();
        } else if let Some(link) = path.strip_prefix('@') {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            tar.append_link(
                &mut header,
                link,
                Path::new(std::str::from_utf8(data).unwrap()),
            )
            .unwrap();
        } else {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            header.set_cksum();
            tar.append_data(&mut header, path, *data).unwrap();
        }
    }
    tar.into_inner().unwrap()
}

/// Deterministic, poorly compressible content.
fn noise(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

/// A gzip layer of `entries`.
fn layer(entries: &[(&str, &[u8])]) -> TestLayer {
    TestLayer::gzip(tar_of(entries))
}

/// A delta layer: the target layer it rebuilds, its media type and blob.
struct Change {
    layer: usize,
    media_type: &'static str,
    blob: Vec<u8>,
}

/// An oci-delta archive from `source` to `target` carrying `changes`.
fn delta_archive(source: &TestImage, target: &TestImage, changes: &[Change]) -> File {
    let empty = b"{}";
    let embedded = |kind: &str, media_type: &str, bytes: &[u8]| {
        json!({"mediaType": media_type, "digest": Digest::of(bytes).to_string(),
               "size": bytes.len(), "annotations": {"io.github.containers.delta.content": kind}})
    };
    let mut layers = vec![
        embedded(
            "image-manifest",
            "application/vnd.oci.image.manifest.v1+json",
            &target.manifest,
        ),
        embedded(
            "image-config",
            "application/vnd.oci.image.config.v1+json",
            &target.config,
        ),
    ];
    for change in changes {
        layers.push(json!({
            "mediaType": change.media_type,
            "digest": Digest::of(&change.blob).to_string(), "size": change.blob.len(),
            "annotations": {
                "io.github.containers.delta.content": "image-layer",
                "io.github.containers.delta.to": Digest::of(&target.layers[change.layer].blob).to_string()
            }
        }));
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": super::ARTIFACT_TYPE,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                   "digest": Digest::of(empty).to_string(), "size": 2},
        "layers": layers,
        "annotations": {
            "io.github.containers.delta.source": Digest::of(&source.manifest).to_string(),
            "io.github.containers.delta.source-config": source.config_digest().to_string(),
            "io.github.containers.delta.target": Digest::of(&target.manifest).to_string()
        }
    })
    .to_string()
    .into_bytes();
    let mut blobs = vec![
        &manifest[..],
        &empty[..],
        &target.manifest[..],
        &target.config[..],
    ];
    blobs.extend(changes.iter().map(|c| &c.blob[..]));
    oci_archive(&manifest, &blobs, None)
}

/// How a tar-diff encodes a file the source has in another version.
#[derive(Clone, Copy)]
enum Modified {
    AddData,
    ZstdDict,
    /// A file that is its old version with bytes before or after it: a
    /// COPY of all of the old one, and DATA; ZSTD_DICT for other changes.
    Splice,
}

/// A tar-diff of `target` (a tar) against the files `source` has: files
/// the source has unchanged are copied, same-length changed ones encoded
/// per `modified`, everything else (headers, new files, padding) is data.
fn make_tar_diff(target: &[u8], source: &HashMap<&str, Vec<u8>>, modified: Modified) -> Vec<u8> {
    let mut body = Vec::new();
    let mut op = |code: u8, size: u64, data: &[u8]| {
        body.push(code);
        body.extend(uvarint(size));
        body.extend_from_slice(data);
    };
    let mut done = 0usize;
    let mut archive = tar::Archive::new(target);
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let start = entry.raw_file_position() as usize;
        let len = entry.size() as usize;
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let data = &target[start..start + len];
        let Some(old) = source.get(path.as_str()).filter(|_| len > 0) else {
            continue;
        };
        op(OP_DATA, (start - done) as u64, &target[done..start]);
        op(
            OP_OPEN,
            path.len() as u64 + 1,
            format!("/{path}").as_bytes(),
        );
        if old[..] == *data {
            op(OP_COPY, len as u64, b"");
        } else if let (Modified::Splice, Some(rest)) = (modified, data.strip_prefix(&old[..])) {
            op(OP_COPY, old.len() as u64, b"");
            op(OP_DATA, rest.len() as u64, rest);
        } else if let (Modified::Splice, Some(first)) = (modified, data.strip_suffix(&old[..])) {
            op(OP_DATA, first.len() as u64, first);
            op(OP_COPY, old.len() as u64, b"");
        } else if let Modified::ZstdDict | Modified::Splice = modified {
            let mut encoder =
                zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), 3, old).unwrap();
            encoder.write_all(data).unwrap();
            let frame = encoder.finish().unwrap();
            op(OP_ZSTD_DICT, frame.len() as u64, &frame);
        } else {
            assert_eq!(old.len(), len, "ADD_DATA needs same-length versions");
            let add: Vec<u8> = data
                .iter()
                .zip(old)
                .map(|(n, o)| n.wrapping_sub(*o))
                .collect();
            op(OP_ADD_DATA, len as u64, &add);
        }
        done = start + len;
    }
    op(OP_DATA, (target.len() - done) as u64, &target[done..]);
    let header = match modified {
        Modified::AddData => HEADER_V1,
        Modified::ZstdDict | Modified::Splice => HEADER_V2,
    };
    let mut out = header.to_vec();
    out.extend(zstd::encode_all(&body[..], 3).unwrap());
    out
}

/// The source and target images and the files of the source.
struct Fixture {
    source: TestImage,
    target: TestImage,
    files: HashMap<&'static str, Vec<u8>>,
}

impl Fixture {
    /// Layer 0 is shared; layer 1 changes one file, keeps one, adds one,
    /// drops one; layer 2 is new.
    fn new() -> Self {
        Self::changing_tool(<[u8]>::to_vec)
    }

    /// As [`Fixture::new`], with `usr/bin/tool` changed by `change` in
    /// the target.
    fn changing_tool(change: impl Fn(&[u8]) -> Vec<u8>) -> Self {
        let readme = noise(300, 1);
        let tool = noise(70_000, 2);
        let data = noise(3000, 3);
        let mut data2 = data.clone();
        data2[100..140].fill(b'!');
        let base = || {
            layer(&[
                ("usr/", b""),
                ("usr/share/", b""),
                ("usr/share/readme", &readme),
            ])
        };
        let source = TestImage::new(vec![
            base(),
            layer(&[
                ("usr/bin/", b""),
                ("usr/bin/tool", &tool),
                ("usr/lib/", b""),
                ("usr/lib/data", &data),
                ("etc/", b""),
                ("etc/old", &noise(200, 4)),
                ("usr/share/tiny", b"0123456789"),
                ("@usr/bin/toollink", b"tool"),
                ("@usr/linkdir", b"bin"),
            ]),
        ]);
        let target = TestImage::new(vec![
            base(),
            layer(&[
                ("usr/bin/", b""),
                ("usr/bin/tool", &change(&tool)),
                ("@usr/bin/link", b"tool"),
                ("usr/lib/", b""),
                ("usr/lib/data", &data2),
                ("usr/new", &noise(1000, 5)),
            ]),
            layer(&[("opt/", b""), ("opt/extra", &noise(5000, 6))]),
        ]);
        let files = HashMap::from([
            ("usr/share/readme", readme),
            ("usr/bin/tool", tool),
            ("usr/lib/data", data),
        ]);
        Fixture {
            source,
            target,
            files,
        }
    }

    fn tar_diff(&self, modified: Modified) -> Vec<u8> {
        make_tar_diff(&self.target.layers[1].tar, &self.files, modified)
    }

    /// A delta rebuilding layer 1 from `layer1` and carrying layer 2 whole.
    fn delta(&self, layer1: Change) -> File {
        let whole = Change {
            layer: 2,
            media_type: GZIP_LAYER,
            blob: self.target.layers[2].blob.clone(),
        };
        delta_archive(&self.source, &self.target, &[layer1, whole])
    }

    fn tar_diff_delta(&self, modified: Modified) -> File {
        self.delta(Change {
            layer: 1,
            media_type: TAR_DIFF,
            blob: self.tar_diff(modified),
        })
    }
}

fn new_repo() -> (tempfile::TempDir, Repository) {
    let dir = tempfile::tempdir().unwrap();
    let (repo, _) =
        Repository::init(dir.path(), HashAlgorithm::SHA256, VerityPolicy::BestEffort).unwrap();
    (dir, repo)
}

fn tagged(tag: &str) -> PullOptions {
    PullOptions {
        tag: Some(tag.into()),
        jobs: 2,
        ..PullOptions::default()
    }
}

async fn pull(repo: &Repository, file: File, tag: &str) -> Result<PullReport, Error> {
    repo.pull(Source::Archive(file), tagged(tag), |_| {}).await
}

/// A repository holding the fixture's source image.
async fn with_source(fixture: &Fixture) -> (tempfile::TempDir, Repository) {
    let (dir, repo) = new_repo();
    pull(&repo, fixture.source.archive(None), "source")
        .await
        .unwrap();
    (dir, repo)
}

/// The report of a full pull of the target into a new repository.
async fn full_pull(fixture: &Fixture) -> PullReport {
    let (_dir, repo) = new_repo();
    pull(&repo, fixture.target.archive(None), "target")
        .await
        .unwrap()
}

fn assert_same_image(delta: &PullReport, full: &PullReport) {
    assert_eq!(delta.manifest_digest, full.manifest_digest);
    assert_eq!(delta.config_digest, full.config_digest);
    assert_eq!(delta.image_id, full.image_id);
    assert_eq!(delta.layers, 3);
}

fn has_layer(dir: &Path, diff_id: &Digest) -> bool {
    dir.join("streams")
        .join(format!("oci-layer-{diff_id}"))
        .symlink_metadata()
        .is_ok()
}

#[test]
fn the_hand_made_tar_diffs_rebuild_the_layer_as_oci_delta_does() {
    let fixture = Fixture::new();
    let files = Memory::with(
        &fixture
            .files
            .iter()
            .map(|(p, d)| (*p, &d[..]))
            .collect::<Vec<_>>(),
    );
    let target = &fixture.target.layers[1];
    for modified in [Modified::AddData, Modified::ZstdDict] {
        let diff = fixture.tar_diff(modified);
        assert_eq!(both(&diff, &files), target.tar);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tar_diff_delta_gives_the_image_a_full_pull_gives() {
    let fixture = Fixture::new();
    let full = full_pull(&fixture).await;
    for modified in [Modified::AddData, Modified::ZstdDict] {
        let (_dir, repo) = with_source(&fixture).await;
        let mut seen = Vec::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let report = repo
            .pull(
                Source::Archive(fixture.tar_diff_delta(modified)),
                tagged("target"),
                move |p| tx.send(p).unwrap(),
            )
            .await
            .unwrap();
        seen.extend(rx.try_iter());
        assert_same_image(&report, &full);
        assert_eq!(report.layers_present, 1, "layer 0 is reused");
        assert_eq!(repo.compute_id("target").unwrap(), full.image_id);
        let done: Vec<_> = seen
            .iter()
            .filter(|p| p.stage == crate::oci::Stage::Done)
            .map(|p| p.layer.clone())
            .collect();
        assert_eq!(done.len(), 2, "{seen:?}");
        // Pulling it again finds it present.
        let again = pull(&repo, fixture.tar_diff_delta(modified), "target")
            .await
            .unwrap();
        assert!(again.already_present);
        assert_eq!(again.image_id, full.image_id);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_whole_layer_delta_gives_the_image_a_full_pull_gives() {
    let fixture = Fixture::new();
    let full = full_pull(&fixture).await;
    let tar = &fixture.target.layers[1].tar;
    // The target's own gzip blob, and the same layer uncompressed and as
    // zstd: what matters is the tar inside.
    for (media_type, blob) in [
        (GZIP_LAYER, fixture.target.layers[1].blob.clone()),
        ("application/vnd.oci.image.layer.v1.tar", tar.clone()),
        (
            "application/vnd.oci.image.layer.v1.tar+zstd",
            zstd::encode_all(&tar[..], 3).unwrap(),
        ),
    ] {
        let (_dir, repo) = with_source(&fixture).await;
        let delta = fixture.delta(Change {
            layer: 1,
            media_type,
            blob,
        });
        let report = pull(&repo, delta, "target").await.unwrap();
        assert_same_image(&report, &full);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delta_needs_its_source_image() {
    let fixture = Fixture::new();
    let (dir, repo) = new_repo();
    let err = pull(&repo, fixture.tar_diff_delta(Modified::AddData), "target")
        .await
        .unwrap_err();
    let expected = fixture.source.config_digest().to_string();
    assert!(
        matches!(err, Error::DeltaSourceMissing { ref config, .. } if *config == expected),
        "{err}"
    );
    assert!(err.to_string().contains(&expected));
    assert!(repo.images().unwrap().is_empty());
    assert!(!has_layer(dir.path(), &fixture.target.diff_id(1)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_tar_diff_publishes_nothing() {
    let fixture = Fixture::new();
    // Valid zstd, valid digests, but it copies past the end of the file.
    let mut bad = HEADER_V1.to_vec();
    let mut body = vec![OP_DATA, 0, OP_OPEN, 12];
    body.extend(b"usr/bin/tool");
    body.push(OP_COPY);
    body.extend(uvarint(1 << 20));
    bad.extend(zstd::encode_all(&body[..], 3).unwrap());
    // And one that applies, but to other bytes than the layer.
    let mut wrong = fixture.target.layers[1].tar.clone();
    wrong[2000] ^= 1; // inside usr/bin/tool's data
    let files = HashMap::new();
    for (blob, tar_diff_error) in [
        (bad, true),
        (make_tar_diff(&wrong, &files, Modified::AddData), false),
    ] {
        let err = refused_tar_diff(&fixture, blob).await;
        if tar_diff_error {
            assert!(
                matches!(err, Error::TarDiff { ref reason, .. } if reason.contains("past the end")),
                "{err}"
            );
        } else {
            assert!(
                matches!(err, Error::DigestMismatch { ref what, .. } if what.starts_with("diff_id")),
                "{err}"
            );
        }
    }
}

/// Why the tar-diff `blob` of layer 1 fails to pull onto the source, which
/// stays the only image, with no stream of layer 1 named.
async fn refused_tar_diff(fixture: &Fixture, blob: Vec<u8>) -> Error {
    let (dir, repo) = with_source(fixture).await;
    let delta = fixture.delta(Change {
        layer: 1,
        media_type: TAR_DIFF,
        blob,
    });
    let err = pull(&repo, delta, "target").await.unwrap_err();
    let tags: Vec<_> = repo.images().unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(tags, ["source"]);
    assert!(!has_layer(dir.path(), &fixture.target.diff_id(1)));
    err
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delta_blob_that_does_not_match_its_digest_is_refused() {
    let fixture = Fixture::new();
    let (dir, repo) = with_source(&fixture).await;
    let mut delta = Vec::new();
    let mut archive = fixture.tar_diff_delta(Modified::AddData);
    archive.seek(std::io::SeekFrom::Start(0)).unwrap();
    archive.read_to_end(&mut delta).unwrap();
    // Flip the last byte of the tar-diff blob inside the archive.
    let diff = fixture.tar_diff(Modified::AddData);
    let at = delta
        .windows(diff.len())
        .position(|w| w == diff)
        .expect("the blob is in the archive")
        + diff.len()
        - 1;
    delta[at] ^= 0xff;
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&delta).unwrap();
    let err = pull(&repo, file, "target").await.unwrap_err();
    assert!(
        matches!(err, Error::DigestMismatch { ref what, .. } if what.contains("delta layer")),
        "{err}"
    );
    assert!(!has_layer(dir.path(), &fixture.target.diff_id(1)));
}

#[tokio::test(flavor = "multi_thread")]
async fn deltas_that_break_the_format_are_invalid() {
    let fixture = Fixture::new();
    let (_dir, repo) = with_source(&fixture).await;
    // Layer 2 is neither in the delta nor in the repository.
    let partial = delta_archive(
        &fixture.source,
        &fixture.target,
        &[Change {
            layer: 1,
            media_type: TAR_DIFF,
            blob: fixture.tar_diff(Modified::AddData),
        }],
    );
    let err = pull(&repo, partial, "target").await.unwrap_err();
    assert!(matches!(err, Error::InvalidDelta { .. }), "{err}");
    // A delta layer of a media type no method handles.
    let odd = fixture.delta(Change {
        layer: 1,
        media_type: "application/x-bsdiff",
        blob: b"whatever".to_vec(),
    });
    let err = pull(&repo, odd, "target").await.unwrap_err();
    assert!(matches!(err, Error::UnsupportedMediaType { .. }), "{err}");
    assert_eq!(repo.images().unwrap().len(), 1);
}

/// Everything a source file holds.
fn read_all<Id>(file: &dyn super::tardiff::SourceFile<Id>) -> Vec<u8> {
    let mut data = vec![0u8; file.size() as usize];
    let mut at = 0;
    while at < data.len() {
        let n = file.read_at(&mut data[at..], at as u64).unwrap();
        assert!(n > 0, "short read at {at}");
        at += n;
    }
    data
}

#[tokio::test(flavor = "multi_thread")]
async fn source_files_are_regular_files_reached_without_symlinks() {
    use super::{
        source::SourceImage,
        tardiff::{SourceFiles, TarDiffError as E},
    };
    let fixture = Fixture::new();
    let (_dir, repo) = with_source(&fixture).await;
    let crate::repository::AnyStore::Sha256(store) = repo.store() else {
        panic!("the repository is sha256");
    };
    let config = fixture.source.config_digest().to_oci();
    let erofs =
        composefs_oci::composefs_erofs_for_config(store, &config, None, store.erofs_version())
            .unwrap()
            .expect("the source has an EROFS image");
    let image = SourceImage::load(store.clone(), &erofs).unwrap();
    // An object and an inline file; only the object can be referred to.
    let tool = image.open("usr/bin/tool").unwrap();
    assert_eq!(read_all(&*tool), fixture.files["usr/bin/tool"]);
    let tool_id: composefs::fsverity::Sha256HashValue =
        composefs::fsverity::compute_verity(&fixture.files["usr/bin/tool"]);
    assert_eq!(tool.object(), Some(&tool_id));
    let tiny = image.open("usr/share/tiny").unwrap();
    assert_eq!(read_all(&*tiny), b"0123456789");
    assert_eq!(tiny.object(), None);
    let refused = |path: &str| image.open(path).err().expect(path);
    assert!(matches!(refused("usr/bin"), E::SourceNotRegular { .. }));
    assert!(matches!(
        refused("usr/bin/toollink"),
        E::SourceNotRegular { .. }
    ));
    assert!(matches!(refused("usr/linkdir"), E::SourceNotRegular { .. }));
    assert!(matches!(
        refused("usr/linkdir/tool"),
        E::SourceThroughSymlink { ref link, .. } if link == "usr/linkdir"
    ));
    assert!(matches!(
        refused("usr/share/tiny/x"),
        E::SourceMissing { .. }
    ));
    assert!(matches!(
        refused("usr/bin/nothing"),
        E::SourceMissing { .. }
    ));
    assert!(matches!(refused("nothing/at/all"), E::SourceMissing { .. }));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delta_must_agree_with_its_target() {
    let fixture = Fixture::new();
    let (_dir, repo) = with_source(&fixture).await;
    // A delta.to that names no layer of the target.
    let elsewhere = TestImage {
        manifest: fixture.target.manifest.clone(),
        config: fixture.target.config.clone(),
        layers: vec![layer(&[("x", b"y")])],
    };
    let stray = Change {
        layer: 0,
        media_type: GZIP_LAYER,
        blob: elsewhere.layers[0].blob.clone(),
    };
    let err = pull(
        &repo,
        delta_archive(&fixture.source, &elsewhere, &[stray]),
        "target",
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, Error::InvalidDelta { ref reason } if reason.contains("not a layer of the target")),
        "{err}"
    );
    // An embedded config other than the one the target manifest names.
    let mismatched = TestImage {
        manifest: fixture.target.manifest.clone(),
        config: fixture.source.config.clone(),
        layers: Vec::new(),
    };
    let err = pull(
        &repo,
        delta_archive(&fixture.source, &mismatched, &[]),
        "target",
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, Error::DigestMismatch { ref what, .. } if what.contains("config of the delta")),
        "{err}"
    );
    assert_eq!(repo.images().unwrap().len(), 1, "only the source is tagged");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_that_only_contains_a_copied_source_file_is_stored_as_itself() {
    // The tool with a byte after it or before it: a COPY of the whole
    // source file that is not the whole target file.
    let appended = |tool: &[u8]| [tool, b"!"].concat();
    let prepended = |tool: &[u8]| [b"!", tool].concat();
    for change in [&appended as &dyn Fn(&[u8]) -> Vec<u8>, &prepended] {
        let fixture = Fixture::changing_tool(change);
        let full = full_pull(&fixture).await;
        let (_dir, repo) = with_source(&fixture).await;
        let report = pull(&repo, fixture.tar_diff_delta(Modified::Splice), "target")
            .await
            .unwrap();
        assert_same_image(&report, &full);
        assert_eq!(repo.compute_id("target").unwrap(), full.image_id);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_whole_copy_of_a_source_file_the_target_changed_fails_the_diff_id() {
    let flipped = |tool: &[u8]| {
        let mut tool = tool.to_vec();
        *tool.last_mut().unwrap() ^= 1;
        tool
    };
    let fixture = Fixture::changing_tool(flipped);
    // A delta made against a source whose tool were the target's: it
    // copies the tool whole, which the real source has one byte off.
    let mut claimed = fixture.files.clone();
    claimed.insert("usr/bin/tool", flipped(&fixture.files["usr/bin/tool"]));
    let blob = make_tar_diff(&fixture.target.layers[1].tar, &claimed, Modified::AddData);
    let err = refused_tar_diff(&fixture, blob).await;
    assert!(
        matches!(err, Error::DigestMismatch { ref what, .. } if what.starts_with("diff_id")),
        "{err}"
    );
}

#[test]
fn a_source_file_that_cannot_be_read_is_a_storage_error_of_its_kind() {
    use super::{apply::tar_diff_error, tardiff::TarDiffError};
    use crate::{DiskFault, oci::manifest::LayerPlan};
    let plan = LayerPlan {
        blob: Digest::of(b"delta"),
        size: 5,
        compression: crate::oci::document::Compression::None,
        diff_id: Digest::of(b"layer"),
        pulled: Default::default(),
        hold: Default::default(),
    };
    // EIO from pread, and ENOSPC behind anyhow context as composefs
    // reports an open's failure.
    let eio = std::io::Error::from_raw_os_error(5);
    let nospc = anyhow::Error::from(rustix::io::Errno::NOSPC).context("opening an object");
    let nospc = std::io::Error::other(nospc.into_boxed_dyn_error());
    for (error, expected) in [(eio, DiskFault::Io), (nospc, DiskFault::NoSpace)] {
        let failed = TarDiffError::SourceRead {
            path: "usr/bin/tool".into(),
            error,
        };
        match tar_diff_error(&plan, failed) {
            Error::Storage { fault, reason, .. } => {
                assert_eq!(fault, expected, "{reason}");
                assert!(reason.contains("usr/bin/tool"), "{reason}");
            }
            other => panic!("expected a storage error, got {other}"),
        }
    }
}
