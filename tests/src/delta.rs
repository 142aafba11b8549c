//! oci-delta fixtures: delta artifacts from one [`Image`] to another,
//! assembled by hand.
//!
//! A delta layout holds an artifact manifest (`artifactType`
//! [`ARTIFACT_TYPE`], annotated with the source image's manifest and
//! config digests and the target's manifest digest), the empty config, the
//! target manifest and config embedded as blobs, and one blob per changed
//! target layer: a tar-diff encoded here op by op, or the whole layer.
//! Layers the source already has (by diff_id) are left out.
//!
//! The tar-diff format (containers/tar-diff `file-format.md`): an 8-byte
//! header (`tardf1\n\0` or `tardf2\n\0`), then one zstd stream of ops,
//! each `op: u8, size: uvarint, data`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::oci::{
    BuiltImage, Compression, Entry, Image, Kind, Layer, Layout, compress, media, noise,
    sha256_digest,
};

/// The `artifactType` of an oci-delta artifact manifest.
pub const ARTIFACT_TYPE: &str = "application/vnd.io.github.containers.oci-delta.v1";
/// The media type of a tar-diff blob.
pub const TAR_DIFF: &str = "application/vnd.tar-diff";
/// The empty config of an artifact.
pub const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";
/// What a delta layer holds: `image-manifest`, `image-config` or
/// `image-layer`.
pub const CONTENT: &str = "io.github.containers.delta.content";
/// On an `image-layer`: the digest of the target layer it rebuilds.
pub const TO: &str = "io.github.containers.delta.to";
/// The config digest of the image the delta applies to.
pub const SOURCE_CONFIG: &str = "io.github.containers.delta.source-config";
/// The manifest digest of the image the delta applies to.
pub const SOURCE: &str = "io.github.containers.delta.source";
/// The manifest digest of the image the delta rebuilds.
pub const TARGET: &str = "io.github.containers.delta.target";

/// The header of a tar-diff that uses the original ops only.
pub const HEADER_V1: &[u8; 8] = b"tardf1\n\0";
/// The header of a tar-diff that may also use ZSTD_DICT.
pub const HEADER_V2: &[u8; 8] = b"tardf2\n\0";
/// Emit the op's data.
pub const OP_DATA: u8 = 0;
/// Make the source file named by the op's data current, at offset 0.
pub const OP_OPEN: u8 = 1;
/// Emit `size` bytes of the current source file.
pub const OP_COPY: u8 = 2;
/// Emit the op's data added bytewise to as many source bytes.
pub const OP_ADD_DATA: u8 = 3;
/// Move the current source file's position to `size`.
pub const OP_SEEK: u8 = 4;
/// Emit the op's data, a zstd frame, decoded with the whole current
/// source file as its dictionary (`tardf2` only).
pub const OP_ZSTD_DICT: u8 = 5;
/// The largest ADD_DATA tar-patch and oci-delta accept (100 MiB).
pub const MAX_ADD_DATA: u64 = 100 * 1024 * 1024;

/// A protobuf-style unsigned varint, as tar-diff writes it.
pub fn uvarint(mut value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
    out
}

/// An uncompressed tar-diff op stream being assembled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ops {
    body: Vec<u8>,
}

impl Ops {
    /// An empty op stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Any op: its code, size and data, as given.
    pub fn op(&mut self, code: u8, size: u64, data: &[u8]) -> &mut Self {
        self.body.push(code);
        self.body.extend(uvarint(size));
        self.body.extend_from_slice(data);
        self
    }

