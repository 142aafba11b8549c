//! Creating deltas between images built here, then applying them: with
//! the repository's own pull into a repository that holds only the
//! source, which must give the image a full pull of the target gives, and
//! each tar-diff with oci-delta 0.1.1's `tar_patch_apply` too, which must
//! rebuild the target layer's exact bytes.

use std::{
    collections::HashMap,
    fs::File,
    io::{Read, Seek, Write},
};

use serde_json::Value;

use super::{layers::recompress, *};
use crate::{
    HashAlgorithm, VerityPolicy,
    delta::tardiff::tests::{Memory, both},
    oci::{PullOptions, PullReport, Source},
    repository::AnyStore,
    test_image::{TestImage, TestLayer},
};

/// One entry of a layer tar.
#[derive(Clone)]
enum Entry {
    Dir(&'static str),
    File(String, Vec<u8>),
    /// A hardlink at the first path to the second.
    Hardlink(&'static str, &'static str),
    Symlink(&'static str, &'static str),
}

fn file(path: &str, data: &[u8]) -> Entry {
    Entry::File(path.to_owned(), data.to_vec())
}

fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(1_700_000_000);
        header.set_uid(0);
        header.set_gid(0);
        match entry {
            Entry::Dir(path) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                tar.append_data(&mut header, path, &[][..]).unwrap();
            }
            Entry::File(path, data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                header.set_size(data.len() as u64);
                tar.append_data(&mut header, path, &data[..]).unwrap();
            }
            Entry::Hardlink(path, to) => {
                header.set_entry_type(tar::EntryType::Link);
                header.set_mode(0o644);
                header.set_size(0);
                tar.append_link(&mut header, path, to).unwrap();
            }
            Entry::Symlink(path, to) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                tar.append_link(&mut header, path, to).unwrap();
            }
        }
    }
    tar.into_inner().unwrap()
}

/// Poorly compressible content.
pub(super) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Compressible, text-like content.
fn text(len: usize, seed: u64) -> Vec<u8> {
    let words = ["alpha ", "beta ", "gamma\n", "delta ", "epsilon ", "zeta\n"];
    let mut out = Vec::with_capacity(len + 8);
    let mut x = seed | 1;
    while out.len() < len {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        out.extend_from_slice(words[(x >> 33) as usize % words.len()].as_bytes());
    }
    out.truncate(len);
    out
}

/// An image of gzip layers of `layers`.
fn image(layers: &[Vec<Entry>]) -> TestImage {
    TestImage::new(layers.iter().map(|e| TestLayer::gzip(tar_of(e))).collect())
}

fn new_repo() -> (tempfile::TempDir, Repository) {
    let dir = tempfile::tempdir().unwrap();
    let (repo, _) =
        Repository::init(dir.path(), HashAlgorithm::SHA256, VerityPolicy::BestEffort).unwrap();
    (dir, repo)
}

async fn pull(repo: &Repository, file: File, tag: &str) -> PullReport {
    let options = PullOptions {
        tag: Some(tag.into()),
        jobs: 2,
        ..PullOptions::default()
    };
    repo.pull(Source::Archive(file), options, |_| {})
        .await
        .unwrap()
}

/// The members of a tar, by name.
fn members(file: &mut File) -> HashMap<String, Vec<u8>> {
    file.seek(std::io::SeekFrom::Start(0)).unwrap();
    let mut archive = tar::Archive::new(file);
    let mut out = HashMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        out.insert(name, data);
    }
    out
}

/// Every regular file of the image `name` of `repo`, in memory.
fn source_files(repo: &Repository, name: &str) -> Memory {
    let AnyStore::Sha256(store) = repo.store() else {
        panic!("the test repositories are sha256");
    };
    let image = source_image(store, name).unwrap();
    let mut paths = Vec::new();
    image.for_each_file(|path, _| paths.push(path.to_owned()));
    let mut files = Memory::default();
    for path in paths {
        let file = crate::delta::tardiff::SourceFiles::open(&image, &path).unwrap();
        let mut data = vec![0u8; file.size() as usize];
        let mut at = 0;
        while at < data.len() {
            at += file.read_at(&mut data[at..], at as u64).unwrap();
        }
        files.0.insert(path, std::sync::Arc::new(data));
    }
    files
}

