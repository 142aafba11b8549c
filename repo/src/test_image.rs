//! Images built in memory for the crate's unit tests, and the
//! oci-archives that carry them.

use std::{fs::File, io::Write};

use serde_json::json;

use crate::oci::{Platform, digest::Digest};

/// The media type of a gzip-compressed layer.
pub(crate) const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// The media type of an uncompressed layer.
pub(crate) const TAR_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// One layer: the tar its diff_id is of, and the blob that carries it.
pub(crate) struct TestLayer {
    /// The uncompressed tar.
    pub tar: Vec<u8>,
    /// The blob in the archive.
    pub blob: Vec<u8>,
    /// The blob's media type.
    pub media_type: &'static str,
}

impl TestLayer {
    /// `tar` as a gzip blob.
    pub(crate) fn gzip(tar: Vec<u8>) -> Self {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        TestLayer {
            blob: gz.finish().unwrap(),
            tar,
            media_type: GZIP_LAYER,
        }
    }

    /// `tar` as an uncompressed blob.
    pub(crate) fn plain(tar: Vec<u8>) -> Self {
        TestLayer {
            blob: tar.clone(),
            tar,
            media_type: TAR_LAYER,
        }
    }
}

/// An image for the host's platform: its manifest, config and layers.
pub(crate) struct TestImage {
    /// The manifest's bytes.
    pub manifest: Vec<u8>,
    /// The config's bytes; its diff_ids are those of the layers' tars.
    pub config: Vec<u8>,
    /// The layers, in order.
    pub layers: Vec<TestLayer>,
}

impl TestImage {
    /// The image of `layers`.
    pub(crate) fn new(layers: Vec<TestLayer>) -> Self {
        let diff_ids: Vec<String> = layers
            .iter()
            .map(|l| Digest::of(&l.tar).to_string())
            .collect();
        let config = json!({
            "architecture": Platform::host().architecture, "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids}
        })
        .to_string()
        .into_bytes();
        let descriptors: Vec<_> = layers
            .iter()
            .map(|l| descriptor(l.media_type, &l.blob))
            .collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": descriptor(CONFIG, &config),
            "layers": descriptors
        })
        .to_string()
        .into_bytes();
        TestImage {
            manifest,
            config,
            layers,
        }
    }

    /// The image as an oci-archive, its index entry named `reference` if
    /// given.
    pub(crate) fn archive(&self, reference: Option<&str>) -> File {
        let mut blobs = vec![&self.manifest[..], &self.config[..]];
        blobs.extend(self.layers.iter().map(|l| &l.blob[..]));
        oci_archive(&self.manifest, &blobs, reference)
    }

    /// The config's digest.
    pub(crate) fn config_digest(&self) -> Digest {
        Digest::of(&self.config)
    }

    /// The diff_id of layer `layer`.
    pub(crate) fn diff_id(&self, layer: usize) -> Digest {
        Digest::of(&self.layers[layer].tar)
    }
}

/// A descriptor of `blob`.
fn descriptor(media_type: &str, blob: &[u8]) -> serde_json::Value {
    json!({"mediaType": media_type, "digest": Digest::of(blob).to_string(), "size": blob.len()})
}

/// An uncompressed oci-archive whose index names `manifest` (as
/// `reference`, if given), holding `blobs`.
pub(crate) fn oci_archive(manifest: &[u8], blobs: &[&[u8]], reference: Option<&str>) -> File {
    let mut entry = descriptor(MANIFEST, manifest);
    if let Some(reference) = reference {
        entry["annotations"] = json!({"org.opencontainers.image.ref.name": reference});
    }
    let index = json!({"schemaVersion": 2, "manifests": [entry]}).to_string();
    let mut members: Vec<(String, &[u8])> = vec![
        ("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#),
        ("index.json".into(), index.as_bytes()),
    ];
    members.extend(
        blobs
            .iter()
            .map(|b| (format!("blobs/sha256/{}", Digest::of(b).hex()), *b)),
    );
    let mut outer = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        outer.append_data(&mut header, name, data).unwrap();
    }
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&outer.into_inner().unwrap()).unwrap();
    file
}
