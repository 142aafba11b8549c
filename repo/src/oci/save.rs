//! An image of the repository written out as an `oci-archive:`, for
//! skopeo, podman, upstream cfsctl or another cfsd to import.
//!
//! The layers are rebuilt from their streams (each diff_id checked) and
//! compressed again, as for a push; the config goes out byte for byte,
//! so the archive's image has the same diff_ids and composefs image id.
//! A tar entry's header carries its size, so each layer is compressed
//! once to learn it and again into the archive.

use std::io::{self, Write};

use composefs::{fsverity::FsVerityHashValue, repository::Repository as Store};
use serde_json::json;

use super::{
    digest::Digest,
    document::{OCI_INDEX, OCI_MANIFEST, REF_NAME},
    export::verified_layer_tar,
    output::Output,
    recompress::{Compressor, Recompressed, compressed_layer, image_manifest},
};
use crate::{
    Error, Repository,
    delta::create::{
        archive::{directory, header, member, path},
        image::Side,
    },
    registry::PushCompression,
    repository::with_store,
};

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveReport {
    /// The digest of the archive's manifest: new, as its layer blobs are.
    pub manifest_digest: String,
    /// The digest of the config, the same as in the repository.
    pub config_digest: String,
    /// Bytes of the archive.
    pub bytes: u64,
}

impl Repository {
    /// Write `image` to `out` as an uncompressed OCI archive, its layers
    /// compressed as `compression`, named `reference` in its index when
    /// given. Reads the repository only; a layer whose stream no longer
    /// rebuilds its diff_id stops the export before the archive's first
    /// byte.
    pub fn save(
        &self,
        image: &str,
        compression: PushCompression,
        reference: Option<&str>,
        out: &mut dyn Write,
    ) -> Result<SaveReport, Error> {
        with_store!(self.store(), s => {
            let side = Side::open(s, image)?;
            let mut layers = Vec::with_capacity(side.layers.len());
            for (original, _, diff_id) in &side.layers {
                layers.push(compressed_layer(s, diff_id, original, compression)?);
            }
            let manifest = image_manifest(&side, &layers, compression);
            let mut counted = Output::new(out);
            write_archive(s, &mut counted, &side, &manifest, &layers, compression, reference)?;
            Ok(SaveReport {
                manifest_digest: Digest::of(&manifest).to_string(),
                config_digest: side.config_digest.to_string(),
                bytes: counted.bytes(),
            })
        })
    }
}

fn write_archive<H: FsVerityHashValue>(
    store: &Store<H>,
    out: &mut Output<'_>,
    side: &Side,
    manifest: &[u8],
    layers: &[Recompressed],
    compression: PushCompression,
    reference: Option<&str>,
) -> Result<(), Error> {
    let storage = |e: io::Error| Error::storage("writing the archive", e);
    let mut descriptor = json!({
        "mediaType": OCI_MANIFEST,
        "digest": Digest::of(manifest).to_string(),
        "size": manifest.len(),
    });
    if let Some(reference) = reference {
        descriptor["annotations"] = json!({REF_NAME: reference});
    }
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor]});
    let index = serde_json::to_vec(&index).expect("a JSON value serialises");
    let mut tar = tar::Builder::new(out);
    directory(&mut tar, "blobs/").map_err(storage)?;
    directory(&mut tar, "blobs/sha256/").map_err(storage)?;
    member(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(storage)?;
    member(&mut tar, "index.json", &index).map_err(storage)?;
    member(&mut tar, &path(&Digest::of(manifest)), manifest).map_err(storage)?;
    member(&mut tar, &path(&side.config_digest), &side.config).map_err(storage)?;
    let mut written = std::collections::HashSet::new();
    for layer in layers {
        if written.insert(layer.digest.clone()) {
            layer_member(store, &mut tar, layer, compression)?;
        }
    }
    tar.into_inner().and_then(|o| o.flush()).map_err(storage)
}

/// The entry of `layer`: its header, then the layer compressed again
/// straight into the archive, then the padding. The second compression
/// must give the size the first one did, or the archive would be torn.
fn layer_member<H: FsVerityHashValue>(
    store: &Store<H>,
    tar: &mut tar::Builder<&mut Output<'_>>,
    layer: &Recompressed,
    compression: PushCompression,
) -> Result<(), Error> {
    let storage = |e: io::Error| Error::storage("writing the archive", e);
    let mut entry = header(layer.size, tar::EntryType::Regular, 0o644);
    entry.set_path(path(&layer.digest)).map_err(storage)?;
    entry.set_cksum();
    let out = tar.get_mut();
    out.write_all(entry.as_bytes()).map_err(storage)?;
    let before = out.bytes();
    let encoder = Compressor::new(compression, &mut **out).map_err(storage)?;
    let encoder = verified_layer_tar(store, &layer.diff_id, &layer.original, encoder)?;
    encoder.finish().map_err(storage)?;
    let size = out.bytes() - before;
    if size != layer.size {
        return Err(Error::internal(
            "writing the archive",
            format!(
                "layer {} compressed to {size} bytes the second time, {} the first",
                layer.digest, layer.size
            ),
        ));
    }
    let padding = (512 - size % 512) % 512;
    out.write_all(&vec![0; padding as usize]).map_err(storage)
}
