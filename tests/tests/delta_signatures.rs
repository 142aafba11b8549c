//! Signatures that travel with a delta: a publisher whose image was
//! admitted by GPG signatures (made by skopeo `--sign-by`) makes a delta
//! archive that carries them (`sha256-HEX.sig` in its index), and an
//! updater with no network checks the delta's target against its policy's
//! `oci-archive` scope with those signatures alone: the registry is gone
//! before any updater starts. A delta pushed to a registry takes them to
//! the target's `sha256-HEX.sig` tag beside it. Each refusal is typed,
//! names the scope, and publishes nothing.

use std::{collections::BTreeMap, path::Path};

use cfsd_tests::{
    Daemon,
    delta::versions,
    oci::{BuiltImage, Layout, Written},
    ocictl::{
        json as json_reply, published, pull, pull_fails, succeeds, typed_refusal_with,
        typed_source_refusal,
    },
    registry::Registry,
    signing::{Key, Lookaside, SigstoreKey, attach_sigstore, push_signed, trusting},
    tar_members,
};
use cfsd_varlink::oci::{OciError, PullParams};
use serde_json::{Value, json};

/// Write `members` as a tar at `path`.
fn write_tar(path: &Path, members: &BTreeMap<String, Vec<u8>>) {
    let mut tar = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, bytes) in members {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        tar.append_data(&mut header, name, &bytes[..]).unwrap();
    }
    tar.finish().unwrap();
}

/// The index entry of the signatures `members` carry.
fn signature_entry(members: &BTreeMap<String, Vec<u8>>) -> Option<Value> {
    let index: Value = serde_json::from_slice(&members["index.json"]).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .is_some_and(|n| n.ends_with(".sig"))
        })
        .cloned()
}

/// The deltas a publisher makes, and what the updaters need.
struct Made {
    /// v1 to v2, carrying v2's signature.
    signed: std::path::PathBuf,
    /// v1 to v2 from a publisher that has no signature of v2.
    unsigned: std::path::PathBuf,
    /// `signed`, its signatures swapped for those of v1's manifest.
    forged: std::path::PathBuf,
    v1_layout: Written,
    v1: BuiltImage,
    v2: BuiltImage,
    /// The signature skopeo made for v2.
    original: Vec<u8>,
    host: String,
    _dir: tempfile::TempDir,
}

