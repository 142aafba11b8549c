//! From `index.json` to one image: choosing the manifest by reference and
//! platform, and checking the manifest and config against their digests
//! and each other.

use std::collections::HashMap;

use serde::Deserialize;

use super::{Platform, digest::Digest, source::Layout};
use crate::Error;

pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// The media type of an OCI image config.
pub(crate) const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const CONFIGS: &[&str] = &[OCI_CONFIG, "application/vnd.docker.container.image.v1+json"];
/// The annotation that names a manifest in an index.
pub(crate) const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// How deep image indexes may nest (an index of indexes of manifests).
const MAX_NESTING: usize = 4;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression a layer media type declares, if it is a layer type.
    pub(crate) fn of_layer(media_type: &str) -> Option<Self> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                Some(Compression::Gzip)
            }
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// A content descriptor, as in an index or manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: Option<String>,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: HashMap<String, String>,
    platform: Option<PlatformSpec>,
}

#[derive(Debug, Clone, Deserialize)]
struct PlatformSpec {
    os: String,
    architecture: String,
    variant: Option<String>,
}

impl PlatformSpec {
    fn name(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{v}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexDoc {
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestDoc {
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct ConfigDoc {
    rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: String,
    diff_ids: Vec<String>,
}

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
}

/// Choose the image that `reference` (a ref name or manifest digest; any
/// when `None`) and `platform` name in the layout, and verify it.
pub(crate) fn resolve(
    layout: &Layout,
    reference: Option<&str>,
    platform: &Platform,
) -> Result<Resolved, Error> {
    let index: IndexDoc = parse(&layout.index()?, "index.json")?;
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
        None => entries.iter().collect(),
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
            resolve_descriptor(layout, &chosen, platform, depth + 1)
        }
        Some(OCI_MANIFEST | DOCKER_MANIFEST) | None => image(layout, digest, raw),
        Some(other) => Err(Error::UnsupportedMediaType {
            what: format!("manifest {digest}"),
            media_type: other.to_owned(),
        }),
    }
}

/// The `mediaType` a document declares about itself.
fn media_type_of(raw: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Typed {
        media_type: Option<String>,
    }
    serde_json::from_slice::<Typed>(raw).ok()?.media_type
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
    let layers = plan_layers(&manifest.layers, &config.rootfs)?;
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
    })
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
            entry["mediaType"] = match plan.compression {
                Compression::None => "application/vnd.oci.image.layer.v1.tar",
                Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
                Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
            }
            .into();
        }
    }
    serde_json::to_vec(&doc).map_err(|e| Error::InvalidJson {
        what: "the converted manifest".to_owned(),
        reason: e.to_string(),
    })
}

fn parse<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T, Error> {
    let invalid = |e: serde_json::Error| Error::InvalidJson {
        what: what.to_owned(),
        reason: e.to_string(),
    };
    // serde skips the fields `T` ignores without checking their text, but
    // the document is stored as it is and read again by composefs-oci and
    // other tools: it must be JSON throughout (valid UTF-8, escapes).
    serde_json::from_slice::<serde_json::Value>(bytes).map_err(invalid)?;
    serde_json::from_slice(bytes).map_err(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the manifest fuzz target: a config with invalid UTF-8 in
    /// a field cfsd does not read was accepted and stored.
    #[test]
    fn documents_must_be_json_throughout() {
        let rootfs = r#""rootfs":{"type":"layers","diff_ids":[]}"#;
        let good = format!(r#"{{"os":"linux",{rootfs}}}"#);
        assert!(parse::<ConfigDoc>(good.as_bytes(), "the config").is_ok());
        for bad in [&b"{\"os\":\"linu\xff\","[..], b"{\"os\":\"\\ud800\","] {
            let mut doc = bad.to_vec();
            doc.extend_from_slice(rootfs.as_bytes());
            doc.push(b'}');
            let err = parse::<ConfigDoc>(&doc, "the config").unwrap_err();
            assert!(matches!(err, Error::InvalidJson { .. }), "{err}");
        }
    }
}
