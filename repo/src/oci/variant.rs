//! ID-mapped variants of an image (containers/storage's
//! `CreateFromTemplate`): the same files, layers and objects, with every
//! owner shifted through a uid map and a gid map, made without reading
//! any layer.
//!
//! The variant's EROFS image is the original's, read back into a tree,
//! shifted and written anew; it refers to the very objects the original
//! does, so it adds only itself and two small streams. A composefs
//! config links one EROFS image, so the variant has a config of its own:
//! the original's JSON with the maps recorded under [`RECORD_KEY`] (a
//! list, one entry per mapping applied, oldest first), and a manifest
//! that differs only in naming it. Its layers are the original's layer
//! streams: GC keeps them through either image, and removing the
//! original leaves the variant whole. Merging the variant's layers (for
//! `compute-id` or a pull of an exported variant elsewhere) applies the
//! recorded maps, so its id is the same however it is rebuilt.

use std::{io::Read, sync::Arc};

use composefs::{
    erofs::reader::erofs_to_filesystem, fsverity::FsVerityHashValue,
    repository::Repository as Store, tree::FileSystem,
};
use composefs_oci::{OciDigest, sha256_content_digest};
use serde_json::{Value, json};

use super::{
    images::{check_tag, check_tag_names, open},
    publish::publish_with,
    pull::durable,
};
use crate::{
    Error, Repository,
    idmap::{IdMap, IdMapping},
    repository::with_store,
};

/// The config's top-level key where a variant's maps are recorded.
pub(crate) const RECORD_KEY: &str = "io.cfsd.idmap";

/// What making a variant gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdmapReport {
    /// The variant's manifest digest.
    pub manifest_digest: String,
    /// The variant's composefs image id.
    pub image_id: String,
}

impl Repository {
    /// Make `tag` an ID-mapped variant of `image`: its owners shifted by
    /// `mapping`, its files the same objects.
    pub fn idmap_image(
        &self,
        image: &str,
        tag: &str,
        mapping: &IdMapping,
    ) -> Result<IdmapReport, Error> {
        check_tag(tag)?;
        self.ensure_writable("making an ID-mapped image")?;
        let _hold = self.hold(format!("making {tag}, an ID-mapped variant of {image}"));
        with_store!(self.store(), s => {
            let report = variant(s, image, tag, mapping)?;
            durable(s)?;
            Ok(report)
        })
    }
}

fn variant<H: FsVerityHashValue>(
    store: &Arc<Store<H>>,
    image: &str,
    tag: &str,
    mapping: &IdMapping,
) -> Result<IdmapReport, Error> {
    let found = open(store, image)?;
    let read = |e: anyhow::Error| Error::storage("reading the image", e);
    let erofs = found.erofs_image_ref(store, false).map_err(read)?.to_hex();
    let (fd, _) = store.open_image(&erofs).map_err(read)?;
    let mut bytes = Vec::new();
    std::fs::File::from(fd)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::storage("reading the image's EROFS", e))?;
    let mut filesystem: FileSystem<H> = erofs_to_filesystem(&bytes).map_err(read)?;
    shift(&mut filesystem, mapping, image)?;

    let config = with_record(&found.read_config_json(store).map_err(read)?, mapping)?;
    let config_digest = sha256_content_digest(&config);
    let manifest = with_config(
        &found.read_manifest_json(store).map_err(read)?,
        &config_digest,
        config.len(),
    )?;
    let manifest_digest = sha256_content_digest(&manifest);
    check_tag_names(tag, manifest_digest.as_ref())?;
    let opened =
        composefs_oci::open_config(store, found.config_digest(), Some(found.config_verity()))
            .map_err(read)?;
    let layers = super::publish::linked_layers(&opened).map_err(read)?;
    let id = publish_with(store, &manifest, &config, &layers, Some(tag), |_, _| {
        Ok(filesystem)
    })
    .map_err(|e| Error::storage("writing the ID-mapped image", e))?;
    Ok(IdmapReport {
        manifest_digest: manifest_digest.to_string(),
        image_id: id.to_hex(),
    })
}

