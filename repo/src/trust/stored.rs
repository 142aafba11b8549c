//! Signatures kept in the repository with the image they admitted, so
//! that the image's provenance stays with it: `signatures/sha256-HEX/`,
//! HEX the stored manifest's digest, holds each signature that met the
//! policy, as the containers tools keep them: `signature-N` a simple
//! signature byte for byte (a lookaside store's file), `sigstore-N.json`
//! a sigstore payload and its signature (`{"payload": BASE64,
//! "signature": BASE64}`).
//!
//! The directory is written whole and renamed into place before the
//! image is published, so a crash leaves either all of it or none; one
//! whose manifest is gone is removed by GC.

use std::path::Path;

use base64::Engine;

use crate::{Error, oci::digest::Digest, registry::attachments::Attachment};

/// The directory below the repository.
pub(crate) const DIR: &str = "signatures";

/// The signatures that met the policy for one image.
#[derive(Debug, Clone, Default)]
pub(crate) struct Accepted {
    /// Simple signatures, each an OpenPGP message.
    pub simple: Vec<Vec<u8>>,
    /// Sigstore signatures.
    pub sigstore: Vec<Attachment>,
}

impl Accepted {
    /// Keep them for the image whose stored manifest has `digest`, in the
    /// repository at `root`, unless some are kept already. Blocks.
    pub(crate) fn store(&self, root: &Path, digest: &Digest) -> Result<(), Error> {
        let fail = |e: std::io::Error| Error::storage("storing the image's signatures", e);
        let dir = root.join(DIR);
        let target = dir.join(format!("sha256-{}", digest.hex()));
        if target.exists() {
            return Ok(());
        }
        std::fs::create_dir_all(&dir).map_err(fail)?;
        let staging = tempfile::Builder::new()
            .prefix(".staging-")
            .tempdir_in(&dir)
            .map_err(fail)?;
        let files = self
            .simple
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("signature-{}", i + 1), s.clone()));
        let attached = self.sigstore.iter().enumerate().map(|(i, a)| {
            let b64 = base64::engine::general_purpose::STANDARD;
            let doc =
                serde_json::json!({"payload": b64.encode(&a.payload), "signature": a.signature});
            (
                format!("sigstore-{}.json", i + 1),
                doc.to_string().into_bytes(),
            )
        });
        for (name, bytes) in files.chain(attached) {
            let path = staging.path().join(name);
            std::fs::write(&path, bytes).map_err(fail)?;
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(fail)?;
        }
        let staged = staging.keep();
        std::fs::rename(&staged, &target).map_err(fail)?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(fail)
    }
}

/// The signatures kept for the image whose stored manifest has
/// `digest` in the repository at `root`: none when it has none kept.
/// Read in order, `signature-1`, `signature-2`, … and likewise for
/// sigstore, until the first that is missing. Blocks.
pub(crate) fn load(root: &Path, digest: &Digest) -> Result<Accepted, Error> {
    let fail = |e: std::io::Error| Error::storage("reading the image's kept signatures", e);
    let dir = root.join(DIR).join(format!("sha256-{}", digest.hex()));
    let read = |name: String| match std::fs::read(dir.join(name)) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(fail(e)),
    };
    let mut accepted = Accepted::default();
    for n in 1.. {
        let Some(bytes) = read(format!("signature-{n}"))? else {
            break;
        };
        accepted.simple.push(bytes);
    }
    for n in 1.. {
        let Some(bytes) = read(format!("sigstore-{n}.json"))? else {
            break;
        };
        accepted.sigstore.push(kept_sigstore(&bytes)?);
    }
    Ok(accepted)
}

/// One kept `sigstore-N.json`, as [`Accepted::store`] writes it.
fn kept_sigstore(bytes: &[u8]) -> Result<Attachment, Error> {
    #[derive(serde::Deserialize)]
    struct Kept {
        payload: String,
        signature: String,
    }
    let invalid = |reason: String| Error::InvalidJson {
        what: "a kept sigstore signature".to_owned(),
        reason,
    };
    let kept: Kept = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    let payload = base64::engine::general_purpose::STANDARD
        .decode(&kept.payload)
        .map_err(|e| invalid(e.to_string()))?;
    Ok(Attachment {
        payload,
        signature: kept.signature,
    })
}

/// Remove the kept signatures of every image `present` says is gone,
/// and staging directories a crash left. Blocks.
pub(crate) fn prune(root: &Path, present: impl Fn(&Digest) -> bool) -> Result<(), Error> {
    let fail = |e: std::io::Error| Error::storage("removing the signatures of removed images", e);
    let entries = match std::fs::read_dir(root.join(DIR)) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(fail(e)),
    };
    for entry in entries {
        let entry = entry.map_err(fail)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let kept = name
            .strip_prefix("sha256-")
            .and_then(|hex| Digest::parse(&format!("sha256:{hex}"), "a kept signature").ok())
            .is_some_and(|digest| present(&digest));
        if !kept {
            std::fs::remove_dir_all(entry.path()).map_err(fail)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_kept_whole_once_and_pruned_with_their_image() {
        let root = tempfile::tempdir().unwrap();
        let (kept, gone) = (Digest::of(b"kept"), Digest::of(b"gone"));
        let accepted = Accepted {
            simple: vec![b"pgp".to_vec()],
            sigstore: vec![Attachment {
                payload: b"{}".to_vec(),
                signature: "c2ln".to_owned(),
            }],
        };
        for digest in [&kept, &gone] {
            accepted.store(root.path(), digest).unwrap();
        }
        let dir = root.path().join(DIR).join(format!("sha256-{}", kept.hex()));
        assert_eq!(std::fs::read(dir.join("signature-1")).unwrap(), b"pgp");
        let sigstore: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("sigstore-1.json")).unwrap()).unwrap();
        assert_eq!(
            sigstore,
            serde_json::json!({"payload": "e30=", "signature": "c2ln"})
        );
        // Read back as they were accepted.
        let loaded = load(root.path(), &kept).unwrap();
        assert_eq!(loaded.simple, accepted.simple);
        assert_eq!(loaded.sigstore[0].payload, b"{}");
        assert_eq!(loaded.sigstore[0].signature, "c2ln");
        assert!(
            load(root.path(), &Digest::of(b"none"))
                .unwrap()
                .simple
                .is_empty()
        );
        // Kept already: a second pull leaves the first's.
        Accepted::default().store(root.path(), &kept).unwrap();
        assert!(dir.join("signature-1").exists());
        std::fs::create_dir(root.path().join(DIR).join(".staging-crashed")).unwrap();
        prune(root.path(), |d| *d == kept).unwrap();
        let left: Vec<_> = std::fs::read_dir(root.path().join(DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            left,
            [std::ffi::OsString::from(format!("sha256-{}", kept.hex()))]
        );
    }
}
