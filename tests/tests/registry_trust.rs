//! The signature policy enforced on `docker://` pulls from a real
//! registry (Debian's docker-registry on 127.0.0.1): GPG simple
//! signatures made by skopeo `--sign-by` with keys made by Debian's
//! gnupg, read from a lookaside store that registries.d names, verified
//! by cfsd with gpgv; and sigstore signatures attached in the registry
//! as cosign attaches them, verified with OpenSSL. Each refusal is typed and names the policy scope;
//! nothing is published and no layer is fetched before the manifest is
//! accepted.

use cfsd_tests::{
    Daemon,
    oci::{BuiltImage, Compression, Layout, Written, small_image},
    ocictl::{published, pull, pull_fails, succeeds, typed_refusal_with},
    registry::Registry,
    signing::{HttpStore, Key, Lookaside, SigstoreKey, attach_sigstore, push_signed, trusting},
};
use cfsd_varlink::oci::{OciError, PullParams};
use serde_json::json;

/// An image of its own (by `content`), written as an OCI layout.
fn image(content: &str) -> (Written, BuiltImage) {
    let (layout, built) = Layout::single(&small_image(Compression::Gzip, content), None);
    (Written::new(&layout), built)
}

/// The typed error of a Pull of `HOST/name` over plain HTTP.
fn refusal(daemon: &Daemon, registry: &Registry, name: &str) -> OciError {
    let params = PullParams {
        transport: "docker".to_owned(),
        reference: Some(format!("{}/{name}", registry.host())),
        tag: Some("refused".to_owned()),
        tls_verify: Some(false),
        ..PullParams::default()
    };
    typed_refusal_with(daemon, &params, Vec::new())
}

/// Whether the registry was asked for the blob `digest` after its
/// first `since` requests (skopeo's pushes ask for blobs too).
fn fetched(registry: &Registry, since: usize, digest: &str) -> bool {
    registry.requests()[since..]
        .iter()
        .any(|l| l.contains(&format!("/blobs/{digest}")))
}

/// A `signedBy` requirement trusting the key files `paths`.
fn signed_by(paths: &[&std::path::Path]) -> serde_json::Value {
    json!([{"type": "signedBy", "keyType": "GPGKeys", "keyPaths": paths}])
}

/// The refusals every kind of `requirement` must give, with images
/// named after them: `foreign` signed by another key, `unsigned`,
/// `other` served with the signature of `signed`'s manifest, `renamed`
/// signed as `elsewhere`, and a `rejected` scope. Each is typed and
/// names its scope; nothing is published and no layer of `signed` or
/// `other` is asked for. Returns how many requests the registry had
/// before them.
fn refusals(
    daemon: &Daemon,
    registry: &Registry,
    requirement: &str,
    [signed, other]: [&BuiltImage; 2],
    elsewhere: &str,
) -> usize {
    let before = published(&daemon.repo());
    let pushed = registry.requests().len();
    let host = registry.host();
    let scope = |name: &str| format!("docker \"{host}/{name}\"");
    match refusal(daemon, registry, "foreign:v1") {
        OciError::SignatureUntrusted {
            scope: s,
            requirement: r,
            reason,
        } => {
            assert_eq!((s, r.as_str()), (scope("foreign"), requirement));
            assert!(reason.contains("trust"), "{reason}");
        }
        e => panic!("{e:?}"),
    }
    match refusal(daemon, registry, "unsigned:v1") {
        OciError::SignatureMissing {
            scope: s,
            requirement: r,
            image,
        } => {
            assert_eq!((s, r.as_str()), (scope("unsigned"), requirement));
            assert!(image.contains(&other.manifest_digest), "{image}");
        }
        e => panic!("{e:?}"),
    }
    match refusal(daemon, registry, "other:v1") {
        OciError::SignatureDigestMismatch {
            scope: s,
            signed: claimed,
            manifest,
        } => {
            assert_eq!(s, scope("other"));
            assert_eq!(
                (&claimed, &manifest),
                (&signed.manifest_digest, &other.manifest_digest)
            );
        }
        e => panic!("{e:?}"),
    }
    match refusal(daemon, registry, "renamed:v1") {
        OciError::SignatureIdentityMismatch {
            scope: s,
            signed,
            expected,
        } => {
            assert_eq!((s, signed.as_str()), (scope("renamed"), elsewhere));
            assert_eq!(expected, format!("{host}/renamed:v1"));
        }
        e => panic!("{e:?}"),
    }
    match refusal(daemon, registry, "rejected:v1") {
        OciError::PolicyRejected { scope: s } => assert_eq!(s, scope("rejected")),
        e => panic!("{e:?}"),
    }
    assert_eq!(published(&daemon.repo()), before, "a refusal published");
    for layer in signed.layer_digests.iter().chain(&other.layer_digests) {
        assert!(
            !fetched(registry, pushed, layer),
            "layer {layer} was fetched"
        );
    }
    pushed
}

