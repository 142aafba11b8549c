//! The target's signatures, pushed beside its delta: the archive's
//! `sha256-HEX.sig` entry (`crate::trust::carried`) becomes the
//! registry's `sha256-HEX.sig` tag in the delta's repository, the tag
//! cosign attaches signatures under, so that a client that finds the
//! delta finds them too (where registries.d sets
//! `use-sigstore-attachments`). Signatures the registry already has
//! under that tag are kept: ours are added to its layers, never put in
//! their place.

use std::io::Read;

use serde_json::Value;

use super::member;
use crate::{
    Error,
    oci::{
        Archive,
        digest::Digest,
        document::{IndexDoc, ManifestDoc, OCI_MANIFEST, REF_NAME, parse},
    },
    registry::{attachments, push::Destination},
};

impl Destination {
    /// Push the signatures `archive` carries for the manifest `subject`,
    /// if any, merged into those the registry holds; the bytes uploaded.
    pub(super) fn push_signatures(
        &self,
        archive: &Archive,
        subject: &Digest,
    ) -> Result<u64, Error> {
        let tag = attachments::tag(subject);
        let Some(digest) = carried(archive, &tag)? else {
            return Ok(0);
        };
        let manifest = member(archive, &digest)?;
        let doc: ManifestDoc = parse(&manifest, "the signatures the delta carries")?;
        let mut bytes = 0;
        for blob in std::iter::once(&doc.config).chain(doc.layers()) {
            bytes += self.put_archive_blob(archive, blob)?;
        }
        let existing = match self.manifest(&self.tagged(&tag), &[OCI_MANIFEST]) {
            Ok(bytes) => Some(bytes),
            Err(Error::RegistryStatus { status: 404, .. }) => None,
            Err(e) => return Err(e),
        };
        let what = format!("the signatures tagged {tag}");
        let merged = merged(existing.as_deref(), &manifest, &what)?;
        self.put_manifest(&tag, merged, OCI_MANIFEST)?;
        Ok(bytes)
    }
}

/// The digest of the manifest the archive's index names `tag`, if any.
fn carried(archive: &Archive, tag: &str) -> Result<Option<Digest>, Error> {
    let mut bytes = Vec::new();
    archive
        .open("index.json")
        .ok_or_else(|| Error::internal("pushing a delta", "no index.json".to_owned()))?
        .read_to_end(&mut bytes)
        .map_err(|e| Error::storage("reading the delta", e))?;
    let index: IndexDoc = parse(&bytes, "the delta's index")?;
    index
        .manifests
        .iter()
        .find(|d| d.annotations.get(REF_NAME).map(String::as_str) == Some(tag))
        .map(|d| Digest::parse(&d.digest, "the signatures the delta carries"))
        .transpose()
}

/// The attachment manifest `existing` (none yet when `None`) with each
/// layer of `ours` it lacks (by digest) added after its own; `what`
/// names it in errors. One that does not parse is an error, not
/// replaced: it may hold signatures someone relies on.
fn merged(existing: Option<&[u8]>, ours: &[u8], what: &str) -> Result<Vec<u8>, Error> {
    let Some(existing) = existing else {
        return Ok(ours.to_vec());
    };
    let mut doc: Value = parse(existing, what)?;
    let ours: Value = parse(ours, what)?;
    let layers = match doc.get_mut("layers") {
        Some(Value::Array(layers)) => layers,
        _ => {
            return Err(Error::InvalidJson {
                what: what.to_owned(),
                reason: "it has no list of layers".to_owned(),
            });
        }
    };
    for layer in ours["layers"].as_array().into_iter().flatten() {
        if !layers.iter().any(|l| l["digest"] == layer["digest"]) {
            layers.push(layer.clone());
        }
    }
    serde_json::to_vec(&doc).map_err(|e| Error::internal("merging signatures", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(digests: &[&str]) -> Vec<u8> {
        let layers: Vec<Value> = digests
            .iter()
            .map(|d| serde_json::json!({"mediaType": "m", "digest": d, "size": 1}))
            .collect();
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "layers": layers})).unwrap()
    }

    #[test]
    fn pushed_signatures_join_those_the_registry_has() {
        let ours = manifest(&["sha256:b", "sha256:c"]);
        assert_eq!(merged(None, &ours, "x").unwrap(), ours);
        let joined: Value = serde_json::from_slice(
            &merged(Some(&manifest(&["sha256:a", "sha256:b"])), &ours, "x").unwrap(),
        )
        .unwrap();
        let digests: Vec<&str> = joined["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap())
            .collect();
        assert_eq!(digests, ["sha256:a", "sha256:b", "sha256:c"]);
        assert!(merged(Some(b"{\"layers\": 3}"), &ours, "x").is_err());
    }
}
