//! The reader on blobs Debian's skopeo writes (the legacy variant), and
//! on hostile variations of them.

use std::{collections::HashMap, io::Read, path::Path, process::Command};

use serde_json::{Value, json};

use super::*;

/// A layer tar with the entry kinds a TOC describes: a root `./`, a
/// directory, small, empty and large files (the large one with a run of
/// zeros and enough noise to be cut into chunks), a symlink and a hard
/// link. Returns the tar and each regular file's content.
pub(super) fn layer_tar() -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
    let mut files = vec![
        ("etc/hello".to_owned(), b"hello world\n".to_vec()),
        ("etc/empty".to_owned(), Vec::new()),
        ("usr/lib/big".to_owned(), big_content(3)),
    ];
    files.push(("usr/lib/other".to_owned(), noise(9, 70_000)));
    let mut builder = tar::Builder::new(Vec::new());
    let dir = |builder: &mut tar::Builder<Vec<u8>>, path: &str| {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_mtime(1_700_000_000);
        header.set_size(0);
        builder
            .append_data(&mut header, path, std::io::empty())
            .unwrap();
    };
    dir(&mut builder, "./");
    dir(&mut builder, "etc/");
    dir(&mut builder, "usr/");
    dir(&mut builder, "usr/lib/");
    for (path, data) in &files {
        let mut header = tar::Header::new_ustar();
        header.set_mode(0o644);
        header.set_uid(1000);
        header.set_gid(100);
        header.set_mtime(1_700_000_123);
        header.set_size(data.len() as u64);
        builder
            .append_data(&mut header, path, data.as_slice())
            .unwrap();
    }
    let mut link = tar::Header::new_ustar();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    link.set_mode(0o777);
    builder
        .append_link(&mut link, "etc/greeting", "hello")
        .unwrap();
    let mut hard = tar::Header::new_ustar();
    hard.set_entry_type(tar::EntryType::Link);
    hard.set_size(0);
    hard.set_mode(0o644);
    builder
        .append_link(&mut hard, "etc/hello2", "etc/hello")
        .unwrap();
    (builder.into_inner().unwrap(), files)
}

/// Noise from `seed`, `n` bytes.
pub(super) fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect()
}

/// 600 KB: noise, 8 KiB of zeros, more noise.
pub(super) fn big_content(seed: u64) -> Vec<u8> {
    let mut data = noise(seed, 300_000);
    data.extend(std::iter::repeat_n(0u8, 8192));
    data.extend(noise(seed + 1, 300_000));
    data
}

/// A layer blob and its descriptor's annotations.
pub(super) struct Blob {
    pub(super) bytes: Vec<u8>,
    pub(super) annotations: HashMap<String, String>,
}

impl Blob {
    fn layout(&self) -> Layout {
        Layout::from_annotations(|k| self.annotations.get(k).map(String::as_str))
            .unwrap()
            .expect("a zstd:chunked layer")
    }

    fn toc(&self) -> Result<Toc, TocFault> {
        let layout = self.layout();
        // Cut to the blob, for Toc::decode to find what is outside it.
        let len = self.bytes.len() as u64;
        let end = layout.toc.end().unwrap_or(u64::MAX).min(len) as usize;
        let frame = &self.bytes[(layout.toc.offset.min(len) as usize).min(end)..end];
        Toc::decode(frame, &layout, self.bytes.len() as u64, &Limits::default())
    }
}

/// Write `tar` as a one-layer `oci:` layout at `dir`.
pub(super) fn write_layout(dir: &Path, tar: &[u8]) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let digest = sha256_digest(bytes);
        std::fs::write(blobs.join(&digest[7..]), bytes).unwrap();
        (digest, bytes.len())
    };
    let (layer, layer_size) = put(tar);
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer]}, "config": {},
    });
    let (config, config_size) = put(&serde_json::to_vec(&config).unwrap());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer, "size": layer_size}],
    });
    let (manifest, manifest_size) = put(&serde_json::to_vec(&manifest).unwrap());
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest, "size": manifest_size,
        "annotations": {"org.opencontainers.image.ref.name": "t"}}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

