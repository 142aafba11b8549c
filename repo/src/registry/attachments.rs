//! Signatures attached to an image in its registry: the manifest tagged
//! `sha256-<hex>.sig` beside it, whose layers of media type
//! `application/vnd.dev.cosign.simplesigning.v1+json` are each a signed
//! sigstore payload, the signature itself in the layer's
//! `dev.cosignproject.cosign/signature` annotation (base64), as cosign
//! attaches them. cfsd adds layers of [`SIMPLE_SIGNING_TYPE`], each a
//! simple signature byte for byte, so that one attachment carries both
//! kinds beside a delta; other tools skip a layer type they do not know.
//! An OCI layout carries the same manifest (`crate::trust::carried`).

use std::{collections::HashMap, io::Read, sync::Arc};

use oci_client::{Reference, secrets::RegistryAuth};
use serde::Deserialize;

use super::{blob::BlobStream, remote::Remote};
use crate::{Error, oci::digest::Digest};

/// The media type of a layer that is a sigstore payload.
const PAYLOAD_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The media type of a layer that is a simple signature (an OpenPGP
/// message, as a lookaside store's `signature-N`).
pub(crate) const SIMPLE_SIGNING_TYPE: &str = "application/vnd.io.cfsd.simple-signing.v1+pgp";
/// The annotation holding a payload's signature.
const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The config of a signature manifest: the empty JSON object.
const EMPTY_CONFIG: &[u8] = b"{}";
/// The largest payload read.
const MAX_PAYLOAD: u64 = 4 << 20;
/// The most signatures read for one image.
const MAX_SIGNATURES: usize = 64;

/// One attached signature, not yet verified.
#[derive(Debug, Clone)]
pub(crate) struct Attachment {
    /// The payload blob, as the registry served it (digest checked).
    pub payload: Vec<u8>,
    /// The annotation's base64 signature of the payload.
    pub signature: String,
}

/// The signatures one attachment holds, of both kinds, not yet verified.
#[derive(Debug, Default)]
pub(crate) struct Attached {
    /// Simple signatures.
    pub simple: Vec<Vec<u8>>,
    /// Sigstore signatures.
    pub sigstore: Vec<Attachment>,
}

/// The tag (in a registry) or ref name (in a layout) of the signatures
/// of the manifest `digest`.
pub(crate) fn tag(digest: &Digest) -> String {
    format!("sha256-{}.sig", digest.hex())
}

/// Whether `name` is such a tag: a layout's entry that is no image.
pub(crate) fn is_tag(name: &str) -> bool {
    name.strip_prefix("sha256-")
        .and_then(|rest| rest.strip_suffix(".sig"))
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Parse the attachment manifest `raw` (`what` names it in errors) and
/// read each signature layer with `fetch`, which must check the blob
/// against its digest and size. Layers of other types are skipped.
pub(crate) fn parse(
    raw: &[u8],
    what: &str,
    fetch: impl Fn(&Digest, u64) -> Result<Vec<u8>, Error>,
) -> Result<Attached, Error> {
    let manifest: SignatureManifest =
        serde_json::from_slice(raw).map_err(|e| Error::InvalidJson {
            what: what.to_owned(),
            reason: e.to_string(),
        })?;
    let layers: Vec<&Layer> = manifest
        .layers
        .iter()
        .filter(|l| [PAYLOAD_TYPE, SIMPLE_SIGNING_TYPE].contains(&l.media_type.as_str()))
        .collect();
    if layers.len() > MAX_SIGNATURES {
        return Err(Error::InvalidSource {
            reason: format!("{what}: more than {MAX_SIGNATURES}"),
        });
    }
    let mut attached = Attached::default();
    for layer in layers {
        let digest = Digest::parse(&layer.digest, "a signature descriptor")?;
        if layer.size > MAX_PAYLOAD {
            return Err(Error::InvalidSource {
                reason: format!("{what}: {digest} is larger than {MAX_PAYLOAD} bytes"),
            });
        }
        if layer.media_type == SIMPLE_SIGNING_TYPE {
            attached.simple.push(fetch(&digest, layer.size)?);
        } else if let Some(signature) = layer.annotations.get(SIGNATURE_ANNOTATION) {
            let payload = fetch(&digest, layer.size)?;
            let signature = signature.clone();
            attached.sigstore.push(Attachment { payload, signature });
        }
    }
    Ok(attached)
}

/// The attachment manifest carrying `simple` and `sigstore`, and every
/// blob it names (its config first); `None` when there is nothing to
/// carry.
pub(crate) fn manifest(
    simple: &[Vec<u8>],
    sigstore: &[Attachment],
) -> Option<(Vec<u8>, Vec<Vec<u8>>)> {
    if simple.is_empty() && sigstore.is_empty() {
        return None;
    }
    let descriptor = |media_type: &str, bytes: &[u8]| {
        serde_json::json!({
            "mediaType": media_type,
            "digest": Digest::of(bytes).to_string(),
            "size": bytes.len(),
        })
    };
    let mut layers: Vec<serde_json::Value> = simple
        .iter()
        .map(|s| descriptor(SIMPLE_SIGNING_TYPE, s))
        .collect();
    let mut blobs = vec![EMPTY_CONFIG.to_vec()];
    blobs.extend(simple.iter().cloned());
    for attachment in sigstore {
        let mut layer = descriptor(PAYLOAD_TYPE, &attachment.payload);
        layer["annotations"] = serde_json::json!({SIGNATURE_ANNOTATION: attachment.signature});
        layers.push(layer);
        blobs.push(attachment.payload.clone());
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::oci::document::OCI_MANIFEST,
        "config": descriptor(crate::oci::document::OCI_CONFIG, EMPTY_CONFIG),
        "layers": layers,
    });
    Some((manifest.to_string().into_bytes(), blobs))
}

#[derive(Debug, Deserialize)]
struct SignatureManifest {
    #[serde(default)]
    layers: Vec<Layer>,
}

#[derive(Debug, Deserialize)]
struct Layer {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

impl Remote {
    /// The signatures attached to the manifest `digest` of this image's
    /// repository; none when the registry has no such tag. Blocks.
    pub(crate) fn attachments(self: &Arc<Self>, digest: &Digest) -> Result<Attached, Error> {
        let reference = Reference::with_tag(
            self.image.registry().to_owned(),
            self.image.repository().to_owned(),
            tag(digest),
        );
        let raw = match self.manifest(&reference, &RegistryAuth::Anonymous) {
            Ok((_, raw)) => raw,
            Err(Error::RegistryStatus { status: 404, .. }) => return Ok(Attached::default()),
            Err(e) => return Err(e),
        };
        let what = format!("the signatures attached to {digest}");
        parse(&raw, &what, |blob, size| self.payload(blob, size))
    }

    /// The signature blob `digest`, checked against its digest.
    fn payload(self: &Arc<Self>, digest: &Digest, size: u64) -> Result<Vec<u8>, Error> {
        let mut bytes = Vec::new();
        BlobStream::new(self.clone(), digest, size)
            .take(MAX_PAYLOAD)
            .read_to_end(&mut bytes)
            .map_err(super::failure)?;
        digest.verify(
            &Digest::of(&bytes),
            format!("digest of signature blob {digest}"),
        )?;
        Ok(bytes)
    }
}
