//! Pushing an oci-delta artifact to a registry, where a client looking
//! for an update to the target image finds it.
//!
//! The delta is made exactly as for an `oci-archive:` (delta create,
//! into an unnamed `O_TMPFILE` in the repository's directory, gone when
//! the push ends: a delta is small next to its target), and its blobs and
//! artifact manifest go to the registry byte for byte, so the manifest
//! pushed has the digest the archive would have named. Blobs first, each
//! skipped when the registry has it, then the artifact manifest under the
//! tag asked for.
//!
//! **Subject.** The artifact's `subject` is the target image's manifest
//! as the repository holds it, embedded in the delta byte for byte. A
//! client finds the delta from the target's tag only when the registry
//! resolves that tag to this same manifest digest: the target was pushed
//! with its original blobs (skopeo copy of the image as pulled, say). An
//! image pushed with `cfsctl oci push` has a new manifest (its layers are
//! compressed again), so its tag resolves to another digest, and the
//! delta, still pushed and still pullable by its own reference, is not
//! found from it; the report says whether the registry holds the subject.
//!
//! **Signatures.** The target's signatures that the archive carries are
//! pushed under the target's `sha256-<hex>.sig` tag, added to any the
//! registry has there (`signatures`).
//!
//! **Referrers tag schema.** Registries without the referrers API (such
//! as distribution 2.8) list a manifest's referrers in an OCI image index
//! tagged `sha256-<hex of the subject digest>`. That index is fetched,
//! this delta's entry added (mediaType, digest, size, artifactType and
//! annotations) in place of any earlier entry for the same digest, the
//! other entries kept, and the index put back. Two pushes for the same
//! subject at the same moment can each miss the other's entry: the
//! registry offers no compare-and-swap on tags.

mod signatures;

use std::{
    io,
    sync::{Arc, atomic::AtomicBool},
};

use serde_json::{Value, json};

use super::{Registry, push::Destination};
use crate::{
    CreateOptions, DeltaReport, Error, Repository,
    delta::ARTIFACT_TYPE,
    oci::{
        Archive,
        digest::Digest,
        document::{Descriptor, ManifestDoc, OCI_INDEX, OCI_MANIFEST, parse},
    },
};

/// What pushing a delta did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaPushReport {
    /// What making the delta did; `delta_bytes` is the size of the
    /// archive it would have been.
    pub delta: DeltaReport,
    /// `HOST[:PORT]/NAME:TAG` of the artifact.
    pub reference: String,
    /// The referrers tag-schema tag updated: `sha256-<hex>` of the target
    /// manifest.
    pub referrers_tag: String,
    /// Whether the registry's repository holds the target manifest the
    /// delta names as its subject.
    pub subject_in_registry: bool,
    /// Bytes of the blobs uploaded.
    pub bytes_uploaded: u64,
}

impl Repository {
    /// Make the delta that rebuilds `target` where `source` is present
    /// (as [`Repository::create_delta`]) and push it to `registry`, then
    /// list it in the target's referrers tag-schema index. Reads the
    /// repository only; blocks, on a blocking thread of a tokio runtime.
    pub fn push_delta(
        &self,
        source: &str,
        target: &str,
        registry: Registry,
        options: CreateOptions,
        cancelled: Arc<AtomicBool>,
    ) -> Result<DeltaPushReport, Error> {
        // The registry is asked first: bad credentials cost no encoding.
        let destination = Destination::connect(registry, cancelled.clone())?;
        let scratch = tempfile::tempfile_in(self.path())
            .map_err(|e| Error::storage("writing the delta", e))?;
        let out = scratch
            .try_clone()
            .map_err(|e| Error::storage("writing the delta", e))?;
        let delta = self.create_delta_cancellable(source, target, out, options, &cancelled)?;
        let archive = Archive::index(scratch)?;
        destination.push_artifact(&archive, delta)
    }
}

impl Destination {
    fn push_artifact(
        &self,
        archive: &Archive,
        delta: DeltaReport,
    ) -> Result<DeltaPushReport, Error> {
        let digest = Digest::parse(&delta.manifest_digest, "the delta's manifest")?;
        let manifest = member(archive, &digest)?;
        let doc: ManifestDoc = parse(&manifest, "the delta's manifest")?;
        // Asked before the blobs go up: distribution also serves a blob
        // of the repository as a manifest by its digest, and the delta
        // carries the target manifest as a blob.
        let subject = Digest::parse(&delta.target, "the delta's target")?;
        let subject_in_registry = self.has_manifest(&subject)?;
        let mut bytes = 0;
        for blob in std::iter::once(&doc.config).chain(doc.layers()) {
            bytes += self.put_archive_blob(archive, blob)?;
        }
        // The target's signatures go up before the delta is tagged, so
        // that whoever finds the delta can check it.
        bytes += self.push_signatures(archive, &subject)?;
        let entry = json!({
            "mediaType": OCI_MANIFEST,
            "digest": digest.to_string(),
            "size": manifest.len(),
            "artifactType": ARTIFACT_TYPE,
            "annotations": doc.annotations,
        });
        self.put_manifest(&self.tag, manifest, OCI_MANIFEST)?;
        let referrers_tag = format!("sha256-{}", subject.hex());
        self.add_referrer(&referrers_tag, entry)?;
        Ok(DeltaPushReport {
            delta,
            reference: self.tagged(&self.tag).whole(),
            referrers_tag,
            subject_in_registry,
            bytes_uploaded: bytes,
        })
    }

