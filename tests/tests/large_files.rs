//! A file larger than the splitter holds in memory (64 MiB) takes the
//! large-file path: streamed to a temporary file in the repository, then
//! named by its digest. What it gives must be what the in-memory path and
//! composefs-rs give: the same object bytes, the same layer tar back, the
//! same image id, and an object stored once however often it occurs.

use std::{path::Path, sync::Arc};

use cfsd_tests::{
    Daemon,
    oci::{Compression, Entry, Image, Layer, Layout, Written, noise, sha256_digest},
    ocictl::{json, pull},
};
use composefs::{
    fsverity::{FsVerityHashValue, Sha256HashValue, compute_verity},
    repository::{Repository, RepositoryConfig},
};
use rustix::fs::CWD;

/// Just over the 64 MiB held in memory, and not a multiple of a block.
const LARGE: usize = (64 << 20) + 4097;

/// A large file twice (once under another name, in another layer), and
/// small files around it.
fn image() -> (Image, Vec<u8>) {
    let big = noise(64, LARGE);
    let image = Image::new(vec![
        Layer::new(
            Compression::Zstd,
            vec![
                Entry::dir("usr"),
                Entry::dir("usr/data"),
                Entry::file("usr/data/before", "small, before\n"),
                Entry::file("usr/data/big.bin", big.clone()),
                Entry::file("usr/data/after", "small, after\n"),
            ],
        ),
        Layer::new(
            Compression::None,
            vec![
                Entry::dir("usr/copy"),
                Entry::file("usr/copy/big.bin", big.clone()),
            ],
        ),
    ]);
    (image, big)
}

fn upstream_image_id(dir: &Path, source: &str) -> String {
    let config =
        RepositoryConfig::new(composefs::fsverity::Algorithm::for_hash::<Sha256HashValue>())
            .set_insecure();
    let (repo, _) = Repository::<Sha256HashValue>::init_path(CWD, dir, config).unwrap();
    let repo = Arc::new(repo);
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(composefs_oci::pull(
            &repo,
            source,
            Some("big"),
            Default::default(),
        ))
        .expect("upstream pull");
    let image = composefs_oci::OciImage::open_ref(&repo, "big").unwrap();
    image.image_ref(repo.erofs_version()).unwrap().to_hex()
}

#[test]
fn a_file_over_64_mib_is_stored_once_and_gives_upstreams_image() {
    let (image, big) = image();
    let (layout, built) = Layout::single(&image, None);
    let written = Written::new(&layout);
    let daemon = Daemon::start(&[]);
    json(&daemon, &["init", "--algorithm", "sha256"]);
    let pulled = pull(&daemon, &[&written.archive(None), "big"]);
    assert_eq!(pulled.str("manifestDigest"), built.manifest_digest);

    // The object is the file's bytes, named by their fs-verity digest,
    // and stored once for both copies.
    let id: Sha256HashValue = compute_verity(&big);
    let hex = id.to_hex();
    let object = daemon
        .repo()
        .join("objects")
        .join(&hex[..2])
        .join(&hex[2..]);
    let stored = std::fs::read(&object).expect("the large file's object");
    assert!(stored == big, "the object's bytes differ from the file's");
    let large_objects = walk_sizes(&daemon.repo().join("objects"))
        .into_iter()
        .filter(|&size| size == LARGE as u64)
        .count();
    assert_eq!(large_objects, 1, "the large file was stored more than once");

    // Each layer's split stream gives back its tar byte for byte.
    let repo = Repository::<Sha256HashValue>::open_path(CWD, daemon.repo()).unwrap();
    for (diff_id, tar) in built.diff_ids.iter().zip(&built.layer_tars) {
        let mut back = Vec::new();
        composefs_oci::layer_tar(&repo, &diff_id.parse().unwrap(), &mut back).unwrap();
        assert_eq!(sha256_digest(&back), sha256_digest(tar), "{diff_id}");
    }
    let scratch = tempfile::tempdir().unwrap();
    let upstream = upstream_image_id(&scratch.path().join("upstream"), &written.archive(None));
    assert_eq!(pulled.str("imageId"), upstream);
    let fsck = json(&daemon, &["fsck"]);
    assert_eq!(fsck["ok"], true, "{fsck}");
}

/// The sizes of every file below `dir`.
fn walk_sizes(dir: &Path) -> Vec<u64> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        if meta.is_dir() {
            out.extend(walk_sizes(&entry.path()));
        } else {
            out.push(meta.len());
        }
    }
    out
}
