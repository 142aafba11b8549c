//! Writing the delta as an uncompressed OCI layout tar: `oci-layout`,
//! `index.json` naming the artifact manifest (and the target's
//! signatures, when it has any kept: `crate::trust::carried`), and the
//! blobs.

use std::{
    fs::File,
    io::{self, Seek, Write},
};

use serde_json::{Value, json};

use super::{Carried, Side};
use crate::{
    delta::{
        ARTIFACT_TYPE,
        artifact::{CONTENT, SOURCE_CONFIG, TO},
    },
    oci::{
        digest::Digest,
        document::{OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, REF_NAME},
    },
};

/// The target's signatures to carry: their index entry and blobs.
pub(super) type Signatures = Option<(Value, Vec<Vec<u8>>)>;

/// Write the whole archive to `out`; the artifact manifest's digest.
pub(super) fn write(
    out: impl Write,
    (source, target): (&Side, &Side),
    carried: &[Carried],
    reference: &str,
    signatures: Signatures,
) -> io::Result<Digest> {
    let manifest = serde_json::to_vec(&manifest(source, target, carried))?;
    let digest = Digest::of(&manifest);
    let mut entries = vec![json!({
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "digest": digest.to_string(),
        "size": manifest.len(),
        "annotations": {REF_NAME: reference},
    })];
    let (signature_entry, signature_blobs) = signatures.unzip();
    entries.extend(signature_entry);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": entries,
    }))?;
    let mut tar = tar::Builder::new(out);
    directory(&mut tar, "blobs/")?;
    directory(&mut tar, "blobs/sha256/")?;
    member(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    member(&mut tar, "index.json", &index)?;
    let mut written = std::collections::HashSet::new();
    let documents = [&manifest[..], &target.manifest[..], &target.config[..]];
    let signature_blobs = signature_blobs.unwrap_or_default();
    for bytes in documents
        .into_iter()
        .chain(signature_blobs.iter().map(|b| &b[..]))
    {
        let blob = Digest::of(bytes);
        if written.insert(blob.clone()) {
            member(&mut tar, &path(&blob), bytes)?;
        }
    }
    for layer in carried {
        if written.insert(layer.digest.clone()) {
            file_member(&mut tar, &path(&layer.digest), &layer.blob)?;
        }
    }
    tar.into_inner()?.flush()?;
    Ok(digest)
}

/// The artifact manifest, as containers/oci-delta describes it, except
/// for its config: the target's image config rather than the empty
/// descriptor. containers/image (skopeo) refuses to inspect a manifest
/// whose config is not an image config, while every delta reader (ours,
/// oci-delta, composefs-oci, the Go tools) dispatches on `artifactType`
/// and ignores the config; the target config is in the archive anyway.
fn manifest(source: &Side, target: &Side, carried: &[Carried]) -> Value {
    let embedded = |kind: &str, media_type: &str, bytes: &[u8]| {
        json!({
            "mediaType": media_type,
            "digest": Digest::of(bytes).to_string(),
            "size": bytes.len(),
            "annotations": {CONTENT: kind},
        })
    };
    let mut layers = vec![
        embedded("image-manifest", OCI_MANIFEST, &target.manifest),
        embedded("image-config", OCI_CONFIG, &target.config),
    ];
    for layer in carried {
        layers.push(json!({
            "mediaType": layer.media_type,
            "digest": layer.digest.to_string(),
            "size": layer.report.delta_size,
            "annotations": {
                CONTENT: "image-layer",
                TO: layer.report.layer,
            },
        }));
    }
    // The target layers left out, which the applier must already have.
    let carried_blobs: Vec<&str> = carried.iter().map(|c| c.report.layer.as_str()).collect();
    let (reused, reused_diff_ids): (Vec<String>, Vec<String>) = target
        .layers
        .iter()
        .filter(|(blob, _, _)| !carried_blobs.contains(&blob.to_string().as_str()))
        .map(|(blob, _, diff_id)| (blob.to_string(), diff_id.to_string()))
        .unzip();
    let as_json = |list: &[String]| serde_json::to_string(list).unwrap_or_default();
    json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": target.config_digest.to_string(),
            "size": target.config.len(),
        },
        "layers": layers,
        // Lets a registry list the delta among the target's referrers.
        "subject": {
            "mediaType": OCI_MANIFEST,
            "digest": target.manifest_digest.to_string(),
            "size": target.manifest.len(),
        },
        "annotations": {
            "io.github.containers.delta.source": source.manifest_digest.to_string(),
            SOURCE_CONFIG: source.config_digest.to_string(),
            "io.github.containers.delta.target": target.manifest_digest.to_string(),
            "io.github.containers.delta.reused": as_json(&reused),
            "io.github.containers.delta.reused-diff-id": as_json(&reused_diff_ids),
        },
    })
}

/// Where the blob `digest` sits in an OCI layout.
pub(crate) fn path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// A tar header as the archives cfsd writes have them: no owner, mtime 0.
pub(crate) fn header(size: u64, kind: tar::EntryType, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_mtime(0);
    header
}

/// A directory entry.
pub(crate) fn directory<W: Write>(tar: &mut tar::Builder<W>, name: &str) -> io::Result<()> {
    let mut header = header(0, tar::EntryType::Directory, 0o755);
    tar.append_data(&mut header, name, io::empty())
}

/// A file entry holding `bytes`.
pub(crate) fn member<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    bytes: &[u8],
) -> io::Result<()> {
    let mut header = header(bytes.len() as u64, tar::EntryType::Regular, 0o644);
    tar.append_data(&mut header, name, bytes)
}

fn file_member<W: Write>(tar: &mut tar::Builder<W>, name: &str, file: &File) -> io::Result<()> {
    let mut reader = file;
    reader.seek(io::SeekFrom::Start(0))?;
    let size = file.metadata()?.len();
    let mut header = header(size, tar::EntryType::Regular, 0o644);
    tar.append_data(&mut header, name, reader)
}
