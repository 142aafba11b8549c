//! `cfsctl oci delta create SOURCE TARGET docker://...` against a real
//! registry (Debian's docker-registry on 127.0.0.1, HTTPS with htpasswd):
//! the artifact pushed is byte for byte the one an `oci-archive:` gets,
//! and the referrers tag-schema index of the target manifest lists it,
//! keeping the deltas listed before.

use std::io::Read;

use cfsd_tests::{
    Daemon,
    oci::{BuiltImage, Compression, Entry, Image, Layer, Layout, Written, noise, sha256_digest},
    ocictl::{json, pull},
    peer, registry,
    registry::{Cut, Proxy, Registry},
    stderr,
};
use serde_json::{Value, json};

const ARTIFACT_TYPE: &str = "application/vnd.io.github.containers.oci-delta.v1";

/// Release `n` of an app: a base layer all releases share, and an app
/// layer whose big file changes a little from one release to the next.
fn release(n: u8) -> Image {
    let mut app = noise(21, 200_000);
    app[5_000..5_064].fill(n);
    Image::new(vec![
        Layer::new(
            Compression::Gzip,
            vec![
                Entry::dir("usr"),
                Entry::file("usr/base", noise(20, 50_000)),
            ],
        ),
        Layer::new(
            Compression::Gzip,
            vec![
                Entry::dir("app"),
                Entry::file("app/bin", app),
                Entry::file("app/release", format!("{n}\n")),
            ],
        ),
    ])
}

/// A registry; a daemon trusting it that holds releases 0, 1 and 2 as
/// `v0`, `v1`, `v2`, pulled from layouts; the layouts and what was built.
fn releases() -> (Registry, Daemon, Vec<Written>, Vec<BuiltImage>) {
    releases_on(Registry::start_https())
}

/// [`releases`] on `registry`.
fn releases_on(registry: Registry) -> (Registry, Daemon, Vec<Written>, Vec<BuiltImage>) {
    let args = registry.daemon_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = Daemon::start_initialised(&args);
    let (mut written, mut built) = (Vec::new(), Vec::new());
    for n in 0..3 {
        let (layout, b) = Layout::single(&release(n), None);
        let w = Written::new(&layout);
        pull(&daemon, &[&w.oci(None), &format!("v{n}")]);
        written.push(w);
        built.push(b);
    }
    (registry, daemon, written, built)
}

fn authfile(registry: &Registry) -> String {
    let path = registry.auth_file(registry::USER, registry::PASSWORD);
    path.display().to_string()
}

/// `cfsctl --json oci delta create SOURCE TARGET docker://HOST/DEST`.
fn push_delta(
    registry: &Registry,
    daemon: &Daemon,
    source: &str,
    target: &str,
    dest: &str,
) -> Value {
    let dest = format!("docker://{}/{dest}", registry.host());
    let auth = authfile(registry);
    json(
        daemon,
        &[
            "oci",
            "delta",
            "create",
            source,
            target,
            &dest,
            "--authfile",
            &auth,
        ],
    )
}

/// The manifest or index the registry serves for `app:TAG`, as skopeo
/// fetches it.
fn raw(registry: &Registry, tag: &str) -> Vec<u8> {
    let certs = registry.path("skopeo-raw-certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(registry.path("ca.crt"), certs.join("ca.crt")).unwrap();
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--cert-dir"])
        .arg(&certs)
        .arg("--creds")
        .arg(format!("{}:{}", registry::USER, registry::PASSWORD))
        .arg(format!("docker://{}/app:{tag}", registry.host()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect {tag}: {}",
        stderr(&out)
    );
    out.stdout
}

/// The member `name` of the tar at `path`.
fn archive_member(path: &std::path::Path, name: &str) -> Vec<u8> {
    let mut tar = tar::Archive::new(std::fs::File::open(path).unwrap());
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().to_str() == Some(name) {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            return bytes;
        }
    }
    panic!("no {name} in {}", path.display())
}

#[test]
fn registry_delta_push_is_listed_in_the_targets_referrers_index() {
    cfsd_tests::need_registry!();
    let (registry, daemon, written, built) = releases();
    // The target as pulled, with its original blobs and manifest.
    registry.push(&written[2].oci(None), "app:v2", &[]);
    let first = push_delta(&registry, &daemon, "v1", "v2", "app:v2-from-v1");
    let target = &built[2].manifest_digest;
    assert_eq!(first["targetDigest"], target.as_str());
    assert_eq!(first["sourceDigest"], built[1].manifest_digest.as_str());
    assert_eq!(first["subjectInRegistry"], true);
    let tag = format!("sha256-{}", built[2].manifest_hex());
    assert_eq!(first["referrersTag"], tag.as_str());
    assert_eq!(first["layersChanged"], 1);

    // The artifact is the one an oci-archive gets, byte for byte.
    let archive = written[0].dir.path().join("delta.tar");
    let dest = format!("oci-archive:{}", archive.display());
    let local = json(&daemon, &["oci", "delta", "create", "v1", "v2", &dest]);
    let digest = first["manifestDigest"].as_str().unwrap();
    assert_eq!(local["manifestDigest"], digest);
    let hex = digest.strip_prefix("sha256:").unwrap();
    let bytes = archive_member(&archive, &format!("blobs/sha256/{hex}"));
    let served = raw(&registry, "v2-from-v1");
    assert!(served == bytes, "the registry serves other bytes");
    let manifest: Value = serde_json::from_slice(&served).unwrap();
    assert_eq!(manifest["subject"]["digest"], target.as_str());

    // The tag-schema index lists it with its artifactType.
    let index: Value = serde_json::from_slice(&raw(&registry, &tag)).unwrap();
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{index}");
    assert_eq!(
        entries[0],
        json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": served.len(),
            "artifactType": ARTIFACT_TYPE,
            "annotations": manifest["annotations"],
        })
    );
    assert_eq!(
        entries[0]["annotations"]["io.github.containers.delta.source-config"],
        built[1].config_digest.as_str()
    );

    // A second delta to the same target keeps the first listed; pushing
    // the first again lists it once.
    let second = push_delta(&registry, &daemon, "v0", "v2", "app:v2-from-v0");
    push_delta(&registry, &daemon, "v1", "v2", "app:v2-from-v1");
    let index: Value = serde_json::from_slice(&raw(&registry, &tag)).unwrap();
    let mut listed: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    listed.sort();
    let mut expected = vec![digest, second["manifestDigest"].as_str().unwrap()];
    expected.sort();
    assert_eq!(listed, expected, "{index}");
    for entry in index["manifests"].as_array().unwrap() {
        assert_eq!(entry["artifactType"], ARTIFACT_TYPE, "{index}");
    }
}

