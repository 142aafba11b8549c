//! `cfsctl oci push` to a real registry (Debian's docker-registry on
//! 127.0.0.1, HTTPS with htpasswd, or plain HTTP behind a proxy that
//! misbehaves): what is uploaded and what is skipped, that the image
//! pulled back is the same image, that other tools read it, and the typed
//! refusals, with nothing tagged in the registry when a push fails.

use std::{io::Read, os::fd::OwnedFd, path::Path};

use cfsd_tests::{
    Daemon,
    oci::{BuiltImage, Compression, Entry, Image, Layer, Layout, Written, noise, sha256_digest},
    ocictl::{fails, json, pull},
    peer, registry,
    registry::{Cut, Proxy, Registry},
    stderr,
};
use cfsd_varlink::{
    CallError,
    oci::{OciError, PushCompression, PushParams},
};
use serde_json::Value;

/// A two-layer image, its second layer big enough that an upload takes
/// more than one write.
fn two_layers(seed: u64) -> Image {
    Image::new(vec![
        Layer::new(
            Compression::Gzip,
            vec![
                Entry::dir("usr"),
                Entry::file("usr/base", noise(seed, 5_000)),
            ],
        ),
        Layer::new(
            Compression::Zstd,
            vec![
                Entry::dir("opt"),
                Entry::file("opt/big", noise(seed + 1, 300_000)),
                Entry::file("opt/small", "small\n"),
                Entry::symlink("opt/link", "big"),
            ],
        ),
    ])
}

/// A daemon trusting `registry`, holding `image` pulled from a layout as
/// `app:v1`; the layout and what was built.
fn holding(registry: &Registry, image: &Image) -> (Daemon, Written, BuiltImage) {
    let args = registry.daemon_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = Daemon::start_initialised(&args);
    let (layout, built) = Layout::single(image, None);
    let fixture = Written::new(&layout);
    pull(&daemon, &[&fixture.oci(None), "app:v1"]);
    (daemon, fixture, built)
}

fn authfile(registry: &Registry) -> String {
    let path = registry.auth_file(registry::USER, registry::PASSWORD);
    path.display().to_string()
}

/// `cfsctl --json oci push IMAGE docker://DEST EXTRA...`, which must
/// succeed; its reply.
fn push(daemon: &Daemon, image: &str, dest: &str, extra: &[&str]) -> Value {
    let dest = format!("docker://{dest}");
    let mut args = vec!["oci", "push", image, dest.as_str()];
    args.extend_from_slice(extra);
    json(daemon, &args)
}

/// The requests the registry logged that write: blob uploads and
/// manifest puts.
fn writes(registry: &Registry) -> Vec<String> {
    std::fs::read_to_string(registry.path("registry.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            ["\"POST /v2", "\"PUT /v2", "\"PATCH /v2"]
                .iter()
                .any(|m| l.contains(m))
        })
        .map(str::to_owned)
        .collect()
}

/// Every request the registry logged.
fn all_requests(registry: &Registry) -> usize {
    std::fs::read_to_string(registry.path("registry.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" /v2"))
        .count()
}

/// Whether the registry holds tag `tag` of repository `name`.
fn tagged(registry: &Registry, name: &str, tag: &str) -> bool {
    registry
        .storage()
        .join("docker/registry/v2/repositories")
        .join(name)
        .join("_manifests/tags")
        .join(tag)
        .exists()
}

/// The blob `digest` as the registry stores it.
fn blob(registry: &Registry, digest: &str) -> Vec<u8> {
    let bytes = std::fs::read(registry.blob_file(digest)).unwrap();
    assert_eq!(sha256_digest(&bytes), digest);
    bytes
}

fn decompress(media_type: &str, bytes: &[u8]) -> Vec<u8> {
    let mut tar = Vec::new();
    match media_type {
        "application/vnd.oci.image.layer.v1.tar+gzip" => {
            flate2::read::GzDecoder::new(bytes).read_to_end(&mut tar)
        }
        "application/vnd.oci.image.layer.v1.tar+zstd" => zstd::stream::read::Decoder::new(bytes)
            .unwrap()
            .read_to_end(&mut tar),
        other => panic!("unexpected layer media type {other}"),
    }
    .unwrap();
    tar
}

/// Check the manifest `digest` of an image pushed with `media_type`
/// layers: its config is `built`'s, and each layer is a blob that
/// decompresses to the tar of `built`'s diff_id.
fn check_layers(
    manifest: &[u8],
    built: &BuiltImage,
    media_type: &str,
    read: impl Fn(&str) -> Vec<u8>,
) {
    let manifest: Value = serde_json::from_slice(manifest).unwrap();
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(manifest["config"]["digest"], built.config_digest.as_str());
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), built.diff_ids.len());
    for (layer, diff_id) in layers.iter().zip(&built.diff_ids) {
        assert_eq!(layer["mediaType"], media_type);
        let bytes = read(layer["digest"].as_str().unwrap());
        assert_eq!(layer["size"], bytes.len() as u64);
        assert_eq!(&sha256_digest(&decompress(media_type, &bytes)), diff_id);
    }
}

