//! From `index.json` to one image: choosing the manifest by reference and
//! platform, and checking the manifest and config against their digests
//! and each other.

use super::{
    Platform,
    digest::Digest,
    document::{
        Compression, ConfigDoc, DOCKER_CONFIG, DOCKER_LIST, DOCKER_MANIFEST, Descriptor, IndexDoc,
        ManifestDoc, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, PlatformSpec, REF_NAME, RootFs,
        media_type_of, parse,
    },
    source::Layout,
};
use crate::Error;

const CONFIGS: &[&str] = &[OCI_CONFIG, DOCKER_CONFIG];
/// How deep image indexes may nest (an index of indexes of manifests).
const MAX_NESTING: usize = 4;

/// One layer to bring in: its blob and the tar it must decompress to.
#[derive(Debug, Clone)]
pub(crate) struct LayerPlan {
    /// The blob's digest.
    pub blob: Digest,
    /// The blob's size.
    pub size: u64,
    /// How the blob is compressed.
    pub compression: Compression,
    /// The digest of the uncompressed tar.
    pub diff_id: Digest,
    /// The tar bytes of every layer of this pull so far, shared by them.
    pub pulled: crate::oci::split::PullTally,
    /// The pull's hold on GC, shared by its layers once the pull has it:
    /// the threads that store a layer keep it until they have returned,
    /// which after a cancelled pull is later than the pull itself.
    pub hold: PullHold,
}

/// See [`LayerPlan::hold`].
pub(crate) type PullHold =
    std::sync::Arc<std::sync::OnceLock<std::sync::Arc<crate::coordination::Hold>>>;

/// The image chosen from a source, its manifest and config verified.
#[derive(Debug)]
pub(crate) struct Resolved {
    /// The manifest's digest.
    pub manifest_digest: Digest,
    /// The manifest, byte for byte.
    pub manifest: Vec<u8>,
    /// The config's digest.
    pub config_digest: Digest,
    /// The config, byte for byte.
    pub config: Vec<u8>,
    /// The layers, bottom first.
    pub layers: Vec<LayerPlan>,
    /// oci-delta hook: set when the source is a delta artifact that
    /// rebuilds this image; its layers then come from the delta.
    pub delta: Option<crate::delta::Delta>,
    /// The digests of the documents as the source served them, from the
    /// image manifest (before any Docker conversion) out to the index
    /// entry that led to it; each commits to the one before. For a
    /// delta, only its target's manifest: the delta's own documents
    /// vouch for nothing.
    pub served: Vec<Digest>,
}

impl Resolved {
    /// The digest signatures must name: the outermost document served,
    /// or a delta's target manifest.
    pub(crate) fn signed(&self) -> &Digest {
        self.served
            .last()
            .expect("a resolved image has its manifest's digest")
    }

    /// Refuse an image that `pinned` does not name: it must be the
    /// digest of one of the documents served ([`Resolved::served`]).
    pub(crate) fn check_pinned(&self, pinned: &str) -> Result<(), Error> {
        let pinned = Digest::parse(pinned, "the pinned digest")?;
        if self.served.contains(&pinned) {
            return Ok(());
        }
        Err(Error::PinnedDigestMismatch {
            pinned: pinned.to_string(),
            manifest: self.served[0].to_string(),
        })
    }
}

/// Choose the image that `reference` (a ref name or manifest digest; any
/// when `None`) and `platform` name in the layout, and verify it.
pub(crate) fn resolve(
    layout: &Layout,
    reference: Option<&str>,
    platform: &Platform,
) -> Result<Resolved, Error> {
    // A secondary repository has no index: one is made of the image named.
    let raw = match (layout.secondary(), reference) {
        (Some(repo), Some(image)) => {
            repo.index_for(image)?
                .ok_or_else(|| Error::ManifestNotFound {
                    reference: image.to_owned(),
                    available: Vec::new(),
                })?
        }
        _ => layout.index()?,
    };
    let index: IndexDoc = parse(&raw, "index.json")?;
    let entry = select(&index.manifests, reference, platform)?;
    resolve_descriptor(layout, &entry, platform, 0)
}