    /// Bytes appended as they are, for streams that are wrong on purpose.
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.body.extend_from_slice(bytes);
        self
    }

    /// DATA: emit `data`.
    pub fn data(&mut self, data: &[u8]) -> &mut Self {
        self.op(OP_DATA, data.len() as u64, data)
    }

    /// OPEN: make the source file `path` current.
    pub fn open(&mut self, path: &str) -> &mut Self {
        self.op(OP_OPEN, path.len() as u64, path.as_bytes())
    }

    /// COPY: emit `n` bytes of the current source file.
    pub fn copy(&mut self, n: u64) -> &mut Self {
        self.op(OP_COPY, n, b"")
    }

    /// ADD_DATA: emit `delta` added to as many source bytes.
    pub fn add_data(&mut self, delta: &[u8]) -> &mut Self {
        self.op(OP_ADD_DATA, delta.len() as u64, delta)
    }

    /// SEEK: move the current source file to `to`.
    pub fn seek(&mut self, to: u64) -> &mut Self {
        self.op(OP_SEEK, to, b"")
    }

    /// ZSTD_DICT: emit `frame` decoded against the whole current file.
    pub fn zstd_dict(&mut self, frame: &[u8]) -> &mut Self {
        self.op(OP_ZSTD_DICT, frame.len() as u64, frame)
    }

    /// The uncompressed op stream.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The op codes in the stream, in order (data skipped).
    pub fn codes(&self) -> Vec<u8> {
        let mut codes = Vec::new();
        let mut at = 0;
        while at < self.body.len() {
            let code = self.body[at];
            at += 1;
            let (mut size, mut shift) = (0u64, 0);
            loop {
                let byte = self.body[at];
                at += 1;
                size |= u64::from(byte & 0x7f) << shift;
                shift += 7;
                if byte & 0x80 == 0 {
                    break;
                }
            }
            if code != OP_COPY && code != OP_SEEK {
                at += size as usize;
            }
            codes.push(code);
        }
        codes
    }

    /// The whole tar-diff: `header`, then the zstd-compressed op stream.
    pub fn encode(&self, header: &[u8; 8]) -> Vec<u8> {
        let mut out = header.to_vec();
        out.extend(zstd::encode_all(&self.body[..], 3).unwrap());
        out
    }
}

/// A zstd frame of `target` compressed with `source` as its raw-content
/// dictionary (`zstd --patch-from`): the data of a ZSTD_DICT op.
pub fn patch_from(source: &[u8], target: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), 3, source).unwrap();
    // A window that spans the dictionary, as `--patch-from` sets it.
    let span = (source.len() + target.len()).max(1024) as u64;
    let log = (64 - (span - 1).leading_zeros()).min(27);
    encoder
        .set_parameter(zstd::stream::raw::CParameter::WindowLog(log))
        .unwrap();
    encoder.write_all(target).unwrap();
    encoder.finish().unwrap()
}

/// How [`encode_tar_diff`] writes a target layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// DATA for everything (`tardf1`).
    AllData,
    /// Headers and new files as DATA; a file the source has with the same
    /// content (at its path or another) as OPEN + COPY; a modified file
    /// as OPEN + ADD_DATA over the common length, then DATA for the rest
    /// (`tardf1`). OPEN paths are absolute (`/usr/...`).
    AddData,
    /// As [`Encoding::AddData`], but a modified file is OPEN, COPY of the
    /// common prefix, DATA of the changed middle, SEEK past the source's
    /// middle, COPY of the common suffix (`tardf1`). OPEN paths start with
    /// `./`.
    Splice,
    /// As [`Encoding::AddData`], but a modified file is OPEN + ZSTD_DICT
    /// (`tardf2`). OPEN paths are relative.
    ZstdDict,
}

impl Encoding {
    /// Every encoding.
    pub const ALL: [Encoding; 4] = [
        Encoding::AllData,
        Encoding::AddData,
        Encoding::Splice,
        Encoding::ZstdDict,
    ];

    /// The header it writes.
    pub fn header(self) -> &'static [u8; 8] {
        match self {
            Encoding::ZstdDict => HEADER_V2,
            _ => HEADER_V1,
        }
    }

    fn open_path(self, path: &str) -> String {
        match self {
            Encoding::AddData => format!("/{path}"),
            Encoding::Splice => format!("./{path}"),
            _ => path.to_owned(),
        }
    }
}