/// `skopeo copy` of `docker://SOURCE` to a new `oci:` directory, with
/// `registry`'s CA and credentials; the directory.
fn skopeo_to_layout(registry: &Registry, source: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let certs = registry.path("skopeo-src-certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(registry.path("ca.crt"), certs.join("ca.crt")).unwrap();
    let out = std::process::Command::new("skopeo")
        .args(["copy", "--quiet", "--src-cert-dir"])
        .arg(&certs)
        .arg("--src-creds")
        .arg(format!("{}:{}", registry::USER, registry::PASSWORD))
        .arg(format!("docker://{source}"))
        .arg(format!(
            "oci:{}:copied",
            dir.path().join("layout").display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo copy: {}", stderr(&out));
    dir
}

fn layout_blob(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap()
}

#[test]
fn registry_push_gzip_and_zstd_pull_back_to_the_same_image() {
    cfsd_tests::need_registry!();
    let registry = Registry::start_https();
    let (daemon, _fixture, built) = holding(&registry, &two_layers(1));
    let original = json(&daemon, &["oci", "inspect", "app:v1"]);
    let auth = authfile(&registry);
    for (compression, media_type) in [
        ("gzip", "application/vnd.oci.image.layer.v1.tar+gzip"),
        ("zstd", "application/vnd.oci.image.layer.v1.tar+zstd"),
    ] {
        let dest = format!("{}/{compression}/app:v1", registry.host());
        let extra = ["--compression", compression, "--authfile", auth.as_str()];
        let pushed = push(&daemon, "app:v1", &dest, &extra);
        assert_eq!(pushed["reference"], dest.as_str());
        assert_eq!(pushed["configDigest"], original["configDigest"]);
        assert_eq!(pushed["layers"], 2);
        assert_eq!(pushed["layersUploaded"], 2);
        let manifest_digest = pushed["manifestDigest"].as_str().unwrap();
        let manifest = blob(&registry, manifest_digest);
        check_layers(&manifest, &built, media_type, |d| blob(&registry, d));
        assert_eq!(blob(&registry, &built.config_digest), built.config);

        // Pulled back into a fresh repository: the same image.
        let back = pull(
            &daemon_for_pull(&registry),
            &[&format!("docker://{dest}"), "back", "--authfile", &auth],
        );
        assert_eq!(back.str("imageId"), original["imageId"].as_str().unwrap());
        assert_eq!(back.str("configDigest"), built.config_digest);
        assert_eq!(back.str("manifestDigest"), manifest_digest);

        // Other tools read it: skopeo copies it to a layout whose layer
        // blobs decompress to the diff_ids.
        let copied = skopeo_to_layout(&registry, &dest);
        let layout = copied.path().join("layout");
        let index: Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let digest = index["manifests"][0]["digest"].as_str().unwrap();
        assert_eq!(
            digest, manifest_digest,
            "skopeo kept the manifest as pushed"
        );
        check_layers(&layout_blob(&layout, digest), &built, media_type, |d| {
            layout_blob(&layout, d)
        });
    }
}

/// A fresh daemon, with an empty repository, for `registry`.
fn daemon_for_pull(registry: &Registry) -> Daemon {
    let args = registry.daemon_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::start_initialised(&args)
}

#[test]
fn registry_push_again_uploads_no_layer_blob() {
    cfsd_tests::need_registry!();
    let registry = Registry::start_https();
    let (daemon, _fixture, built) = holding(&registry, &two_layers(2));
    let auth = authfile(&registry);
    let dest = format!("{}/app:v1", registry.host());
    let first = push(&daemon, "app:v1", &dest, &["--authfile", &auth]);
    assert_eq!(first["layersUploaded"], 2);
    let uploads = |lines: &[String]| {
        lines
            .iter()
            .filter(|l| l.contains("/blobs/uploads"))
            .count()
    };
    let before = writes(&registry);
    assert!(
        uploads(&before) >= 3,
        "two layers and the config: {before:#?}"
    );

    // Again, named by its manifest digest, as another tag of the same
    // repository.
    let again = format!("{}/app:v2", registry.host());
    let second = push(
        &daemon,
        &built.manifest_digest,
        &again,
        &["--authfile", &auth],
    );
    assert_eq!(second["layersUploaded"], 0);
    assert_eq!(second["bytesUploaded"], 0);
    assert_eq!(second["manifestDigest"], first["manifestDigest"]);
    let after = writes(&registry);
    let new = &after[before.len()..];
    assert_eq!(uploads(new), 0, "a blob was uploaded again: {new:#?}");
    assert_eq!(new.len(), 1, "only the manifest: {new:#?}");
    assert!(new[0].contains("/v2/app/manifests/v2"), "{new:#?}");
    assert!(tagged(&registry, "app", "v2"));
}

/// The typed error of `Push` of `image` to `reference`, over the socket.
fn typed_push_refusal(
    daemon: &Daemon,
    image: &str,
    reference: &str,
    tls_verify: Option<bool>,
    authfile: Option<&Path>,
) -> OciError {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let params = PushParams {
        image: image.to_owned(),
        reference: reference.to_owned(),
        compression: Some(PushCompression::Gzip),
        tls_verify,
    };
    let fd: Option<OwnedFd> = authfile.map(|p| std::fs::File::open(p).unwrap().into());
    runtime.block_on(async {
        let mut client = daemon.client().await;
        match client.push(&params, fd).await {
            Err(CallError::Interface(e)) => e,
            other => panic!("not a typed refusal: {other:?}"),
        }
    })
}

#[test]
fn registry_push_with_wrong_credentials_or_a_missing_image_is_refused_typed() {
    cfsd_tests::need_registry!();
    let registry = Registry::start_https();
    let (daemon, _fixture, _built) = holding(&registry, &two_layers(3));
    let reference = format!("{}/app:v1", registry.host());
    let wrong = registry.auth_file(registry::USER, "not-the-password");
    for authfile in [Some(wrong.as_path()), None] {
        match typed_push_refusal(&daemon, "app:v1", &reference, None, authfile) {
            OciError::RegistryAuthFailed { registry: host, .. } => {
                assert_eq!(host, registry.host())
            }
            other => panic!("{authfile:?}: {other:?}"),
        }
    }
    let good = registry.auth_file(registry::USER, registry::PASSWORD);
    match typed_push_refusal(&daemon, "no-such", &reference, None, Some(&good)) {
        OciError::ImageNotFound { image } => assert_eq!(image, "no-such"),
        other => panic!("{other:?}"),
    }
    let pinned = format!("{reference}@sha256:{}", "a".repeat(64));
    let err = typed_push_refusal(&daemon, "app:v1", &pinned, None, Some(&good));
    assert!(matches!(err, OciError::InvalidReference { .. }), "{err:?}");
    assert!(writes(&registry).is_empty(), "{:#?}", writes(&registry));
    assert!(!tagged(&registry, "app", "v1"));
    // cfsctl passes the file it opens, and says what the registry did.
    let err = fails(
        &daemon,
        &[
            "oci",
            "push",
            "app:v1",
            &format!("docker://{reference}"),
            "--authfile",
            wrong.to_str().unwrap(),
        ],
    );
    assert!(err.contains("refused access"), "{err}");
}

/// A group nobody is given on top, for `--allow-group`.
const ADMINS: u32 = 4242;

/// `cfsctl --json oci push app:v1 docker://DEST ARGS` run as nobody with
/// `groups`, from a copy of cfsctl nobody can reach.
fn push_as_nobody(daemon: &Daemon, groups: &[u32], dest: &str, args: &[&str]) -> Value {
    let cfsctl = daemon.dir().join("cfsctl");
    if !cfsctl.exists() {
        std::fs::copy(cfsd_tests::bin("cfsctl"), &cfsctl).unwrap();
    }
    let out = peer::as_nobody(groups, cfsctl.to_str().unwrap())
        .args([
            "--address",
            &daemon.address(),
            "--json",
            "oci",
            "push",
            "app:v1",
        ])
        .arg(format!("docker://{dest}"))
        .args(args)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}; {}", cfsd_tests::stdout(&out), stderr(&out)))
}

#[test]
fn registry_push_by_an_unprivileged_peer_is_refused_before_any_request() {
    cfsd_tests::need_registry!();
    let registry = Registry::start_https();
    let daemon = registry.daemon_for_nobody(ADMINS);
    let (layout, _) = Layout::single(&two_layers(4), None);
    let fixture = Written::new(&layout);
    pull(&daemon, &[&fixture.oci(None), "app:v1"]);
    let dest = format!("{}/app:v1", registry.host());
    let requests = all_requests(&registry);
    let reply = push_as_nobody(&daemon, &[], &dest, &[]);
    assert_eq!(reply["error"], "io.cfsd.Oci.PermissionDenied", "{reply}");
    assert_eq!(reply["parameters"]["method"], "io.cfsd.Oci.Push", "{reply}");
    assert_eq!(all_requests(&registry), requests, "the registry was asked");
    assert!(!tagged(&registry, "app", "v1"));

    // A member of the admin group may push, with its own auth file.
    let auth = daemon.dir().join("auth.json");
    std::fs::copy(
        registry.auth_file(registry::USER, registry::PASSWORD),
        &auth,
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&auth, std::fs::Permissions::from_mode(0o644)).unwrap();
    let auth = auth.display().to_string();
    let reply = push_as_nobody(&daemon, &[ADMINS], &dest, &["--authfile", &auth]);
    assert_eq!(reply["layersUploaded"], 2, "{reply}");
    assert!(tagged(&registry, "app", "v1"));
}

#[test]
fn registry_push_of_a_layer_stream_that_no_longer_rebuilds_its_diff_id_sends_nothing() {
    cfsd_tests::need_registry!();
    let registry = Registry::start_https();
    let mut layout = Layout::new();
    let one = layout.add_image(&two_layers(5), Some("v1"));
    let two = layout.add_image(&two_layers(6), Some("v2"));
    let fixture = Written::new(&layout);
    let daemon = daemon_for_pull(&registry);
    pull(&daemon, &[&fixture.oci(Some("v1")), "app:v1"]);
    pull(&daemon, &[&fixture.oci(Some("v2")), "app:v2"]);
    // v1's top layer stream swapped for v2's, a valid stream of another
    // tar: only rebuilding it can tell.
    let streams = daemon.repo().join("streams");
    let stream = |b: &BuiltImage| streams.join(format!("oci-layer-{}", b.diff_ids[1]));
    let other = std::fs::read_link(stream(&two)).unwrap();
    std::fs::remove_file(stream(&one)).unwrap();
    std::os::unix::fs::symlink(&other, stream(&one)).unwrap();
    let auth = registry.auth_file(registry::USER, registry::PASSWORD);
    let reference = format!("{}/app:v1", registry.host());
    match typed_push_refusal(&daemon, "app:v1", &reference, None, Some(&auth)) {
        OciError::DigestMismatch { what, expected, .. } => {
            assert!(what.contains("diff_id"), "{what}");
            assert_eq!(expected, one.diff_ids[1]);
        }
        other => panic!("{other:?}"),
    }
    assert!(writes(&registry).is_empty(), "{:#?}", writes(&registry));
    assert!(!tagged(&registry, "app", "v1"));
}

/// A plain-HTTP registry behind a proxy that does `cut` to requests
/// naming `watched`, a daemon holding a two-layer image as `app:v1`, and
/// the typed error of pushing it through the proxy.
fn push_through(watched: &str, cut: Cut) -> (Registry, Daemon, OciError) {
    let registry = Registry::start_http();
    let (daemon, _fixture, _built) = holding(&registry, &two_layers(7));
    let proxy = Proxy::start(registry.port(), watched, cut);
    let reference = format!("{}/app:v1", proxy.host());
    let err = typed_push_refusal(&daemon, "app:v1", &reference, Some(false), None);
    (registry, daemon, err)
}

#[test]
fn registry_that_vanishes_mid_push_is_unreachable_and_nothing_is_tagged() {
    cfsd_tests::need_registry!();
    // The first layer's upload completes in the registry, whose answer
    // never arrives: from then on nothing is there.
    let (registry, daemon, err) =
        push_through("PUT /v2/app/blobs/uploads", Cut::Vanish { after: 0 });
    match err {
        OciError::RegistryUnreachable { .. } => {}
        other => panic!("{other:?}"),
    }
    assert!(!tagged(&registry, "app", "v1"));
    let manifests = writes(&registry)
        .into_iter()
        .filter(|l| l.contains("/manifests/"))
        .count();
    assert_eq!(manifests, 0);
    // The daemon serves on.
    let images = json(&daemon, &["oci", "images"]);
    assert_eq!(images["images"][0]["name"], "app:v1");
}

#[test]
fn registry_that_refuses_uploads_is_a_registry_error_and_nothing_is_tagged() {
    cfsd_tests::need_registry!();
    let refuse = Cut::Status {
        count: usize::MAX,
        status: 403,
    };
    let (registry, _daemon, err) = push_through("POST /v2/app/blobs/uploads", refuse);
    match err {
        OciError::RegistryError { status, what, .. } => {
            assert_eq!(status, 403);
            assert!(what.contains("uploading"), "{what}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!tagged(&registry, "app", "v1"));
    assert!(writes(&registry).is_empty(), "{:#?}", writes(&registry));
}

/// Wait up to `limit` for `done`, panicking with `what` after that.
fn wait_until(limit: std::time::Duration, what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn registry_push_whose_client_hangs_up_lets_go_of_the_registry_and_tags_nothing() {
    cfsd_tests::need_registry!();
    let registry = Registry::start_http();
    let (daemon, _fixture, _built) = holding(&registry, &two_layers(8));
    // The first layer's upload is stored, and its answer never comes.
    let stall = Cut::Stall { after: 0 };
    let proxy = Proxy::start(registry.port(), "PUT /v2/app/blobs/uploads", stall);
    let mut client = std::process::Command::new(cfsd_tests::bin("cfsctl"))
        .args(["--address", &daemon.address(), "oci", "push", "app:v1"])
        .arg(format!("docker://{}/app:v1", proxy.host()))
        .arg("--tls-verify=false")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stalled = || {
        proxy
            .heads()
            .iter()
            .any(|h| h.starts_with("PUT /v2/app/blobs/uploads"))
    };
    wait_until(std::time::Duration::from_secs(30), "no upload", stalled);
    client.kill().unwrap();
    client.wait().unwrap();
    // The daemon drops its requests, closing every connection it opened,
    // well before the 30 s a silent connection is given.
    let all_closed = || {
        let (opened, closed) = proxy.connections();
        opened > 0 && opened == closed
    };
    let limit = std::time::Duration::from_secs(10);
    wait_until(limit, "the daemon kept a connection open", all_closed);
    assert!(!tagged(&registry, "app", "v1"));
    let images = json(&daemon, &["oci", "images"]);
    assert_eq!(images["images"][0]["name"], "app:v1");
}
