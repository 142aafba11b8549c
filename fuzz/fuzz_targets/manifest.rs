//! Image index, manifest and config parsing, OCI and Docker, through the
//! same path as `oci pull oci-archive:`.
//!
//! The input is documents separated by NUL bytes: the first is
//! `index.json`, the others are stored as blobs under their own digest.
//! Since the fuzzer cannot guess sha256 digests, `@N` in a document is
//! replaced by the digest of document N and `#N` by its size (N a digit,
//! later documents only), so an index can point at a manifest that points
//! at a config. When an image resolves, its digests must be those of the
//! bytes returned, the config must be one of the blobs, and the manifest
//! kept must be an OCI manifest that lists the same layers as the plan.

#![no_main]

use std::io::Write;

use cfsd_repo::{
    fuzzing::{self, ResolvedImage},
    oci::{Platform, Source},
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

fuzz_target!(|data: &[u8]| {
    let docs = documents(data);
    let archive = archive_of(&docs);
    let platform: Platform = "linux/amd64".parse().expect("a platform");
    let resolved = fuzzing::resolve(Source::Archive(archive), None, &platform);
    // To see what a corpus resolves to: CFSD_FUZZ_SHOW=1 manifest CORPUS/*
    if std::env::var_os("CFSD_FUZZ_SHOW").is_some() {
        eprintln!("{resolved:?}");
    }
    if let Ok(image) = resolved {
        check(&image, &docs[1..]);
    }
});

/// Split at NUL and fill in the `@N` and `#N` placeholders, last first.
fn documents(data: &[u8]) -> Vec<Vec<u8>> {
    let mut docs: Vec<Vec<u8>> = data
        .split(|&b| b == 0)
        .map(<[u8]>::to_vec)
        .take(10)
        .collect();
    for i in (0..docs.len()).rev() {
        let mut doc = std::mem::take(&mut docs[i]);
        for (n, later) in docs.iter().enumerate().skip(i + 1) {
            doc = replace(&doc, format!("@{n}").as_bytes(), digest(later).as_bytes());
            doc = replace(
                &doc,
                format!("#{n}").as_bytes(),
                later.len().to_string().as_bytes(),
            );
        }
        docs[i] = doc;
    }
    docs
}

fn replace(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while let Some(at) = rest.windows(from.len()).position(|w| w == from) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(to);
        rest = &rest[at + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}

fn digest(bytes: &[u8]) -> String {
    let hex: String = openssl::sha::sha256(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// An `oci-archive:` holding the layout marker, `index.json` and the blobs.
fn archive_of(docs: &[Vec<u8>]) -> std::fs::File {
    let mut builder = tar::Builder::new(Vec::new());
    let marker = br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec();
    let mut members = vec![
        ("oci-layout".to_owned(), &marker),
        ("index.json".to_owned(), &docs[0]),
    ];
    for doc in &docs[1..] {
        let hex = digest(doc)["sha256:".len()..].to_owned();
        members.push((format!("blobs/sha256/{hex}"), doc));
    }
    for (path, data) in members {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, path, &data[..])
            .expect("a tar");
    }
    let mut file = tempfile::tempfile().expect("a temporary file");
    file.write_all(&builder.into_inner().expect("a tar"))
        .expect("writing");
    file
}

fn check(image: &ResolvedImage, blobs: &[Vec<u8>]) {
    assert_eq!(image.manifest_digest, digest(&image.manifest));
    assert_eq!(image.config_digest, digest(&image.config));
    assert!(
        blobs.contains(&image.config),
        "the config is not a blob of the source"
    );
    let config: Value = serde_json::from_slice(&image.config).expect("the config is JSON");
    let diff_ids = config["rootfs"]["diff_ids"].as_array().expect("diff_ids");
    assert_eq!(diff_ids.len(), image.layers.len());
    for (plan, diff_id) in image.layers.iter().zip(diff_ids) {
        assert_eq!(Some(plan.diff_id.as_str()), diff_id.as_str());
        for d in [&plan.blob, &plan.diff_id] {
            assert!(d.len() == 71 && d.starts_with("sha256:"), "{d}");
        }
    }
    let manifest: Value = serde_json::from_slice(&image.manifest).expect("the manifest is JSON");
    if !image.is_delta {
        let own = manifest.get("mediaType").and_then(Value::as_str);
        assert!(
            own.is_none() || own == Some(OCI_MANIFEST),
            "kept a {own:?} manifest"
        );
        assert_eq!(manifest["config"]["mediaType"].as_str(), Some(OCI_CONFIG));
        assert_eq!(
            manifest["config"]["digest"].as_str(),
            Some(image.config_digest.as_str())
        );
    }
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), image.layers.len());
    for (entry, plan) in layers.iter().zip(&image.layers) {
        assert_eq!(entry["digest"].as_str(), Some(plan.blob.as_str()));
        assert_eq!(entry["size"].as_u64(), Some(plan.size));
        let media_type = entry["mediaType"].as_str().unwrap_or_default();
        assert!(
            media_type.ends_with(plan_suffix(plan.compression)),
            "{media_type} for a {} layer",
            plan.compression
        );
    }
}

fn plan_suffix(compression: &str) -> &'static str {
    match compression {
        "gzip" => "gzip",
        "zstd" => "zstd",
        _ => "tar",
    }
}
