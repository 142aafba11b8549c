//! `cfsctl oci pull` of oci-delta artifacts (`oci:` and `oci-archive:`):
//! a delta applied on top of its source image must leave exactly what a
//! full pull of the target leaves, reuse unchanged layers by diff_id,
//! stream each rebuilt layer without a whole copy of it, and refuse
//! broken deltas with a typed error, publishing nothing.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    io::{self, Read, Write},
    path::{Path, PathBuf},
};

use cfsd_tests::{
    Daemon,
    delta::{
        DeltaSpec, Encoding, HEADER_V1, HEADER_V2, MAX_ADD_DATA, OP_ADD_DATA, OP_COPY, OP_DATA,
        OP_OPEN, OP_SEEK, OP_ZSTD_DICT, Ops, Part, encode_tar_diff, image_files, tar_diff_ops,
    },
    oci::{BuiltImage, Compression, Entry, Image, Layer, Layout, Written, noise, sha256_digest},
    ocictl::{PrivateRepo, Pulled, Target, json, published, pull, pull_fails, typed_pull_refusal},
};
use cfsd_varlink::oci::{OciError, TRANSPORT_ARCHIVE};
use serde_json::Value;

// ---------------------------------------------------------------------
// The fixture: a source image and a target image two layers apart.
// ---------------------------------------------------------------------

/// 2 MiB and a little: more than cfsd's 1 MiB pipe between the tar-diff
/// applier and the splitter.
const DATA_LEN: usize = 2 * 1024 * 1024 + 4321;

fn source_image() -> Image {
    Image::new(vec![
        base_layer(),
        Layer::new(Compression::Zstd, middle_entries()),
        Layer::new(
            Compression::None,
            vec![
                Entry::dir("opt"),
                Entry::dir("opt/app"),
                Entry::file("opt/app/data", noise(14, DATA_LEN)),
                Entry::file("opt/app/config", "mode=old\nthreads=4\n"),
                Entry::file("opt/app/keep.bin", noise(15, 40_000)),
                Entry::file("opt/app/gone", noise(18, 3000)),
            ],
        ),
    ])
    .label("image", "source")
}

fn base_layer() -> Layer {
    Layer::new(
        Compression::Gzip,
        vec![
            Entry::dir("usr"),
            Entry::dir("usr/bin"),
            Entry::dir("usr/lib"),
            Entry::dir("usr/share"),
            Entry::dir("etc"),
            Entry::file("usr/lib/big.bin", noise(11, 300_000)),
            Entry::file("usr/bin/tool", noise(12, 70_000)).mode(0o755),
            Entry::file("etc/conf", "key=old\n"),
            Entry::file("usr/share/tiny", "0123456789"),
        ],
    )
}

fn middle_entries() -> Vec<Entry> {
    vec![
        Entry::dir("usr/share/doc"),
        Entry::file("usr/share/doc/readme", noise(13, 5000)),
        Entry::symlink("usr/bin/link", "tool"),
        Entry::symlink("usr/linkdir", "lib"),
    ]
}

/// The source's data file with 300 bytes changed in the middle.
fn changed_data() -> Vec<u8> {
    let mut data = noise(14, DATA_LEN);
    for b in &mut data[1_000_000..1_000_300] {
        *b = b.wrapping_add(7);
    }
    data
}

/// Layer 0 is the source's, blob for blob; layer 1 the source's tar
/// compressed otherwise (same diff_id, another blob); layer 2 changes,
/// keeps, moves, adds and grows files; layer 3 is new.
fn target_image() -> Image {
    Image::new(vec![
        base_layer(),
        Layer::new(Compression::Gzip, middle_entries()),
        Layer::new(
            Compression::Zstd,
            vec![
                Entry::dir("opt"),
                Entry::dir("opt/app"),
                Entry::file("opt/app/data", changed_data()),
                Entry::file("opt/app/config", "mode=new\nthreads=16\nextra=1\n"),
                Entry::file("opt/app/keep.bin", noise(15, 40_000)),
                // The content of a file of another layer, at a new path.
                Entry::file("opt/app/moved.bin", noise(11, 300_000)),
                Entry::file("opt/app/new.bin", noise(16, 20_000)),
                // Modified at the same length in an upper layer.
                Entry::file("etc/conf", "key=new\n"),
            ],
        ),
        Layer::new(
            Compression::Gzip,
            vec![
                Entry::dir("srv"),
                Entry::file("srv/data", noise(17, 30_000)),
                Entry::whiteout("opt/app/gone"),
            ],
        ),
    ])
    .label("image", "target")
}

/// The target layers a delta carries.
const CHANGED: [usize; 2] = [2, 3];

struct Fixture {
    source: BuiltImage,
    source_written: Written,
    target: BuiltImage,
    target_written: Written,
    /// The source image's regular files, as the tar-diffs see them.
    files: BTreeMap<String, Vec<u8>>,
}

impl Fixture {
    /// Layers 2 and 3 of the target are new.
    fn new() -> Self {
        Self::with_target(target_image())
    }

    /// Only layer 2 of the target is new: a failing delta has no other
    /// layer to rebuild, so whether one finishes first cannot matter.
    fn one_change() -> Self {
        let mut target = target_image();
        target.layers.truncate(3);
        Self::with_target(target)
    }

