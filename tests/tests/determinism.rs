//! The same pulls into two fresh repositories leave byte-identical trees:
//! every path, type, mode, link target and byte, objects and streams
//! alike, so a repository can be rebuilt, compared or mirrored by its
//! bytes. Upstream `cfsctl` 0.9.4 still reads what cfsd wrote.

use std::{
    collections::BTreeMap,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use cfsd_tests::{
    delta::tar_diff_delta,
    oci::{Compression, Entry, Image, Layer, Layout, Written, noise},
    ocictl::{PrivateRepo, Target, json, pull},
    upstream::theirs,
};

/// The images: v1 and v2 share their base layers; v3 is v1 with its top
/// layer changed, pulled as a delta against v1. Several layers each, so
/// that an order left to chance shows.
struct Sources {
    v1: Written,
    v2: Written,
    v3_delta: Written,
}

fn base() -> Layer {
    Layer::new(
        Compression::Gzip,
        vec![
            Entry::dir("usr"),
            Entry::dir("usr/bin"),
            Entry::file("usr/bin/tool", noise(1, 70_000)).mode(0o755),
            Entry::file("usr/small", "small"),
            Entry::symlink("usr/link", "bin/tool"),
        ],
    )
}

/// A small layer of its own directory.
fn small(name: &str, seed: u64) -> Layer {
    Layer::new(
        Compression::Gzip,
        vec![
            Entry::dir(name),
            Entry::file(&format!("{name}/file"), noise(seed, 5000)),
        ],
    )
}

fn top(seed: u64) -> Layer {
    Layer::new(
        Compression::Zstd,
        vec![
            Entry::dir("opt"),
            Entry::file("opt/data", noise(seed, 200_000)),
            Entry::file("opt/config", format!("seed={seed}\n")),
        ],
    )
}

impl Sources {
    fn new() -> Self {
        let lower = || vec![base(), small("a", 10), small("b", 11), small("c", 12)];
        let with = |top: Layer| lower().into_iter().chain([top]).collect::<Vec<_>>();
        let v1 = Image::new(with(top(2))).label("image", "v1");
        let v2 = Image::new(with(Layer::new(
            Compression::None,
            vec![Entry::file("srv", noise(3, 9000))],
        )))
        .label("image", "v2");
        let v3 = Image::new(with(top(4))).label("image", "v3");
        let (v1_layout, v1_built) = Layout::single(&v1, None);
        let (v2_layout, _) = Layout::single(&v2, None);
        let (_, v3_built) = Layout::single(&v3, None);
        let delta = tar_diff_delta(&v1, &v1_built, &v3_built, 4);
        Sources {
            v1: Written::new(&v1_layout),
            v2: Written::new(&v2_layout),
            v3_delta: Written::new(&delta),
        }
    }

    /// Pull v1 and v2 in full and v3 by its delta into a fresh repository.
    fn pull_all(&self) -> PrivateRepo {
        let repo = PrivateRepo::init("sha256");
        pull(&repo, &[&self.v1.archive(None), "v1"]);
        pull(&repo, &[&self.v2.oci(None), "v2"]);
        let v3 = pull(&repo, &[&self.v3_delta.archive(None), "v3"]);
        assert_eq!(v3.u64("layersPresent"), 4, "v3's lower layers came from v1");
        repo
    }
}

/// What one path of a tree is.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir { mode: u32 },
    File { mode: u32, bytes: Vec<u8> },
    Symlink { target: PathBuf },
}

/// Every path under `root`, with what it is. The lock file is left out:
/// it holds the pid of the daemon that opened the repository last.
fn tree(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut nodes = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let relative = path.strip_prefix(root).unwrap().to_path_buf();
            if relative == Path::new(".cfsd-lock") {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            let node = if meta.file_type().is_symlink() {
                Node::Symlink {
                    target: std::fs::read_link(&path).unwrap(),
                }
            } else if meta.is_dir() {
                pending.push(path.clone());
                Node::Dir { mode }
            } else {
                assert!(meta.is_file(), "{} is not a file", path.display());
                assert_eq!(meta.nlink(), 1, "{} has another name", path.display());
                Node::File {
                    mode,
                    bytes: std::fs::read(&path).unwrap(),
                }
            };
            nodes.insert(relative, node);
        }
    }
    nodes
}

/// The paths on which two trees differ, and how.
fn differences(a: &BTreeMap<PathBuf, Node>, b: &BTreeMap<PathBuf, Node>) -> Vec<String> {
    let mut found = Vec::new();
    for (path, node) in a {
        match b.get(path) {
            None => found.push(format!("only in the first: {}", path.display())),
            Some(other) if other != node => found.push(format!("differs: {}", path.display())),
            Some(_) => {}
        }
    }
    for path in b.keys().filter(|p| !a.contains_key(*p)) {
        found.push(format!("only in the second: {}", path.display()));
    }
    found
}

#[test]
fn the_same_pulls_give_byte_identical_repositories() {
    let sources = Sources::new();
    let first = sources.pull_all();
    let second = sources.pull_all();
    let (a, b) = (tree(&first.repo_path()), tree(&second.repo_path()));
    assert!(
        a.keys().any(|p| p.starts_with("streams/refs/oci")),
        "the walk saw no tags: {:?}",
        a.keys().collect::<Vec<_>>()
    );
    let diff = differences(&a, &b);
    assert!(
        diff.is_empty(),
        "the repositories differ:\n{}",
        diff.join("\n")
    );
    for tag in ["v1", "v2", "v3"] {
        let ours = json(&first, &["oci", "compute-id", tag]);
        let upstream = theirs(&first.repo_path(), &["oci", "compute-id", tag]);
        assert_eq!(ours["imageId"].as_str(), Some(upstream.trim()), "{tag}");
    }
    theirs(&first.repo_path(), &["fsck"]);
    theirs(&first.repo_path(), &["oci", "fsck"]);
}