#[test]
fn registry_delta_push_says_when_the_registry_lacks_the_target_manifest() {
    cfsd_tests::need_registry!();
    let (registry, daemon, _written, built) = releases();
    // Pushed by cfsd, the target gets a new manifest: the registry never
    // holds the one the delta names.
    let auth = authfile(&registry);
    let dest = format!("docker://{}/app:v2", registry.host());
    let pushed = json(&daemon, &["oci", "push", "v2", &dest, "--authfile", &auth]);
    assert_ne!(pushed["manifestDigest"], built[2].manifest_digest.as_str());
    let delta = push_delta(&registry, &daemon, "v1", "v2", "app:v2-from-v1");
    assert_eq!(delta["subjectInRegistry"], false);
    // Still pushed and listed, for a registry that gets the target later.
    let tag = format!("sha256-{}", built[2].manifest_hex());
    let index: Value = serde_json::from_slice(&raw(&registry, &tag)).unwrap();
    assert_eq!(index["manifests"][0]["digest"], delta["manifestDigest"]);
    let manifest = raw(&registry, "v2-from-v1");
    assert_eq!(
        sha256_digest(&manifest),
        delta["manifestDigest"].as_str().unwrap()
    );
}

#[test]
fn registry_delta_push_by_an_unprivileged_peer_is_refused_before_any_request() {
    cfsd_tests::need_registry!();
    let registry = Registry::start_https();
    let args = registry.daemon_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = Daemon::start_for_nobody(&args);
    assert!(daemon.cfsctl(&["init"]).status.success());
    let call = json!({"method": "io.cfsd.Oci.PushDelta", "parameters": {
        "source": "v1", "target": "v2",
        "reference": format!("{}/app:v2-from-v1", registry.host())}});
    let replies = peer::raw_calls_as(&daemon, &[], &[call]);
    assert_eq!(
        replies[0]["error"], "io.cfsd.Oci.PermissionDenied",
        "{replies:?}"
    );
    assert_eq!(replies[0]["parameters"]["method"], "io.cfsd.Oci.PushDelta");
    let log = std::fs::read_to_string(registry.path("registry.log")).unwrap_or_default();
    assert!(!log.contains(" /v2"), "the registry was asked: {log}");
}

#[test]
fn registry_delta_push_refused_by_the_registry_tags_nothing() {
    cfsd_tests::need_registry!();
    let (registry, daemon, _written, built) = releases_on(Registry::start_http());
    let refuse = Cut::Status {
        count: usize::MAX,
        status: 403,
    };
    let proxy = Proxy::start(registry.port(), "POST /v2/app/blobs/uploads", refuse);
    let dest = format!("docker://{}/app:v2-from-v1", proxy.host());
    let out = daemon.cfsctl(&[
        "--json",
        "oci",
        "delta",
        "create",
        "v1",
        "v2",
        &dest,
        "--tls-verify=false",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["error"], "io.cfsd.Oci.RegistryError", "{reply}");
    assert_eq!(reply["parameters"]["status"], 403, "{reply}");
    let tags = registry
        .storage()
        .join("docker/registry/v2/repositories/app/_manifests/tags");
    for tag in [
        "v2-from-v1".to_owned(),
        format!("sha256-{}", built[2].manifest_hex()),
    ] {
        assert!(!tags.join(&tag).exists(), "{tag} was tagged");
    }
}
