//! Signed images for the trust tests: GPG keys made with Debian's gnupg,
//! each in a GNUPGHOME of its own, and a lookaside signature store that
//! a registries.d directory names for both skopeo (which writes
//! signatures there when it pushes with `--sign-by`) and cfsd (which
//! reads them). Nothing here touches the machine's own containers
//! configuration.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// Return from the test, through [`crate::skip`], when gpg or gpgv is
/// missing (scripts/setup-deps installs them).
#[macro_export]
macro_rules! need_gpg {
    () => {
        if !$crate::signing::available() {
            $crate::skip("gpg or gpgv is missing (scripts/setup-deps)");
            return;
        }
    };
}

/// Whether gpg (to make keys and sign) and gpgv (what cfsd verifies
/// with) are installed.
pub fn available() -> bool {
    crate::installed(&["gpg", "gpgv", "gpgconf"])
}

/// A GPG key pair in a keyring of its own; its agent is stopped on drop.
#[derive(Debug)]
pub struct Key {
    home: tempfile::TempDir,
    /// The primary key's fingerprint, as `--sign-by` takes it.
    pub fingerprint: String,
}

impl Key {
    /// A new key without passphrase for `name`.
    pub fn new(name: &str) -> Self {
        // Short: gpg-agent's socket path must fit in sun_path.
        let home = tempfile::Builder::new().prefix("gpg").tempdir().unwrap();
        let mut key = Key {
            home,
            fingerprint: String::new(),
        };
        key.gpg(&["--batch", "--passphrase", "", "--quick-gen-key"])
            .args([
                &format!("{name} <{name}@example.invalid>"),
                "default",
                "default",
                "never",
            ])
            .output()
            .map(|out| {
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
            .unwrap();
        let listed = key.gpg(&["--with-colons", "--list-keys"]).output().unwrap();
        key.fingerprint = String::from_utf8_lossy(&listed.stdout)
            .lines()
            .find_map(|l| {
                l.strip_prefix("fpr:")
                    .map(|rest| rest.trim_matches(':').to_owned())
            })
            .expect("the new key's fingerprint");
        key
    }

    /// `gpg ARGS` in this key's home.
    fn gpg(&self, args: &[&str]) -> Command {
        let mut command = Command::new("gpg");
        command.env("GNUPGHOME", self.home.path()).args(args);
        command
    }

    /// The GNUPGHOME holding the secret key, for skopeo to sign with.
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// The public key, exported (ASCII-armoured when `armor`).
    pub fn public(&self, armor: bool) -> Vec<u8> {
        let mut args = vec!["--export"];
        if armor {
            args.push("--armor");
        }
        args.push(&self.fingerprint);
        let out = self.gpg(&args).output().unwrap();
        assert!(out.status.success() && !out.stdout.is_empty());
        out.stdout
    }

    /// The binary public key written to `dir/NAME.gpg`.
    pub fn public_file(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.gpg"));
        std::fs::write(&path, self.public(false)).unwrap();
        path
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "gpg-agent"])
            .status();
    }
}

/// A lookaside store and the registries.d directory that names it for
/// every docker image, for reading and for writing.
#[derive(Debug)]
pub struct Lookaside {
    dir: tempfile::TempDir,
}

impl Default for Lookaside {
    fn default() -> Self {
        Self::new()
    }
}

impl Lookaside {
    /// An empty store.
    pub fn new() -> Self {
        let lookaside = Lookaside {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(lookaside.registries_d()).unwrap();
        std::fs::create_dir_all(lookaside.store()).unwrap();
        let url = format!("file://{}", lookaside.store().display());
        std::fs::write(
            lookaside.registries_d().join("default.yaml"),
            format!("default-docker:\n  lookaside: {url}\n  lookaside-staging: {url}\n"),
        )
        .unwrap();
        lookaside
    }

    /// The registries.d directory (skopeo `--registries.d`, cfsd
    /// `--registries-d`).
    pub fn registries_d(&self) -> PathBuf {
        self.dir.path().join("registries.d")
    }

    /// The store's top directory.
    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Where the signatures of `repository`'s manifest `digest` are.
    pub fn signatures(&self, repository: &str, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.store().join(format!("{repository}@sha256={hex}"))
    }

    /// Put the signatures of `from` (repository and digest) under `to`,
    /// as a store that serves the wrong files would.
    pub fn copy(&self, from: (&str, &str), to: (&str, &str)) {
        let (source, target) = (self.signatures(from.0, from.1), self.signatures(to.0, to.1));
        std::fs::create_dir_all(&target).unwrap();
        for entry in std::fs::read_dir(source).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), target.join(entry.file_name())).unwrap();
        }
    }
}