/// The op stream that rebuilds `target` (a layer tar) from the regular
/// files `source` has (path → content, as [`image_files`] gives), encoded
/// per `encoding`.
pub fn tar_diff_ops(target: &[u8], source: &BTreeMap<String, Vec<u8>>, encoding: Encoding) -> Ops {
    let mut ops = Ops::new();
    let mut done = 0usize;
    let by_content: BTreeMap<&[u8], &str> = source
        .iter()
        .map(|(p, d)| (d.as_slice(), p.as_str()))
        .collect();
    let mut archive = tar::Archive::new(target);
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        if encoding == Encoding::AllData || !entry.header().entry_type().is_file() {
            continue;
        }
        let start = entry.raw_file_position() as usize;
        let len = entry.size() as usize;
        if len == 0 {
            continue;
        }
        let path = normal_path(&entry.path().unwrap().to_string_lossy());
        let new = &target[start..start + len];
        let (old_path, old) = if let Some(&same) = by_content.get(new) {
            (same.to_owned(), new)
        } else if let Some(old) = source.get(&path) {
            (path, &old[..])
        } else {
            continue;
        };
        ops.data(&target[done..start]);
        ops.open(&encoding.open_path(&old_path));
        if old == new {
            ops.copy(len as u64);
        } else {
            match encoding {
                Encoding::AllData => unreachable!(),
                Encoding::AddData => {
                    let common = old.len().min(new.len());
                    let add: Vec<u8> = new[..common]
                        .iter()
                        .zip(&old[..common])
                        .map(|(n, o)| n.wrapping_sub(*o))
                        .collect();
                    ops.add_data(&add);
                    if new.len() > common {
                        ops.data(&new[common..]);
                    }
                }
                Encoding::Splice => {
                    let most = old.len().min(new.len());
                    let prefix = (0..most).take_while(|&i| old[i] == new[i]).count();
                    let suffix = (0..most - prefix)
                        .take_while(|&i| old[old.len() - 1 - i] == new[new.len() - 1 - i])
                        .count();
                    ops.copy(prefix as u64);
                    ops.data(&new[prefix..new.len() - suffix]);
                    ops.seek((old.len() - suffix) as u64);
                    ops.copy(suffix as u64);
                }
                Encoding::ZstdDict => {
                    ops.zstd_dict(&patch_from(old, new));
                }
            }
        }
        done = start + len;
    }
    ops.data(&target[done..]);
    ops
}

/// The tar-diff that rebuilds `target` from `source`'s files, encoded per
/// `encoding`, with its header and compressed.
pub fn encode_tar_diff(
    target: &[u8],
    source: &BTreeMap<String, Vec<u8>>,
    encoding: Encoding,
) -> Vec<u8> {
    tar_diff_ops(target, source, encoding).encode(encoding.header())
}

/// A tar path in the form an image's file tree uses: no leading `./` or
/// `/`, no trailing `/`.
fn normal_path(path: &str) -> String {
    path.trim_start_matches("./").trim_matches('/').to_owned()
}

/// The regular files of `image` as a composefs image of it holds them:
/// layers applied bottom up, whiteouts and opaque markers honoured, hard
/// links resolved, `/run` emptied. Path → content.
pub fn image_files(image: &Image) -> BTreeMap<String, Vec<u8>> {
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let remove_under = |files: &mut BTreeMap<String, Vec<u8>>, dir: &str| {
        let prefix = format!("{dir}/");
        files.retain(|p, _| !p.starts_with(&prefix));
    };
    for layer in &image.layers {
        // An opaque marker hides the lower layers' content of its
        // directory, not this layer's.
        for entry in &layer.entries {
            if let Some(dir) = entry.path.strip_suffix("/.wh..wh..opq") {
                remove_under(&mut files, dir);
            }
        }
        for entry in &layer.entries {
            let (dir, name) = match entry.path.rsplit_once('/') {
                Some((dir, name)) => (format!("{dir}/"), name),
                None => (String::new(), entry.path.as_str()),
            };
            if name == ".wh..wh..opq" {
                continue;
            }
            if let Some(hidden) = name.strip_prefix(".wh.") {
                let hidden = format!("{dir}{hidden}");
                files.remove(&hidden);
                remove_under(&mut files, &hidden);
                continue;
            }
            match &entry.kind {
                Kind::File(data) => {
                    files.insert(entry.path.clone(), data.clone());
                }
                Kind::Hardlink(target) => {
                    let data = files
                        .get(target)
                        .unwrap_or_else(|| panic!("hard link to a non-file {target}"))
                        .clone();
                    files.insert(entry.path.clone(), data);
                }
                Kind::Dir => {
                    files.remove(&entry.path);
                }
                _ => {
                    files.remove(&entry.path);
                    remove_under(&mut files, &entry.path);
                }
            }
        }
    }
    remove_under(&mut files, "run");
    files
}

