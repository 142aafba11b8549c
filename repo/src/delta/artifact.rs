//! Reading an oci-delta artifact manifest: the target image it carries,
//! the image it was made against, and which blob rebuilds which layer.
//!
//! Names and rules are those of containers/oci-delta's README ("Delta file
//! format"), as oci-delta 0.1.1 reads them.

use std::collections::{HashMap, HashSet};

use crate::{
    Error,
    oci::{
        digest::Digest,
        document::{Compression, DOCKER_MANIFEST, Descriptor, ManifestDoc, OCI_MANIFEST, parse},
        source::Layout,
    },
};

/// The `artifactType` of an oci-delta artifact manifest.
pub(crate) const ARTIFACT_TYPE: &str = "application/vnd.io.github.containers.oci-delta.v1";
/// The media type of a tar-diff blob.
pub(crate) const TAR_DIFF: &str = "application/vnd.tar-diff";
/// Says what a delta manifest layer holds.
pub(crate) const CONTENT: &str = "io.github.containers.delta.content";
/// The config digest of the image the delta was made against.
pub(crate) const SOURCE_CONFIG: &str = "io.github.containers.delta.source-config";
/// The manifest digest of the image the delta was made against; oci-delta
/// writes it, but only the config digest is required.
pub(crate) const SOURCE_MANIFEST: &str = "io.github.containers.delta.source";
/// On an `image-layer`: the digest of the target manifest's layer it
/// rebuilds.
pub(crate) const TO: &str = "io.github.containers.delta.to";
const MANIFESTS: &[&str] = &[OCI_MANIFEST, DOCKER_MANIFEST];

/// How a delta blob becomes a layer tar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    /// Apply it as a tar-diff against the source image.
    TarDiff,
    /// It is the whole layer, compressed as a layer media type says.
    Layer(Compression),
}

impl Method {
    /// The method a delta layer's media type calls for.
    fn of(media_type: &str) -> Option<Self> {
        match media_type {
            TAR_DIFF => Some(Method::TarDiff),
            other => Compression::of_layer(other).map(Method::Layer),
        }
    }
}

/// A target layer the delta carries.
#[derive(Debug, Clone)]
pub(crate) struct Rebuild {
    /// The delta blob.
    pub blob: Digest,
    /// Its size.
    pub size: u64,
    /// How it becomes the layer tar.
    pub method: Method,
}

/// A parsed and checked delta artifact.
#[derive(Debug)]
pub(crate) struct Delta {
    /// The delta artifact's own manifest digest.
    pub manifest: Digest,
    /// The manifest digest of the image the delta applies to, when the
    /// delta names it.
    pub source_manifest: Option<Digest>,
    /// The target image's manifest digest.
    pub target: Digest,
    /// The target image's manifest, byte for byte.
    pub target_manifest: Vec<u8>,
    /// The config digest of the image the delta applies to.
    pub source_config: Digest,
    /// The layers the delta carries, by target layer digest; the others
    /// are reused by diff_id.
    pub rebuilds: HashMap<Digest, Rebuild>,
}

impl Delta {
    /// Parse the delta artifact manifest `raw` (already verified against
    /// `digest`), and check the target manifest and config it embeds
    /// against their descriptors and each other.
    pub(crate) fn parse(layout: &Layout, digest: &Digest, raw: &[u8]) -> Result<Self, Error> {
        let what = format!("delta manifest {digest}");
        let manifest: ManifestDoc = parse(raw, &what)?;
        let source = manifest
            .annotations
            .get(SOURCE_CONFIG)
            .ok_or_else(|| invalid(format!("{what} has no {SOURCE_CONFIG} annotation")))?;
        let source_config = Digest::parse(source, SOURCE_CONFIG)?;
        // Only informative: a malformed one is ignored, not refused.
        let source_manifest = manifest
            .annotations
            .get(SOURCE_MANIFEST)
            .and_then(|m| Digest::parse(m, SOURCE_MANIFEST).ok());
        let embedded = Embedded::find(manifest.layers())?;
        let (target, target_manifest, target_doc) = embedded.target_manifest(layout)?;
        embedded.check_config(&target_doc)?;
        let rebuilds = rebuilds(manifest.layers(), &target_doc)?;
        Ok(Delta {
            manifest: digest.clone(),
            source_manifest,
            target,
            target_manifest,
            source_config,
            rebuilds,
        })
    }
}

/// What a delta artifact manifest says of itself, read from it alone:
/// enough to decide whether it can be used before anything more of it is
/// fetched.
#[derive(Debug)]
pub(crate) struct Header {
    /// The config digest of the image it applies to.
    pub source_config: Digest,
    /// The digest of the target manifest it embeds.
    pub target: Digest,
    /// The bytes of all the blobs it lists.
    pub blob_bytes: u64,
}

