//! A delta whose source image sits in another composefs repository
//! (`oci pull --source-repo DIR`, `cfsd --source-repo PATH`): the files
//! the result needs are copied in from there, which is only read, and the
//! result is what applying the delta with the source local gives.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use cfsd_tests::{
    cfsctl,
    delta::{tar_diff_delta, versions},
    oci::{BuiltImage, Image, Layout, Written},
    ocictl::{PrivateRepo, Target, fails, published, pull, succeeds},
    repo_files::{file_of_size, tree},
};

/// A filesystem of `kind` on a loop device, mounted under /tmp;
/// unmounted and freed on drop.
struct LoopFs {
    dir: tempfile::TempDir,
    device: String,
}

fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl LoopFs {
    fn new(kind: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cfsd-loop")
            .tempdir()
            .unwrap();
        let image = dir.path().join("fs.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(320 << 20)
            .unwrap();
        let image = image.to_str().unwrap();
        run(&format!("mkfs.{kind}"), &["-q", image]);
        let out = run("losetup", &["-f", "--show", image]);
        let device = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let fs = LoopFs { dir, device };
        std::fs::create_dir(fs.mount()).unwrap();
        run("mount", &[&fs.device, fs.mount().to_str().unwrap()]);
        fs
    }

    fn mount(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    fn read_only(&self) {
        run(
            "mount",
            &["-o", "remount,ro", self.mount().to_str().unwrap()],
        );
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.mount()).status();
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

/// A repository used through `cfsctl --repo` at a path of the test's.
struct RepoAt(PathBuf);

impl Target for RepoAt {
    fn run(&self, args: &[&str]) -> Output {
        let repo = self.0.to_str().unwrap();
        let mut all = vec!["--repo", repo];
        all.extend_from_slice(args);
        cfsctl(&all)
    }

    fn repo_path(&self) -> PathBuf {
        self.0.clone()
    }
}

/// The two versions, built, and the delta between them as an archive.
struct Fixture {
    source: Image,
    source_written: Written,
    target: BuiltImage,
    delta: Written,
}

impl Fixture {
    fn new() -> Self {
        let (source, target) = versions();
        let (source_layout, source_built) = Layout::single(&source, None);
        let (_, target_built) = Layout::single(&target, None);
        let delta = tar_diff_delta(&source, &source_built, &target_built, 1);
        Fixture {
            source_written: Written::new(&source_layout),
            source,
            target: target_built,
            delta: Written::new(&delta),
        }
    }

    /// A repository of `algorithm` at `at` holding the source image.
    fn source_at(&self, at: PathBuf, algorithm: &str) -> RepoAt {
        let repo = RepoAt(at);
        succeeds(&repo, &["init", "--algorithm", algorithm]);
        pull(&repo, &[&self.source_written.oci(None), "source"]);
        repo
    }

    /// The delta applied where the source is local, then the source
    /// dropped and collected: what the result alone leaves.
    fn applied_locally(&self, algorithm: &str) -> (PrivateRepo, String) {
        let repo = PrivateRepo::init(algorithm);
        pull(&repo, &[&self.source_written.oci(None), "source"]);
        let id = pull(&repo, &[&self.delta.archive(None), "target"])
            .str("imageId")
            .to_owned();
        succeeds(&repo, &["oci", "untag", "source"]);
        succeeds(&repo, &["gc"]);
        (repo, id)
    }
}

/// Apply the delta with its source in a `from` repository on a read-only
/// filesystem of its own, into a `to` repository on another one.
fn applies_from_another_filesystem(from: &str, to: &str) {
    let fixture = Fixture::new();
    let (src_fs, dst_fs) = (LoopFs::new("ext4"), LoopFs::new("ext4"));
    let source = fixture.source_at(src_fs.mount().join("repo"), from);
    src_fs.read_only();
    let before = tree(&source.0);
    let dest = RepoAt(dst_fs.mount().join("repo"));
    succeeds(&dest, &["init", "--algorithm", to]);
    let src = source.0.to_str().unwrap();
    let pulled = pull(
        &dest,
        &["--source-repo", src, &fixture.delta.archive(None), "target"],
    );
    assert_eq!(pulled.str("manifestDigest"), fixture.target.manifest_digest);
    succeeds(&dest, &["gc"]);
    let (local, local_id) = fixture.applied_locally(to);
    assert_eq!(pulled.str("imageId"), local_id, "{from} → {to}");
    assert_eq!(published(&dest.0), published(&local.repo_path()));
    assert_eq!(tree(&dest.0), tree(&local.repo_path()), "{from} → {to}");
    let dump = ["oci", "dump", "target"];
    assert_eq!(succeeds(&dest, &dump), succeeds(&local, &dump));
    assert_eq!(tree(&source.0), before, "the source repository changed");
    let _ = &fixture.source;
}

#[test]
fn a_delta_applies_from_a_sha512_source_on_a_read_only_filesystem_into_sha256() {
    applies_from_another_filesystem("sha512", "sha256");
}

#[test]
fn a_delta_applies_from_a_sha256_source_on_a_read_only_filesystem_into_sha512() {
    applies_from_another_filesystem("sha256", "sha512");
}

#[test]
fn a_delta_applies_from_a_source_of_the_same_algorithm() {
    applies_from_another_filesystem("sha512", "sha512");
}

#[test]
fn a_source_repository_without_the_image_names_its_config() {
    let fixture = Fixture::new();
    let other = PrivateRepo::init("sha256");
    let dest = PrivateRepo::init("sha512");
    let src = other.repo_path();
    let err = fails(
        &dest,
        &[
            "--progress=none",
            "oci",
            "pull",
            "--source-repo",
            src.to_str().unwrap(),
            &fixture.delta.archive(None),
            "target",
        ],
    );
    assert!(
        err.contains(&fixture.target.config_digest) || err.contains("config"),
        "{err}"
    );
    let source_config = &Layout::single(&fixture.source, None).1.config_digest;
    assert!(err.contains(source_config.as_str()), "{err}");
    assert!(published(&dest.repo_path()).tags.is_empty());
}

#[test]
fn the_daemons_configured_source_repository_serves_deltas() {
    let fixture = Fixture::new();
    let source = PrivateRepo::init("sha256");
    pull(&source, &[&fixture.source_written.oci(None), "source"]);
    let path = source.repo_path();
    let daemon = cfsd_tests::Daemon::start_initialised(&["--source-repo", path.to_str().unwrap()]);
    let pulled = pull(&daemon, &[&fixture.delta.archive(None), "target"]);
    let (_, local_id) = fixture.applied_locally("sha512");
    assert_eq!(pulled.str("imageId"), local_id);
    let fsck = cfsd_tests::ocictl::json(&daemon, &["fsck"]);
    assert_eq!(fsck["ok"], true, "{fsck}");
}

/// Whether the extents of `file` are shared with another file's, as
/// `filefrag` reads them from FIEMAP.
fn shares_extents(file: &Path) -> bool {
    let out = run("filefrag", &["-v", file.to_str().unwrap()]);
    String::from_utf8_lossy(&out.stdout).contains("shared")
}

#[test]
fn objects_are_reflinked_where_both_repositories_share_a_filesystem() {
    use cfsd_tests::oci::{Compression, Entry, Layer, noise};
    if !cfsd_tests::installed(&["mkfs.xfs"]) {
        return cfsd_tests::skip("mkfs.xfs is not installed");
    }
    let image = Image::new(vec![Layer::new(
        Compression::Gzip,
        vec![
            Entry::dir("usr"),
            Entry::file("usr/big", noise(3, 16 << 20)),
        ],
    )]);
    let written = Written::new(&Layout::single(&image, Some("img")).0);
    let fs = LoopFs::new("xfs");
    let source = RepoAt(fs.mount().join("source"));
    succeeds(&source, &["init", "--algorithm", "sha256"]);
    pull(&source, &[&written.oci(Some("img")), "img"]);
    let dest = RepoAt(fs.mount().join("dest"));
    succeeds(&dest, &["init", "--algorithm", "sha256"]);
    let from = source.0.to_str().unwrap();
    succeeds(&dest, &["oci", "copy", "--from", from, "img", "mine"]);
    let object = file_of_size(&dest.0.join("objects"), 16 << 20);
    assert!(
        shares_extents(&object),
        "{} is not a reflink",
        object.display()
    );
    let dump = ["oci", "dump", "mine"];
    let pulled = PrivateRepo::init("sha256");
    pull(&pulled, &[&written.oci(Some("img")), "mine"]);
    assert_eq!(succeeds(&dest, &dump), succeeds(&pulled, &dump));
}