/// How the delta carries one target layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// As this tar-diff blob.
    TarDiff(Vec<u8>),
    /// As the whole layer tar, compressed so (`tar`, `tar+gzip`,
    /// `tar+zstd`).
    Whole(Compression),
    /// As these bytes of this media type, for deltas that are wrong on
    /// purpose.
    Raw {
        /// The delta layer's media type.
        media_type: String,
        /// Its blob.
        blob: Vec<u8>,
    },
}

/// A delta from one image to another.
#[derive(Debug, Clone)]
pub struct DeltaSpec<'a> {
    /// The image it applies to.
    pub source: &'a BuiltImage,
    /// The image it rebuilds.
    pub target: &'a BuiltImage,
    /// The target layers it carries, by index; the others are left out.
    pub parts: Vec<(usize, Part)>,
    /// Config bytes to embed instead of the target's.
    pub embedded_config: Option<Vec<u8>>,
}

/// What was written for a delta.
#[derive(Debug, Clone)]
pub struct BuiltDelta {
    /// The artifact manifest's digest.
    pub manifest_digest: String,
    /// The artifact manifest.
    pub manifest: Vec<u8>,
    /// The blob of each part, in the order of [`DeltaSpec::parts`].
    pub part_digests: Vec<String>,
}

impl DeltaSpec<'_> {
    /// Add the delta's blobs to `layout` and list its manifest in
    /// `index.json`, named `ref_name` if given.
    pub fn add_to(&self, layout: &mut Layout, ref_name: Option<&str>) -> BuiltDelta {
        let embed = |layout: &mut Layout, kind: &str, media_type: &str, bytes: &[u8]| {
            let digest = layout.add_blob(bytes.to_vec());
            json!({"mediaType": media_type, "digest": digest, "size": bytes.len(),
                   "annotations": {CONTENT: kind}})
        };
        let config = self
            .embedded_config
            .clone()
            .unwrap_or_else(|| self.target.config.clone());
        let mut layers = vec![
            embed(
                layout,
                "image-manifest",
                media::OCI_MANIFEST,
                &self.target.manifest,
            ),
            embed(layout, "image-config", media::OCI_CONFIG, &config),
        ];
        let mut part_digests = Vec::new();
        for (index, part) in &self.parts {
            let tar = &self.target.layer_tars[*index];
            let (media_type, blob) = match part {
                Part::TarDiff(blob) => (TAR_DIFF.to_owned(), blob.clone()),
                Part::Whole(compression) => {
                    let media_type = match compression {
                        Compression::None => media::OCI_LAYER,
                        Compression::Gzip => media::OCI_LAYER_GZIP,
                        Compression::Zstd => media::OCI_LAYER_ZSTD,
                    };
                    (media_type.to_owned(), compress(tar, *compression))
                }
                Part::Raw { media_type, blob } => (media_type.clone(), blob.clone()),
            };
            let size = blob.len();
            let digest = layout.add_blob(blob);
            layers.push(json!({
                "mediaType": media_type, "digest": digest, "size": size,
                "annotations": {CONTENT: "image-layer", TO: self.target.layer_digests[*index]},
            }));
            part_digests.push(digest);
        }
        let empty = layout.add_blob(b"{}".to_vec());
        let manifest: Value = json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "artifactType": ARTIFACT_TYPE,
            "config": {"mediaType": EMPTY_CONFIG, "digest": empty, "size": 2},
            "layers": layers,
            "annotations": {
                SOURCE: self.source.manifest_digest,
                SOURCE_CONFIG: self.source.config_digest,
                TARGET: self.target.manifest_digest,
            },
        });
        let manifest = serde_json::to_vec_pretty(&manifest).unwrap();
        let manifest_digest = layout.add_blob(manifest.clone());
        assert_eq!(manifest_digest, sha256_digest(&manifest));
        layout.list(
            media::OCI_MANIFEST,
            &manifest_digest,
            manifest.len(),
            ref_name,
            None,
        );
        BuiltDelta {
            manifest_digest,
            manifest,
            part_digests,
        }
    }

    /// A layout holding just this delta.
    pub fn layout(&self) -> (Layout, BuiltDelta) {
        let mut layout = Layout::new();
        let built = self.add_to(&mut layout, None);
        (layout, built)
    }
}