impl Header {
    /// Read the header of the delta artifact manifest `raw`, named by
    /// `digest`.
    pub(crate) fn read(digest: &Digest, raw: &[u8]) -> Result<Self, Error> {
        let what = format!("delta manifest {digest}");
        let manifest: ManifestDoc = parse(raw, &what)?;
        if manifest.artifact_type.as_deref() != Some(ARTIFACT_TYPE) {
            return Err(invalid(format!(
                "{what} is not of artifactType {ARTIFACT_TYPE}"
            )));
        }
        let source = manifest
            .annotations
            .get(SOURCE_CONFIG)
            .ok_or_else(|| invalid(format!("{what} has no {SOURCE_CONFIG} annotation")))?;
        let embedded = Embedded::find(manifest.layers())?;
        Ok(Header {
            source_config: Digest::parse(source, SOURCE_CONFIG)?,
            target: Digest::parse(&embedded.manifest.digest, "the embedded image manifest")?,
            blob_bytes: manifest.layers().iter().map(|l| l.size).sum(),
        })
    }
}

/// The delta layers that embed the target manifest and config.
struct Embedded<'m> {
    manifest: &'m Descriptor,
    config: &'m Descriptor,
}

impl<'m> Embedded<'m> {
    fn find(layers: &'m [Descriptor]) -> Result<Self, Error> {
        let one = |kind: &str| {
            let mut found = layers.iter().filter(|l| content(l) == Some(kind));
            match (found.next(), found.next()) {
                (Some(d), None) => Ok(d),
                (None, _) => Err(invalid(format!("it embeds no {kind}"))),
                (Some(_), Some(_)) => Err(invalid(format!("it embeds more than one {kind}"))),
            }
        };
        Ok(Embedded {
            manifest: one("image-manifest")?,
            config: one("image-config")?,
        })
    }

    /// The target manifest: its digest, bytes and contents. It must be an
    /// image manifest, not another artifact.
    fn target_manifest(&self, layout: &Layout) -> Result<(Digest, Vec<u8>, ManifestDoc), Error> {
        let digest = Digest::parse(&self.manifest.digest, "the embedded image manifest")?;
        let what = format!("target manifest {digest}");
        let raw = layout.json_blob(&digest, self.manifest.size, &what)?;
        let doc: ManifestDoc = parse(&raw, &what)?;
        if let Some(kind) = &doc.artifact_type {
            return Err(invalid(format!(
                "its target manifest is an artifact ({kind}), not an image"
            )));
        }
        let own = doc
            .media_type
            .as_deref()
            .or(self.manifest.media_type.as_deref());
        if let Some(own) = own
            && !MANIFESTS.contains(&own)
        {
            return Err(Error::UnsupportedMediaType {
                what,
                media_type: own.to_owned(),
            });
        }
        Ok((digest, raw, doc))
    }

    /// The embedded config must be the one the target manifest names.
    /// Its bytes are checked when the target image is resolved, against
    /// the target manifest's descriptor, which this makes the same.
    fn check_config(&self, target: &ManifestDoc) -> Result<(), Error> {
        let named = Digest::parse(&target.config.digest, "the target manifest's config")?;
        let embedded = Digest::parse(&self.config.digest, "the embedded image config")?;
        named.verify(&embedded, "config of the delta's target manifest")?;
        if self.config.size != target.config.size {
            return Err(Error::DigestMismatch {
                what: "size of the delta's embedded config".to_owned(),
                expected: target.config.size.to_string(),
                actual: self.config.size.to_string(),
            });
        }
        Ok(())
    }
}

/// The `image-layer`s of the delta, by the target layer each rebuilds.
fn rebuilds(
    layers: &[Descriptor],
    target: &ManifestDoc,
) -> Result<HashMap<Digest, Rebuild>, Error> {
    // A set, so that checking each delta layer's target is one lookup
    // however many layers both manifests list.
    let target_layers = target
        .layers()
        .iter()
        .map(|l| Digest::parse(&l.digest, "a layer of the target manifest"))
        .collect::<Result<HashSet<_>, _>>()?;
    let mut rebuilds = HashMap::new();
    for layer in layers.iter().filter(|l| content(l) == Some("image-layer")) {
        let blob = Digest::parse(&layer.digest, "a delta layer")?;
        let to = layer
            .annotations
            .get(TO)
            .ok_or_else(|| invalid(format!("delta layer {blob} has no {TO} annotation")))?;
        let to = Digest::parse(to, TO)?;
        if !target_layers.contains(&to) {
            return Err(invalid(format!(
                "delta layer {blob} rebuilds {to}, which is not a layer of the target image"
            )));
        }
        let media_type = layer.media_type.as_deref().unwrap_or_default();
        let method = Method::of(media_type).ok_or_else(|| Error::UnsupportedMediaType {
            what: format!("delta layer {blob}"),
            media_type: media_type.to_owned(),
        })?;
        let rebuild = Rebuild {
            blob: blob.clone(),
            size: layer.size,
            method,
        };
        if rebuilds.insert(to.clone(), rebuild).is_some() {
            return Err(invalid(format!("two delta layers rebuild {to}")));
        }
    }
    Ok(rebuilds)
}

