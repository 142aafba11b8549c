//! OCI image fixtures: real image layouts, written byte by byte.
//!
//! Layers are tar streams built header by header (GNU long names, PAX
//! records, ustar prefixes, devices, FIFOs, hard links, whiteouts,
//! `security.capability` xattrs), compressed per layer, described by a
//! config with correct `rootfs.diff_ids` and a manifest, and listed in an
//! `index.json`. A [`Layout`] is written as an `oci:` directory or an
//! `oci-archive:` tar, and can be damaged on purpose for negative tests.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
};

use serde_json::{Value, json};

mod entry;
mod fixtures;
mod raw;

pub use entry::*;
pub use fixtures::*;
pub use raw::*;

/// The mtime of every entry unless set otherwise (seconds since 1970).
pub const MTIME: u64 = 1_700_000_000;

/// OCI media types.
pub mod media {
    /// An OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// An OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// An OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// An uncompressed OCI layer.
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    /// A gzip-compressed OCI layer.
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// A zstd-compressed OCI layer.
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// A Docker schema2 manifest list.
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    /// A Docker schema2 manifest.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// A Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// A gzip-compressed Docker layer.
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
}

/// The annotation that names a manifest in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(openssl::sha::sha256(bytes)))
}

/// `n` bytes of deterministic noise that compresses badly, as real
/// binaries do.
pub fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// The `security.capability` value of a file with CAP_NET_RAW permitted
/// and effective (`vfs_cap_data` revision 2), as ping has.
pub fn cap_net_raw() -> Vec<u8> {
    let mut cap = Vec::new();
    cap.extend_from_slice(&0x0200_0001u32.to_le_bytes()); // revision 2 | effective
    cap.extend_from_slice(&(1u32 << 13).to_le_bytes()); // permitted: CAP_NET_RAW
    cap.extend_from_slice(&0u32.to_le_bytes()); // inheritable
    cap.extend_from_slice(&0u32.to_le_bytes()); // permitted, high word
    cap.extend_from_slice(&0u32.to_le_bytes()); // inheritable, high word
    cap
}

/// An image: layers plus what its config says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Bottom layer first.
    pub layers: Vec<Layer>,
    /// `os` of the config and the platform.
    pub os: String,
    /// `architecture` of the config and the platform.
    pub architecture: String,
    /// `variant`, if any.
    pub variant: Option<String>,
    /// The config's `created`.
    pub created: Option<String>,
    /// Labels, also a way to make two configs differ.
    pub labels: BTreeMap<String, String>,
    /// Write Docker schema2 media types instead of OCI ones.
    pub docker: bool,
    /// Write a wrong diff_id for this layer into the config.
    pub wrong_diff_id: Option<usize>,
}

/// The host's architecture as OCI names it.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

impl Image {
    /// An image of `layers` for the host platform (linux/amd64 on x86_64).
    pub fn new(layers: Vec<Layer>) -> Self {
        Image {
            layers,
            os: "linux".to_owned(),
            architecture: host_architecture().to_owned(),
            variant: None,
            created: Some("2024-01-02T03:04:05Z".to_owned()),
            labels: BTreeMap::new(),
            docker: false,
            wrong_diff_id: None,
        }
    }

    /// For `os/arch[/variant]`.
    pub fn platform(mut self, platform: &str) -> Self {
        let parts: Vec<&str> = platform.split('/').collect();
        self.os = parts[0].to_owned();
        self.architecture = parts[1].to_owned();
        self.variant = parts.get(2).map(|v| (*v).to_owned());
        self
    }

    /// With a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    /// With Docker schema2 media types (all layers must be gzip).
    pub fn docker(mut self) -> Self {
        self.docker = true;
        self
    }

    /// `os/arch[/variant]`.
    pub fn platform_string(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{v}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }

    fn platform_json(&self) -> Value {
        let mut p = json!({"os": self.os, "architecture": self.architecture});
        if let Some(v) = &self.variant {
            p["variant"] = json!(v);
        }
        p
    }
}