/// The index entry `reference` names: by digest or ref name, then by
/// platform when several remain.
fn select(
    entries: &[Descriptor],
    reference: Option<&str>,
    platform: &Platform,
) -> Result<Descriptor, Error> {
    let candidates: Vec<&Descriptor> = match reference {
        // Signatures a layout carries are no image to choose.
        None => entries
            .iter()
            .filter(|d| {
                !d.annotations
                    .get(REF_NAME)
                    .is_some_and(|n| crate::registry::attachments::is_tag(n))
            })
            .collect(),
        Some(r) => entries
            .iter()
            .filter(|d| d.digest == r || d.annotations.get(REF_NAME).map(String::as_str) == Some(r))
            .collect(),
    };
    match candidates[..] {
        [only] => return Ok(only.clone()),
        [] if reference.is_some() || entries.is_empty() => {
            return Err(manifest_not_found(entries, reference));
        }
        _ => {}
    }
    if candidates.iter().all(|d| d.platform.is_some()) {
        return by_platform(&candidates, platform);
    }
    Err(manifest_not_found(entries, reference))
}

fn manifest_not_found(entries: &[Descriptor], reference: Option<&str>) -> Error {
    let available = entries
        .iter()
        .map(|d| match d.annotations.get(REF_NAME) {
            Some(name) => format!("{name} ({})", d.digest),
            None => d.digest.clone(),
        })
        .collect();
    Error::ManifestNotFound {
        reference: reference
            .unwrap_or("(none given; the index holds several)")
            .to_owned(),
        available,
    }
}

fn by_platform(candidates: &[&Descriptor], platform: &Platform) -> Result<Descriptor, Error> {
    candidates
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| platform.matches(&p.os, &p.architecture, p.variant.as_deref()))
        })
        .map(|d| (*d).clone())
        .ok_or_else(|| Error::PlatformNotFound {
            platform: platform.to_string(),
            available: candidates
                .iter()
                .filter_map(|d| d.platform.as_ref().map(PlatformSpec::name))
                .collect(),
        })
}

/// Follow a descriptor through nested indexes down to an image manifest.
fn resolve_descriptor(
    layout: &Layout,
    entry: &Descriptor,
    platform: &Platform,
    depth: usize,
) -> Result<Resolved, Error> {
    let digest = Digest::parse(&entry.digest, "index entry")?;
    let raw = layout.json_blob(&digest, entry.size, &format!("manifest {digest}"))?;
    let declared = entry.media_type.clone().or_else(|| media_type_of(&raw));
    match declared.as_deref() {
        Some(OCI_INDEX | DOCKER_LIST) => {
            if depth >= MAX_NESTING {
                return Err(Error::InvalidSource {
                    reason: format!("image indexes nest deeper than {MAX_NESTING}"),
                });
            }
            let index: IndexDoc = parse(&raw, &format!("image index {digest}"))?;
            let entries: Vec<&Descriptor> = index.manifests.iter().collect();
            let chosen = match entries[..] {
                [only] if only.platform.is_none() => only.clone(),
                _ => by_platform(&entries, platform)?,
            };
            let mut resolved = resolve_descriptor(layout, &chosen, platform, depth + 1)?;
            if resolved.delta.is_none() {
                resolved.served.push(digest);
            }
            Ok(resolved)
        }
        Some(OCI_MANIFEST | DOCKER_MANIFEST) | None => image(layout, digest, raw),
        Some(other) => Err(Error::UnsupportedMediaType {
            what: format!("manifest {digest}"),
            media_type: other.to_owned(),
        }),
    }
}

