//! `cfsctl oci push --compression zstd:chunked` (and `oci export`) to a
//! real registry: the layer blobs are current-variant zstd:chunked that
//! plain zstd, skopeo, the zstd-chunked crate and our own reader all read
//! back to the layer tars, and cfsd pulls the image back as the same
//! composefs image.

use std::{collections::HashMap, io::Read, path::Path, process::Command};

use cfsd_repo::chunked::{EntryType, Layout, Limits, TarSplit, TarSplitEntry, Toc};
use cfsd_tests::{
    Daemon,
    oci::sha256_digest,
    oci::{
        Compression, Entry, Image, Layer, Layout as OciLayout, Written, everything_image, noise,
    },
    ocictl::{json, pull},
    peer::raw_calls_as,
    registry,
    registry::Registry,
    stderr,
};
use serde_json::Value;

/// The current variant's annotation keys, spelled out here rather than
/// taken from the code under test.
const CHECKSUM: &str = "io.github.containers.zstd-chunked.manifest-checksum";
const POSITION: &str = "io.github.containers.zstd-chunked.manifest-position";
const TAR_SPLIT: &str = "io.github.containers.zstd-chunked.tarsplit-position";

/// `everything_image`'s layers and one with files big enough to be cut
/// into several chunks, one of them with a run of zeros.
fn image() -> Image {
    let mut big = noise(11, 400_000);
    big.extend(vec![0u8; 20_000]);
    big.extend(noise(12, 300_000));
    let mut image = everything_image();
    image.layers.push(Layer::new(
        Compression::Gzip,
        vec![
            Entry::dir("data"),
            Entry::file("data/big", big),
            Entry::file("data/also-big", noise(13, 200_000)),
            Entry::file("data/empty", ""),
        ],
    ));
    image
}

/// A daemon trusting `registry`, holding `image` as `app:v1`.
fn holding(registry: &Registry, image: &Image) -> Daemon {
    let args = registry.daemon_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = Daemon::start_initialised(&args);
    let fixture = Written::new(&OciLayout::single(image, None).0);
    pull(&daemon, &[&fixture.oci(None), "app:v1"]);
    daemon
}

/// A layer descriptor's annotations.
fn annotations(layer: &Value) -> HashMap<String, String> {
    let map = layer["annotations"].as_object().expect("annotations");
    map.iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect()
}

/// The blob decompressed by the `zstd` command, which knows nothing of
/// zstd:chunked and skips the skippable frames.
fn zstd_cli(blob: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blob.zst");
    std::fs::write(&path, blob).unwrap();
    let out = Command::new("zstd")
        .args(["-d", "-c", "-q"])
        .arg(&path)
        .output()
        .expect("the zstd command (apt-get install zstd)");
    assert!(out.status.success(), "zstd -d: {}", stderr(&out));
    out.stdout
}

fn range(blob: &[u8], start: u64, end: u64) -> &[u8] {
    &blob[start as usize..end as usize]
}

/// The tar the zstd-chunked crate 0.2 rebuilds from the blob's TOC and
/// tar-split, every frame it fetches checked against the TOC's digest.
fn rebuilt_by_the_crate(blob: &[u8], annotations: &HashMap<String, String>) -> Vec<u8> {
    let refs = zstd_chunked::MetadataReferences::from_oci(|k| annotations.get(k)).unwrap();
    let toc = &blob[refs.manifest.range.start as usize..refs.manifest.range.end as usize];
    assert_eq!(refs.manifest.digest.as_deref(), Some(&*sha256_digest(toc)));
    let split = &blob[refs.tarsplit.range.start as usize..refs.tarsplit.range.end as usize];
    let stream = zstd_chunked::Stream::new_from_frames(toc, split).unwrap();
    let mut tar = Vec::new();
    stream
        .write_to(&mut tar, |r| {
            let data = zstd::decode_all(range(blob, r.range.start, r.range.end))?;
            assert_eq!(sha256_digest(&data), r.digest);
            Ok(data)
        })
        .unwrap();
    tar
}