/// Shift every owner of `filesystem` through `mapping`; an owner that
/// no range covers is refused, naming `image`.
pub(crate) fn shift<H: FsVerityHashValue>(
    filesystem: &mut FileSystem<H>,
    mapping: &IdMapping,
    image: &str,
) -> Result<(), Error> {
    let mut unmapped: Option<(&IdMap, u32)> = None;
    filesystem.for_each_stat_mut(|stat| {
        match (mapping.uid.map(stat.st_uid), mapping.gid.map(stat.st_gid)) {
            (Some(uid), Some(gid)) => (stat.st_uid, stat.st_gid) = (uid, gid),
            (None, _) => drop(unmapped.get_or_insert((&mapping.uid, stat.st_uid))),
            (_, None) => drop(unmapped.get_or_insert((&mapping.gid, stat.st_gid))),
        }
    });
    match unmapped {
        None => Ok(()),
        Some((map, id)) => Err(Error::UnmappedId {
            image: image.to_owned(),
            kind: map.kind().to_owned(),
            id,
            map: map.text(),
        }),
    }
}

/// The config JSON `config` with `mapping` appended to its record.
fn with_record(config: &[u8], mapping: &IdMapping) -> Result<Vec<u8>, Error> {
    let mut value: Value = parse(config, "the stored config")?;
    let entry = json!({ "uidmap": mapping.uid.text(), "gidmap": mapping.gid.text() });
    let object = value
        .as_object_mut()
        .ok_or_else(|| not_object("the stored config"))?;
    match object.get_mut(RECORD_KEY) {
        Some(Value::Array(list)) => list.push(entry),
        _ => drop(object.insert(RECORD_KEY.to_owned(), json!([entry]))),
    }
    Ok(serde_json::to_vec(&value).expect("a JSON value serialises"))
}

/// The manifest JSON `manifest`, naming the config `digest` of `size`
/// bytes instead of its own.
fn with_config(manifest: &[u8], digest: &OciDigest, size: usize) -> Result<Vec<u8>, Error> {
    let mut value: Value = parse(manifest, "the stored manifest")?;
    let descriptor = value
        .get_mut("config")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| not_object("the stored manifest's config"))?;
    descriptor.insert("digest".to_owned(), json!(digest.to_string()));
    descriptor.insert("size".to_owned(), json!(size));
    Ok(serde_json::to_vec(&value).expect("a JSON value serialises"))
}

/// The maps a variant's config records, oldest first; none for any
/// other image.
pub(crate) fn recorded_maps(config: &[u8]) -> Result<Vec<IdMapping>, Error> {
    let value: Value = parse(config, "the image's config")?;
    let Some(record) = value.get(RECORD_KEY) else {
        return Ok(Vec::new());
    };
    let invalid = || Error::InvalidJson {
        what: "the image config".to_owned(),
        reason: format!("{RECORD_KEY} is not a list of {{\"uidmap\", \"gidmap\"}} objects"),
    };
    let entries = record.as_array().ok_or_else(invalid)?;
    entries
        .iter()
        .map(|entry| {
            let map = |key: &str| -> Result<Vec<String>, Error> {
                let text = entry.get(key).and_then(Value::as_str).ok_or_else(invalid)?;
                Ok(text.split(',').map(str::to_owned).collect())
            };
            IdMapping::parse(&map("uidmap")?, &map("gidmap")?)
        })
        .collect()
}

fn parse(bytes: &[u8], what: &str) -> Result<Value, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::InvalidJson {
        what: what.to_owned(),
        reason: e.to_string(),
    })
}

fn not_object(what: &str) -> Error {
    Error::InvalidJson {
        what: what.to_owned(),
        reason: "it is not a JSON object".to_owned(),
    }
}
