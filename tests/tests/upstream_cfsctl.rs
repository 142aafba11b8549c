//! The repository format is composefs-rs's own: upstream `cfsctl` 0.9.4
//! (the `composefs-ctl` crate's binary) lists, inspects, checks and mounts
//! what cfsd pulled, and cfsd lists and mounts what upstream pulled, with
//! the same composefs image id both ways.
//!
//! The binary is found as `cfsd_tests::upstream` says.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use cfsd_tests::{
    cfsctl,
    oci::{Kind, Layout, Written, everything_image},
    ocictl::{PrivateRepo, Target, json, pull},
    stderr,
    upstream::{theirs, upstream},
};
use serde_json::Value;

/// Mount with `mount`, compare one file with the layout's, unmount.
fn assert_mount_shows(mount: impl FnOnce(&Path), built_file: &[u8], path: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    mount(&mnt);
    let read = std::fs::read(mnt.join(path));
    let unmounted = Command::new("umount").arg(&mnt).status().unwrap();
    assert!(unmounted.success(), "umount {}", mnt.display());
    assert_eq!(read.expect("reading through the mount"), built_file);
}

/// A file the fixture image holds, and its bytes.
fn probe_file() -> (&'static str, Vec<u8>) {
    let image = everything_image();
    // The top layer's files are what the image shows.
    let top = image.layers.last().expect("layers");
    for entry in &top.entries {
        if let Kind::File(data) = &entry.kind
            && data.len() > 64
        {
            return (entry.path.clone().leak(), data.clone());
        }
    }
    panic!("the fixture image's top layer has no large file");
}

/// A repository directory made by someone else, used through
/// `cfsctl --repo`.
struct At(PathBuf);

impl Target for At {
    fn run(&self, args: &[&str]) -> Output {
        let mut all = vec!["--repo", self.0.to_str().unwrap()];
        all.extend_from_slice(args);
        cfsctl(&all)
    }

    fn repo_path(&self) -> PathBuf {
        self.0.clone()
    }
}

#[test]
fn upstream_reads_and_mounts_what_cfsd_pulled() {
    let (layout, built) = Layout::single(&everything_image(), Some("v1"));
    let written = Written::new(&layout);
    let repo = PrivateRepo::init("sha512");
    let pulled = pull(&repo, &[&written.archive(Some("v1")), "everything"]);
    let ours = pulled.str("imageId").to_owned();
    let path = repo.repo_path();

    let listed: Value = serde_json::from_str(&theirs(&path, &["oci", "images", "--json"])).unwrap();
    let names: Vec<&str> = listed["images"]
        .as_array()
        .expect("{\"images\": [...]}")
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert_eq!(names, ["everything"], "{listed}");
    assert_eq!(listed["images"][0]["is_container"], true, "{listed}");
    assert_eq!(
        listed["images"][0]["manifest_digest"],
        built.manifest_digest
    );
    let inspected = theirs(&path, &["oci", "inspect", "everything", "--manifest"]);
    assert_eq!(inspected.trim_end().as_bytes(), built.manifest.as_slice());
    assert_eq!(
        theirs(&path, &["oci", "compute-id", "everything"]).trim(),
        ours
    );
    theirs(&path, &["fsck"]);
    theirs(&path, &["oci", "fsck"]);

    let (file, data) = probe_file();
    assert_mount_shows(
        |mnt| {
            theirs(
                &path,
                &["oci", "mount", "everything", mnt.to_str().unwrap()],
            );
        },
        &data,
        file,
    );
}

#[test]
fn cfsd_reads_and_mounts_what_upstream_pulled() {
    let (layout, built) = Layout::single(&everything_image(), Some("v1"));
    let written = Written::new(&layout);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("repo");
    let upstream_repo = path.to_str().unwrap();
    let out = Command::new(upstream())
        .args(["init", "--insecure", upstream_repo])
        .output()
        .unwrap();
    assert!(out.status.success(), "upstream init: {}", stderr(&out));
    theirs(
        &path,
        &["oci", "pull", &written.archive(Some("v1")), "theirs"],
    );
    let their_id = theirs(&path, &["oci", "compute-id", "theirs"])
        .trim()
        .to_owned();

    let repo = At(path.clone());
    let images = json(&repo, &["oci", "images"]);
    assert_eq!(images["images"][0]["name"], "theirs", "{images}");
    assert_eq!(images["images"][0]["manifestDigest"], built.manifest_digest);
    assert_eq!(images["images"][0]["imageId"], their_id);
    let computed = json(&repo, &["oci", "compute-id", "theirs"]);
    assert_eq!(computed["imageId"], their_id);
    let fsck = json(&repo, &["fsck"]);
    assert_eq!(fsck["ok"], true, "{fsck}");

    let (file, data) = probe_file();
    assert_mount_shows(
        |mnt| {
            let out = repo.run(&["oci", "mount", "theirs", mnt.to_str().unwrap()]);
            assert!(out.status.success(), "cfsctl oci mount: {}", stderr(&out));
        },
        &data,
        file,
    );

    // And pulling the same image with cfsd finds it all present.
    let again = pull(&repo, &[&written.archive(Some("v1")), "ours"]);
    assert!(again.bool("alreadyPresent"));
    assert_eq!(again.str("imageId"), their_id);
}