/// The tar our own reader rebuilds from TOC and tar-split; also checks
/// that the TOC lists the tar's regular files with their sha256.
fn rebuilt_by_us(blob: &[u8], annotations: &HashMap<String, String>, tar: &[u8]) -> Vec<u8> {
    let layout = Layout::from_annotations(|k| annotations.get(k).map(String::as_str))
        .unwrap()
        .unwrap();
    let limits = Limits::default();
    let toc_frame = range(blob, layout.toc.offset, layout.toc.end().unwrap());
    let toc = Toc::decode(toc_frame, &layout, blob.len() as u64, &limits).unwrap();
    let position = layout.tar_split.unwrap();
    let split_frame = range(blob, position.offset, position.end().unwrap());
    let split = TarSplit::decode(split_frame, &toc, &layout, &limits).unwrap();
    let mut archive = tar::Archive::new(tar);
    let mut regular = 0;
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        let listed = toc.files().find(|f| f.entry.name == path).expect(&path);
        assert_eq!(listed.entry.size, content.len() as u64, "{path}");
        if !content.is_empty() {
            assert_eq!(
                listed.entry.digest.as_deref(),
                Some(&*sha256_digest(&content))
            );
        }
        regular += 1;
    }
    assert_eq!(toc.files().count(), regular);
    let files: HashMap<&str, _> = toc.files().map(|f| (f.entry.name.as_str(), f)).collect();
    let mut rebuilt = Vec::new();
    for piece in &split.entries {
        match piece {
            TarSplitEntry::Segment(bytes) => rebuilt.extend_from_slice(bytes),
            TarSplitEntry::File { size: 0, .. } => {}
            TarSplitEntry::File { name, .. } => {
                let file = files[std::str::from_utf8(name).unwrap()];
                for frame in file.frames() {
                    let data = zstd::decode_all(range(blob, frame.blob.start, frame.blob.end));
                    rebuilt.extend(data.unwrap());
                }
            }
        }
    }
    let chunks = toc
        .entries
        .iter()
        .filter(|e| e.entry_type == EntryType::Chunk);
    assert!(chunks.count() > 0 || regular == 0 || tar.len() < 200_000);
    rebuilt
}

/// Check a manifest of zstd:chunked layers against the image's
/// diff_ids, reading blobs with `read`.
fn check_chunked_layers(manifest: &[u8], diff_ids: &[String], read: impl Fn(&str) -> Vec<u8>) {
    let manifest: Value = serde_json::from_slice(manifest).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), diff_ids.len());
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        assert_eq!(
            layer["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
        let annotations = annotations(layer);
        for key in [CHECKSUM, POSITION, TAR_SPLIT] {
            assert!(annotations.contains_key(key), "{key} in {annotations:?}");
        }
        let blob = read(layer["digest"].as_str().unwrap());
        assert_eq!(layer["size"], blob.len() as u64);
        let tar = zstd_cli(&blob);
        assert_eq!(&sha256_digest(&tar), diff_id, "zstd -d gives the layer tar");
        assert!(
            rebuilt_by_the_crate(&blob, &annotations) == tar,
            "the crate's rebuild"
        );
        assert!(
            rebuilt_by_us(&blob, &annotations, &tar) == tar,
            "our rebuild"
        );
    }
}

/// The image's diff_ids, from its config as stored.
fn diff_ids(daemon: &Daemon) -> Vec<String> {
    let inspect = json(daemon, &["oci", "inspect", "app:v1"]);
    let config: Value = match &inspect["config"] {
        Value::String(text) => serde_json::from_str(text).unwrap(),
        other => other.clone(),
    };
    let ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    ids.iter().map(|d| d.as_str().unwrap().to_owned()).collect()
}

fn layout_blob(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap()
}

