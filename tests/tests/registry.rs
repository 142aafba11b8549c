//! `docker://` pulls from a real registry (Debian's docker-registry on
//! 127.0.0.1) over HTTPS with htpasswd users, with images pushed there by
//! skopeo: what is pulled, the typed refusals, and the faults of the
//! network (cut connections resumed with Range requests, a registry that
//! vanishes, a blob served with the wrong digest).

use std::os::fd::OwnedFd;

use cfsd_tests::{
    Daemon,
    oci::{Compression, Entry, Image, Layer, Layout, Written, noise, small_image},
    ocictl::{published, pull, pull_fails, typed_refusal_with},
    peer, registry,
    registry::{Cut, Proxy, Registry},
    stderr,
};
use cfsd_varlink::oci::{OciError, PullParams};
use serde_json::json;

/// A daemon that trusts `registry`'s CA and admits any image, with
/// `extra` options.
fn daemon_for(registry: &Registry, extra: &[&str]) -> Daemon {
    let mut args = registry.daemon_args();
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::start_initialised(&args)
}

/// An image whose one layer is large enough to be cut in the middle.
fn big_image(compression: Compression) -> Image {
    Image::new(vec![Layer::new(
        compression,
        vec![
            Entry::dir("usr"),
            Entry::file("usr/big", noise(7, 400_000)),
            Entry::file("usr/small", "small\n"),
        ],
    )])
}

fn written(image: &Image) -> Written {
    Written::new(&Layout::single(image, None).0)
}

/// `registry` with `image` pushed as `app:v1`, a daemon for it, the
/// fixture, and the digest of the image's first layer as written there.
fn pushed(registry: Registry, image: &Image) -> (Registry, Daemon, Written, String) {
    let daemon = daemon_for(&registry, &[]);
    let (layout, built) = Layout::single(image, None);
    let fixture = Written::new(&layout);
    registry.push(&fixture.oci(None), "app:v1", &[]);
    let layer = built.layer_digests[0].clone();
    (registry, daemon, fixture, layer)
}

/// `docker://HOST/NAME`.
fn docker(host: &str, name: &str) -> String {
    format!("docker://{host}/{name}")
}

fn auth_args(registry: &Registry) -> Vec<String> {
    let auth = registry.auth_file(registry::USER, registry::PASSWORD);
    vec!["--authfile".to_owned(), auth.display().to_string()]
}

/// The typed error of a Pull of `reference` (without `docker://`), with
/// `authfile` passed as the fd if given.
fn typed_refusal(daemon: &Daemon, reference: &str, authfile: Option<&std::path::Path>) -> OciError {
    let params = PullParams {
        transport: "docker".to_owned(),
        reference: Some(reference.to_owned()),
        tag: Some("refused".to_owned()),
        ..PullParams::default()
    };
    let fds: Vec<OwnedFd> = authfile
        .map(|p| std::fs::File::open(p).unwrap().into())
        .into_iter()
        .collect();
    typed_refusal_with(daemon, &params, fds)
}

/// Pull `app:v1` through a proxy in front of `registry` that cuts as
/// `cut` says the answers for `layer`; the image must be `image_id`.
fn pull_through(
    daemon: &Daemon,
    registry: &Registry,
    layer: &str,
    cut: Cut,
    image_id: &str,
) -> Proxy {
    let proxy = Proxy::start(registry.port(), layer, cut);
    let source = docker(&proxy.host(), "app:v1");
    let pulled = pull(daemon, &[&source, "--tls-verify=false"]);
    assert_eq!(pulled.str("imageId"), image_id);
    proxy
}

/// A plain-HTTP registry holding the big image as `app:v1`, a daemon
/// for it, its layer's digest, and its image id as pulled elsewhere (so
/// that this daemon must fetch the layer).
fn over_http() -> (Registry, Daemon, String, String) {
    let (registry, daemon, fixture, layer) =
        pushed(Registry::start_http(), &big_image(Compression::Gzip));
    let local = pull(
        &Daemon::start_initialised(&[]),
        &[&fixture.oci(None), "local"],
    );
    (registry, daemon, layer, local.str("imageId").to_owned())
}