/// A layout holding the delta from `source` (built as `source_built`) to
/// `target`, carrying target layer `layer` as a zstd-dictionary tar-diff
/// and leaving the other layers out.
pub fn tar_diff_delta(
    source: &Image,
    source_built: &BuiltImage,
    target: &BuiltImage,
    layer: usize,
) -> Layout {
    let tar_diff = encode_tar_diff(
        &target.layer_tars[layer],
        &image_files(source),
        Encoding::ZstdDict,
    );
    let spec = DeltaSpec {
        source: source_built,
        target,
        parts: vec![(layer, Part::TarDiff(tar_diff))],
        embedded_config: None,
    };
    spec.layout().0
}

/// Two versions of an image for delta tests: a lower layer both share,
/// and an upper one that changes.
pub fn versions() -> (Image, Image) {
    let lower = Layer::new(
        Compression::Gzip,
        vec![
            Entry::dir("usr"),
            Entry::dir("usr/lib"),
            Entry::file("usr/lib/shared.bin", noise(7, 300_000)),
        ],
    );
    let upper = |version: u64| {
        let mut data = noise(9, 400_000);
        data[1000..1100].fill(version as u8);
        Layer::new(
            Compression::Gzip,
            vec![
                Entry::dir("etc"),
                Entry::file("etc/app.bin", data),
                Entry::file("etc/version", format!("{version}\n")),
            ],
        )
    };
    (
        Image::new(vec![lower.clone(), upper(1)]),
        Image::new(vec![lower, upper(2)]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Entry;

    #[test]
    fn image_files_apply_whiteouts_opaque_markers_and_links() {
        let image = Image::new(vec![
            Layer::new(
                Compression::None,
                vec![
                    Entry::file("a/x", "x"),
                    Entry::file("a/y", "y"),
                    Entry::file("b/z", "z"),
                    Entry::file("run/r", "r"),
                    Entry::file("c", "c"),
                ],
            ),
            Layer::new(
                Compression::None,
                vec![
                    Entry::opaque("a"),
                    Entry::file("a/new", "n"),
                    Entry::whiteout("b"),
                    Entry::hardlink("d", "c"),
                    Entry::symlink("c", "d"),
                ],
            ),
        ]);
        let files = image_files(&image);
        let want: BTreeMap<String, Vec<u8>> = [("a/new", "n"), ("d", "c")]
            .iter()
            .map(|(p, d)| (p.to_string(), d.as_bytes().to_vec()))
            .collect();
        assert_eq!(files, want);
    }

    #[test]
    fn ops_list_their_codes() {
        let mut ops = Ops::new();
        ops.data(b"abc")
            .open("x")
            .copy(300)
            .seek(1 << 20)
            .add_data(&[1; 200]);
        assert_eq!(
            ops.codes(),
            [OP_DATA, OP_OPEN, OP_COPY, OP_SEEK, OP_ADD_DATA]
        );
        let encoded = ops.encode(HEADER_V1);
        assert_eq!(&encoded[..8], HEADER_V1);
        assert_eq!(zstd::decode_all(&encoded[8..]).unwrap(), ops.body());
    }
}
