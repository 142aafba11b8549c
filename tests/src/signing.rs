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
