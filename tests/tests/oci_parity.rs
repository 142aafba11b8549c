//! What cfsd's `oci pull` writes is what composefs-rs itself writes.
//!
//! The same archive is pulled twice: by cfsd (through cfsctl), and by
//! upstream `composefs_oci::pull` into a second repository created with
//! composefs-rs's own API. The image id, tag, EROFS images and stream names
//! and contents must agree; and upstream code reading cfsd's repository
//! must recompute the same image id from the stored layers, get every
//! layer's tar back byte for byte, and find nothing wrong in its OCI fsck.

use std::{path::Path, sync::Arc};

use cfsd_tests::{
    oci::{BuiltImage, Layout, Written, everything_image, sha256_digest},
    ocictl::{PrivateRepo, Target, json, published, pull},
};
use composefs::{
    fsverity::{Algorithm, FsVerityHashValue, Sha256HashValue, Sha512HashValue},
    repository::{Repository, RepositoryConfig},
};
use composefs_oci::{OciDigest, OciImage, OciTransformOptions};
use rustix::fs::CWD;

const TAG: &str = "everything:latest";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Pull `source` with composefs-rs into a new insecure repository at `dir`.
fn upstream_pull<ID: FsVerityHashValue>(dir: &Path, source: &str) {
    let config = RepositoryConfig::new(Algorithm::for_hash::<ID>()).set_insecure();
    let (repo, created) = Repository::<ID>::init_path(CWD, dir, config).unwrap();
    assert!(created);
    let repo = Arc::new(repo);
    runtime()
        .block_on(composefs_oci::pull(
            &repo,
            source,
            Some(TAG),
            Default::default(),
        ))
        .expect("upstream pull");
}

/// Read cfsd's repository with composefs-rs and check it against the
/// fixture and `image_id`.
fn check_with_upstream<ID: FsVerityHashValue>(dir: &Path, built: &BuiltImage, image_id: &str) {
    let repo = Repository::<ID>::open_path(CWD, dir).unwrap();
    let version = repo.erofs_version();

    let image = OciImage::open_ref(&repo, TAG).expect("upstream opens cfsd's tag");
    assert_eq!(image.manifest_digest().to_string(), built.manifest_digest);
    assert_eq!(image.config_digest().to_string(), built.config_digest);
    assert_eq!(
        image.image_ref(version).map(|id| id.to_hex()).as_deref(),
        Some(image_id),
        "the config's EROFS reference"
    );
    // Both repositories use the default EROFS format, V1: the reference
    // is `composefs.image.v1`.
    assert_eq!(
        image.image_ref_v1().map(|id| id.to_hex()).as_deref(),
        Some(image_id)
    );

    // Recompute the image from the stored layers without trusting any
    // reference: the config and every layer are re-hashed on the way.
    let config_digest: OciDigest = built.config_digest.parse().unwrap();
    let fs = composefs_oci::image::create_filesystem(
        &repo,
        &config_digest,
        None,
        &OciTransformOptions::default(),
    )
    .expect("upstream rebuilds the filesystem from cfsd's layers");
    assert_eq!(fs.compute_image_id(version).to_hex(), image_id);

    // Every layer stream gives back its tar byte for byte.
    for (diff_id, tar) in built.diff_ids.iter().zip(&built.layer_tars) {
        let mut out = Vec::new();
        composefs_oci::layer_tar(&repo, &diff_id.parse().unwrap(), &mut out).unwrap();
        assert_eq!(out.len(), tar.len(), "{diff_id}");
        assert_eq!(sha256_digest(&out), *diff_id);
        assert!(out == *tar, "layer {diff_id} differs from its tar");
    }

    let listed = composefs_oci::list_images(&repo).unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].name, TAG);
    assert_eq!(listed[0].manifest_digest.to_string(), built.manifest_digest);

    let fsck = runtime().block_on(composefs_oci::oci_fsck(&repo)).unwrap();
    assert!(
        fsck.is_ok(),
        "upstream OCI fsck of cfsd's repository: {fsck:?}"
    );
    assert_eq!(fsck.images_checked(), 1);
}

fn parity<ID: FsVerityHashValue>(algorithm: &str) {
    let (layout, built) = Layout::single(&everything_image(), None);
    let written = Written::new(&layout);
    let source = written.archive(None);

    let cfsd = PrivateRepo::init(algorithm);
    let pulled = pull(&cfsd, &[&source, TAG]);
    let image_id = pulled.str("imageId").to_owned();
    assert_eq!(pulled.str("manifestDigest"), built.manifest_digest);

    let upstream_dir = tempfile::tempdir().unwrap();
    let upstream = upstream_dir.path().join("repo");
    upstream_pull::<ID>(&upstream, &source);

    // The same tag, pointing at the same manifest; the same EROFS images;
    // the same layer, config and manifest streams, the layers and config
    // stored as the very same objects.
    let ours = published(&cfsd.repo_path());
    let theirs = published(&upstream);
    assert_eq!(ours.tags, theirs.tags);
    assert_eq!(ours.images, theirs.images);
    assert!(ours.images.contains(&image_id), "{:?}", ours.images);
    assert_eq!(ours.clone().stable(), theirs.clone().stable());
    assert_eq!(ours.streams_starting("oci-layer-").len(), 3);

    check_with_upstream::<ID>(&cfsd.repo_path(), &built, &image_id);
    // The check itself holds for upstream's own repository.
    check_with_upstream::<ID>(&upstream, &built, &image_id);

    // cfsd's compute-id and fsck agree.
    let out = cfsd.run(&["oci", "compute-id", TAG]);
    assert!(out.status.success(), "{}", cfsd_tests::stderr(&out));
    assert_eq!(cfsd_tests::stdout(&out).trim(), image_id);
    let fsck = json(&cfsd, &["fsck"]);
    assert_eq!(fsck["ok"], true, "{fsck}");
}

#[test]
fn oci_image_matches_composefs_rs_sha512() {
    parity::<Sha512HashValue>("sha512");
}

#[test]
fn oci_image_matches_composefs_rs_sha256() {
    parity::<Sha256HashValue>("sha256");
}