/// The typed error of a Pull of `app:v1` through `proxy`, over HTTP.
fn refusal_through(daemon: &Daemon, proxy: &Proxy) -> OciError {
    let params = PullParams {
        transport: "docker".to_owned(),
        reference: Some(format!("{}/app:v1", proxy.host())),
        tls_verify: Some(false),
        ..PullParams::default()
    };
    typed_refusal_with(daemon, &params, Vec::new())
}

/// The request heads `proxy` saw that fetch `layer`.
fn blob_gets(proxy: &Proxy, layer: &str) -> Vec<String> {
    proxy
        .heads()
        .into_iter()
        .filter(|h| h.contains(layer))
        .collect()
}

#[test]
fn registry_gzip_zstd_and_zstd_chunked_pulls_give_the_oci_image() {
    cfsd_tests::need_registry!();
    let registry = Registry::start_https();
    let auth = auth_args(&registry);
    let auth: Vec<&str> = auth.iter().map(String::as_str).collect();
    for (name, flags) in [
        ("gzip:v1", &[][..]),
        ("zstd:v1", &["--dest-compress-format", "zstd"][..]),
        (
            "chunked:v1",
            &["--dest-compress-format", "zstd:chunked"][..],
        ),
    ] {
        // An image of its own each: skopeo would reuse a blob the
        // registry has already, whatever compression it was asked for.
        let fixture = written(&small_image(Compression::Gzip, name));
        let local = pull(
            &Daemon::start_initialised(&[]),
            &[&fixture.oci(None), "local"],
        );
        registry.push(&fixture.oci(None), name, flags);
        // The layer is stored as pushed: gzip, or zstd frames.
        let repository = name.split(':').next().unwrap();
        let layer = std::fs::read(&registry.blob_files(repository)[0]).unwrap();
        let magic: &[u8] = if repository == "gzip" {
            &[0x1f, 0x8b]
        } else {
            &[0x28, 0xb5, 0x2f, 0xfd]
        };
        assert!(layer.starts_with(magic), "{name}: {:x?}", &layer[..4]);
        let daemon = daemon_for(&registry, &[]);
        let source = docker(&registry.host(), name);
        let mut args = vec![source.as_str()];
        args.extend_from_slice(&auth);
        let pulled = pull(&daemon, &args);
        assert_eq!(pulled.str("imageId"), local.str("imageId"), "{name}");
        assert_eq!(pulled.str("tag"), source, "{name}");
        // Progress counts the blob bytes received, up to the whole blob.
        let done = pulled
            .progress
            .iter()
            .find(|p| p["stage"] == "done")
            .unwrap_or_else(|| panic!("{name}: no layer done in {:?}", pulled.progress));
        assert_eq!(done["done"], done["total"], "{name}");
        assert!(done["total"].as_u64().unwrap() > 0, "{name}");
    }
}

#[test]
fn registry_multi_platform_index_is_chosen_by_platform() {
    cfsd_tests::need_registry!();
    let registry = Registry::start_https();
    let daemon = daemon_for(&registry, &[]);
    let images = [
        small_image(Compression::Gzip, "amd64\n").platform("linux/amd64"),
        small_image(Compression::Gzip, "arm64\n").platform("linux/arm64"),
    ];
    let mut layout = Layout::new();
    layout.add_platforms(&images, None, false);
    let fixture = Written::new(&layout);
    registry.push(&fixture.oci(None), "multi:v1", &["--all"]);
    let auth = auth_args(&registry);
    let source = docker(&registry.host(), "multi:v1");
    for platform in ["linux/amd64", "linux/arm64"] {
        let local = pull(
            &daemon,
            &[&fixture.oci(None), platform, "--platform", platform],
        );
        let remote = pull(
            &daemon,
            &[&source, "--platform", platform, &auth[0], &auth[1]],
        );
        assert_eq!(remote.str("imageId"), local.str("imageId"), "{platform}");
        assert_eq!(remote.str("manifestDigest"), local.str("manifestDigest"));
    }
    let err = typed_refusal(&daemon, &format!("{}/multi:v1@bad", registry.host()), None);
    assert!(matches!(err, OciError::InvalidReference { .. }), "{err:?}");
}

