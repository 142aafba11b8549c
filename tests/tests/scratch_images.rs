//! Images without `/usr` (`FROM scratch`: a static binary alone,
//! hello-world, distroless bases) pull, mount and get an id, which
//! composefs-rs 0.9.4 refuses them ("Directory entry \"usr\" does not
//! exist"). `/` then takes fixed metadata (docs/oci.md): `0755`, root,
//! mtime 0, whatever the layers' `./` entry says. Images with a `/usr`
//! keep exactly upstream's id.

use std::{os::unix::fs::MetadataExt, process::Command};

use cfsd_tests::{
    mounted::mount,
    oci::{Compression, Entry, Image, Layer, Layout, Written, noise},
    ocictl::{PrivateRepo, Target, pull, succeeds},
    stderr,
    upstream::{theirs, upstream},
};

/// The static binary of a hello-world image: large enough to be an
/// object rather than inline.
fn binary() -> Vec<u8> {
    noise(41, 20_000)
}

/// A `FROM scratch` image: `/hello` and a config file, and a `/run`
/// with a leftover, with or without a `./` entry of odd metadata.
fn scratch(with_root_entry: bool) -> Image {
    let mut entries = Vec::new();
    if with_root_entry {
        entries.push(Entry::dir(".").mode(0o700).owner(1000, 1000).mtime(12345));
    }
    entries.extend([
        Entry::file("hello", binary()).mode(0o755),
        Entry::dir("etc"),
        Entry::file("etc/hello.conf", "greeting=hi\n"),
        Entry::dir("run"),
        Entry::file("run/leftover", "gone\n"),
    ]);
    Image::new(vec![Layer::new(Compression::Gzip, entries)])
}

/// Pull `image` into a new repository as `tag`; the repository and id.
fn pulled(image: &Image, tag: &str) -> (PrivateRepo, String, Written) {
    let (layout, _) = Layout::single(image, None);
    let written = Written::new(&layout);
    let repo = PrivateRepo::init("sha512");
    let id = pull(&repo, &[&written.archive(None), tag])
        .str("imageId")
        .to_owned();
    (repo, id, written)
}

#[test]
fn a_scratch_image_pulls_mounts_and_shows_its_bytes() {
    let (repo, id, _written) = pulled(&scratch(true), "hello");
    assert_eq!(
        succeeds(&repo, &["oci", "compute-id", "hello"]).trim(),
        id,
        "compute-id from the layers agrees with the EROFS built at pull"
    );
    let scratch_dir = tempfile::tempdir().unwrap();
    let point = scratch_dir.path().join("mnt");
    let Some(_mounted) = mount(&repo, "hello", &point) else {
        return;
    };
    assert_eq!(std::fs::read(point.join("hello")).unwrap(), binary());
    assert_eq!(
        std::fs::read(point.join("etc/hello.conf")).unwrap(),
        b"greeting=hi\n"
    );
    let root = std::fs::metadata(&point).unwrap();
    assert_eq!(
        (root.mode(), root.uid(), root.gid(), root.mtime()),
        (0o40755, 0, 0, 0),
        "/ takes the fixed metadata, not the layer's ./ entry"
    );
    let run = std::fs::metadata(point.join("run")).unwrap();
    assert_eq!(run.mtime(), 0, "/run takes the root's mtime");
    assert_eq!(std::fs::read_dir(point.join("run")).unwrap().count(), 0);
}

#[test]
fn a_scratch_image_has_one_id_in_every_repository_whatever_its_root_entry() {
    let (first, id, _a) = pulled(&scratch(true), "hello");
    let (_second, again, _b) = pulled(&scratch(true), "hello");
    assert_eq!(id, again, "two repositories, one id");
    let (without, bare, _c) = pulled(&scratch(false), "hello");
    assert_eq!(id, bare, "the layer's ./ entry does not change the id");

    // The dump shows the rule, and is the same in both repositories.
    let dump = succeeds(&first, &["oci", "dump", "hello"]);
    let root_line = dump.lines().next().unwrap();
    assert!(
        root_line.starts_with("/ 0 40755 ") && root_line.contains(" 0 0 0 0.0 "),
        "{root_line}"
    );
    assert!(dump.contains("/hello 20000 100755 "), "{dump}");
    assert_eq!(dump, succeeds(&without, &["oci", "dump", "hello"]));
}

#[test]
fn upstream_refuses_a_scratch_image_that_cfsd_accepts() {
    // Not a goal but the reason for the rule: upstream has no answer, so
    // no upstream id is lost.
    let (repo, _id, _written) = pulled(&scratch(true), "hello");
    let out = Command::new(upstream())
        .arg("--repo")
        .arg(repo.repo_path())
        .args(["oci", "compute-id", "hello"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("\"usr\" does not exist"),
        "{}",
        stderr(&out)
    );
}

/// An image with `/usr` and a `./` entry that differs from it: `/`
/// copies `/usr`, and the id is upstream's.
fn with_usr_and_root_entry() -> Image {
    Image::new(vec![
        Layer::new(
            Compression::None,
            vec![
                Entry::dir(".").mode(0o700).mtime(99),
                Entry::dir("usr").mode(0o751).owner(5, 6).mtime(777),
                Entry::dir("run"),
                Entry::file("run/x", "x"),
                Entry::file("usr/tool", noise(3, 5000)),
            ],
        ),
        Layer::new(Compression::Zstd, vec![Entry::file("extra", "e\n")]),
    ])
}

#[test]
fn an_image_with_usr_keeps_upstreams_id() {
    let (repo, id, _written) = pulled(&with_usr_and_root_entry(), "withusr");
    assert_eq!(
        theirs(&repo.repo_path(), &["oci", "compute-id", "withusr"]).trim(),
        id
    );
    assert_eq!(
        succeeds(&repo, &["oci", "compute-id", "withusr"]).trim(),
        id
    );
    let dump = succeeds(&repo, &["oci", "dump", "withusr"]);
    assert_eq!(dump, theirs(&repo.repo_path(), &["oci", "dump", "withusr"]));
    assert!(
        dump.lines().next().unwrap().starts_with("/ 0 40751 "),
        "{dump}"
    );
}
