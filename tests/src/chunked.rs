//! Lying zstd:chunked layers for the partial-pull tests: an image skopeo
//! pushed as (legacy) zstd:chunked, republished with its TOC or its
//! annotations edited. The data frames and the config stay as skopeo
//! wrote them, so a full pull of a republished image still succeeds:
//! only what a partial pull believes is changed.

use serde_json::{Map, Value};

use crate::{
    oci::{Layout, sha256_digest},
    registry::Registry,
};

/// The legacy annotations skopeo 1.9 writes.
const POSITION: &str = "io.containers.zstd-chunked.manifest-position";
const CHECKSUM: &str = "io.containers.zstd-chunked.manifest-checksum";
/// A zstd skippable frame's magic, little-endian.
const SKIPPABLE: [u8; 4] = [0x50, 0x2a, 0x4d, 0x18];
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// An image of one zstd:chunked layer as the registry holds it.
#[derive(Debug, Clone)]
pub struct Chunked {
    /// Its manifest.
    pub manifest: Value,
    /// Its config, byte for byte.
    pub config: Vec<u8>,
    /// Its layer blob.
    pub layer: Vec<u8>,
}

impl Chunked {
    /// `name:tag` of `registry`, read from its storage.
    pub fn read(registry: &Registry, name: &str, tag: &str) -> Self {
        let digest = registry.tag_digest(name, tag);
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(registry.blob_file(&digest)).unwrap()).unwrap();
        let blob = |d: &Value| std::fs::read(registry.blob_file(d.as_str().unwrap())).unwrap();
        Chunked {
            config: blob(&manifest["config"]["digest"]),
            layer: blob(&manifest["layers"][0]["digest"]),
            manifest,
        }
    }

    fn annotations(&mut self) -> &mut Map<String, Value> {
        self.manifest["layers"][0]["annotations"]
            .as_object_mut()
            .expect("a zstd:chunked layer has annotations")
    }

    /// Where the compressed TOC is: offset, length, uncompressed length.
    fn position(&mut self) -> (usize, usize, u64) {
        let text = self.annotations()[POSITION].as_str().unwrap().to_owned();
        let fields: Vec<u64> = text.split(':').map(|f| f.parse().unwrap()).collect();
        (fields[0] as usize, fields[1] as usize, fields[2])
    }

    /// The TOC, decoded.
    pub fn toc(&mut self) -> Value {
        let (offset, length, _) = self.position();
        let json = zstd::decode_all(&self.layer[offset..offset + length]).unwrap();
        serde_json::from_slice(&json).unwrap()
    }

    /// This image with `toc` as its TOC, recompressed, and the footer and
    /// annotations (position and checksum) that go with it.
    pub fn with_toc(mut self, toc: &Value) -> Self {
        let (offset, _, _) = self.position();
        let json = serde_json::to_vec(toc).unwrap();
        let frame = zstd::encode_all(json.as_slice(), 3).unwrap();
        let mut layer = self.layer[..offset - 8].to_vec();
        layer.extend_from_slice(&SKIPPABLE);
        layer.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        layer.extend_from_slice(&frame);
        // The legacy footer: a skippable frame of 40 bytes.
        layer.extend_from_slice(&SKIPPABLE);
        layer.extend_from_slice(&40u32.to_le_bytes());
        for word in [offset as u64, frame.len() as u64, json.len() as u64, 1] {
            layer.extend_from_slice(&word.to_le_bytes());
        }
        layer.extend_from_slice(b"GnUlInUx");
        let position = format!("{offset}:{}:{}:1", frame.len(), json.len());
        let checksum = sha256_digest(&frame);
        self.annotate(POSITION, &position);
        self.annotate(CHECKSUM, &checksum);
        self.layer = layer;
        self
    }

    /// Set the layer annotation `key` to `value`.
    pub fn annotate(&mut self, key: &str, value: &str) {
        self.annotations()
            .insert(key.to_owned(), Value::String(value.to_owned()));
    }

    /// Set the TOC checksum annotation to `value`.
    pub fn with_checksum(mut self, value: &str) -> Self {
        self.annotate(CHECKSUM, value);
        self
    }

    /// Push this image to `registry` as `name:tag`, byte for byte.
    pub fn push(mut self, registry: &Registry, name: &str, tag: &str) {
        let mut layout = Layout::new();
        layout.add_blob(self.config.clone());
        let digest = layout.add_blob(self.layer.clone());
        let layer = &mut self.manifest["layers"][0];
        layer["digest"] = Value::String(digest);
        layer["size"] = Value::from(self.layer.len());
        let bytes = serde_json::to_vec(&self.manifest).unwrap();
        layout.add_raw_manifest(&bytes, OCI_MANIFEST, None);
        let dir = tempfile::tempdir().unwrap();
        layout.write_dir(dir.path());
        let source = format!("oci:{}", dir.path().display());
        registry.push(&source, &format!("{name}:{tag}"), &[]);
    }
}

/// The TOC entry of the regular file named `name` in `toc`.
pub fn entry<'t>(toc: &'t mut Value, name: &str) -> &'t mut Map<String, Value> {
    toc["entries"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .map(|e| e.as_object_mut().unwrap())
        .find(|e| {
            e["type"] == "reg" && e["name"].as_str().unwrap().trim_start_matches("./") == name
        })
        .unwrap_or_else(|| panic!("no regular file {name} in the TOC"))
}