/// What was written for one image.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// The manifest's digest.
    pub manifest_digest: String,
    /// The manifest bytes.
    pub manifest: Vec<u8>,
    /// The config's digest.
    pub config_digest: String,
    /// The config bytes.
    pub config: Vec<u8>,
    /// Each layer blob's digest, bottom first.
    pub layer_digests: Vec<String>,
    /// Each layer blob's size.
    pub layer_sizes: Vec<u64>,
    /// Each layer's true diff_id (sha256 of the uncompressed tar).
    pub diff_ids: Vec<String>,
    /// Each layer's uncompressed tar.
    pub layer_tars: Vec<Vec<u8>>,
    /// `os/arch[/variant]`.
    pub platform: String,
}

impl BuiltImage {
    /// The manifest digest's hex part.
    pub fn manifest_hex(&self) -> &str {
        self.manifest_digest.trim_start_matches("sha256:")
    }
}

/// An OCI image layout being assembled: blobs and `index.json` entries.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    blobs: BTreeMap<String, Vec<u8>>,
    index: Vec<Value>,
}

impl Layout {
    /// An empty layout.
    pub fn new() -> Self {
        Self::default()
    }

    /// A layout holding just `image`, named `ref_name` if given.
    pub fn single(image: &Image, ref_name: Option<&str>) -> (Self, BuiltImage) {
        let mut layout = Self::new();
        let built = layout.add_image(image, ref_name);
        (layout, built)
    }

    /// Store `bytes` as a blob; returns its digest.
    pub fn add_blob(&mut self, bytes: Vec<u8>) -> String {
        let digest = sha256_digest(&bytes);
        self.blobs.insert(digest.clone(), bytes);
        digest
    }

    /// The blob named `digest`.
    pub fn blob(&self, digest: &str) -> Option<&[u8]> {
        self.blobs.get(digest).map(Vec::as_slice)
    }