    fn with_target(target_image: Image) -> Self {
        let source_image = source_image();
        let (source_layout, source) = Layout::single(&source_image, None);
        let (target_layout, target) = Layout::single(&target_image, None);
        // What the fixture promises.
        assert_eq!(source.layer_digests[0], target.layer_digests[0]);
        assert_eq!(source.diff_ids[1], target.diff_ids[1]);
        assert_ne!(source.layer_digests[1], target.layer_digests[1]);
        assert!(!source.diff_ids.contains(&target.diff_ids[2]));
        Fixture {
            files: image_files(&source_image),
            source_written: Written::new(&source_layout),
            source,
            target_written: Written::new(&target_layout),
            target,
        }
    }

    /// The tar-diff of target layer `index` encoded per `encoding`.
    fn tar_diff(&self, index: usize, encoding: Encoding) -> Vec<u8> {
        encode_tar_diff(&self.target.layer_tars[index], &self.files, encoding)
    }

    /// A delta carrying `parts`, with the target's own config.
    fn spec(&self, parts: Vec<(usize, Part)>) -> DeltaSpec<'_> {
        DeltaSpec {
            source: &self.source,
            target: &self.target,
            parts,
            embedded_config: None,
        }
    }

    /// Layer 2 as a tar-diff per `encoding`, layer 3 as `layer3`.
    fn parts(&self, encoding: Encoding, layer3: Part) -> Vec<(usize, Part)> {
        self.parts_with(Part::TarDiff(self.tar_diff(2, encoding)), layer3)
    }

    /// Layer 2 as `layer2`, layer 3 (if the target has it) as `layer3`.
    fn parts_with(&self, layer2: Part, layer3: Part) -> Vec<(usize, Part)> {
        let mut parts = vec![(2, layer2)];
        if self.target.layer_tars.len() > 3 {
            parts.push((3, layer3));
        }
        parts
    }

    /// A private repository holding the source image, tagged `source`.
    fn repo_with_source(&self) -> PrivateRepo {
        let repo = PrivateRepo::init("sha256");
        let pulled = pull(&repo, &[&self.source_written.archive(None), "source"]);
        assert_eq!(pulled.str("manifestDigest"), self.source.manifest_digest);
        repo
    }
}

/// Write `spec` as a delta layout in both forms.
fn written(spec: &DeltaSpec<'_>) -> Written {
    Written::new(&spec.layout().0)
}

/// The target pulled whole into a repository of its own.
struct Full {
    repo: PrivateRepo,
    pulled: Pulled,
}

impl Full {
    fn new(fixture: &Fixture) -> Self {
        let repo = PrivateRepo::init("sha256");
        let pulled = pull(&repo, &[&fixture.target_written.oci(None), "target"]);
        assert_eq!(pulled.str("manifestDigest"), fixture.target.manifest_digest);
        assert_eq!(pulled.u64("layersPresent"), 0);
        Full { repo, pulled }
    }
}

/// The result of pulling a delta into `repo` must be what a full pull of
/// the target gave `full`.
fn assert_same_as_full(fixture: &Fixture, repo: &PrivateRepo, pulled: &Pulled, full: &Full) {
    let context = &pulled.result;
    for key in ["manifestDigest", "configDigest", "imageId", "tag"] {
        assert_eq!(pulled.str(key), full.pulled.str(key), "{key}: {context}");
    }
    assert_eq!(pulled.str("manifestDigest"), fixture.target.manifest_digest);
    assert_eq!(pulled.str("configDigest"), fixture.target.config_digest);
    assert_eq!(pulled.u64("layers"), 4, "{context}");
    // Layer 0 (same blob) and layer 1 (same diff_id, other blob) are the
    // source's.
    assert_eq!(pulled.u64("layersPresent"), 2, "{context}");
    assert!(!pulled.bool("alreadyPresent"), "{context}");
    // Only the rebuilt layers' new files: less than the full pull wrote.
    assert!(
        pulled.u64("bytesNew") < full.pulled.u64("bytesNew"),
        "{context} vs {}",
        full.pulled.result
    );

    let fsck = json(repo, &["fsck"]);
    assert_eq!(fsck["ok"], true, "{fsck}");

    let inspect = json(repo, &["oci", "inspect", "target"]);
    let manifest: Value = serde_json::from_slice(&fixture.target.manifest).unwrap();
    let config: Value = serde_json::from_slice(&fixture.target.config).unwrap();
    assert_eq!(inspect["manifestDigest"], fixture.target.manifest_digest);
    assert_eq!(inspect["configDigest"], fixture.target.config_digest);
    assert_eq!(inspect["manifest"], manifest);
    assert_eq!(inspect["config"], config);
    assert_eq!(inspect["imageId"], full.pulled.str("imageId"));
    assert_eq!(inspect, json(&full.repo, &["oci", "inspect", "target"]));

    // The same tag target, EROFS image and streams as the full pull: layer
    // streams are the same split streams, object for object.
    let ours = published(&repo.repo_path()).stable();
    let theirs = published(&full.repo.repo_path()).stable();
    assert_eq!(ours.tags.get("target"), theirs.tags.get("target"));
    assert!(
        ours.images.is_superset(&theirs.images),
        "{:?} vs {:?}",
        ours.images,
        theirs.images
    );
    for (name, target) in &theirs.streams {
        assert_eq!(
            ours.streams.get(name),
            Some(target),
            "stream {name} differs from the full pull's"
        );
    }
    for diff_id in &fixture.target.diff_ids {
        assert!(ours.streams.contains_key(&format!("oci-layer-{diff_id}")));
    }
}

// ---------------------------------------------------------------------
// Applying deltas.
// ---------------------------------------------------------------------

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

/// A daemon whose repository holds the fixture's source image.
fn daemon_with_source(fixture: &Fixture) -> Daemon {
    let daemon = Daemon::start_initialised(&[]);
    pull(&daemon, &[&fixture.source_written.oci(None), "source"]);
    daemon
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