/// Push `source` to `registry` as `name` with skopeo, signed by `key`
/// under `identity` (the pushed name when `None`), the signature written
/// to `lookaside`'s store.
pub fn push_signed(
    registry: &crate::registry::Registry,
    source: &str,
    name: &str,
    key: &Key,
    lookaside: &Lookaside,
    identity: Option<&str>,
) {
    let registries_d = lookaside.registries_d();
    let mut extra = vec![
        "--registries.d",
        registries_d.to_str().unwrap(),
        "--sign-by",
        &key.fingerprint,
    ];
    if let Some(identity) = identity {
        extra.extend(["--sign-identity", identity]);
    }
    let out = registry
        .push_command(source, name, &extra)
        .env("GNUPGHOME", key.home())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "signing push of {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lookaside {
    /// Say in registries.d that sigstore signatures are attached to the
    /// images in their registries.
    pub fn use_sigstore_attachments(&self) {
        let file = self.registries_d().join("default.yaml");
        let mut text = std::fs::read_to_string(&file).unwrap();
        text.push_str("  use-sigstore-attachments: true\n");
        std::fs::write(file, text).unwrap();
    }
}

/// A sigstore key pair, ECDSA P-256 as cosign makes them, made with
/// OpenSSL. (Debian's skopeo cannot sign with one: its sigstore signing
/// is disabled by a Debian patch, so the tests sign as cosign would.)
#[derive(Debug)]
pub struct SigstoreKey {
    key: openssl::pkey::PKey<openssl::pkey::Private>,
}

impl Default for SigstoreKey {
    fn default() -> Self {
        Self::new()
    }
}

impl SigstoreKey {
    /// A new key pair.
    pub fn new() -> Self {
        use openssl::{ec, nid::Nid};
        let group = ec::EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = openssl::pkey::PKey::from_ec_key(ec::EcKey::generate(&group).unwrap()).unwrap();
        SigstoreKey { key }
    }

    /// The public key, PEM, as a policy's keyPath file holds it.
    pub fn public_pem(&self) -> Vec<u8> {
        self.key.public_key_to_pem().unwrap()
    }

    /// A signature of `reference` with manifest `digest`: the payload
    /// and its base64 ECDSA-SHA256 signature.
    pub fn sign(&self, reference: &str, digest: &str) -> (Vec<u8>, String) {
        let payload = serde_json::to_vec(&serde_json::json!({
            "critical": {
                "identity": {"docker-reference": reference},
                "image": {"docker-manifest-digest": digest},
                "type": "cosign container image signature",
            },
            "optional": {"creator": "cfsd tests"},
        }))
        .unwrap();
        let mut signer =
            openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &self.key).unwrap();
        let signature = signer.sign_oneshot_to_vec(&payload).unwrap();
        (payload, openssl::base64::encode_block(&signature))
    }
}

/// Attach `signatures` (payload, base64 signature) to the manifest
/// `digest` of `repository`, as cosign does: an OCI manifest whose
/// layers are the payloads, pushed with skopeo under the tag
/// `sha256-<hex>.sig`, digests preserved.
pub fn attach_sigstore(
    registry: &crate::registry::Registry,
    repository: &str,
    digest: &str,
    signatures: &[(Vec<u8>, String)],
) {
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let digest = crate::oci::sha256_digest(bytes);
        std::fs::write(blobs.join(&digest["sha256:".len()..]), bytes).unwrap();
        serde_json::json!({"digest": digest, "size": bytes.len()})
    };
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for (payload, signature) in signatures {
        let mut layer = put(payload);
        diff_ids.push(layer["digest"].clone());
        layer["mediaType"] = "application/vnd.dev.cosign.simplesigning.v1+json".into();
        layer["annotations"] = serde_json::json!({"dev.cosignproject.cosign/signature": signature});
        layers.push(layer);
    }
    let config = serde_json::json!({"architecture": "", "os": "",
        "rootfs": {"type": "layers", "diff_ids": diff_ids}});
    let mut config = put(&serde_json::to_vec(&config).unwrap());
    config["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": layers,
    }))
    .unwrap();
    let mut entry = put(&manifest);
    entry["mediaType"] = "application/vnd.oci.image.manifest.v1+json".into();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [entry]});
    std::fs::write(dir.path().join("index.json"), index.to_string()).unwrap();
    std::fs::write(
        dir.path().join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let tag = format!("{repository}:{}.sig", digest.replacen(':', "-", 1));
    let source = format!("oci:{}", dir.path().display());
    registry.push(&source, &tag, &["--preserve-digests"]);
}

/// A directory served over plain HTTP on 127.0.0.1 by Python's
/// `http.server`: a lookaside store reached over the network. Stopped
/// on drop.
#[derive(Debug)]
pub struct HttpStore {
    child: std::process::Child,
    port: u16,
}

impl HttpStore {
    /// Serve `dir`.
    pub fn start(dir: &Path) -> Self {
        let port = crate::registry::free_port();
        let child = Command::new("/usr/bin/python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
            .arg(dir)
            .arg(port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting python3 -m http.server");
        let store = HttpStore { child, port };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "http.server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        store
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for HttpStore {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A daemon with `policy`, reading signatures as `lookaside`'s
/// registries.d says, and no registries.conf (so `--tls-verify=false`
/// reaches a plain HTTP registry).
pub fn trusting(
    registry: &crate::registry::Registry,
    policy: &Path,
    lookaside: &Lookaside,
) -> crate::Daemon {
    crate::Daemon::start_initialised(&[
        "--policy",
        policy.to_str().unwrap(),
        "--registries-d",
        lookaside.registries_d().to_str().unwrap(),
        "--registries-conf",
        registry.path("none.conf").to_str().unwrap(),
    ])
}