    /// Write `image`'s layers, config and manifest as blobs (not listed
    /// in `index.json`).
    pub fn build_image(&mut self, image: &Image) -> BuiltImage {
        let mut built = BuiltImage {
            manifest_digest: String::new(),
            manifest: Vec::new(),
            config_digest: String::new(),
            config: Vec::new(),
            layer_digests: Vec::new(),
            layer_sizes: Vec::new(),
            diff_ids: Vec::new(),
            layer_tars: Vec::new(),
            platform: image.platform_string(),
        };
        let mut layer_descriptors = Vec::new();
        for layer in &image.layers {
            let tar = layer.tar();
            let blob = compress(&tar, layer.compression);
            let media_type = match (&layer.media_type, image.docker, layer.compression) {
                (Some(m), _, _) => m.clone(),
                (None, true, Compression::Gzip) => media::DOCKER_LAYER_GZIP.to_owned(),
                (None, true, c) => panic!("Docker schema2 layers are gzip, not {c:?}"),
                (None, false, Compression::None) => media::OCI_LAYER.to_owned(),
                (None, false, Compression::Gzip) => media::OCI_LAYER_GZIP.to_owned(),
                (None, false, Compression::Zstd) => media::OCI_LAYER_ZSTD.to_owned(),
            };
            built.diff_ids.push(sha256_digest(&tar));
            built.layer_sizes.push(blob.len() as u64);
            built.layer_tars.push(tar);
            let digest = self.add_blob(blob);
            layer_descriptors.push(json!({
                "mediaType": media_type,
                "digest": digest,
                "size": built.layer_sizes.last().unwrap(),
            }));
            built.layer_digests.push(digest);
        }
        let mut diff_ids = built.diff_ids.clone();
        if let Some(i) = image.wrong_diff_id {
            diff_ids[i] = sha256_digest(b"not the layer");
        }
        let mut config = json!({
            "architecture": image.architecture,
            "os": image.os,
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["/bin/sh"],
                "Labels": image.labels,
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": image.layers.iter().map(|_| json!({"created_by": "cfsd-tests"})).collect::<Vec<_>>(),
        });
        if let Some(v) = &image.variant {
            config["variant"] = json!(v);
        }
        if let Some(created) = &image.created {
            config["created"] = json!(created);
        }
        built.config = serde_json::to_vec(&config).unwrap();
        built.config_digest = self.add_blob(built.config.clone());
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": if image.docker { media::DOCKER_MANIFEST } else { media::OCI_MANIFEST },
            "config": {
                "mediaType": if image.docker { media::DOCKER_CONFIG } else { media::OCI_CONFIG },
                "digest": built.config_digest,
                "size": built.config.len(),
            },
            "layers": layer_descriptors,
        });
        built.manifest = serde_json::to_vec_pretty(&manifest).unwrap();
        built.manifest_digest = self.add_blob(built.manifest.clone());
        built
    }

    /// Add `image` and list its manifest in `index.json`, named
    /// `ref_name` if given.
    pub fn add_image(&mut self, image: &Image, ref_name: Option<&str>) -> BuiltImage {
        let built = self.build_image(image);
        let media_type = if image.docker {
            media::DOCKER_MANIFEST
        } else {
            media::OCI_MANIFEST
        };
        self.list(
            media_type,
            &built.manifest_digest,
            built.manifest.len(),
            ref_name,
            None,
        );
        built
    }

    /// Add `images` behind one nested image index (a Docker manifest list
    /// when `docker`), listed in `index.json` and named `ref_name` if
    /// given. Returns the nested index's digest.
    pub fn add_platforms(
        &mut self,
        images: &[Image],
        ref_name: Option<&str>,
        docker: bool,
    ) -> (String, Vec<BuiltImage>) {
        let mut built = Vec::new();
        let mut manifests = Vec::new();
        for image in images {
            assert_eq!(image.docker, docker, "mixing Docker and OCI manifests");
            let b = self.build_image(image);
            manifests.push(json!({
                "mediaType": if docker { media::DOCKER_MANIFEST } else { media::OCI_MANIFEST },
                "digest": b.manifest_digest,
                "size": b.manifest.len(),
                "platform": image.platform_json(),
            }));
            built.push(b);
        }
        let media_type = if docker {
            media::DOCKER_LIST
        } else {
            media::OCI_INDEX
        };
        let index = serde_json::to_vec_pretty(&json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": manifests,
        }))
        .unwrap();
        let size = index.len();
        let digest = self.add_blob(index);
        self.list(media_type, &digest, size, ref_name, None);
        (digest, built)
    }

    /// Store `bytes` as a manifest blob of `media_type` and list it in
    /// `index.json`: for manifests that are wrong on purpose.
    pub fn add_raw_manifest(
        &mut self,
        bytes: &[u8],
        media_type: &str,
        ref_name: Option<&str>,
    ) -> String {
        let digest = self.add_blob(bytes.to_vec());
        self.list(media_type, &digest, bytes.len(), ref_name, None);
        digest
    }

    /// Add an `index.json` entry.
    pub fn list(
        &mut self,
        media_type: &str,
        digest: &str,
        size: usize,
        ref_name: Option<&str>,
        platform: Option<Value>,
    ) {
        let mut descriptor = json!({"mediaType": media_type, "digest": digest, "size": size});
        if let Some(name) = ref_name {
            descriptor["annotations"] = json!({ REF_NAME: name });
        }
        if let Some(platform) = platform {
            descriptor["platform"] = platform;
        }
        self.index.push(descriptor);
    }

    /// Flip one bit of the blob named `digest` in its middle: same size,
    /// different digest.
    pub fn corrupt_blob(&mut self, digest: &str) {
        let blob = self.blobs.get_mut(digest).expect("no such blob");
        let middle = blob.len() / 2;
        blob[middle] ^= 0x01;
    }

    /// Remove the blob named `digest`.
    pub fn drop_blob(&mut self, digest: &str) {
        self.blobs.remove(digest).expect("no such blob");
    }

    /// The `index.json` bytes.
    pub fn index_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(&json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_INDEX,
            "manifests": self.index,
        }))
        .unwrap()
    }

    /// The files of the layout: path relative to its root, content.
    pub fn files(&self) -> Vec<(String, Vec<u8>)> {
        let mut files = vec![
            (
                "oci-layout".to_owned(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
            ("index.json".to_owned(), self.index_json()),
        ];
        for (digest, bytes) in &self.blobs {
            let hex = digest.strip_prefix("sha256:").unwrap();
            files.push((format!("blobs/sha256/{hex}"), bytes.clone()));
        }
        files
    }

    /// Write the layout as an `oci:` directory at `dir`.
    pub fn write_dir(&self, dir: &Path) {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        for (path, bytes) in self.files() {
            std::fs::write(dir.join(path), bytes).unwrap();
        }
    }

    /// The layout as an uncompressed `oci-archive:` tar, as skopeo writes
    /// it: directories, then `oci-layout`, `index.json` and the blobs.
    pub fn archive(&self) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for dir in ["blobs", "blobs/sha256"] {
            let mut header = tar::Header::new_ustar();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_mtime(MTIME);
            header.set_size(0);
            builder
                .append_data(&mut header, format!("{dir}/"), &[][..])
                .unwrap();
        }
        for (path, bytes) in self.files() {
            let mut header = tar::Header::new_ustar();
            header.set_mode(0o644);
            header.set_mtime(MTIME);
            header.set_size(bytes.len() as u64);
            builder.append_data(&mut header, path, &bytes[..]).unwrap();
        }
        builder.into_inner().unwrap()
    }

    /// Write the layout as an uncompressed `oci-archive:` tar at `path`.
    pub fn write_archive(&self, path: &Path) {
        std::fs::write(path, self.archive()).unwrap();
    }

    /// Write the layout as a gzip-compressed tar at `path`, which
    /// `oci-archive:` must refuse with a clear message.
    pub fn write_gzip_archive(&self, path: &Path) {
        std::fs::write(path, compress(&self.archive(), Compression::Gzip)).unwrap();
    }
}

