//! Sigstore signatures attached to an image in its registry: the
//! manifest tagged `sha256-<hex>.sig` beside it, whose layers of media
//! type `application/vnd.dev.cosign.simplesigning.v1+json` are each a
//! signed payload, the signature itself in the layer's
//! `dev.cosignproject.cosign/signature` annotation (base64).

use std::{collections::HashMap, io::Read, sync::Arc};

use oci_client::{Reference, secrets::RegistryAuth};
use serde::Deserialize;

use super::{blob::BlobStream, remote::Remote};
use crate::{Error, oci::digest::Digest};

/// The media type of a layer that is a sigstore payload.
const PAYLOAD_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The annotation holding a payload's signature.
const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
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
    /// The sigstore signatures attached to the manifest `digest` of this
    /// image's repository; none when the registry has no such tag.
    /// Blocks.
    pub(crate) fn attachments(self: &Arc<Self>, digest: &Digest) -> Result<Vec<Attachment>, Error> {
        let tag = format!("sha256-{}.sig", digest.hex());
        let reference = Reference::with_tag(
            self.image.registry().to_owned(),
            self.image.repository().to_owned(),
            tag,
        );
        let raw = match self.manifest(&reference, &RegistryAuth::Anonymous) {
            Ok((_, raw)) => raw,
            Err(Error::RegistryStatus { status: 404, .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let what = format!("the sigstore signatures of {digest}");
        let manifest: SignatureManifest =
            serde_json::from_slice(&raw).map_err(|e| Error::InvalidJson {
                what: what.clone(),
                reason: e.to_string(),
            })?;
        let layers: Vec<&Layer> = manifest
            .layers
            .iter()
            .filter(|l| l.media_type == PAYLOAD_TYPE)
            .collect();
        if layers.len() > MAX_SIGNATURES {
            return Err(Error::InvalidSource {
                reason: format!("{what}: more than {MAX_SIGNATURES}"),
            });
        }
        layers
            .into_iter()
            .filter_map(|layer| {
                let signature = layer.annotations.get(SIGNATURE_ANNOTATION)?.clone();
                Some(
                    self.payload(layer)
                        .map(|payload| Attachment { payload, signature }),
                )
            })
            .collect()
    }

    /// The payload blob of `layer`, checked against its digest.
    fn payload(self: &Arc<Self>, layer: &Layer) -> Result<Vec<u8>, Error> {
        let digest = Digest::parse(&layer.digest, "a sigstore payload descriptor")?;
        if layer.size > MAX_PAYLOAD {
            return Err(Error::InvalidSource {
                reason: format!("sigstore payload {digest} is larger than {MAX_PAYLOAD} bytes"),
            });
        }
        let mut bytes = Vec::new();
        BlobStream::new(self.clone(), &digest, layer.size)
            .take(MAX_PAYLOAD)
            .read_to_end(&mut bytes)
            .map_err(super::failure)?;
        digest.verify(
            &Digest::of(&bytes),
            format!("digest of sigstore payload {digest}"),
        )?;
        Ok(bytes)
    }
}