#[test]
fn registry_gpg_signatures_admit_the_signed_image_and_refuse_each_fault_typed() {
    cfsd_tests::need_registry!();
    cfsd_tests::need_gpg!();
    let registry = Registry::start_http();
    let (key, stranger) = (Key::new("signer"), Key::new("stranger"));
    let lookaside = Lookaside::new();
    let host = registry.host();
    let (signed, signed_built) = image("signed\n");
    let (other, other_built) = image("other\n");
    for name in ["app:v1", "data:v1", "foreign:v1"] {
        push_signed(&registry, &signed.oci(None), name, &key, &lookaside, None);
    }
    // Signed, but under another name than it is pulled by.
    let elsewhere = format!("{host}/elsewhere:v1");
    push_signed(
        &registry,
        &signed.oci(None),
        "renamed:v1",
        &key,
        &lookaside,
        Some(&elsewhere),
    );
    registry.push(&other.oci(None), "unsigned:v1", &[]);
    registry.push(&other.oci(None), "other:v1", &[]);
    // The store serves app's signature for other's manifest.
    let app = registry.tag_digest("app", "v1");
    assert_eq!(app, signed_built.manifest_digest);
    lookaside.copy(
        ("app", &app),
        ("other", &registry.tag_digest("other", "v1")),
    );

    let keys = tempfile::tempdir().unwrap();
    let trusted = key.public_file(keys.path(), "signer");
    let untrusted = stranger.public_file(keys.path(), "stranger");
    let armoured = openssl::base64::encode_block(&key.public(true));
    let policy = registry.policy(
        "signed.json",
        &json!({
            "default": [{"type": "reject"}],
            "transports": {"docker": {
                // Either key will do; the signer's is the second.
                format!("{host}/app"): signed_by(&[&untrusted, &trusted]),
                format!("{host}/data"): [{"type": "signedBy", "keyType": "GPGKeys", "keyData": armoured}],
                format!("{host}/foreign"): signed_by(&[&untrusted]),
                format!("{host}/renamed"): signed_by(&[&trusted]),
                format!("{host}/unsigned"): signed_by(&[&trusted]),
                format!("{host}/other"): signed_by(&[&trusted]),
                format!("{host}/rejected"): [{"type": "reject"}],
            }}
        }),
    );
    let daemon = trusting(&registry, &policy, &lookaside);
    let pushed = refusals(
        &daemon,
        &registry,
        "signedBy",
        [&signed_built, &other_built],
        &elsewhere,
    );
    let message = pull_fails(
        &daemon,
        &[&format!("docker://{host}/foreign:v1"), "--tls-verify=false"],
    );
    assert!(message.contains("hint: the trusted keys"), "{message}");

    // The daemon serves on, and admits what is signed by a trusted key.
    let pulled = pull(
        &daemon,
        &[&format!("docker://{host}/app:v1"), "--tls-verify=false"],
    );
    assert_eq!(pulled.str("manifestDigest"), signed_built.manifest_digest);
    let by_data = pull(
        &daemon,
        &[
            &format!("docker://{host}/data:v1"),
            "data",
            "--tls-verify=false",
        ],
    );
    assert_eq!(by_data.str("imageId"), pulled.str("imageId"));
    // The signature that admitted it is kept with it, until it is gone.
    let hex = &signed_built.manifest_digest["sha256:".len()..];
    let kept = daemon
        .repo()
        .join(format!("signatures/sha256-{hex}/signature-1"));
    let original = lookaside.signatures("app", &signed_built.manifest_digest);
    assert_eq!(
        std::fs::read(&kept).unwrap(),
        std::fs::read(original.join("signature-1")).unwrap()
    );
    succeeds(&daemon, &["oci", "rm", &signed_built.manifest_digest]);
    succeeds(&daemon, &["gc"]);
    assert!(
        !kept.parent().unwrap().exists(),
        "the signatures outlived the image"
    );
    // What the refusals above were checked against: an admitted pull
    // does fetch the layer.
    assert!(fetched(&registry, pushed, &signed_built.layer_digests[0]));
}