/// A scratch directory with a layout written in both forms.
#[derive(Debug)]
pub struct Written {
    /// The scratch directory; removed on drop.
    pub dir: tempfile::TempDir,
}

impl Written {
    /// Write `layout` as `DIR/layout` (an `oci:` directory) and
    /// `DIR/image.tar` (an `oci-archive:`).
    pub fn new(layout: &Layout) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cfsd-oci")
            .tempdir()
            .unwrap();
        layout.write_dir(&dir.path().join("layout"));
        layout.write_archive(&dir.path().join("image.tar"));
        Written { dir }
    }

    /// `oci:DIR/layout[:ref]`.
    pub fn oci(&self, reference: Option<&str>) -> String {
        with_ref(
            &format!("oci:{}", self.dir.path().join("layout").display()),
            reference,
        )
    }

    /// `oci-archive:DIR/image.tar[:ref]`.
    pub fn archive(&self, reference: Option<&str>) -> String {
        with_ref(
            &format!("oci-archive:{}", self.archive_path().display()),
            reference,
        )
    }

    /// The archive's path.
    pub fn archive_path(&self) -> PathBuf {
        self.dir.path().join("image.tar")
    }
}

fn with_ref(source: &str, reference: Option<&str>) -> String {
    match reference {
        Some(r) => format!("{source}:{r}"),
        None => source.to_owned(),
    }
}

impl Written {
    /// Write `layout` in both forms with each `(path, bytes)` of `replace`
    /// instead of (or in addition to) the layout's own file at `path`.
    pub fn with_files(layout: &Layout, replace: &[(&str, Vec<u8>)]) -> Self {
        let mut files = layout.files();
        for (path, bytes) in replace {
            files.retain(|(p, _)| p != path);
            files.push(((*path).to_owned(), bytes.clone()));
        }
        Self::of_files(&files, None)
    }

