//! `cfsctl oci pull` of oci-delta artifacts (`oci:` and `oci-archive:`):
//! a delta applied on top of its source image must leave exactly what a
//! full pull of the target leaves, reuse unchanged layers by diff_id, and
//! stream each rebuilt layer without a whole copy of it. Refusals of
//! broken deltas are in `oci_delta_refusals.rs`; the fixture is
//! `cfsd_tests::oci_delta_fixture`.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{self, Read, Write},
    path::{Path, PathBuf},
};

use cfsd_tests::{
    delta::{
        DeltaSpec, Encoding, HEADER_V1, HEADER_V2, OP_ADD_DATA, OP_COPY, OP_DATA, OP_OPEN, OP_SEEK,
        OP_ZSTD_DICT, Part, tar_diff_ops,
    },
    oci::{Compression, Layout, Written, sha256_digest},
    oci_delta_fixture::{
        CHANGED, Fixture, Full, assert_same_as_full, daemon_with_source, source_image, written,
    },
    ocictl::{PrivateRepo, Target, json, published, pull},
};

#[test]
fn oci_delta_tar_diffs_of_every_encoding_give_what_a_full_pull_gives() {
    let fixture = Fixture::new();
    let full = Full::new(&fixture);
    let mut codes = BTreeSet::new();
    let mut headers = BTreeSet::new();
    for encoding in Encoding::ALL {
        for transport in ["oci", "oci-archive"] {
            // Layer 3 as a tar-diff of DATA only, layer 2 per encoding.
            let parts = vec![
                (2, Part::TarDiff(fixture.tar_diff(2, encoding))),
                (3, Part::TarDiff(fixture.tar_diff(3, Encoding::AllData))),
            ];
            for (index, part) in &parts {
                let Part::TarDiff(blob) = part else {
                    unreachable!()
                };
                headers.insert(blob[..8].to_vec());
                codes.extend(
                    tar_diff_ops(&fixture.target.layer_tars[*index], &fixture.files, encoding)
                        .codes(),
                );
            }
            let delta = written(&fixture.spec(parts));
            let source = match transport {
                "oci" => delta.oci(None),
                _ => delta.archive(None),
            };
            let jobs = if transport == "oci" { "1" } else { "4" };
            let repo = fixture.repo_with_source();
            let streams_before = published(&repo.repo_path()).streams_starting("oci-layer-");
            let pulled = pull(&repo, &[&source, "target", "--jobs", jobs]);
            eprintln!("{encoding:?} {transport}: {}", pulled.result);
            assert_same_as_full(&fixture, &repo, &pulled, &full);
            // Exactly the two changed layers are new streams; the reused
            // ones were not imported again.
            let streams_after = published(&repo.repo_path()).streams_starting("oci-layer-");
            let added: BTreeSet<String> =
                streams_after.difference(&streams_before).cloned().collect();
            let changed: BTreeSet<String> = CHANGED
                .iter()
                .map(|&i| format!("oci-layer-{}", fixture.target.diff_ids[i]))
                .collect();
            assert_eq!(added, changed, "{encoding:?}");
            // The reused layers are reported present; the rebuilt ones
            // done, with the delta blob's size as their total.
            let stages = |digest: &str| -> BTreeSet<String> {
                pulled
                    .progress
                    .iter()
                    .filter(|p| p["layer"] == digest)
                    .map(|p| p["stage"].as_str().unwrap().to_owned())
                    .collect()
            };
            for i in [0, 1] {
                assert!(
                    stages(&fixture.target.layer_digests[i]).contains("present"),
                    "layer {i}: {:?}",
                    pulled.progress
                );
            }
            for i in CHANGED {
                assert!(
                    stages(&fixture.target.layer_digests[i]).contains("done"),
                    "layer {i}: {:?}",
                    pulled.progress
                );
            }
        }
    }
    // Every op and both headers were exercised.
    assert_eq!(
        codes,
        BTreeSet::from([
            OP_DATA,
            OP_OPEN,
            OP_COPY,
            OP_ADD_DATA,
            OP_SEEK,
            OP_ZSTD_DICT
        ])
    );
    assert_eq!(
        headers,
        BTreeSet::from([HEADER_V1.to_vec(), HEADER_V2.to_vec()])
    );
}