#[test]
fn registry_wrong_or_missing_credentials_are_an_auth_error() {
    cfsd_tests::need_registry!();
    let (registry, daemon, _fixture, _) = pushed(
        Registry::start_https(),
        &small_image(Compression::Gzip, "secret\n"),
    );
    let reference = format!("{}/app:v1", registry.host());
    let before = published(&daemon.repo());
    let wrong = registry.auth_file(registry::USER, "not-the-password");
    for authfile in [Some(wrong.as_path()), None] {
        match typed_refusal(&daemon, &reference, authfile) {
            OciError::RegistryAuthFailed { registry: host, .. } => {
                assert_eq!(host, registry.host())
            }
            other => panic!("{authfile:?}: {other:?}"),
        }
    }
    assert_eq!(published(&daemon.repo()), before);
    // cfsctl passes the file it opens, and says what the registry did.
    let err = pull_fails(
        &daemon,
        &[
            &docker(&registry.host(), "app:v1"),
            "--authfile",
            wrong.to_str().unwrap(),
        ],
    );
    assert!(err.contains("refused access"), "{err}");
    assert!(err.contains("hint: log in with"), "{err}");
}

#[test]
fn registry_untrusted_certificate_is_a_tls_error_unless_verification_is_off() {
    cfsd_tests::need_registry!();
    let registry = Registry::start_https();
    let fixture = written(&small_image(Compression::Gzip, "tls\n"));
    registry.push(&fixture.oci(None), "app:v1", &[]);
    let policy = registry.daemon_args();
    // Without the certs.d directory the registry's CA is unknown.
    let daemon = Daemon::start_initialised(&[&policy[0], &policy[1], &policy[2], &policy[3]]);
    let reference = format!("{}/app:v1", registry.host());
    let auth = registry.auth_file(registry::USER, registry::PASSWORD);
    match typed_refusal(&daemon, &reference, Some(&auth)) {
        OciError::RegistryTlsFailed {
            registry: host,
            reason,
        } => {
            assert_eq!(host, registry.host());
            assert!(reason.contains("certificate"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let source = docker(&registry.host(), "app:v1");
    let auth = auth.to_str().unwrap();
    let err = pull_fails(&daemon, &[&source, "--authfile", auth]);
    assert!(
        err.contains(&format!("hint: put the registry's CA certificate in the daemon's certs.d (/etc/containers/certs.d/{}/ca.crt", registry.host())),
        "{err}"
    );
    pull(
        &daemon,
        &[&source, "--tls-verify=false", "--authfile", auth],
    );
}

/// Change one byte of the file content inside the gzip blob at `path`,
/// keeping the gzip stream sound (its CRC fixed up), so that only the
/// digests can tell.
fn tamper_keeping_gzip_valid(path: &std::path::Path) {
    use std::io::Read;
    let mut blob = std::fs::read(path).unwrap();
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(&blob[..])
        .read_to_end(&mut tar)
        .unwrap();
    // Noise does not compress: deflate stores it, byte for byte.
    let window = &tar[200_000..200_032];
    let at = blob
        .windows(window.len())
        .position(|w| w == window)
        .expect("the noise is stored verbatim in the gzip blob");
    blob[at] ^= 0x55;
    tar[200_000] ^= 0x55;
    let mut crc = flate2::Crc::new();
    crc.update(&tar);
    let trailer = blob.len() - 8;
    blob[trailer..trailer + 4].copy_from_slice(&crc.sum().to_le_bytes());
    std::fs::write(path, blob).unwrap();
}

#[test]
fn registry_blob_served_with_the_wrong_digest_publishes_nothing() {
    cfsd_tests::need_registry!();
    let (registry, daemon, _fixture, _) =
        pushed(Registry::start_https(), &big_image(Compression::Gzip));
    let layer = registry.blob_files("app").remove(0);
    tamper_keeping_gzip_valid(&layer);
    let before = published(&daemon.repo());
    let auth = registry.auth_file(registry::USER, registry::PASSWORD);
    let err = typed_refusal(&daemon, &format!("{}/app:v1", registry.host()), Some(&auth));
    assert!(matches!(err, OciError::DigestMismatch { .. }), "{err:?}");
    assert_eq!(published(&daemon.repo()), before);
    let images = daemon.cfsctl(&["oci", "images"]);
    assert!(images.status.success(), "{}", stderr(&images));
}

#[test]
fn registry_connection_cut_mid_blob_resumes_with_a_range_request() {
    cfsd_tests::need_registry!();
    let (registry, daemon, layer, image_id) = over_http();
    let cut = Cut::Times {
        count: 2,
        after: 60_000,
    };
    let proxy = pull_through(&daemon, &registry, &layer, cut, &image_id);
    let gets = blob_gets(&proxy, &layer);
    assert_eq!(gets.len(), 3, "one request and two resumes: {gets:#?}");
    let resumed = gets[1..]
        .iter()
        .filter(|h| {
            h.lines().any(|l| {
                let l = l.to_ascii_lowercase();
                l.starts_with("range: bytes=") && !l.starts_with("range: bytes=0-")
            })
        })
        .count();
    assert_eq!(resumed, 2, "the resumes ask for the rest only: {gets:#?}");
}

#[test]
fn registry_that_vanishes_mid_pull_is_unreachable_and_nothing_is_published() {
    cfsd_tests::need_registry!();
    let (registry, daemon, fixture, layer) =
        pushed(Registry::start_http(), &big_image(Compression::Gzip));
    let proxy = Proxy::start(registry.port(), &layer, Cut::Vanish { after: 60_000 });
    let before = published(&daemon.repo());
    match refusal_through(&daemon, &proxy) {
        OciError::RegistryUnreachable { registry: host, .. } => assert_eq!(host, proxy.host()),
        other => panic!("{other:?}"),
    }
    assert_eq!(published(&daemon.repo()), before);
    // The daemon serves on: the same image from its layout still pulls.
    pull(&daemon, &[&fixture.oci(None), "after"]);
}

#[test]
fn registry_policy_reject_and_a_broken_policy_are_refused_before_any_request() {
    cfsd_tests::need_registry!();
    let registry = Registry::start_https();
    let fixture = written(&small_image(Compression::Gzip, "policy\n"));
    registry.push(&fixture.oci(None), "other/app:v1", &[]);
    let host = registry.host();
    let policy = registry.policy(
        "strict.json",
        &json!({
            "default": [{"type": "insecureAcceptAnything"}],
            "transports": {"docker": {
                format!("{host}/other/app:v1"): [{"type": "reject"}],
            }}
        }),
    );
    let certs = registry.certs_dir();
    let daemon = Daemon::start_initialised(&[
        "--policy",
        policy.to_str().unwrap(),
        "--certs-dir",
        certs.to_str().unwrap(),
    ]);
    let auth = registry.auth_file(registry::USER, registry::PASSWORD);
    let requests = registry.requests().len();
    match typed_refusal(&daemon, &format!("{host}/other/app:v1"), Some(&auth)) {
        OciError::PolicyRejected { scope } => assert!(scope.contains("other/app:v1"), "{scope}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        registry.requests().len(),
        requests,
        "the registry was asked"
    );
    let err = pull_fails(&daemon, &[&docker(&host, "other/app:v1")]);
    assert!(err.contains("rejects this image"), "{err}");

    let broken = registry.policy("broken.json", &json!({"default": []}));
    let daemon = Daemon::start_initialised(&["--policy", broken.to_str().unwrap()]);
    let err = typed_refusal(&daemon, &format!("{host}/other/app:v2"), Some(&auth));
    assert!(matches!(err, OciError::InvalidPolicy { .. }), "{err:?}");
    assert_eq!(registry.requests().len(), requests);
}

#[test]
fn registry_unprivileged_peer_is_refused_before_any_connection() {
    cfsd_tests::need_registry!();
    let registry = Registry::start_https();
    let fixture = written(&small_image(Compression::Gzip, "nobody\n"));
    registry.push(&fixture.oci(None), "app:v1", &[]);
    let args = registry.daemon_args();
    let mut all: Vec<&str> = vec!["--socket-group", "65534"];
    all.extend(args.iter().map(String::as_str));
    let daemon = Daemon::start_initialised(&all);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(daemon.dir(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let requests = registry.requests().len();
    let out = peer::as_nobody(&[], cfsd_tests::bin("cfsctl").to_str().unwrap())
        .args(["--address", &daemon.address(), "oci", "pull"])
        .arg(docker(&registry.host(), "app:v1"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("permission denied"), "{err}");
    assert_eq!(
        registry.requests().len(),
        requests,
        "the registry was asked"
    );
}

#[test]
fn registry_two_clients_pulling_one_reference_import_it_once() {
    cfsd_tests::need_registry!();
    let (registry, daemon, _fixture, _) =
        pushed(Registry::start_https(), &big_image(Compression::Gzip));
    let auth = registry.auth_file(registry::USER, registry::PASSWORD);
    let source = docker(&registry.host(), "app:v1");
    let spawn = || {
        std::process::Command::new(cfsd_tests::bin("cfsctl"))
            .args(["--address", &daemon.address(), "--json", "--progress=none"])
            .args(["oci", "pull", &source, "--authfile", auth.to_str().unwrap()])
            .output()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(spawn);
        let b = s.spawn(spawn);
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    let results: Vec<_> = [a, b]
        .iter()
        .map(|out| {
            assert!(out.status.success(), "{}", stderr(out));
            cfsd_tests::ocictl::parse_pull(&cfsd_tests::stdout(out))
        })
        .collect();
    assert_eq!(results[0].str("imageId"), results[1].str("imageId"));
    let imports = results.iter().filter(|r| !r.bool("alreadyPresent")).count();
    assert_eq!(
        imports,
        1,
        "{:?}",
        results.iter().map(|r| &r.result).collect::<Vec<_>>()
    );
}

#[test]
fn registry_5xx_and_429_answers_are_retried_a_bounded_number_of_times() {
    cfsd_tests::need_registry!();
    let (registry, daemon, layer, image_id) = over_http();
    // Two 503s, then the blob: the pull succeeds on the third try.
    let flaky = Cut::Status {
        count: 2,
        status: 503,
    };
    let proxy = pull_through(&daemon, &registry, &layer, flaky, &image_id);
    assert_eq!(blob_gets(&proxy, &layer).len(), 3);
    // Always 429: the pull gives up after 5 tries, saying what it got.
    let daemon = daemon_for(&registry, &[]);
    let busy = Cut::Status {
        count: usize::MAX,
        status: 429,
    };
    let proxy = Proxy::start(registry.port(), &layer, busy);
    let before = published(&daemon.repo());
    match refusal_through(&daemon, &proxy) {
        OciError::RegistryError { status, what, .. } => {
            assert_eq!(status, 429);
            assert!(what.contains(layer.as_str()), "{what}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(blob_gets(&proxy, &layer).len(), 5);
    assert_eq!(published(&daemon.repo()), before);
}