/// Check an image manifest and its config, and plan its layers.
fn image(layout: &Layout, manifest_digest: Digest, raw: Vec<u8>) -> Result<Resolved, Error> {
    let what = format!("manifest {manifest_digest}");
    let manifest: ManifestDoc = parse(&raw, &what)?;
    if let Some(kind) = &manifest.artifact_type {
        // oci-delta hook: a delta artifact resolves to the image it
        // rebuilds, with the delta attached (crate::delta).
        if kind == crate::delta::ARTIFACT_TYPE {
            let delta = crate::delta::Delta::parse(layout, &manifest_digest, &raw)?;
            let mut target = image(layout, delta.target.clone(), delta.target_manifest.clone())?;
            target.delta = Some(delta);
            return Ok(target);
        }
        return Err(Error::UnsupportedMediaType {
            what: format!("the artifactType of {what}"),
            media_type: kind.clone(),
        });
    }
    let layer_descriptors = manifest.image_layers(&what)?;
    if let Some(own) = &manifest.media_type
        && own != OCI_MANIFEST
        && own != DOCKER_MANIFEST
    {
        return Err(Error::UnsupportedMediaType {
            what,
            media_type: own.clone(),
        });
    }
    let config_type = manifest.config.media_type.as_deref().unwrap_or_default();
    if !CONFIGS.contains(&config_type) {
        return Err(Error::UnsupportedMediaType {
            what: "the image config".to_owned(),
            media_type: config_type.to_owned(),
        });
    }
    let config_digest = Digest::parse(&manifest.config.digest, "the config descriptor")?;
    let config_raw = layout.json_blob(
        &config_digest,
        manifest.config.size,
        &format!("config {config_digest}"),
    )?;
    let config: ConfigDoc = parse(&config_raw, &format!("config {config_digest}"))?;
    let layers = plan_layers(layer_descriptors, &config.rootfs)?;
    let served = vec![manifest_digest.clone()];
    let (manifest_digest, raw) =
        if manifest.media_type.as_deref() == Some(DOCKER_MANIFEST) || config_type != OCI_CONFIG {
            let converted = docker_to_oci(&raw, &layers)?;
            tracing::info!(
                "converted Docker manifest {manifest_digest} to OCI manifest {}",
                Digest::of(&converted)
            );
            (Digest::of(&converted), converted)
        } else {
            (manifest_digest, raw)
        };
    Ok(Resolved {
        manifest_digest,
        manifest: raw,
        config_digest,
        config: config_raw,
        layers,
        delta: None,
        served,
    })
}

/// `layers` for another attempt of the same pull: its own count of the
/// pull's size, the pull's GC hold shared.
pub(crate) fn afresh(layers: &[LayerPlan]) -> Vec<LayerPlan> {
    let pulled = crate::oci::split::PullTally::default();
    layers
        .iter()
        .map(|plan| LayerPlan {
            pulled: pulled.clone(),
            ..plan.clone()
        })
        .collect()
}

/// Pair each layer blob with the diff_id the config gives it.
fn plan_layers(layers: &[Descriptor], rootfs: &RootFs) -> Result<Vec<LayerPlan>, Error> {
    if rootfs.kind != "layers" {
        return Err(Error::InvalidJson {
            what: "the image config".to_owned(),
            reason: format!("rootfs.type is {:?}, not \"layers\"", rootfs.kind),
        });
    }
    if rootfs.diff_ids.len() != layers.len() {
        return Err(Error::InvalidJson {
            what: "the image config".to_owned(),
            reason: format!(
                "it lists {} diff_ids for {} layers",
                rootfs.diff_ids.len(),
                layers.len()
            ),
        });
    }
    let pulled = crate::oci::split::PullTally::default();
    let hold = PullHold::default();
    layers
        .iter()
        .zip(&rootfs.diff_ids)
        .map(|(layer, diff_id)| {
            let media_type = layer.media_type.as_deref().unwrap_or_default();
            let compression =
                Compression::of_layer(media_type).ok_or_else(|| Error::UnsupportedMediaType {
                    what: format!("layer {}", layer.digest),
                    media_type: media_type.to_owned(),
                })?;
            Ok(LayerPlan {
                blob: Digest::parse(&layer.digest, "a layer descriptor")?,
                size: layer.size,
                compression,
                diff_id: Digest::parse(diff_id, "rootfs.diff_ids")?,
                pulled: pulled.clone(),
                hold: hold.clone(),
            })
        })
        .collect()
}

/// The OCI manifest equivalent to a Docker schema 2 one, as containers/image
/// converts them: the media types become OCI's and nothing else changes,
/// so the config, the layers and the composefs image id stay the same.
/// composefs-rs treats a manifest whose config is not an OCI config as an
/// artifact and builds no filesystem for it; converted, it is an image.
fn docker_to_oci(raw: &[u8], layers: &[LayerPlan]) -> Result<Vec<u8>, Error> {
    let mut doc: serde_json::Value = parse(raw, "the Docker manifest")?;
    doc["mediaType"] = OCI_MANIFEST.into();
    doc["config"]["mediaType"] = OCI_CONFIG.into();
    if let Some(entries) = doc["layers"].as_array_mut() {
        for (entry, plan) in entries.iter_mut().zip(layers) {
            entry["mediaType"] = plan.compression.oci_layer().into();
        }
    }
    serde_json::to_vec(&doc).map_err(|e| Error::InvalidJson {
        what: "the converted manifest".to_owned(),
        reason: e.to_string(),
    })
}
