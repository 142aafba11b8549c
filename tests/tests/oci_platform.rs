//! `--platform` names the platform the image must be for: a source whose
//! image is for another one is PlatformNotFound with what it has, whether
//! the source holds an index or a single manifest.

use std::os::fd::OwnedFd;

use cfsd_tests::{
    Daemon,
    oci::{Compression, Image, Layout, Written, media, small_image},
    ocictl::{json, published, pull, pull_fails, typed_refusal_of},
};
use cfsd_varlink::oci::{OciError, PullParams};
use serde_json::json;

/// The typed error of a Pull of `source` for `platform`, made over the
/// socket without cfsctl.
fn typed_refusal(daemon: &Daemon, transport: &str, source: OwnedFd, platform: &str) -> OciError {
    let params = PullParams {
        transport: transport.to_owned(),
        tag: Some("wrong".to_owned()),
        platform: Some(platform.to_owned()),
        ..PullParams::default()
    };
    typed_refusal_of(daemon, &params, source)
}

fn amd64() -> Image {
    small_image(Compression::Gzip, "amd64 only\n").platform("linux/amd64")
}

/// The three shapes of a one-platform source: a bare manifest in
/// index.json, one that index.json says is for linux/amd64, and a nested
/// index with linux/amd64 alone.
fn sources() -> Vec<(&'static str, Written)> {
    let (bare, _) = Layout::single(&amd64(), None);
    let mut claimed = Layout::new();
    let built = claimed.build_image(&amd64());
    claimed.list(
        media::OCI_MANIFEST,
        &built.manifest_digest,
        built.manifest.len(),
        None,
        Some(json!({"os": "linux", "architecture": "amd64"})),
    );
    let mut nested = Layout::new();
    nested.add_platforms(&[amd64()], None, false);
    vec![
        ("a single manifest", Written::new(&bare)),
        ("an index entry for linux/amd64", Written::new(&claimed)),
        ("a nested index", Written::new(&nested)),
    ]
}

#[test]
fn oci_platform_another_platform_than_the_images_is_platform_not_found() {
    let daemon = Daemon::start_initialised(&[]);
    for (shape, written) in sources() {
        for source in [written.oci(None), written.archive(None)] {
            let before = published(&daemon.repo());
            let err = pull_fails(&daemon, &[&source, "wrong", "--platform", "linux/arm64"]);
            assert!(
                err.contains("linux/arm64") && err.contains("linux/amd64"),
                "{shape}: {err}"
            );
            assert_eq!(published(&daemon.repo()), before, "{shape}: published");
        }
        let archive = std::fs::File::open(written.archive_path()).unwrap();
        let typed = typed_refusal(&daemon, "oci-archive", archive.into(), "linux/arm64");
        assert_eq!(
            typed,
            OciError::PlatformNotFound {
                platform: "linux/arm64".into(),
                available: vec!["linux/amd64".into()],
            },
            "{shape}"
        );
        // A variant the config does not have is another platform too.
        let archive = std::fs::File::open(written.archive_path()).unwrap();
        let typed = typed_refusal(&daemon, "oci-archive", archive.into(), "linux/amd64/v3");
        assert!(
            matches!(typed, OciError::PlatformNotFound { .. }),
            "{shape}: {typed:?}"
        );
        // The platform the image is for pulls.
        let pulled = pull(
            &daemon,
            &[&written.archive(None), "right", "--platform", "linux/amd64"],
        );
        assert!(!pulled.str("imageId").is_empty());
    }
    assert_eq!(json(&daemon, &["fsck"])["ok"], true);
}