#[test]
fn a_zstd_chunked_push_is_read_back_by_zstd_skopeo_the_crate_us_and_cfsd() {
    cfsd_tests::need_registry!();
    let registry = Registry::start_https();
    let daemon = holding(&registry, &image());
    let original = json(&daemon, &["oci", "inspect", "app:v1"]);
    let diff_ids = diff_ids(&daemon);
    let auth = registry.auth_file(registry::USER, registry::PASSWORD);
    let auth = auth.display().to_string();
    let dest = format!("{}/chunked/app:v1", registry.host());
    let args = [
        "oci",
        "push",
        "app:v1",
        &format!("docker://{dest}"),
        "--compression",
        "zstd:chunked",
        "--authfile",
        &auth,
    ];
    let pushed = json(&daemon, &args);
    assert_eq!(pushed["layersUploaded"], diff_ids.len() as u64, "{pushed}");
    let manifest_digest = pushed["manifestDigest"].as_str().unwrap().to_owned();
    let stored = |digest: &str| std::fs::read(registry.blob_file(digest)).unwrap();
    check_chunked_layers(&stored(&manifest_digest), &diff_ids, stored);

    // skopeo copies it out of the registry as it is.
    let copied = tempfile::tempdir().unwrap();
    let layout = copied.path().join("layout");
    let certs = registry.path("skopeo-src-certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(registry.path("ca.crt"), certs.join("ca.crt")).unwrap();
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--src-cert-dir"])
        .arg(&certs)
        .arg("--src-creds")
        .arg(format!("{}:{}", registry::USER, registry::PASSWORD))
        .arg(format!("docker://{dest}"))
        .arg(format!("oci:{}:copied", layout.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo copy: {}", stderr(&out));
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], manifest_digest.as_str());
    check_chunked_layers(&layout_blob(&layout, &manifest_digest), &diff_ids, |d| {
        layout_blob(&layout, d)
    });

    // cfsd pulls it back, whole, as the same composefs image.
    let args = registry.daemon_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let fresh = Daemon::start_initialised(&args);
    let back = pull(
        &fresh,
        &[&format!("docker://{dest}"), "back", "--authfile", &auth],
    );
    assert_eq!(back.str("imageId"), original["imageId"].as_str().unwrap());
    assert_eq!(back.str("manifestDigest"), manifest_digest);
}

#[test]
fn a_zstd_chunked_export_keeps_its_annotations_for_skopeo_and_cfsd() {
    let daemon = Daemon::start_initialised(&[]);
    let fixture = Written::new(&OciLayout::single(&image(), None).0);
    pull(&daemon, &[&fixture.oci(None), "app:v1"]);
    let original = json(&daemon, &["oci", "inspect", "app:v1"]);
    let archive = daemon.dir().join("chunked.tar");
    let dest = format!("oci-archive:{}:exported", archive.display());
    let args = [
        "oci",
        "export",
        "app:v1",
        &dest,
        "--compression",
        "zstd:chunked",
    ];
    let reply = json(&daemon, &args);
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", &dest])
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo: {}", stderr(&out));
    assert_eq!(sha256_digest(&out.stdout), reply["manifestDigest"]);
    // Into a layout by skopeo, then checked as the registry's copy is.
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", &dest])
        .arg(format!("oci:{}:copied", layout.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo copy: {}", stderr(&out));
    let digest = reply["manifestDigest"].as_str().unwrap();
    check_chunked_layers(&layout_blob(&layout, digest), &diff_ids(&daemon), |d| {
        layout_blob(&layout, d)
    });
    let fresh = Daemon::start_initialised(&[]);
    let back = pull(&fresh, &[&dest, "again"]);
    assert_eq!(back.str("imageId"), original["imageId"].as_str().unwrap());
}

/// A group nobody is given on top, for `--allow-group`.
const ADMINS: u32 = 4242;

#[test]
fn a_zstd_chunked_push_is_refused_to_nobody_and_a_bad_compression_to_an_admin() {
    cfsd_tests::need_registry!();
    // Anonymous plain HTTP, so that a raw call needs no auth file.
    let registry = Registry::start_http();
    let daemon = registry.daemon_for_nobody(ADMINS);
    let fixture = Written::new(&OciLayout::single(&image(), None).0);
    pull(&daemon, &[&fixture.oci(None), "app:v1"]);
    let dest = format!("{}/app:v1", registry.host());
    let call = |compression: &str| {
        serde_json::json!({"method": "io.cfsd.Oci.Push", "parameters": {
            "image": "app:v1", "reference": dest, "compression": compression,
            "tlsVerify": false}})
    };
    let uploads = || {
        let log = std::fs::read_to_string(registry.path("registry.log")).unwrap_or_default();
        log.lines().filter(|l| l.contains("/blobs/uploads")).count()
    };
    let nobody = raw_calls_as(&daemon, &[], &[call("zstd:chunked")]);
    assert_eq!(
        nobody[0]["error"], "io.cfsd.Oci.PermissionDenied",
        "{}",
        nobody[0]
    );
    // A compression that is not one of the three is refused as a bad
    // parameter, before any upload.
    for bad in ["zstd:chunked:x", "ZSTD:CHUNKED", "zstd-chunked"] {
        let reply = raw_calls_as(&daemon, &[ADMINS], &[call(bad)]);
        assert_eq!(
            reply[0]["error"], "org.varlink.service.InvalidParameter",
            "{bad}: {}",
            reply[0]
        );
    }
    assert_eq!(uploads(), 0, "nothing was uploaded");
    let reply = raw_calls_as(&daemon, &[ADMINS], &[call("zstd:chunked")]);
    assert_eq!(reply[0]["parameters"]["layersUploaded"], 4, "{}", reply[0]);
    let digest = reply[0]["parameters"]["manifestDigest"].as_str().unwrap();
    let stored = |digest: &str| std::fs::read(registry.blob_file(digest)).unwrap();
    check_chunked_layers(&stored(digest), &diff_ids(&daemon), stored);
}