/// A publisher pulls both versions from the registry, admitted by their
/// signatures, and makes the deltas; then the registry is stopped.
fn publish(key: &Key, trusted: &Path) -> Made {
    let mut registry = Registry::start_http();
    let lookaside = Lookaside::new();
    let host = registry.host();
    let (v1_image, v2_image) = versions();
    let (l1, v1) = Layout::single(&v1_image, None);
    let (l2, v2) = Layout::single(&v2_image, None);
    let (w1, w2) = (Written::new(&l1), Written::new(&l2));
    push_signed(&registry, &w1.oci(None), "app:v1", key, &lookaside, None);
    push_signed(&registry, &w2.oci(None), "app:v2", key, &lookaside, None);
    let policy = registry.policy(
        "publisher.json",
        &json!({"default": [{"type": "reject"}], "transports": {"docker": {
            format!("{host}/app"): [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": trusted}],
        }}}),
    );
    let publisher = trusting(&registry, &policy, &lookaside);
    for tag in ["v1", "v2"] {
        let source = format!("docker://{host}/app:{tag}");
        pull(&publisher, &[&source, tag, "--tls-verify=false"]);
    }
    let original = std::fs::read(
        lookaside
            .signatures("app", &v2.manifest_digest)
            .join("signature-1"),
    )
    .unwrap();
    registry.stop();
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| dir.path().join(name);
    let create = |daemon: &Daemon, from: &str, to: &str, path: &Path| {
        let dest = format!("oci-archive:{}", path.display());
        succeeds(daemon, &["oci", "delta", "create", from, to, &dest]);
    };
    create(&publisher, "v1", "v2", &out("signed.tar"));
    create(&publisher, "v2", "v1", &out("reverse.tar"));
    // A publisher that got v2 from a layout holds no signature of it.
    let plain = Daemon::start_initialised(&[]);
    pull(&plain, &[&w1.archive(None), "v1"]);
    pull(&plain, &[&w2.archive(None), "v2"]);
    create(&plain, "v1", "v2", &out("unsigned.tar"));
    forge(
        &out("signed.tar"),
        &out("reverse.tar"),
        &out("forged.tar"),
        &v2,
    );
    Made {
        signed: out("signed.tar"),
        unsigned: out("unsigned.tar"),
        forged: out("forged.tar"),
        v1_layout: w1,
        v1,
        v2,
        original,
        host,
        _dir: dir,
    }
}

/// `signed` with its signatures replaced by `reverse`'s (those of v1's
/// manifest), filed under `v2`'s digest.
fn forge(signed: &Path, reverse: &Path, out: &Path, v2: &BuiltImage) {
    let mut forged = tar_members(signed);
    let other = tar_members(reverse);
    assert!(signature_entry(&forged).is_some(), "the delta carries v2's");
    let mut entry = signature_entry(&other).expect("the reverse delta carries v1's");
    let tag = format!("sha256-{}.sig", &v2.manifest_digest["sha256:".len()..]);
    entry["annotations"]["org.opencontainers.image.ref.name"] = json!(tag);
    let mut index: Value = serde_json::from_slice(&forged["index.json"]).unwrap();
    let entries = index["manifests"].as_array_mut().unwrap();
    entries.retain(|e| !e["annotations"].to_string().contains(".sig"));
    entries.push(entry);
    forged.insert("index.json".into(), serde_json::to_vec(&index).unwrap());
    for (name, bytes) in other {
        forged.entry(name).or_insert(bytes);
    }
    write_tar(out, &forged);
}

/// An updater under `archive` (the `oci-archive` "" scope), holding
/// `v1` pulled from its layout (the `oci` scope admits anything).
fn updater(v1: &Written, dir: &Path, archive: Value) -> Daemon {
    let policy = dir.join("updater.json");
    let body = json!({"default": [{"type": "reject"}], "transports": {
        "oci": {"": [{"type": "insecureAcceptAnything"}]},
        "oci-archive": {"": archive},
    }});
    std::fs::write(&policy, body.to_string()).unwrap();
    let daemon = Daemon::start_initialised(&["--policy", policy.to_str().unwrap()]);
    pull(&daemon, &[&v1.oci(None), "v1"]);
    daemon
}

/// The typed refusal of pulling `archive` into `daemon`, which must
/// publish nothing.
fn refused(daemon: &Daemon, archive: &Path) -> OciError {
    let before = published(&daemon.repo());
    let source = format!("oci-archive:{}", archive.display());
    let err = typed_source_refusal(daemon, &source, "v2");
    assert_eq!(published(&daemon.repo()), before, "a refusal published");
    err
}

const SCOPE: &str = "oci-archive \"\"";

#[test]
fn delta_archive_carries_its_targets_signatures_and_is_checked_offline() {
    cfsd_tests::need_registry!();
    cfsd_tests::need_gpg!();
    let (key, stranger) = (Key::new("publisher"), Key::new("stranger"));
    let keys = tempfile::tempdir().unwrap();
    let trusted = key.public_file(keys.path(), "publisher");
    let untrusted = stranger.public_file(keys.path(), "stranger");
    let made = publish(&key, &trusted);
    let repository =
        json!({"type": "exactRepository", "dockerRepository": format!("{}/app", made.host)});

    // Accepted: the signature the delta carries is v2's, by the key.
    let daemon = updater(
        &made.v1_layout,
        keys.path(),
        signed_by(&trusted, repository.clone()),
    );
    let source = format!("oci-archive:{}", made.signed.display());
    let pulled = pull(&daemon, &[&source, "v2"]);
    assert_eq!(pulled.str("manifestDigest"), made.v2.manifest_digest);
    assert!(pulled.result["delta"].is_object(), "{}", pulled.result);
    let hex = &made.v2.manifest_digest["sha256:".len()..];
    let kept = daemon
        .repo()
        .join(format!("signatures/sha256-{hex}/signature-1"));
    assert_eq!(std::fs::read(kept).unwrap(), made.original);

    missing_or_for_another_digest(&made, keys.path(), &trusted, &repository);
    // Wrong key.
    let daemon = updater(
        &made.v1_layout,
        keys.path(),
        signed_by(&untrusted, repository),
    );
    match refused(&daemon, &made.signed) {
        OciError::SignatureUntrusted { scope, .. } => assert_eq!(scope, SCOPE),
        e => panic!("{e:?}"),
    }

    other_identities_and_reject(&made, keys.path(), &trusted);
}

#[test]
fn delta_pushed_to_a_registry_takes_its_targets_signatures_beside_it() {
    cfsd_tests::need_registry!();
    cfsd_tests::need_gpg!();
    let (key, stranger) = (Key::new("pusher"), Key::new("stranger"));
    let keys = tempfile::tempdir().unwrap();
    let trusted = key.public_file(keys.path(), "pusher");
    let untrusted = stranger.public_file(keys.path(), "stranger");
    let registry = Registry::start_http();
    let host = registry.host();
    let (v1_image, v2_image) = versions();
    let (l1, _) = Layout::single(&v1_image, None);
    let (l2, v2) = Layout::single(&v2_image, None);
    let (w1, w2) = (Written::new(&l1), Written::new(&l2));
    // Signed into a store only the publisher reads.
    let store = Lookaside::new();
    push_signed(&registry, &w2.oci(None), "app:v2", &key, &store, None);
    let policy = |name: &str, key: &Path| {
        let signed = json!([{"type": "signedBy", "keyType": "GPGKeys", "keyPath": key}]);
        registry.policy(
            name,
            &json!({"default": [{"type": "reject"}], "transports": {
                "docker": {format!("{host}/app"): signed},
                "oci": {"": [{"type": "insecureAcceptAnything"}]},
            }}),
        )
    };
    let publisher = trusting(&registry, &policy("publisher.json", &trusted), &store);
    pull(&publisher, &[&w1.oci(None), "v1"]);
    let source = format!("docker://{host}/app:v2");
    pull(&publisher, &[&source, "v2", "--tls-verify=false"]);
    let dest = format!("docker://{host}/app:v2-delta");
    let create = "oci delta create v1 v2".split(' ');
    let args: Vec<&str> = create
        .chain([dest.as_str(), "--tls-verify=false"])
        .collect();
    succeeds(&publisher, &args);
    let hex = &v2.manifest_digest["sha256:".len()..];
    assert!(
        !registry
            .tag_digest("app", &format!("sha256-{hex}.sig"))
            .is_empty()
    );
    push_carries_none(&registry, &publisher, &v2);

    // Updaters read no store that holds the signature: only what was
    // pushed beside the delta, where registries.d says to look.
    let updater = |key: &Path, attachments: bool| {
        let empty = Lookaside::new();
        if attachments {
            empty.use_sigstore_attachments();
        }
        let daemon = trusting(&registry, &policy("updater.json", key), &empty);
        pull(&daemon, &[&w1.oci(None), "v1"]);
        (daemon, empty)
    };
    let delta = format!("{host}/app:v2-delta");
    let scope = format!("docker \"{host}/app\"");
    let refusal = |daemon: &Daemon| registry_refusal(daemon, &delta);
    let (daemon, _store) = updater(&trusted, true);
    let pulled = pull(
        &daemon,
        &[&format!("docker://{delta}"), "v2", "--tls-verify=false"],
    );
    assert_eq!(pulled.str("manifestDigest"), v2.manifest_digest);
    assert!(pulled.result["delta"].is_object(), "{}", pulled.result);
    let (daemon, _store) = updater(&untrusted, true);
    match refusal(&daemon) {
        OciError::SignatureUntrusted { scope: s, .. } => assert_eq!(s, scope),
        e => panic!("{e:?}"),
    }
    let (daemon, _store) = updater(&trusted, false);
    match refusal(&daemon) {
        OciError::SignatureMissing { scope: s, .. } => assert_eq!(s, scope),
        e => panic!("{e:?}"),
    }
}

#[test]
fn delta_archive_carries_sigstore_signatures_too() {
    cfsd_tests::need_registry!();
    let mut registry = Registry::start_http();
    let host = registry.host();
    let (key, stranger) = (SigstoreKey::new(), SigstoreKey::new());
    let keys = tempfile::tempdir().unwrap();
    let pem = |key: &SigstoreKey, name: &str| {
        let path = keys.path().join(name);
        std::fs::write(&path, key.public_pem()).unwrap();
        path
    };
    let (trusted, untrusted) = (pem(&key, "trusted.pem"), pem(&stranger, "stranger.pem"));
    let lookaside = Lookaside::new();
    lookaside.use_sigstore_attachments();
    let (v1_image, v2_image) = versions();
    let (l1, _) = Layout::single(&v1_image, None);
    let (l2, v2) = Layout::single(&v2_image, None);
    let (w1, w2) = (Written::new(&l1), Written::new(&l2));
    registry.push(&w2.oci(None), "app:v2", &[]);
    let digest = &v2.manifest_digest;
    attach_sigstore(
        &registry,
        "app",
        digest,
        &[key.sign(&format!("{host}/app:v2"), digest)],
    );
    let sigstore = |key: &Path, identity: Value| json!([{"type": "sigstoreSigned", "keyPath": key, "signedIdentity": identity}]);
    let policy = registry.policy(
        "publisher.json",
        &json!({"default": [{"type": "reject"}], "transports": {
            "docker": {format!("{host}/app"): sigstore(&trusted, json!({"type": "matchRepoDigestOrExact"}))},
            "oci": {"": [{"type": "insecureAcceptAnything"}]},
        }}),
    );
    let publisher = trusting(&registry, &policy, &lookaside);
    pull(&publisher, &[&w1.oci(None), "v1"]);
    pull(
        &publisher,
        &[
            &format!("docker://{host}/app:v2"),
            "v2",
            "--tls-verify=false",
        ],
    );
    registry.stop();
    let out = keys.path().join("delta.tar");
    let dest = format!("oci-archive:{}", out.display());
    succeeds(&publisher, &["oci", "delta", "create", "v1", "v2", &dest]);

    let repository = json!({"type": "exactRepository", "dockerRepository": format!("{host}/app")});
    let daemon = updater(&w1, keys.path(), sigstore(&trusted, repository.clone()));
    let pulled = pull(&daemon, &[&dest, "v2"]);
    assert_eq!(pulled.str("manifestDigest"), v2.manifest_digest);
    let daemon = updater(&w1, keys.path(), sigstore(&untrusted, repository));
    match refused(&daemon, &out) {
        OciError::SignatureUntrusted {
            scope, requirement, ..
        } => {
            assert_eq!(
                (scope.as_str(), requirement.as_str()),
                (SCOPE, "sigstoreSigned")
            );
        }
        e => panic!("{e:?}"),
    }
}

/// A `signedBy` requirement for `key`, under `identity`.
fn signed_by(key: &Path, identity: Value) -> Value {
    json!([{"type": "signedBy", "keyType": "GPGKeys", "keyPath": key, "signedIdentity": identity}])
}

/// Refused under the `trusted` key and `repository`: a delta without
/// signatures, and one whose signature is of another manifest.
fn missing_or_for_another_digest(made: &Made, dir: &Path, trusted: &Path, repository: &Value) {
    // Missing: a delta without signatures.
    let daemon = updater(&made.v1_layout, dir, signed_by(trusted, repository.clone()));
    match refused(&daemon, &made.unsigned) {
        OciError::SignatureMissing {
            scope, requirement, ..
        } => {
            assert_eq!((scope.as_str(), requirement.as_str()), (SCOPE, "signedBy"));
        }
        e => panic!("{e:?}"),
    }
    let unsigned = format!("oci-archive:{}", made.unsigned.display());
    let message = pull_fails(&daemon, &[&unsigned, "v2"]);
    assert!(message.contains("hint: a layout carries"), "{message}");
    // For another digest: v1's signature filed under v2's name.
    match refused(&daemon, &made.forged) {
        OciError::SignatureDigestMismatch {
            scope,
            signed,
            manifest,
        } => {
            assert_eq!(scope, SCOPE);
            assert_eq!(
                (signed, manifest),
                (
                    made.v1.manifest_digest.clone(),
                    made.v2.manifest_digest.clone()
                )
            );
        }
        e => panic!("{e:?}"),
    }
}

/// Refused under the `trusted` key: identities the signature does not
/// name, and a reject scope.
fn other_identities_and_reject(made: &Made, dir: &Path, trusted: &Path) {
    // Identity: signed as HOST/app:v2, which neither another repository
    // nor the default identity (a layout has no docker name) admits.
    let elsewhere =
        json!({"type": "exactRepository", "dockerRepository": format!("{}/other", made.host)});
    for (identity, expected) in [
        (elsewhere, format!("repository {}/other", made.host)),
        (
            json!({"type": "matchRepoDigestOrExact"}),
            "exactReference or exactRepository".to_owned(),
        ),
    ] {
        let daemon = updater(&made.v1_layout, dir, signed_by(trusted, identity));
        match refused(&daemon, &made.signed) {
            OciError::SignatureIdentityMismatch {
                scope,
                signed,
                expected: e,
            } => {
                assert_eq!(
                    (scope.as_str(), signed),
                    (SCOPE, format!("{}/app:v2", made.host))
                );
                assert!(e.contains(&expected), "{e}");
            }
            e => panic!("{e:?}"),
        }
    }

    // A reject scope refuses before the archive is read.
    let daemon = updater(&made.v1_layout, dir, json!([{"type": "reject"}]));
    match refused(&daemon, &made.signed) {
        OciError::PolicyRejected { scope } => assert_eq!(scope, SCOPE),
        e => panic!("{e:?}"),
    }
}

/// A push of `v2` from `publisher`, whose kept signatures name v2's own
/// manifest: the pushed manifest is new (its layers compressed again),
/// so none of them go with it.
fn push_carries_none(registry: &Registry, publisher: &Daemon, v2: &BuiltImage) {
    let pushed = format!("docker://{}/pushed:v2", registry.host());
    let report = json_reply(
        publisher,
        &["oci", "push", "v2", &pushed, "--tls-verify=false"],
    );
    assert_ne!(report["manifestDigest"], v2.manifest_digest.as_str());
    let tags = registry
        .storage()
        .join("docker/registry/v2/repositories/pushed/_manifests/tags");
    let tags: Vec<_> = std::fs::read_dir(tags)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(tags, ["v2"], "a push tagged more than its image");
}

/// The typed refusal of a registry pull of the delta `reference` (plain
/// HTTP), which must publish nothing.
fn registry_refusal(daemon: &Daemon, reference: &str) -> OciError {
    let before = published(&daemon.repo());
    let params = PullParams {
        transport: "docker".to_owned(),
        reference: Some(reference.to_owned()),
        tag: Some("v2".to_owned()),
        tls_verify: Some(false),
        ..PullParams::default()
    };
    let err = typed_refusal_with(daemon, &params, Vec::new());
    assert_eq!(published(&daemon.repo()), before, "a refusal published");
    err
}
