//! Layers and images given as raw blobs and documents, for what no
//! well-behaved writer produces.

use super::*;

/// A layer given as its blob rather than as entries: for blobs and tars
/// that no well-behaved writer produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawLayer {
    /// The blob as stored.
    pub blob: Vec<u8>,
    /// Its media type in the manifest.
    pub media_type: String,
    /// The diff_id the config claims for it.
    pub diff_id: String,
    /// The size the manifest declares for the blob.
    pub size: u64,
}

impl RawLayer {
    /// `tar` compressed with `compression`, claiming the tar's digest as
    /// its diff_id and the blob's true size.
    pub fn of_tar(tar: &[u8], compression: Compression) -> Self {
        Self::of_blob(compress(tar, compression), compression, sha256_digest(tar))
    }

    /// `blob`, declared as compressed with `compression`, claiming
    /// `diff_id` and the blob's true size.
    pub fn of_blob(blob: Vec<u8>, compression: Compression, diff_id: String) -> Self {
        let media_type = match compression {
            Compression::None => media::OCI_LAYER,
            Compression::Gzip => media::OCI_LAYER_GZIP,
            Compression::Zstd => media::OCI_LAYER_ZSTD,
        };
        RawLayer {
            size: blob.len() as u64,
            blob,
            media_type: media_type.to_owned(),
            diff_id,
        }
    }
}

/// What was written for an image of [`RawLayer`]s.
#[derive(Debug, Clone)]
pub struct RawImage {
    /// The manifest's digest.
    pub manifest_digest: String,
    /// The config's digest.
    pub config_digest: String,
    /// Each layer blob's digest, bottom first.
    pub layer_digests: Vec<String>,
}

impl Layout {
    /// Add an image of `layers` for the host platform, with a config that
    /// claims their diff_ids, listed in `index.json` as `ref_name`.
    pub fn add_raw_image(&mut self, layers: &[RawLayer], ref_name: Option<&str>) -> RawImage {
        let layer_digests: Vec<String> = layers
            .iter()
            .map(|l| self.add_blob(l.blob.clone()))
            .collect();
        let config = serde_json::to_vec(&json!({
            "architecture": host_architecture(),
            "os": "linux",
            "config": {},
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
            },
        }))
        .unwrap();
        let config_size = config.len();
        let config_digest = self.add_blob(config);
        let descriptors: Vec<Value> = layers
            .iter()
            .zip(&layer_digests)
            .map(|(l, digest)| json!({"mediaType": l.media_type, "digest": digest, "size": l.size}))
            .collect();
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": {"mediaType": media::OCI_CONFIG, "digest": config_digest, "size": config_size},
            "layers": descriptors,
        }))
        .unwrap();
        let manifest_digest = self.add_raw_manifest(&manifest, media::OCI_MANIFEST, ref_name);
        RawImage {
            manifest_digest,
            config_digest,
            layer_digests,
        }
    }
}

/// A tar of one PAX extension header (`x`) carrying exactly `records`,
/// then `entry` and the end-of-archive blocks: for PAX records that are
/// wrong on purpose.
pub fn tar_with_pax(records: &[u8], entry: &Entry) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let ext = extension_header(b'x', "PaxHeaders.0/bad", records, false);
    builder.append(&ext, records).unwrap();
    append_entry(&mut builder, entry);
    builder.into_inner().unwrap()
}