/// The `delta.content` of a delta layer; layers without one, or with a
/// value this version does not know (signatures), are not ours to read.
fn content(layer: &Descriptor) -> Option<&str> {
    layer.annotations.get(CONTENT).map(String::as_str)
}

fn invalid(reason: String) -> Error {
    Error::InvalidDelta { reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u32) -> String {
        format!("sha256:{n:064x}")
    }

    fn descriptor(n: u32, media_type: &str, annotations: &[(&str, String)]) -> Descriptor {
        Descriptor {
            media_type: Some(media_type.to_owned()),
            digest: digest(n),
            size: u64::from(n) * 10,
            annotations: annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            platform: None,
        }
    }

    fn image_layer(blob: u32, media_type: &str, to: u32) -> Descriptor {
        let annotations = [(CONTENT, "image-layer".to_owned()), (TO, digest(to))];
        descriptor(blob, media_type, &annotations)
    }

    fn target(layers: impl IntoIterator<Item = u32>) -> ManifestDoc {
        ManifestDoc {
            media_type: Some(OCI_MANIFEST.to_owned()),
            artifact_type: None,
            config: descriptor(0, "application/vnd.oci.image.config.v1+json", &[]),
            layers: Some(
                layers
                    .into_iter()
                    .map(|n| descriptor(n, "application/vnd.oci.image.layer.v1.tar", &[]))
                    .collect(),
            ),
            annotations: HashMap::new(),
        }
    }

    /// What a rebuild map says, in a form that compares and prints.
    fn pinned(rebuilds: &HashMap<Digest, Rebuild>) -> Vec<(String, String, u64, Method)> {
        let mut all: Vec<_> = rebuilds
            .iter()
            .map(|(to, r)| (to.to_string(), r.blob.to_string(), r.size, r.method))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    #[test]
    fn a_header_names_source_target_and_blob_bytes_of_a_delta_only() {
        let manifest = |artifact_type: &str| {
            let layer = |n: u32, media_type: &str, size: u32, content: &str| {
                serde_json::json!({"mediaType": media_type, "digest": digest(n), "size": size,
                    "annotations": {CONTENT: content, TO: digest(4)}})
            };
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": artifact_type,
                "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                           "digest": digest(9), "size": 2},
                "layers": [
                    layer(1, OCI_MANIFEST, 100, "image-manifest"),
                    layer(2, "application/vnd.oci.image.config.v1+json", 50, "image-config"),
                    layer(3, TAR_DIFF, 1000, "image-layer"),
                ],
                "annotations": {SOURCE_CONFIG: digest(5)},
            }))
            .unwrap()
        };
        let named = Digest::of(b"delta");
        let header = Header::read(&named, &manifest(ARTIFACT_TYPE)).unwrap();
        assert_eq!(header.source_config.to_string(), digest(5));
        assert_eq!(header.target.to_string(), digest(1));
        assert_eq!(header.blob_bytes, 1150);
        let other = Header::read(&named, &manifest("application/x.other")).unwrap_err();
        assert!(matches!(other, Error::InvalidDelta { .. }), "{other}");
    }

    #[test]
    fn each_image_layer_rebuilds_the_target_layer_it_names() {
        let layers = [
            image_layer(101, TAR_DIFF, 3),
            descriptor(
                102,
                "application/json",
                &[(CONTENT, "signature".to_owned())],
            ),
            image_layer(103, "application/vnd.oci.image.layer.v1.tar+zstd", 1),
        ];
        let rebuilds = rebuilds(&layers, &target([1, 2, 3])).unwrap();
        assert_eq!(
            pinned(&rebuilds),
            [
                (
                    digest(1),
                    digest(103),
                    1030,
                    Method::Layer(Compression::Zstd)
                ),
                (digest(3), digest(101), 1010, Method::TarDiff),
            ]
        );
    }

    #[test]
    fn a_layer_outside_the_target_or_rebuilt_twice_is_refused() {
        let stray = rebuilds(&[image_layer(101, TAR_DIFF, 9)], &target([1, 2])).unwrap_err();
        assert!(
            stray
                .to_string()
                .contains("not a layer of the target image"),
            "{stray}"
        );
        let twice = [image_layer(101, TAR_DIFF, 2), image_layer(102, TAR_DIFF, 2)];
        let twice = rebuilds(&twice, &target([1, 2])).unwrap_err();
        assert!(
            twice.to_string().contains("two delta layers rebuild"),
            "{twice}"
        );
    }

    #[test]
    fn many_layers_on_both_sides_give_one_rebuild_each() {
        let n = 20_000;
        let layers: Vec<_> = (1..=n).map(|i| image_layer(n + i, TAR_DIFF, i)).collect();
        let rebuilds = rebuilds(&layers, &target(1..=n)).unwrap();
        assert_eq!(rebuilds.len(), n as usize);
        let pinned = pinned(&rebuilds);
        assert_eq!(
            pinned[0],
            (
                digest(1),
                digest(n + 1),
                u64::from(n + 1) * 10,
                Method::TarDiff
            )
        );
        assert_eq!(pinned[pinned.len() - 1].1, digest(2 * n));
    }
}
