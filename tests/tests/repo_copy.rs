//! `oci copy --from`: an image copied out of another composefs repository
//! is exactly the image a pull of the same source stores here, also
//! across hash algorithms, and the other repository is only read.

use cfsd_tests::{
    oci::{Compression, Layout, Written, small_image},
    ocictl::{PrivateRepo, Target, fails, parse_pull, published, pull, succeeds},
    repo_files::tree,
};

/// `cfsctl --json oci copy ARGS`, which must succeed; its result.
fn copy(target: &impl Target, args: &[&str]) -> cfsd_tests::ocictl::Pulled {
    let mut all = vec!["--json", "--progress=json", "oci", "copy"];
    all.extend_from_slice(args);
    let out = target.run(&all);
    assert!(
        out.status.success(),
        "oci copy {args:?} failed: {}",
        cfsd_tests::stderr(&out)
    );
    parse_pull(&cfsd_tests::stdout(&out))
}

/// A source repository of `algorithm` holding the small image as `img`.
fn source_repo(algorithm: &str, written: &Written) -> PrivateRepo {
    let source = PrivateRepo::init(algorithm);
    pull(&source, &[&written.oci(Some("img")), "img"]);
    source
}

fn written() -> Written {
    let mut layout = Layout::new();
    layout.add_image(
        &small_image(Compression::Gzip, "copied content"),
        Some("img"),
    );
    Written::new(&layout)
}

/// Copy from a `from` repository into a `to` one, and pull the same
/// image into another `to` one: the two are identical.
fn copy_equals_pull(from: &str, to: &str) {
    let written = written();
    let source = source_repo(from, &written);
    let before = tree(&source.repo_path());
    let copied = PrivateRepo::init(to);
    let src = source.repo_path();
    let report = copy(&copied, &["--from", src.to_str().unwrap(), "img", "mine"]);
    let pulled = PrivateRepo::init(to);
    let direct = pull(&pulled, &[&written.oci(Some("img")), "mine"]);
    assert_eq!(
        report.str("imageId"),
        direct.str("imageId"),
        "{from} → {to}"
    );
    assert_eq!(report.str("manifestDigest"), direct.str("manifestDigest"));
    assert_eq!(
        published(&copied.repo_path()),
        published(&pulled.repo_path())
    );
    assert_eq!(
        tree(&copied.repo_path()),
        tree(&pulled.repo_path()),
        "{from} → {to}"
    );
    let dump = |r: &PrivateRepo| succeeds(r, &["oci", "dump", "mine"]);
    assert_eq!(dump(&copied), dump(&pulled));
    assert_eq!(tree(&src), before, "the source repository changed");
}

#[test]
fn a_copy_is_a_pull_of_the_same_image_sha256_to_sha512() {
    copy_equals_pull("sha256", "sha512");
}

#[test]
fn a_copy_is_a_pull_of_the_same_image_sha512_to_sha256() {
    copy_equals_pull("sha512", "sha256");
}

#[test]
fn a_copy_is_a_pull_of_the_same_image_same_algorithm() {
    copy_equals_pull("sha512", "sha512");
}

#[test]
fn an_image_the_source_lacks_is_a_typed_refusal() {
    let written = written();
    let source = source_repo("sha256", &written);
    let dest = PrivateRepo::init("sha256");
    let src = source.repo_path();
    let err = fails(
        &dest,
        &["oci", "copy", "--from", src.to_str().unwrap(), "nope"],
    );
    assert!(err.contains("no manifest \"nope\""), "{err}");
    assert!(published(&dest.repo_path()).tags.is_empty());
}

#[test]
fn a_copy_matches_upstream_cfsctls_oci_copy() {
    use cfsd_tests::upstream::theirs;
    let written = written();
    let source = source_repo("sha256", &written);
    let src = source.repo_path();
    let ours = PrivateRepo::init("sha256");
    let report = copy(
        &ours,
        &["--from", src.to_str().unwrap(), "img", "--name", "mine"],
    );
    let upstream = PrivateRepo::init("sha256");
    let dest = upstream.repo_path();
    theirs(
        &dest,
        &[
            "oci",
            "copy",
            "--from",
            src.to_str().unwrap(),
            "img",
            "--name",
            "mine",
        ],
    );
    assert_eq!(
        theirs(&dest, &["oci", "compute-id", "mine"]).trim(),
        report.str("imageId")
    );
    assert_eq!(
        published(&ours.repo_path()).stable(),
        published(&dest).stable()
    );
    assert_eq!(
        theirs(&dest, &["oci", "dump", "mine"]),
        succeeds(&ours, &["oci", "dump", "mine"])
    );
}