#[test]
fn registry_pinned_digest_refuses_another_manifest_before_any_layer() {
    cfsd_tests::need_registry!();
    let registry = Registry::start_http();
    let (fixture, built) = image("pinned\n");
    registry.push(&fixture.oci(None), "app:v1", &[]);
    let daemon = Daemon::start_initialised(
        &registry
            .daemon_args()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let wrong = format!("sha256:{}", "0".repeat(64));
    let pushed = registry.requests().len();
    let params = PullParams {
        transport: "docker".to_owned(),
        reference: Some(format!("{}/app:v1", registry.host())),
        tls_verify: Some(false),
        digest: Some(wrong.clone()),
        ..PullParams::default()
    };
    match typed_refusal_with(&daemon, &params, Vec::new()) {
        OciError::PinnedDigestMismatch { pinned, manifest } => {
            assert_eq!(
                (pinned, manifest),
                (wrong.clone(), built.manifest_digest.clone())
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(!fetched(&registry, pushed, &built.layer_digests[0]));
    assert!(published(&daemon.repo()).tags.is_empty());
    // The same from a layout, through cfsctl.
    let message = pull_fails(&daemon, &[&fixture.oci(None), "local", "--digest", &wrong]);
    assert!(message.contains("not the pinned"), "{message}");
    let source = format!("docker://{}/app:v1", registry.host());
    let pulled = pull(
        &daemon,
        &[
            &source,
            "--tls-verify=false",
            "--digest",
            &built.manifest_digest,
        ],
    );
    assert_eq!(pulled.str("manifestDigest"), built.manifest_digest);
    assert!(fetched(&registry, pushed, &built.layer_digests[0]));
}

#[test]
fn registry_sigstore_signatures_admit_the_signed_image_and_refuse_each_fault_typed() {
    cfsd_tests::need_registry!();
    let registry = Registry::start_http();
    let (key, stranger) = (SigstoreKey::new(), SigstoreKey::new());
    let lookaside = Lookaside::new();
    lookaside.use_sigstore_attachments();
    let host = registry.host();
    let (signed, signed_built) = image("sigstore\n");
    let (other, other_built) = image("sigstore other\n");
    for name in ["app", "foreign", "renamed"] {
        registry.push(&signed.oci(None), &format!("{name}:v1"), &[]);
    }
    for name in ["unsigned", "other"] {
        registry.push(&other.oci(None), &format!("{name}:v1"), &[]);
    }
    let (app, other_digest) = (&signed_built.manifest_digest, &other_built.manifest_digest);
    // A signature that does not verify comes first: one good one will do.
    let forged = (
        key.sign(&format!("{host}/app:v1"), app).0,
        stranger.sign("x:1/y:z", app).1,
    );
    attach_sigstore(
        &registry,
        "app",
        app,
        &[forged, key.sign(&format!("{host}/app:v1"), app)],
    );
    attach_sigstore(
        &registry,
        "foreign",
        app,
        &[stranger.sign(&format!("{host}/foreign:v1"), app)],
    );
    let elsewhere = format!("{host}/elsewhere:v1");
    attach_sigstore(&registry, "renamed", app, &[key.sign(&elsewhere, app)]);
    // A signature of app's manifest, served for other's.
    attach_sigstore(
        &registry,
        "other",
        other_digest,
        &[key.sign(&format!("{host}/other:v1"), app)],
    );

    let keys = tempfile::tempdir().unwrap();
    let public = keys.path().join("sigstore.pub");
    std::fs::write(&public, key.public_pem()).unwrap();
    let sigstore = |path: &std::path::Path| json!([{"type": "sigstoreSigned", "keyPath": path}]);
    let policy = registry.policy(
        "sigstore.json",
        &json!({
            "default": [{"type": "reject"}],
            "transports": {"docker": {
                format!("{host}/app"): sigstore(&public),
                format!("{host}/foreign"): sigstore(&public),
                format!("{host}/renamed"): sigstore(&public),
                format!("{host}/unsigned"): sigstore(&public),
                format!("{host}/other"): sigstore(&public),
                format!("{host}/rejected"): [{"type": "reject"}],
            }}
        }),
    );
    let daemon = trusting(&registry, &policy, &lookaside);
    let pushed = refusals(
        &daemon,
        &registry,
        "sigstoreSigned",
        [&signed_built, &other_built],
        &elsewhere,
    );
    let pulled = pull(
        &daemon,
        &[&format!("docker://{host}/app:v1"), "--tls-verify=false"],
    );
    assert_eq!(pulled.str("manifestDigest"), *app);
    assert!(fetched(&registry, pushed, &signed_built.layer_digests[0]));
}

#[test]
fn registry_gpg_signatures_are_read_from_a_lookaside_store_over_http() {
    cfsd_tests::need_registry!();
    cfsd_tests::need_gpg!();
    let registry = Registry::start_http();
    let key = Key::new("http");
    let lookaside = Lookaside::new();
    let (signed, built) = image("http lookaside\n");
    push_signed(
        &registry,
        &signed.oci(None),
        "app:v1",
        &key,
        &lookaside,
        None,
    );
    // The same manifest, never signed in this repository.
    registry.push(&signed.oci(None), "unsigned:v1", &[]);
    let server = HttpStore::start(&lookaside.store());
    let registries_d = tempfile::tempdir().unwrap();
    std::fs::write(
        registries_d.path().join("http.yaml"),
        format!("default-docker:\n  lookaside: {}/\n", server.url()),
    )
    .unwrap();
    let keys = tempfile::tempdir().unwrap();
    let trusted = key.public_file(keys.path(), "http");
    let host = registry.host();
    let policy = registry.policy(
        "http.json",
        &json!({"default": signed_by(&[&trusted]), "transports": {}}),
    );
    let daemon = Daemon::start_initialised(&[
        "--policy",
        policy.to_str().unwrap(),
        "--registries-d",
        registries_d.path().to_str().unwrap(),
    ]);
    // A 404 from the store ends the signatures: there are none.
    match refusal(&daemon, &registry, "unsigned:v1") {
        OciError::SignatureMissing { scope, image, .. } => {
            assert_eq!(scope, "default");
            assert!(image.contains(&built.manifest_digest), "{image}");
        }
        other => panic!("{other:?}"),
    }
    let pulled = pull(
        &daemon,
        &[&format!("docker://{host}/app:v1"), "--tls-verify=false"],
    );
    assert_eq!(pulled.str("manifestDigest"), built.manifest_digest);
}