    /// Write `layout` in both forms with the file at `path` replaced by
    /// `len` zero bytes that take no disk space (a sparse file, and a
    /// sparse archive member placed last): for documents far larger than
    /// any limit, which must be refused without being read.
    pub fn with_huge_file(layout: &Layout, path: &str, len: u64) -> Self {
        let mut files = layout.files();
        files.retain(|(p, _)| p != path);
        Self::of_files(&files, Some((path, len)))
    }

    fn of_files(files: &[(String, Vec<u8>)], huge: Option<(&str, u64)>) -> Self {
        use std::os::unix::fs::FileExt as _;
        let dir = tempfile::Builder::new()
            .prefix("cfsd-oci")
            .tempdir()
            .unwrap();
        let root = dir.path().join("layout");
        std::fs::create_dir_all(root.join("blobs/sha256")).unwrap();
        let mut builder = tar::Builder::new(Vec::new());
        for (path, bytes) in files {
            std::fs::write(root.join(path), bytes).unwrap();
            let mut header = tar::Header::new_ustar();
            header.set_mode(0o644);
            header.set_mtime(MTIME);
            header.set_size(bytes.len() as u64);
            builder.append_data(&mut header, path, &bytes[..]).unwrap();
        }
        // Without the end-of-archive blocks, which `set_len` adds as zeros.
        let mut archive = builder.get_ref().clone();
        let mut archive_len = archive.len() as u64 + 1024;
        if let Some((path, len)) = huge {
            std::fs::File::create(root.join(path))
                .unwrap()
                .set_len(len)
                .unwrap();
            let mut header = tar::Header::new_ustar();
            header.set_path(path).unwrap();
            header.set_mode(0o644);
            header.set_mtime(MTIME);
            header.set_size(len);
            header.set_cksum();
            archive.extend_from_slice(header.as_bytes());
            // The data and the end-of-archive blocks are all zeros.
            archive_len = archive.len() as u64 + len.next_multiple_of(512) + 1024;
        }
        let file = std::fs::File::create(dir.path().join("image.tar")).unwrap();
        file.write_all_at(&archive, 0).unwrap();
        file.set_len(archive_len).unwrap();
        Written { dir }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// Read a layer back with the `tar` crate: path, type, link, device,
    /// xattrs, content.
    fn read_back(tar: &[u8]) -> Vec<(String, tar::EntryType, Option<String>, Vec<u8>)> {
        let mut archive = tar::Archive::new(tar);
        let mut out = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            let kind = entry.header().entry_type();
            let link = entry.link_name().unwrap().map(|l| l.display().to_string());
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            out.push((path, kind, link, data));
        }
        out
    }