/// The first layer of the `oci:` layout at `dir` with its annotations.
pub(super) fn read_layer(dir: &Path) -> Blob {
    let blob = |digest: &str| std::fs::read(dir.join("blobs/sha256").join(&digest[7..])).unwrap();
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let manifest: Value =
        serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    let layer = &manifest["layers"][0];
    let annotations = layer["annotations"]
        .as_object()
        .map(|a| {
            a.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    Blob {
        bytes: blob(layer["digest"].as_str().unwrap()),
        annotations,
    }
}

/// `tar` as the zstd:chunked blob this machine's skopeo writes. Fails
/// rather than skips without skopeo: scripts/setup-deps installs it.
pub(super) fn skopeo_blob(tar: &[u8]) -> Blob {
    let dir = tempfile::tempdir().unwrap();
    write_layout(&dir.path().join("src"), tar);
    let output = Command::new("skopeo")
        .arg("copy")
        .arg("-q")
        .arg(format!("oci:{}:t", dir.path().join("src").display()))
        .arg(format!("oci:{}:t", dir.path().join("dst").display()))
        .args(["--dest-compress-format", "zstd:chunked"])
        .output()
        .expect("skopeo is not installed: apt-get install skopeo (scripts/setup-deps does)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "skopeo copy: {stderr}");
    read_layer(&dir.path().join("dst"))
}

fn legacy_blob() -> (Blob, Vec<(String, Vec<u8>)>) {
    let (tar, files) = layer_tar();
    (skopeo_blob(&tar), files)
}

/// Decompress the blob bytes `range`, at most `size` bytes.
fn inflate(blob: &[u8], range: std::ops::Range<u64>, size: u64) -> Vec<u8> {
    let frame = &blob[range.start as usize..range.end as usize];
    let mut out = Vec::new();
    zstd::stream::read::Decoder::with_buffer(frame)
        .unwrap()
        .take(size + 1)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn the_legacy_blob_of_bookworms_skopeo_reads_by_annotations_and_by_footer() {
    let (blob, files) = legacy_blob();
    let layout = blob.layout();
    assert_eq!(layout.variant, Variant::Legacy);
    assert_eq!(layout.tar_split, None);
    assert!(
        blob.annotations
            .contains_key("io.containers.zstd-chunked.manifest-checksum")
    );
    let footer = Footer::parse(&blob.bytes[blob.bytes.len() - 72..]).unwrap();
    assert_eq!(footer.variant, Variant::Legacy);
    assert_eq!(footer.toc, layout.toc);
    assert_eq!(Layout::from_footer(&footer).toc_checksum, None);
    // Written back, the footer is the blob's own last 48 bytes.
    assert_eq!(footer.encode(), blob.bytes[blob.bytes.len() - 48..]);
    let toc = blob.toc().unwrap();
    let regular: Vec<&TocEntry> = toc
        .entries
        .iter()
        .filter(|e| e.entry_type == EntryType::Reg)
        .collect();
    assert_eq!(regular.len(), files.len());
    for (path, data) in &files {
        let entry = regular.iter().find(|e| &e.name == path).unwrap();
        assert_eq!(entry.size, data.len() as u64, "{path}");
        if data.is_empty() {
            assert_eq!(entry.digest, None, "{path}");
        } else {
            assert_eq!(
                entry.digest.as_deref(),
                Some(&*sha256_digest(data)),
                "{path}"
            );
        }
    }
    let kinds: Vec<EntryType> = toc.entries.iter().map(|e| e.entry_type).collect();
    for kind in [
        EntryType::Dir,
        EntryType::Symlink,
        EntryType::Hardlink,
        EntryType::Chunk,
    ] {
        assert!(kinds.contains(&kind), "{kind:?} in {kinds:?}");
    }
    let link = toc
        .entries
        .iter()
        .find(|e| e.name == "etc/greeting")
        .unwrap();
    assert_eq!(link.link_name, "hello");
}

#[test]
fn each_frame_of_the_legacy_blob_decodes_to_its_file_and_chunk_digests() {
    let (blob, files) = legacy_blob();
    let toc = blob.toc().unwrap();
    let mut chunked = 0;
    for file in toc.files() {
        let data = &files.iter().find(|(p, _)| *p == file.entry.name).unwrap().1;
        let mut rebuilt = Vec::new();
        for frame in file.frames() {
            let part = inflate(
                &blob.bytes,
                frame.blob.clone(),
                frame.file.end - frame.file.start,
            );
            assert_eq!(
                part,
                data[frame.file.start as usize..frame.file.end as usize]
            );
            if let Some(digest) = &frame.digest {
                assert_eq!(&sha256_digest(&part), digest);
            }
            rebuilt.extend(part);
        }
        assert_eq!(&rebuilt, data, "{}", file.entry.name);
        if !file.chunks.is_empty() {
            chunked += 1;
        }
    }
    assert!(chunked >= 1, "the big files are cut into chunks");
}

#[test]
fn the_current_footer_round_trips_and_the_zstd_chunked_crate_reads_it() {
    let footer = Footer {
        variant: Variant::Current,
        toc: Position {
            offset: 1000,
            length: 200,
            uncompressed: 900,
        },
        tar_split: Some(Position {
            offset: 1208,
            length: 300,
            uncompressed: 4000,
        }),
    };
    let frame = footer.encode();
    assert_eq!(frame.len(), 72);
    assert_eq!(Footer::parse(&frame).unwrap(), footer);
    let theirs = zstd_chunked::MetadataReferences::from_footer(&frame).unwrap();
    assert_eq!(theirs.manifest.range, 1000..1200);
    assert_eq!(theirs.manifest.uncompressed_size, 900);
    assert_eq!(theirs.tarsplit.range, 1208..1508);
    assert_eq!(theirs.tarsplit.uncompressed_size, 4000);
    // The crate reads the annotations we write for it too.
    let layout = Layout {
        variant: Variant::Current,
        toc: footer.toc,
        toc_checksum: Some(sha256_digest(b"toc")),
        tar_split: footer.tar_split,
    };
    let annotations: HashMap<String, String> = layout.annotations().into_iter().collect();
    let theirs = zstd_chunked::MetadataReferences::from_oci(|k| annotations.get(k)).unwrap();
    assert_eq!(theirs.manifest.range, 1000..1200);
    assert_eq!(theirs.tarsplit.range, 1208..1508);
    let ours = Layout::from_annotations(|k| annotations.get(k).map(String::as_str));
    assert_eq!(ours.unwrap(), Some(layout));
}

#[test]
fn a_footer_that_is_not_one_is_refused() {
    let footer = Footer {
        variant: Variant::Legacy,
        toc: Position {
            offset: 8,
            length: 2,
            uncompressed: 3,
        },
        tar_split: None,
    };
    let mut frame = footer.encode();
    assert_eq!(frame.len(), 48);
    assert_eq!(Footer::parse(&frame).unwrap(), footer);
    frame[4] = 41;
    assert_eq!(Footer::parse(&frame).unwrap_err().kind(), "footer");
    assert_eq!(Footer::parse(&[0u8; 100]).unwrap_err().kind(), "footer");
    assert_eq!(Footer::parse(b"GNUlInUx").unwrap_err().kind(), "footer");
}

#[test]
fn position_annotations_that_are_not_numbers_are_refused() {
    let checksum = sha256_digest(b"x");
    for position in [
        "1:2:3",
        "1:2:3:2",
        "a:2:3:1",
        "+1:2:3:1",
        "1:2:3:1:5",
        "99999999999999999999:1:1:1",
    ] {
        let annotations = HashMap::from([
            (layout::CURRENT_POSITION.to_owned(), position.to_owned()),
            (layout::CURRENT_CHECKSUM.to_owned(), checksum.clone()),
        ]);
        let fault =
            Layout::from_annotations(|k| annotations.get(k).map(String::as_str)).unwrap_err();
        assert_eq!(fault.kind(), "annotation", "{position}: {fault}");
    }
    let no_checksum = HashMap::from([(layout::LEGACY_POSITION.to_owned(), "8:1:1:1".to_owned())]);
    let fault = Layout::from_annotations(|k| no_checksum.get(k).map(String::as_str)).unwrap_err();
    assert_eq!(fault.kind(), "annotation");
    assert_eq!(Layout::from_annotations(|_| None), Ok(None));
}

/// `blob` with its TOC replaced by `toc` (JSON) compressed, appended after
/// the files' frames with a new legacy footer, and the annotations for it.
fn with_toc(blob: &Blob, toc: &[u8]) -> Blob {
    let compressed = zstd::encode_all(toc, 3).unwrap();
    with_toc_frame(blob, &compressed, toc.len() as u64)
}

fn with_toc_frame(blob: &Blob, compressed: &[u8], uncompressed: u64) -> Blob {
    let data_end = blob.layout().data_end() as usize;
    let mut bytes = blob.bytes[..data_end].to_vec();
    bytes.extend_from_slice(&SKIPPABLE_MAGIC);
    bytes.extend_from_slice(&(compressed.len() as u32).to_le_bytes());
    let toc = Position {
        offset: bytes.len() as u64,
        length: compressed.len() as u64,
        uncompressed,
    };
    bytes.extend_from_slice(compressed);
    let footer = Footer {
        variant: Variant::Legacy,
        toc,
        tar_split: None,
    };
    bytes.extend(footer.encode());
    let layout = Layout {
        variant: Variant::Legacy,
        toc,
        toc_checksum: Some(sha256_digest(compressed)),
        tar_split: None,
    };
    Blob {
        bytes,
        annotations: layout.annotations().into_iter().collect(),
    }
}

/// The legacy blob's TOC as JSON, changed by `change`, put back.
fn hostile(blob: &Blob, change: impl FnOnce(&mut Value)) -> Result<Toc, TocFault> {
    let mut toc = serde_json::to_value(blob.toc().unwrap()).unwrap();
    change(&mut toc);
    with_toc(blob, &serde_json::to_vec(&toc).unwrap()).toc()
}

fn entry_named<'a>(toc: &'a mut Value, name: &str) -> &'a mut Value {
    toc["entries"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|e| e["name"] == name)
        .unwrap()
}

#[test]
fn an_unchanged_toc_put_back_still_reads() {
    let (blob, _) = legacy_blob();
    assert_eq!(hostile(&blob, |_| {}).unwrap(), blob.toc().unwrap());
}

#[test]
fn a_toc_that_is_not_the_one_its_checksum_names_is_refused() {
    let (mut blob, _) = legacy_blob();
    let key = "io.containers.zstd-chunked.manifest-checksum";
    blob.annotations
        .insert(key.to_owned(), sha256_digest(b"another"));
    let fault = blob.toc().unwrap_err();
    assert_eq!(fault.kind(), "checksum", "{fault}");
}

#[test]
fn a_file_whose_frames_run_past_the_files_region_is_refused() {
    let (blob, _) = legacy_blob();
    let data_end = blob.layout().data_end();
    let fault = hostile(&blob, |toc| {
        entry_named(toc, "etc/hello")["endOffset"] = json!(data_end + 1);
    })
    .unwrap_err();
    assert_eq!(fault.kind(), "bounds", "{fault}");
    let fault = hostile(&blob, |toc| {
        entry_named(toc, "etc/hello")["endOffset"] = json!(u64::MAX);
    })
    .unwrap_err();
    assert_eq!(fault.kind(), "bounds", "{fault}");
}

#[test]
fn a_toc_position_past_the_blob_is_refused() {
    let (mut blob, _) = legacy_blob();
    let size = blob.bytes.len();
    let key = "io.containers.zstd-chunked.manifest-position";
    blob.annotations
        .insert(key.to_owned(), format!("{}:100:100:1", size - 50));
    assert_eq!(blob.toc().unwrap_err().kind(), "bounds");
    blob.annotations
        .insert(key.to_owned(), "2:100:100:1".to_owned());
    assert_eq!(blob.toc().unwrap_err().kind(), "bounds");
}

#[test]
fn files_whose_frames_overlap_are_refused() {
    let (blob, _) = legacy_blob();
    let fault = hostile(&blob, |toc| {
        let hello = entry_named(toc, "etc/hello").clone();
        let other = entry_named(toc, "usr/lib/other");
        other["offset"] = hello["offset"].clone();
    })
    .unwrap_err();
    assert_eq!(fault.kind(), "overlap", "{fault}");
}

#[test]
fn chunks_that_do_not_add_up_are_refused() {
    let (blob, _) = legacy_blob();
    let fault = hostile(&blob, |toc| {
        let chunk = toc["entries"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|e| e["type"] == "chunk")
            .unwrap();
        chunk["chunkSize"] = json!(chunk["chunkSize"].as_u64().unwrap() + 1);
    })
    .unwrap_err();
    assert_eq!(fault.kind(), "entry", "{fault}");
    let fault = hostile(&blob, |toc| {
        entry_named(toc, "etc/hello")["size"] = json!(1u64 << 40);
    })
    .unwrap_err();
    assert_eq!(fault.kind(), "entry", "{fault}");
    let fault = hostile(&blob, |toc| {
        entry_named(toc, "etc/hello")["digest"] = json!("sha256:ABC");
    })
    .unwrap_err();
    assert_eq!(fault.kind(), "entry", "{fault}");
}

#[test]
fn names_that_leave_the_layer_are_refused() {
    let (blob, _) = legacy_blob();
    for name in ["../etc/passwd", "etc/../../x", "a\0b", "", "/", "."] {
        let fault = hostile(&blob, |toc| {
            entry_named(toc, "etc/hello")["name"] = json!(name);
        })
        .unwrap_err();
        assert_eq!(fault.kind(), "name", "{name:?}: {fault}");
    }
    let fault = hostile(&blob, |toc| {
        entry_named(toc, "etc/hello2")["linkName"] = json!("../../etc/shadow");
    })
    .unwrap_err();
    assert_eq!(fault.kind(), "name", "{fault}");
}

#[test]
fn a_toc_that_is_not_json_of_the_format_is_refused() {
    let (blob, _) = legacy_blob();
    for text in [
        &b"{\"version\": 1, \"entries\": ["[..],
        b"[]",
        b"{\"version\":1,\"entries\":[{\"type\":\"socket\",\"name\":\"a\"}]}",
    ] {
        let fault = with_toc(&blob, text).toc().unwrap_err();
        assert_eq!(fault.kind(), "json", "{fault}");
    }
    let fault = hostile(&blob, |toc| toc["version"] = json!(2)).unwrap_err();
    assert_eq!(fault.kind(), "json", "{fault}");
    let fault = hostile(&blob, |toc| {
        entry_named(toc, "etc/hello")["offset"] = json!(-5);
    })
    .unwrap_err();
    assert_eq!(fault.kind(), "json", "{fault}");
    let fault = with_toc_frame(&blob, b"not zstd at all", 10)
        .toc()
        .unwrap_err();
    assert_eq!(fault.kind(), "compression", "{fault}");
}

#[test]
fn a_toc_that_inflates_past_its_declared_size_or_the_limit_is_refused() {
    let (blob, _) = legacy_blob();
    // 64 MiB of spaces compress to a few kilobytes; declared as 1 KiB.
    let mut bomb = b"{\"version\":1,\"entries\":[]".to_vec();
    bomb.extend(std::iter::repeat_n(b' ', 64 << 20));
    bomb.push(b'}');
    let compressed = zstd::encode_all(bomb.as_slice(), 19).unwrap();
    assert!(compressed.len() < 64 << 10);
    let fault = with_toc_frame(&blob, &compressed, 1024).toc().unwrap_err();
    assert_eq!(
        fault,
        TocFault::TooLarge {
            what: "TOC",
            limit: 1024
        }
    );
    // Declared honestly but past the limit: refused before decompressing.
    let crafted = with_toc_frame(&blob, &compressed, bomb.len() as u64);
    let layout = crafted.layout();
    let frame = &crafted.bytes[layout.toc.offset as usize..layout.toc.end().unwrap() as usize];
    let limits = Limits {
        toc: 1 << 20,
        ..Limits::default()
    };
    let fault = Toc::decode(frame, &layout, crafted.bytes.len() as u64, &limits).unwrap_err();
    assert_eq!(
        fault,
        TocFault::TooLarge {
            what: "TOC",
            limit: 1 << 20
        }
    );
    // Declared larger than it is.
    let honest = serde_json::to_vec(&blob.toc().unwrap()).unwrap();
    let compressed = zstd::encode_all(honest.as_slice(), 3).unwrap();
    let fault = with_toc_frame(&blob, &compressed, honest.len() as u64 + 1)
        .toc()
        .unwrap_err();
    assert_eq!(fault.kind(), "compression", "{fault}");
}

#[test]
fn the_crc64_is_gos_iso_table() {
    // The published check value of CRC-64/GO-ISO, for "123456789".
    assert_eq!(
        crc64_iso(b"123456789"),
        0xb909_56c7_75a4_1001u64.to_be_bytes()
    );
    assert_eq!(crc64_iso(b""), [0; 8]);
}

#[test]
fn tar_split_lines_round_trip_and_hostile_ones_are_refused() {
    let entries = vec![
        TarSplitEntry::Segment(vec![1, 2, 3]),
        TarSplitEntry::File {
            name: b"etc/hello".to_vec(),
            size: 12,
            crc64: Some(crc64_iso(b"hello world\n")),
        },
        TarSplitEntry::File {
            name: vec![b'a', 0xff],
            size: 0,
            crc64: None,
        },
        TarSplitEntry::Segment(vec![0; 1024]),
    ];
    let text: Vec<u8> = entries
        .iter()
        .enumerate()
        .flat_map(|(i, e)| e.to_line(i as u64))
        .collect();
    let read = |text: &[u8], declared: u64| {
        TarSplitReader::new(text, declared, 1 << 20).collect::<Result<Vec<_>, _>>()
    };
    assert_eq!(read(&text, text.len() as u64).unwrap(), entries);
    assert_eq!(
        read(&text, text.len() as u64 - 1).unwrap_err().kind(),
        "too-large"
    );
    assert_eq!(
        read(&text, text.len() as u64 + 1).unwrap_err().kind(),
        "compression"
    );
    let long = TarSplitEntry::Segment(vec![7; 4096]).to_line(0);
    let fault = TarSplitReader::new(long.as_slice(), long.len() as u64, 1000)
        .collect::<Result<Vec<_>, _>>()
        .unwrap_err();
    assert_eq!(fault.kind(), "too-large");
    for bad in [
        &b"{\"type\":2,\"payload\":\"!!\",\"position\":0}\n"[..],
        b"{\"type\":3,\"payload\":null,\"position\":0}\n",
        b"{\"type\":2,\"payload\":null,\"position\":4}\n",
        b"{\"type\":1,\"name\":\"a\",\"size\":1,\"payload\":\"AQ==\",\"position\":0}\n",
        b"not json\n",
    ] {
        let fault = read(bad, bad.len() as u64).unwrap_err();
        assert_eq!(fault.kind(), "json", "{}", String::from_utf8_lossy(bad));
    }
}