#[test]
fn oci_delta_whole_layer_blobs_of_each_compression() {
    let fixture = Fixture::new();
    let full = Full::new(&fixture);
    for (compression, jobs) in [
        (Compression::None, "1"),
        (Compression::Gzip, "4"),
        (Compression::Zstd, "4"),
    ] {
        let spec = fixture.spec(vec![
            (2, Part::Whole(compression)),
            (3, Part::Whole(compression)),
        ]);
        let delta = written(&spec);
        let repo = fixture.repo_with_source();
        let pulled = pull(&repo, &[&delta.archive(None), "target", "--jobs", jobs]);
        assert_same_as_full(&fixture, &repo, &pulled, &full);
        let repo = fixture.repo_with_source();
        let pulled = pull(&repo, &[&delta.oci(None), "target", "--jobs", jobs]);
        assert_same_as_full(&fixture, &repo, &pulled, &full);
    }
    // A tar-diff and a whole blob in one delta.
    let delta =
        written(&fixture.spec(fixture.parts(Encoding::ZstdDict, Part::Whole(Compression::Zstd))));
    let repo = fixture.repo_with_source();
    let pulled = pull(&repo, &[&delta.archive(None), "target"]);
    assert_same_as_full(&fixture, &repo, &pulled, &full);

    // The same delta again: the image is complete, nothing is new.
    let again = pull(&repo, &[&delta.oci(None), "target"]);
    assert!(again.bool("alreadyPresent"), "{}", again.result);
    assert_eq!(again.u64("layersPresent"), 4);
    assert_eq!(again.u64("bytesNew"), 0);
    assert_eq!(again.str("imageId"), full.pulled.str("imageId"));
}

#[test]
fn oci_delta_without_changed_layers_reuses_every_layer_by_diff_id() {
    // The target differs from the source in its config only: one layer is
    // the same blob, the others the same tars compressed otherwise.
    let source = source_image();
    let mut target = source.clone().label("image", "relabelled");
    target.layers[1].compression = Compression::Gzip;
    target.layers[2].compression = Compression::Zstd;
    let (source_layout, source_built) = Layout::single(&source, None);
    let (target_layout, target_built) = Layout::single(&target, None);
    assert_eq!(source_built.diff_ids, target_built.diff_ids);
    assert_ne!(source_built.layer_digests, target_built.layer_digests);
    let spec = DeltaSpec {
        source: &source_built,
        target: &target_built,
        parts: Vec::new(),
        embedded_config: None,
    };
    let delta = written(&spec);

    let full_repo = PrivateRepo::init("sha256");
    let full = pull(
        &full_repo,
        &[&Written::new(&target_layout).archive(None), "t"],
    );
    let repo = PrivateRepo::init("sha256");
    pull(&repo, &[&Written::new(&source_layout).oci(None), "s"]);
    let streams_before = published(&repo.repo_path()).streams_starting("oci-layer-");
    let pulled = pull(&repo, &[&delta.archive(None), "t"]);
    assert_eq!(pulled.str("manifestDigest"), target_built.manifest_digest);
    assert_eq!(pulled.str("imageId"), full.str("imageId"));
    assert_eq!(pulled.u64("layers"), 3);
    assert_eq!(pulled.u64("layersPresent"), 3, "{}", pulled.result);
    assert_eq!(pulled.u64("objectsNew"), 0, "{}", pulled.result);
    assert_eq!(
        published(&repo.repo_path()).streams_starting("oci-layer-"),
        streams_before
    );
    let fsck = json(&repo, &["fsck"]);
    assert_eq!(fsck["ok"], true, "{fsck}");
}

/// The source image's files for oci-delta's applier, resolved as cfsd
/// resolves OPEN paths.
struct Files {
    files: BTreeMap<String, Vec<u8>>,
    current: Option<io::Cursor<Vec<u8>>>,
}

impl Files {
    fn file(&mut self) -> anyhow::Result<&mut io::Cursor<Vec<u8>>> {
        self.current
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("no current file"))
    }
}

