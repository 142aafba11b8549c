//! Signatures carried in an OCI layout (`oci:`, `oci-archive:`, and so a
//! delta archive): an index entry whose `org.opencontainers.image.ref.name`
//! is `sha256-HEX.sig`, HEX the signed manifest's digest, naming the same
//! attachment manifest a registry holds under that tag
//! (`crate::registry::attachments`): sigstore payloads as cosign attaches
//! them, and simple signatures as layers of their own type. Its blobs are
//! the layout's blobs. Such an entry is never taken for an image.

use super::{Accepted, SignatureSource};
use crate::{
    Error,
    oci::{
        digest::Digest,
        document::{OCI_MANIFEST, REF_NAME},
        source::Layout,
    },
    registry::attachments::{self, Attached, Attachment},
};

/// The signatures a layout carries.
pub(crate) struct InLayout<'a> {
    /// The layout they are read from.
    pub layout: &'a Layout,
}

impl InLayout<'_> {
    /// The attachment of the manifest `digest`; none when the index
    /// names none. Blocks.
    fn attached(&self, digest: &Digest) -> Result<Attached, Error> {
        let index: serde_json::Value =
            serde_json::from_slice(&self.layout.index()?).map_err(|e| Error::InvalidJson {
                what: "index.json".to_owned(),
                reason: e.to_string(),
            })?;
        let tag = attachments::tag(digest);
        let entry = index["manifests"].as_array().and_then(|entries| {
            entries
                .iter()
                .find(|e| e["annotations"][REF_NAME].as_str() == Some(tag.as_str()))
        });
        let Some(entry) = entry else {
            return Ok(Attached::default());
        };
        let what = format!("the signatures of {digest} in the layout");
        let invalid = || Error::InvalidSource {
            reason: format!("{what}: the index entry needs a digest and a size"),
        };
        let manifest = Digest::parse(entry["digest"].as_str().ok_or_else(invalid)?, &what)?;
        let size = entry["size"].as_u64().ok_or_else(invalid)?;
        let raw = self.layout.json_blob(&manifest, size, &what)?;
        attachments::parse(&raw, &what, |blob, size| {
            self.layout
                .json_blob(blob, size, &format!("signature blob {blob}"))
        })
    }
}

impl SignatureSource for InLayout<'_> {
    fn simple(&self, digest: &Digest) -> Result<Vec<Vec<u8>>, Error> {
        Ok(self.attached(digest)?.simple)
    }

    fn sigstore(&self, digest: &Digest) -> Result<Vec<Attachment>, Error> {
        Ok(self.attached(digest)?.sigstore)
    }
}

/// What a layout must hold to carry `accepted` for the manifest
/// `digest`: the index entry, and the manifest and blobs it names (the
/// manifest first); `None` when there is nothing to carry.
pub(crate) fn entry(
    accepted: &Accepted,
    digest: &Digest,
) -> Option<(serde_json::Value, Vec<Vec<u8>>)> {
    let (manifest, mut blobs) = attachments::manifest(&accepted.simple, &accepted.sigstore)?;
    let entry = serde_json::json!({
        "mediaType": OCI_MANIFEST,
        "digest": Digest::of(&manifest).to_string(),
        "size": manifest.len(),
        "annotations": {REF_NAME: attachments::tag(digest)},
    });
    blobs.insert(0, manifest);
    Some((entry, blobs))
}