    /// Upload the archive's blob `blob` names, streamed from the archive,
    /// unless the registry has it; the bytes sent.
    fn put_archive_blob(&self, archive: &Archive, blob: &Descriptor) -> Result<u64, Error> {
        self.go_on()?;
        let digest = Digest::parse(&blob.digest, "a blob of the delta")?;
        if self.has_blob(&digest)? {
            return Ok(0);
        }
        let reader = archive
            .open(&blob_path(&digest))
            .filter(|r| r.len() == blob.size)
            .ok_or_else(|| Error::internal("pushing a delta", format!("no blob {digest}")))?;
        let write = move |out: &mut dyn io::Write| {
            io::copy(&mut reader.clone(), out)
                .map(drop)
                .map_err(|e| Error::storage("reading the delta", e))
        };
        let what = format!("uploading blob {digest}");
        self.upload_streamed(&digest, blob.size, &what, Arc::new(write))?;
        Ok(blob.size)
    }

    /// Whether the registry's repository holds the manifest `digest`.
    fn has_manifest(&self, digest: &Digest) -> Result<bool, Error> {
        let image = self.remote.image.clone_with_digest(digest.to_string());
        match self.manifest(
            &image,
            &[OCI_MANIFEST, crate::oci::document::DOCKER_MANIFEST],
        ) {
            Ok(_) => Ok(true),
            Err(Error::RegistryStatus { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The manifest `image` names, of one of `accepted` media types.
    fn manifest(&self, image: &oci_client::Reference, accepted: &[&str]) -> Result<Vec<u8>, Error> {
        let remote = &self.remote;
        let what = format!("the manifest {}", image.whole());
        let (bytes, _) = self.until_cancelled(remote.retrying(&what, || {
            remote.client.pull_manifest_raw(image, &self.auth, accepted)
        }))??;
        Ok(bytes.to_vec())
    }

    /// Put `entry` into the index tagged `tag`, in place of an entry of
    /// the same digest, keeping every other entry.
    fn add_referrer(&self, tag: &str, entry: Value) -> Result<(), Error> {
        let what = format!("the referrers index {tag}");
        let existing = match self.manifest(&self.tagged(tag), &[OCI_INDEX]) {
            Ok(bytes) => Some(bytes),
            Err(Error::RegistryStatus { status: 404, .. }) => None,
            Err(e) => return Err(e),
        };
        let index = merged_index(existing.as_deref(), entry, &what)?;
        self.put_manifest(tag, index, OCI_INDEX).map(drop)
    }
}

/// The referrers index `existing` (none yet when `None`) with `entry` in
/// place of any entry of the same digest; `what` names it in errors. An
/// index that does not parse is an error, not replaced: it may list
/// referrers someone relies on.
fn merged_index(existing: Option<&[u8]>, entry: Value, what: &str) -> Result<Vec<u8>, Error> {
    let mut manifests = match existing {
        None => Vec::new(),
        Some(bytes) => {
            let mut index: Value = parse(bytes, what)?;
            match index.get_mut("manifests").map(Value::take) {
                Some(Value::Array(list)) => list,
                None | Some(Value::Null) => Vec::new(),
                Some(_) => {
                    return Err(Error::InvalidJson {
                        what: what.to_owned(),
                        reason: "\"manifests\" is not a list".to_owned(),
                    });
                }
            }
        }
    };
    manifests.retain(|m| m.get("digest") != entry.get("digest"));
    manifests.push(entry);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    });
    Ok(serde_json::to_vec(&index).expect("a JSON value serialises"))
}

fn blob_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// The archive's blob `digest`, read whole and checked: a manifest.
fn member(archive: &Archive, digest: &Digest) -> Result<Vec<u8>, Error> {
    let mut bytes = Vec::new();
    let mut reader = archive
        .open(&blob_path(digest))
        .ok_or_else(|| Error::internal("pushing a delta", format!("no blob {digest}")))?;
    io::Read::read_to_end(&mut reader, &mut bytes)
        .map_err(|e| Error::storage("reading the delta", e))?;
    digest.verify(&Digest::of(&bytes), format!("blob {digest} of the delta"))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u32) -> Value {
        json!({"mediaType": OCI_MANIFEST, "digest": format!("sha256:{n:064x}"), "size": n})
    }

    #[test]
    fn a_referrer_joins_the_index_keeping_the_others() {
        let first = merged_index(None, entry(1), "i").unwrap();
        let second = merged_index(Some(&first), entry(2), "i").unwrap();
        // The same delta again replaces its own entry.
        let again = merged_index(Some(&second), entry(2), "i").unwrap();
        let index: Value = serde_json::from_slice(&again).unwrap();
        assert_eq!(index["mediaType"], OCI_INDEX);
        assert_eq!(index["manifests"], json!([entry(1), entry(2)]));
        let broken = merged_index(Some(br#"{"manifests": 3}"#), entry(1), "i").unwrap_err();
        assert!(matches!(broken, Error::InvalidJson { .. }), "{broken}");
    }
}