impl oci_delta::DeltaDataSource for Files {
    fn set_current_file(&mut self, path: &str) -> anyhow::Result<()> {
        let mut parts: Vec<&str> = Vec::new();
        for part in path.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    parts
                        .pop()
                        .ok_or_else(|| anyhow::anyhow!("{path} leaves the root"))?;
                }
                name => parts.push(name),
            }
        }
        let path = parts.join("/");
        let data = self
            .files
            .get(&path)
            .ok_or_else(|| anyhow::anyhow!("no file {path}"))?;
        self.current = Some(io::Cursor::new(data.clone()));
        Ok(())
    }

    fn read_exact_current(&mut self, buf: &mut [u8]) -> anyhow::Result<()> {
        Ok(self.file()?.read_exact(buf)?)
    }

    fn seek_current(&mut self, offset: u64) -> anyhow::Result<u64> {
        self.file()?.set_position(offset);
        Ok(offset)
    }

    fn read_current_to_end(&mut self, max_size: u64) -> anyhow::Result<Vec<u8>> {
        let file = self.file()?;
        let len = file.get_ref().len() as u64;
        anyhow::ensure!(len <= max_size, "larger than {max_size}");
        file.set_position(len);
        Ok(file.get_ref().clone())
    }

    fn copy_to(&mut self, dst: &mut dyn Write, n: u64) -> anyhow::Result<()> {
        let copied = io::copy(&mut Read::by_ref(self.file()?).take(n), dst)?;
        anyhow::ensure!(copied == n, "short copy: {copied} of {n}");
        Ok(())
    }
}

#[test]
fn oci_delta_hand_made_tar_diffs_rebuild_the_layers_with_oci_delta_too() {
    let fixture = Fixture::new();
    for encoding in Encoding::ALL {
        for index in CHANGED {
            let diff = fixture.tar_diff(index, encoding);
            let mut source = Files {
                files: fixture.files.clone(),
                current: None,
            };
            let mut out = Vec::new();
            oci_delta::tar_patch_apply(&diff[..], &mut source, &mut out)
                .unwrap_or_else(|e| panic!("{encoding:?} layer {index}: {e:#}"));
            assert!(
                out == fixture.target.layer_tars[index],
                "{encoding:?}: oci-delta rebuilds other bytes for layer {index}"
            );
            assert_eq!(sha256_digest(&out), fixture.target.diff_ids[index]);
        }
        // Not just DATA: the source's files carry most of layer 2.
        if encoding != Encoding::AllData {
            let diff = fixture.tar_diff(2, encoding);
            assert!(
                diff.len() < fixture.target.layer_tars[2].len() / 2,
                "{encoding:?}: a tar-diff of {} bytes",
                diff.len()
            );
        }
    }
}

// ---------------------------------------------------------------------
// Streaming.
// ---------------------------------------------------------------------

/// Every regular file under `dir`, by path relative to it, with its size.
fn files_under(dir: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(at) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&at) else {
            continue;
        };
        for entry in entries {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                let rel = entry.path().strip_prefix(dir).unwrap().to_owned();
                out.insert(rel, entry.metadata().unwrap().len());
            }
        }
    }
    out
}