/// Apply every tar-diff of the delta `archive` with both appliers and check
/// the layer it rebuilds; return how many there were.
fn check_tar_diffs(archive: &mut File, files: &Memory, target: &TestImage) -> usize {
    let blobs = members(archive);
    let blob = |d: &str| &blobs[&format!("blobs/sha256/{}", d.strip_prefix("sha256:").unwrap())];
    let index: Value = serde_json::from_slice(&blobs["index.json"]).unwrap();
    let manifest: Value =
        serde_json::from_slice(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    let by_blob: HashMap<String, &Vec<u8>> = target
        .layers
        .iter()
        .map(|l| (Digest::of(&l.blob).to_string(), &l.tar))
        .collect();
    let mut applied = 0;
    for layer in manifest["layers"].as_array().unwrap() {
        if layer["mediaType"] != "application/vnd.tar-diff" {
            continue;
        }
        let to = layer["annotations"]["io.github.containers.delta.to"]
            .as_str()
            .unwrap();
        let rebuilt = both(blob(layer["digest"].as_str().unwrap()), files);
        assert_eq!(Digest::of(&rebuilt), Digest::of(by_blob[to]), "layer {to}");
        applied += 1;
    }
    applied
}

/// Create deltas from `source` to `target` with both methods, apply each,
/// and check the result against a full pull; the reports.
async fn round_trip(source: &TestImage, target: &TestImage) -> Vec<DeltaReport> {
    let (_dir, repo) = new_repo();
    pull(&repo, source.archive(None), "source").await;
    let full = pull(&repo, target.archive(None), "target").await;
    let files = source_files(&repo, "source");
    let mut reports = Vec::new();
    for method in [DeltaMethod::Zstd, DeltaMethod::Bsdiff] {
        let mut out = tempfile::tempfile().unwrap();
        let options = CreateOptions {
            jobs: 2,
            method,
            reference: None,
            max_scratch: CreateOptions::DEFAULT_MAX_SCRATCH,
        };
        let report = repo
            .create_delta("source", "target", out.try_clone().unwrap(), options)
            .unwrap();
        assert_eq!(report.delta_bytes, out.metadata().unwrap().len());
        assert_eq!(report.target, full.manifest_digest);
        let tar_diffs = report.changed.iter().filter(|l| l.method == "tar-diff");
        assert_eq!(check_tar_diffs(&mut out, &files, target), tar_diffs.count());
        let (_other_dir, other) = new_repo();
        pull(&other, source.archive(None), "source").await;
        out.seek(std::io::SeekFrom::Start(0)).unwrap();
        let applied = pull(&other, out, "target").await;
        assert_eq!(applied.image_id, full.image_id, "{method}");
        assert_eq!(applied.manifest_digest, full.manifest_digest);
        assert_eq!(other.compute_id("target").unwrap(), full.image_id);
        reports.push(report);
    }
    reports
}

/// A source and a target that differ in every way a layer can: edits,
/// renames, deletions, hardlinks, whiteouts, empty and multi-MiB files.
fn fixture() -> (TestImage, TestImage) {
    let big = noise(3 << 20, 1);
    let mut big2 = big.clone();
    big2[1_000_000..1_000_100].fill(7);
    big2.extend(noise(1000, 2));
    let doc = text(40_000, 3);
    let mut doc2 = doc.clone();
    doc2.splice(20_000..20_000, b"an inserted paragraph\n".iter().copied());
    let tool = noise(200_000, 4);
    let base = vec![
        Entry::Dir("usr/"),
        Entry::Dir("usr/bin/"),
        file("usr/bin/tool", &tool),
        Entry::Dir("etc/"),
        file("etc/conf", b"key=value\n"),
        file("etc/motd", &text(5000, 5)),
    ];
    let source = image(&[
        base.clone(),
        vec![
            Entry::Dir("usr/lib/"),
            file("usr/lib/big", &big),
            file("usr/lib/data", &noise(50_000, 6)),
            Entry::Hardlink("usr/lib/data.link", "usr/lib/data"),
            file("usr/lib/old", &noise(10_000, 7)),
            Entry::Dir("usr/share/"),
            file("usr/share/doc", &doc),
            file("usr/share/notes", &noise(9000, 20)),
            file("usr/empty", b""),
            Entry::Symlink("usr/bin/t", "tool"),
        ],
    ]);
    let target = image(&[
        base,
        vec![
            Entry::Dir("usr/lib/"),
            file("usr/lib/big", &big2),
            file("usr/lib/data.renamed", &noise(50_000, 6)),
            Entry::Hardlink("usr/lib/data.link", "usr/lib/data.renamed"),
            file("usr/lib/.wh.old", b""),
            file("etc/.wh.conf", b""),
            Entry::Dir("usr/share/"),
            Entry::Dir("usr/share/moved/"),
            file("usr/share/moved/doc", &doc2),
            file("usr/empty", b""),
            file("usr/new", &noise(20_000, 8)),
            Entry::Dir("opt/"),
            file("opt/.wh..wh..opq", b""),
        ],
        vec![
            file("usr/bin/tool-copy", &tool),
            file("usr/bin/motd", &text(5000, 5)),
            // Shares only its name with a source file: sent whole.
            file("opt/notes", &noise(9000, 21)),
        ],
    ]);
    (source, target)
}

#[tokio::test(flavor = "multi_thread")]
async fn deltas_rebuild_the_target_exactly() {
    let (source, target) = fixture();
    let reports = round_trip(&source, &target).await;
    for report in &reports {
        assert_eq!(report.layers, 3);
        assert_eq!(report.changed.len(), 2, "the base layer is unchanged");
        let edited = &report.changed[0];
        assert_eq!(edited.method, "tar-diff", "{edited:?}");
        assert_eq!(edited.files_copied, 1, "data.renamed is the old data");
        assert_eq!(edited.files_diffed, 2, "big and moved/doc: {edited:?}");
        assert!(
            report.delta_bytes < 100_000,
            "a 3 MiB file changed in 1100 bytes: {report:?}"
        );
        let copies = &report.changed[1];
        assert_eq!(copies.files_copied, 2, "{copies:?}");
        assert_eq!((copies.files_diffed, copies.files_added), (0, 1));
    }
}

/// Files past [`super::large::LARGE`] are matched block by block rather
/// than whole: an edited file, one that only moved, one diffed against a
/// smaller file of the same name, and one with nothing to match.
#[tokio::test(flavor = "multi_thread")]
async fn large_files_are_matched_in_blocks_and_rebuilt_exactly() {
    let large = super::large::LARGE as usize;
    let edited = noise(large + 700_000, 30);
    let mut edited2 = edited.clone();
    edited2[10..20].fill(1);
    edited2.splice(large / 2..large / 2, noise(3000, 31));
    edited2.truncate(edited2.len() - 50_000);
    let moved = noise(large + 1, 32);
    let grown = text(large / 2, 33);
    let mut grown2 = grown.clone();
    grown2.extend(text(large, 34));
    let dir = || vec![Entry::Dir("srv/"), Entry::Dir("srv/b/")];
    let source = image(&[[
        dir(),
        vec![
            file("srv/edited", &edited),
            file("srv/moved", &moved),
            file("srv/grown.log", &grown),
        ],
    ]
    .concat()]);
    let target = image(&[[
        dir(),
        vec![
            file("srv/b/grown.log", &grown2),
            file("srv/b/moved", &moved),
            file("srv/edited", &edited2),
            file("srv/fresh", &noise(large, 35)),
        ],
    ]
    .concat()]);
    for report in round_trip(&source, &target).await {
        let layer = &report.changed[0];
        assert_eq!(layer.method, "tar-diff", "{layer:?}");
        assert_eq!(
            (layer.files_copied, layer.files_diffed, layer.files_added),
            (1, 2, 1),
            "{layer:?}"
        );
        let fresh = large as u64;
        assert!(
            report.delta_bytes < fresh + 200_000,
            "only srv/fresh, the new half of grown.log and 3000 edited bytes are data: {report:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delta_between_equal_images_carries_no_layers() {
    let (source, _) = fixture();
    let (_dir, repo) = new_repo();
    pull(&repo, source.archive(None), "a").await;
    pull(&repo, source.archive(None), "b").await;
    let mut out = tempfile::tempfile().unwrap();
    let report = repo
        .create_delta("a", "b", out.try_clone().unwrap(), CreateOptions::default())
        .unwrap();
    assert!(report.changed.is_empty());
    let blobs = members(&mut out);
    let index: Value = serde_json::from_slice(&blobs["index.json"]).unwrap();
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "b"
    );
    let digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: Value =
        serde_json::from_slice(&blobs[&format!("blobs/sha256/{}", &digest[7..])]).unwrap();
    let reused: Vec<String> = serde_json::from_str(
        manifest["annotations"]["io.github.containers.delta.reused"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(reused.len(), 2, "every layer is reused");
    let err = repo
        .create_delta(
            "a",
            "nope",
            tempfile::tempfile().unwrap(),
            CreateOptions::default(),
        )
        .unwrap_err();
    assert!(matches!(err, Error::ImageNotFound { .. }), "{err}");
}

#[test]
fn methods_and_references_read_as_documented() {
    assert_eq!("zstd".parse(), Ok(DeltaMethod::Zstd));
    assert_eq!("bsdiff".parse(), Ok(DeltaMethod::Bsdiff));
    assert!("xdelta".parse::<DeltaMethod>().is_err());
    assert_eq!(default_reference("demo:v1"), "demo:v1");
    assert_eq!(default_reference("oci-archive:/tmp/x.tar"), "latest");
    assert_eq!(default_reference("sha256:abcd"), "latest");
}

/// A small random generator, so that failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random files, then a random edit of them: changed bytes, insertions,
/// truncations, renames, deletions (as whiteouts) and new files.
fn random_pair(seed: u64) -> (TestImage, TestImage) {
    let mut rng = Rng(seed);
    let mut files: Vec<(String, Vec<u8>)> = (0..rng.below(12) + 3)
        .map(|i| {
            let len = [0, 10, 300, 5000, 70_000][rng.below(5) as usize] + rng.below(100) as usize;
            let data = if rng.below(2) == 0 {
                noise(len, seed ^ i)
            } else {
                text(len, seed ^ i)
            };
            (format!("usr/d{}/f{i}", i % 3), data)
        })
        .collect();
    let layer = |files: &[(String, Vec<u8>)], extra: Vec<Entry>| {
        let mut entries = vec![
            Entry::Dir("usr/"),
            Entry::Dir("usr/d0/"),
            Entry::Dir("usr/d1/"),
            Entry::Dir("usr/d2/"),
        ];
        entries.extend(files.iter().map(|(p, d)| file(p, d)));
        entries.extend(extra);
        entries
    };
    let source = image(&[layer(&files, vec![])]);
    let mut whiteouts = Vec::new();
    for (i, (path, data)) in files.iter_mut().enumerate() {
        match rng.below(6) {
            0 if !data.is_empty() => {
                let at = rng.below(data.len() as u64) as usize;
                data[at] ^= 0x55;
            }
            1 => data.extend(noise(rng.below(500) as usize, seed + i as u64)),
            2 => data.truncate(data.len() / 2),
            3 => *path = format!("usr/d{}/f{i}", (i + 1) % 3),
            4 => {
                whiteouts.push(file(&path.replace("/f", "/.wh.f"), b""));
                *path = String::new();
            }
            _ => {}
        }
    }
    files.retain(|(p, _)| !p.is_empty());
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files.dedup_by(|a, b| a.0 == b.0);
    files.push((format!("usr/d0/new{seed}"), noise(3000, seed)));
    let target = image(&[layer(&files, whiteouts)]);
    (source, target)
}

#[tokio::test(flavor = "multi_thread")]
async fn random_layer_pairs_round_trip() {
    for seed in 1..=6 {
        let (source, target) = random_pair(seed);
        let reports = round_trip(&source, &target).await;
        assert_eq!(reports.len(), 2, "seed {seed}");
    }
}

/// Files are diffed on several threads, but the op stream must not
/// depend on which finished first: one byte-for-byte delta for any jobs.
#[tokio::test(flavor = "multi_thread")]
async fn the_delta_is_the_same_bytes_whatever_the_jobs() {
    let (_dir, repo) = new_repo();
    for seed in [3, 4] {
        let (source, target) = random_pair(seed);
        pull(&repo, source.archive(None), &format!("s{seed}")).await;
        pull(&repo, target.archive(None), &format!("t{seed}")).await;
        for method in [DeltaMethod::Zstd, DeltaMethod::Bsdiff] {
            let deltas: Vec<Vec<u8>> = [1, 2, 7]
                .into_iter()
                .map(|jobs| {
                    let mut out = tempfile::tempfile().unwrap();
                    let options = CreateOptions {
                        jobs,
                        method,
                        ..CreateOptions::default()
                    };
                    let (source, target) = (format!("s{seed}"), format!("t{seed}"));
                    let report = repo
                        .create_delta(&source, &target, out.try_clone().unwrap(), options)
                        .unwrap();
                    assert!(
                        report.changed.iter().any(|l| l.files_diffed > 0),
                        "{report:?}"
                    );
                    let mut bytes = Vec::new();
                    out.seek(std::io::SeekFrom::Start(0)).unwrap();
                    out.read_to_end(&mut bytes).unwrap();
                    bytes
                })
                .collect();
            assert!(
                deltas.iter().all(|d| d == &deltas[0]),
                "seed {seed}, {method}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_reads_the_delta_archive() {
    // Fails rather than skips: scripts/setup-deps installs skopeo.
    let probe = std::process::Command::new("skopeo")
        .arg("--version")
        .output()
        .expect("skopeo is not installed: apt-get install skopeo (scripts/setup-deps does)");
    assert!(probe.status.success());
    let (source, target) = fixture();
    let (dir, repo) = new_repo();
    pull(&repo, source.archive(None), "source").await;
    let full = pull(&repo, target.archive(None), "target").await;
    let path = dir.path().join("delta.tar");
    let out = File::create(&path).unwrap();
    repo.create_delta("source", "target", out, CreateOptions::default())
        .unwrap();
    let inspect = |raw: bool| {
        let mut command = std::process::Command::new("skopeo");
        command.arg("inspect");
        if raw {
            command.arg("--raw");
        }
        let output = command
            .arg(format!("oci-archive:{}", path.display()))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "skopeo inspect: {stderr}");
        serde_json::from_slice::<Value>(&output.stdout).unwrap()
    };
    let described = inspect(false);
    assert_eq!(described["Os"], "linux");
    let manifest = inspect(true);
    assert_eq!(manifest["artifactType"], crate::delta::ARTIFACT_TYPE);
    assert_eq!(
        manifest["annotations"]["io.github.containers.delta.target"],
        full.manifest_digest
    );
}

#[test]
fn a_whole_layer_is_recompressed_only_when_smaller() {
    let tar = tar_of(&[file("usr/zeros", &vec![0u8; 1 << 20])]);
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&tar).unwrap();
    assert!(
        recompress(
            &file,
            100,
            tempfile::tempfile().unwrap(),
            &AtomicBool::new(false)
        )
        .unwrap()
        .is_none()
    );
    let mut whole = recompress(
        &file,
        tar.len() as u64,
        tempfile::tempfile().unwrap(),
        &AtomicBool::new(false),
    )
    .unwrap()
    .unwrap();
    whole.seek(std::io::SeekFrom::Start(0)).unwrap();
    assert_eq!(zstd::decode_all(whole).unwrap(), tar);
}
