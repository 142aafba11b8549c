use std::{
    fs::File,
    os::{fd::OwnedFd, unix::fs::PermissionsExt},
    path::Path,
    process::Command,
    sync::atomic::AtomicBool,
};

use super::*;
use crate::{HashAlgorithm, VerityPolicy};

const UPSTREAM: &str = "/opt/upstream-cfsctl/bin/cfsctl";

fn repository() -> (tempfile::TempDir, Repository) {
    let dir = tempfile::tempdir().unwrap();
    let (repo, _) =
        Repository::init(dir.path(), HashAlgorithm::SHA256, VerityPolicy::BestEffort).unwrap();
    (dir, repo)
}

fn open(path: &Path) -> OwnedFd {
    File::open(path).unwrap().into()
}

/// A small tree of every kind of entry, with `/usr` for the OCI
/// transformation.
fn tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("usr/lib/deep/er")).unwrap();
    std::fs::write(root.join("usr/small"), b"small").unwrap();
    std::fs::write(root.join("usr/lib/large"), vec![7u8; 70_000]).unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    std::fs::hard_link(root.join("usr/lib/large"), root.join("usr/hardlink")).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", root.join("usr/escape")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    std::fs::set_permissions(root.join("usr/small"), PermissionsExt::from_mode(0o4751)).unwrap();
    dir
}

fn upstream_id(tree: &Path) -> String {
    let out = Command::new(UPSTREAM)
        .args(["--no-repo", "--hash", "sha256", "compute-id"])
        .arg(tree)
        .output()
        .expect("upstream cfsctl is installed (scripts/setup-deps)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn a_trees_id_is_upstreams_and_creating_stores_what_it_names() {
    let (_dir, repo) = repository();
    let tree = tree();
    let never = AtomicBool::new(false);
    let options = TreeOptions::default();
    let computed = repo
        .compute_tree_id(open(tree.path()), &options, &never)
        .unwrap();
    assert_eq!(computed, upstream_id(tree.path()));
    let created = repo
        .create_image(open(tree.path()), Some("named/one"), &options, &never)
        .unwrap();
    assert_eq!(created, computed);
    let named = repo.named_images().unwrap();
    assert_eq!(
        named,
        [NamedImage {
            name: "named/one".into(),
            image_id: created.clone()
        }]
    );
    // The large file and its hardlink are one object.
    let objects = repo.image_objects("named/one").unwrap();
    assert_eq!(objects.len(), 1, "{objects:?}");
    assert_eq!(objects, repo.image_objects(&created).unwrap());
}

#[test]
fn limits_refuse_deep_and_wide_trees_and_nothing_is_named() {
    let (_dir, repo) = repository();
    let tree = tree();
    let never = AtomicBool::new(false);
    let narrow = |limits| TreeOptions {
        limits,
        ..TreeOptions::default()
    };
    let shallow = narrow(Limits {
        depth: 2,
        ..Limits::default()
    });
    let e = repo
        .create_image(open(tree.path()), Some("deep"), &shallow, &never)
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidTree { path, reason }
            if path == "./usr/lib/deep" && reason.contains("deeper than 2")),
        "{e:?}"
    );
    let few = narrow(Limits {
        entries: 5,
        ..Limits::default()
    });
    let e = repo
        .create_image(open(tree.path()), Some("wide"), &few, &never)
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidTree { reason, .. } if reason.contains("more than 5 entries")),
        "{e:?}"
    );
    assert!(repo.named_images().unwrap().is_empty());
}

#[test]
fn a_cancelled_walk_fails_and_names_nothing() {
    let (_dir, repo) = repository();
    let tree = tree();
    let cancelled = AtomicBool::new(true);
    let e = repo
        .create_image(
            open(tree.path()),
            Some("gone"),
            &TreeOptions::default(),
            &cancelled,
        )
        .unwrap_err();
    assert!(e.to_string().contains("cancelled"), "{e}");
    assert!(repo.named_images().unwrap().is_empty());
}

#[test]
fn a_file_the_reader_may_not_read_fails_the_walk() {
    if !rustix::process::geteuid().is_root() {
        return;
    }
    let (_dir, repo) = repository();
    let tree = tree();
    std::fs::set_permissions(tree.path(), PermissionsExt::from_mode(0o755)).unwrap();
    let small = tree.path().join("usr/small");
    std::fs::set_permissions(small, PermissionsExt::from_mode(0o4755)).unwrap();
    let secret = tree.path().join("usr/secret");
    std::fs::write(&secret, b"root's only").unwrap();
    std::fs::set_permissions(&secret, PermissionsExt::from_mode(0o600)).unwrap();
    let options = TreeOptions {
        reader: Some(Credentials {
            uid: 65534,
            gid: 65534,
            groups: vec![],
        }),
        ..TreeOptions::default()
    };
    let e = repo
        .create_image(
            open(tree.path()),
            Some("s"),
            &options,
            &AtomicBool::new(false),
        )
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidTree { path, reason }
            if path == "./usr/secret" && reason.contains("may not read")),
        "{e:?}"
    );
}

#[test]
fn names_must_stay_inside_the_refs_directory() {
    for bad in ["", "/abs", "a/../b", "..", "a//b", "trail/", "x\ny"] {
        assert!(
            matches!(check_name(bad), Err(Error::InvalidImageName { .. })),
            "{bad:?}"
        );
    }
    for good in ["a", "ref/with/parts", "v1.2"] {
        check_name(good).unwrap();
    }
}