#[test]
fn oci_delta_layers_stream_without_a_whole_copy_in_the_repository() {
    let fixture = Fixture::new();
    let full = Full::new(&fixture);
    let full_objects = files_under(&full.repo.repo_path().join("objects"));
    let smallest_rebuilt = CHANGED
        .iter()
        .map(|&i| fixture.target.layer_tars[i].len() as u64)
        .min()
        .unwrap();
    let largest_rebuilt = fixture.target.layer_tars[2].len() as u64;
    assert!(largest_rebuilt > 2 * 1024 * 1024);
    for (encoding, layer3) in [
        (Encoding::ZstdDict, Part::Whole(Compression::Gzip)),
        (Encoding::Splice, Part::Whole(Compression::None)),
        (Encoding::AllData, Part::Whole(Compression::Zstd)),
    ] {
        let repo = fixture.repo_with_source();
        let before = files_under(&repo.repo_path().join("objects"));
        let delta = written(&fixture.spec(fixture.parts(encoding, layer3)));
        let pulled = pull(&repo, &[&delta.archive(None), "target", "--jobs", "4"]);
        assert_same_as_full(&fixture, &repo, &pulled, &full);

        // Nowhere in the repository is a file as large as the rebuilt
        // layer 2, nor one holding a whole rebuilt layer.
        for (path, size) in files_under(&repo.repo_path()) {
            assert!(
                size < largest_rebuilt,
                "{encoding:?}: {} is {size} bytes, as large as the rebuilt layer ({largest_rebuilt})",
                path.display()
            );
            if size >= smallest_rebuilt {
                let digest = sha256_digest(&std::fs::read(repo.repo_path().join(&path)).unwrap());
                for i in CHANGED {
                    assert_ne!(
                        digest,
                        fixture.target.diff_ids[i],
                        "{encoding:?}: {} is a copy of layer {i}",
                        path.display()
                    );
                }
            }
        }

        // What the delta added is what the full pull holds and the
        // source lacked, but for the manifest's split stream, which may
        // be laid out differently.
        let after = files_under(&repo.repo_path().join("objects"));
        let added: BTreeMap<&PathBuf, u64> = after
            .iter()
            .filter(|(p, _)| !before.contains_key(*p))
            .map(|(p, s)| (p, *s))
            .collect();
        let wanted: BTreeMap<&PathBuf, u64> = full_objects
            .iter()
            .filter(|(p, _)| !before.contains_key(*p))
            .map(|(p, s)| (p, *s))
            .collect();
        let manifest_stream = |repo: &Path| -> PathBuf {
            let link = repo.join(format!(
                "streams/oci-manifest-{}",
                fixture.target.manifest_digest
            ));
            let target = std::fs::read_link(&link).unwrap();
            let rel = target.strip_prefix("..").unwrap_or(&target);
            rel.strip_prefix("objects").unwrap().to_owned()
        };
        let ours_manifest = manifest_stream(&repo.repo_path());
        let theirs_manifest = manifest_stream(&full.repo.repo_path());
        let extra: Vec<_> = added
            .keys()
            .filter(|p| !wanted.contains_key(**p) && ***p != ours_manifest)
            .collect();
        assert!(
            extra.is_empty(),
            "{encoding:?}: objects a full pull does not write: {extra:?}"
        );
        let lacking: Vec<_> = wanted
            .keys()
            .filter(|p| !added.contains_key(**p) && ***p != theirs_manifest)
            .collect();
        assert!(
            lacking.is_empty(),
            "{encoding:?}: objects of the full pull missing: {lacking:?}"
        );
        let bytes = |m: &BTreeMap<&PathBuf, u64>, manifest: &PathBuf| -> u64 {
            m.iter()
                .filter(|(p, _)| **p != manifest)
                .map(|(_, s)| s)
                .sum()
        };
        assert_eq!(
            bytes(&added, &ours_manifest),
            bytes(&wanted, &theirs_manifest),
            "{encoding:?}"
        );
    }
}

/// The bytes the process `pid` has passed to write(2) and its kin, all
/// threads together (`wchar` of `/proc/PID/io`).
fn written_by(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .expect("wchar in /proc/PID/io")
        .parse()
        .unwrap()
}

#[test]
fn oci_delta_writes_what_a_full_pull_of_the_same_layers_writes() {
    // While the layers are rebuilt, cfsd writes no more than a full pull
    // of the target writes into a repository that has the source: a
    // temporary copy of a rebuilt layer (2 MiB and more) would show.
    let fixture = Fixture::new();
    let delta =
        written(&fixture.spec(fixture.parts(Encoding::ZstdDict, Part::Whole(Compression::Gzip))));
    let mut writes = Vec::new();
    for source in [delta.archive(None), fixture.target_written.archive(None)] {
        let daemon = daemon_with_source(&fixture);
        let before = written_by(daemon.pid());
        let pulled = pull(&daemon, &[&source, "target", "--jobs", "2"]);
        let after = written_by(daemon.pid());
        assert_eq!(pulled.u64("layersPresent"), 2, "{}", pulled.result);
        assert_eq!(pulled.str("manifestDigest"), fixture.target.manifest_digest);
        writes.push(after - before);
    }
    let (by_delta, by_full) = (writes[0], writes[1]);
    eprintln!("written: delta {by_delta}, full {by_full}");
    let layer = fixture.target.layer_tars[2].len() as u64;
    assert!(by_full > layer / 2, "the full pull wrote {by_full} bytes");
    // The manifest and config streams and the log lines may differ a
    // little; a layer's worth may not.
    assert!(
        by_delta.abs_diff(by_full) < layer / 8,
        "the delta wrote {by_delta} bytes, the full pull {by_full}; the rebuilt layer is {layer}"
    );
}