    #[test]
    fn layers_read_back_as_written() {
        let image = everything_image();
        let [gnu, pax, ustar, pax_link, gnu_link] = long_paths();
        let mut seen = Vec::new();
        for layer in &image.layers {
            let tar = layer.tar();
            let entries = read_back(&tar);
            assert_eq!(entries.len(), layer.entries.len());
            for ((path, kind, link, data), want) in entries.iter().zip(&layer.entries) {
                assert_eq!(path.trim_end_matches('/'), want.path);
                match &want.kind {
                    Kind::Dir => assert_eq!(*kind, tar::EntryType::Directory),
                    Kind::File(content) => assert_eq!(data, content, "{path}"),
                    Kind::Symlink(target) | Kind::Hardlink(target) => {
                        assert_eq!(link.as_deref(), Some(target.as_str()), "{path}")
                    }
                    _ => {}
                }
                seen.push(path.trim_end_matches('/').to_owned());
            }
            // Compression round-trips to the same tar.
            let blob = layer.blob();
            let back = match layer.compression {
                Compression::None => blob.clone(),
                Compression::Gzip => {
                    let mut out = Vec::new();
                    flate2::read::GzDecoder::new(&blob[..])
                        .read_to_end(&mut out)
                        .unwrap();
                    out
                }
                Compression::Zstd => zstd::decode_all(&blob[..]).unwrap(),
            };
            assert_eq!(back, tar);
        }
        for path in [&gnu, &pax, &ustar, &pax_link, &gnu_link] {
            assert!(seen.contains(path), "{path}");
        }
        // Each encoding is really the one named.
        let base = image.layers[0].tar();
        let has = |needle: &[u8]| base.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"././@LongLink"));
        assert!(has(format!("path={pax}\n").as_bytes()));
        assert!(has(format!("linkpath=/{pax}\n").as_bytes()));
        assert!(has(b"SCHILY.xattr.security.capability="));
        // The ustar file's directory part sits alone in the prefix field,
        // NUL-terminated, and no PAX record names it.
        let prefix = format!("usr/share/{}\0", long('u', 99));
        assert!(has(prefix.as_bytes()) && !has(format!("path={ustar}").as_bytes()));
    }

    #[test]
    fn devices_and_xattrs_are_in_the_headers() {
        let layer = &everything_image().layers[0];
        let tar = layer.tar();
        let mut archive = tar::Archive::new(&tar[..]);
        let mut found = 0;
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            if path == "dev/loop-like" {
                assert_eq!(entry.header().entry_type(), tar::EntryType::Block);
                assert_eq!(entry.header().device_major().unwrap(), Some(7));
                found += 1;
            }
            if path == "usr/bin/ping" {
                let pax: Vec<(String, Vec<u8>)> = entry
                    .pax_extensions()
                    .unwrap()
                    .unwrap()
                    .map(|e| {
                        let e = e.unwrap();
                        (e.key().unwrap().to_owned(), e.value_bytes().to_vec())
                    })
                    .collect();
                assert!(
                    pax.contains(&("SCHILY.xattr.security.capability".to_owned(), cap_net_raw()))
                );
                assert_eq!(entry.header().mode().unwrap(), 0o4755);
                found += 1;
            }
        }
        assert_eq!(found, 2);
    }

    #[test]
    fn the_layout_describes_its_blobs() {
        let mut layout = Layout::new();
        let built = layout.add_image(&everything_image(), Some("latest"));
        let index: Value = serde_json::from_slice(&layout.index_json()).unwrap();
        assert_eq!(
            index["manifests"][0]["digest"],
            built.manifest_digest.as_str()
        );
        assert_eq!(index["manifests"][0]["annotations"][REF_NAME], "latest");
        let manifest: Value =
            serde_json::from_slice(layout.blob(&built.manifest_digest).unwrap()).unwrap();
        assert_eq!(manifest["config"]["digest"], built.config_digest.as_str());
        for (i, layer) in manifest["layers"].as_array().unwrap().iter().enumerate() {
            let blob = layout.blob(layer["digest"].as_str().unwrap()).unwrap();
            assert_eq!(layer["size"], blob.len());
            assert_eq!(sha256_digest(blob), built.layer_digests[i]);
        }
        let config: Value =
            serde_json::from_slice(layout.blob(&built.config_digest).unwrap()).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"], json!(built.diff_ids));

        // The archive holds the same files.
        let archive = layout.archive();
        let files: BTreeMap<String, Vec<u8>> = read_back(&archive)
            .into_iter()
            .filter(|(_, kind, _, _)| kind.is_file())
            .map(|(path, _, _, data)| (path, data))
            .collect();
        assert_eq!(files, layout.files().into_iter().collect());

        let before = layout.blob(&built.layer_digests[1]).unwrap().to_vec();
        layout.corrupt_blob(&built.layer_digests[1]);
        let after = layout.blob(&built.layer_digests[1]).unwrap();
        assert_eq!(before.len(), after.len());
        assert_ne!(sha256_digest(after), built.layer_digests[1]);
    }
}
