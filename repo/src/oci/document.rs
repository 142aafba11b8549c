//! The OCI documents cfsd reads: descriptors, image indexes, image
//! manifests (and the artifact manifests of oci-delta), and the part of an
//! image config that names the layers; their media types; and the one
//! parser every reader of them goes through.
//!
//! Only the fields cfsd acts on are typed. The documents themselves are
//! kept byte for byte by their readers (a digest names the bytes, not
//! this parse), so nothing here serialises them again.
//!
//! The `oci-spec` crate (which composefs-oci uses) was weighed for this and
//! not taken: its descriptors require `mediaType` and parse each digest into
//! its own type during deserialisation, so a document that is refused today
//! with a typed error naming the field (a bad digest, a missing media type
//! checked against what the manifest says of itself) would become one
//! serde error without that field, and oci-delta's annotations and Docker's
//! media types would have to be carried around its enums.

use std::collections::HashMap;

use serde::Deserialize;

use crate::Error;

/// The media type of an OCI image index.
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// The media type of a Docker manifest list.
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The media type of an OCI image manifest.
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The media type of a Docker schema 2 manifest.
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// The media type of an OCI image config.
pub(crate) const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// The media type of a Docker image config.
pub(crate) const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// The annotation that names a manifest in an index.
pub(crate) const REF_NAME: &str = "org.opencontainers.image.ref.name";

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

    /// The OCI layer media type of this compression.
    pub(crate) fn oci_layer(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

/// A content descriptor, as in an index or manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    /// What the content is.
    pub media_type: Option<String>,
    /// Its digest, unparsed: readers parse it where they can say which
    /// descriptor a bad one is in.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its annotations.
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// The platform of the image it points to, in an index.
    pub platform: Option<PlatformSpec>,
}

/// The platform an index entry declares.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct PlatformSpec {
    /// The operating system.
    pub os: String,
    /// The CPU architecture.
    pub architecture: String,
    /// The architecture's variant.
    pub variant: Option<String>,
}

impl PlatformSpec {
    /// `os/architecture[/variant]`.
    pub(crate) fn name(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{v}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }
}

/// An image index (or Docker manifest list).
#[derive(Debug, Deserialize)]
pub(crate) struct IndexDoc {
    /// The manifests it lists.
    pub manifests: Vec<Descriptor>,
}

/// An image manifest, or an artifact manifest such as an oci-delta.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ManifestDoc {
    /// The media type it declares for itself.
    pub media_type: Option<String>,
    /// Set on artifact manifests.
    pub artifact_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// The layer blobs: required of an image manifest (see
    /// [`ManifestDoc::image_layers`]), optional on an artifact.
    pub layers: Option<Vec<Descriptor>>,
    /// Its annotations.
    #[serde(default)]
    pub annotations: HashMap<String, String>,
}

impl ManifestDoc {
    /// The layers of an image manifest, which must list them; `what`
    /// names the manifest in the error.
    pub(crate) fn image_layers(&self, what: &str) -> Result<&[Descriptor], Error> {
        self.layers.as_deref().ok_or_else(|| Error::InvalidJson {
            what: what.to_owned(),
            reason: "missing field `layers`".to_owned(),
        })
    }

    /// The layers, none when an artifact lists none.
    pub(crate) fn layers(&self) -> &[Descriptor] {
        self.layers.as_deref().unwrap_or_default()
    }
}

/// The part of an image config that names the layers.
#[derive(Debug, Deserialize)]
pub(crate) struct ConfigDoc {
    /// The layers' uncompressed digests.
    pub rootfs: RootFs,
}

/// `rootfs` of an image config.
#[derive(Debug, Deserialize)]
pub(crate) struct RootFs {
    /// Must be `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The diff_id of each layer, bottom first.
    pub diff_ids: Vec<String>,
}

/// The `mediaType` a document declares about itself, if it parses.
pub(crate) fn media_type_of(raw: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Typed {
        media_type: Option<String>,
    }
    serde_json::from_slice::<Typed>(raw).ok()?.media_type
}

/// Parse the document `bytes` as a `T`; `what` names it in the error.
pub(crate) fn parse<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T, Error> {
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

    #[test]
    fn an_image_manifest_must_list_its_layers_and_an_artifact_need_not() {
        let config = r#""config":{"digest":"sha256:00","size":2}"#;
        let bare: ManifestDoc = parse(format!("{{{config}}}").as_bytes(), "m").unwrap();
        assert!(bare.layers().is_empty());
        let err = bare.image_layers("manifest m").unwrap_err();
        assert!(
            matches!(&err, Error::InvalidJson { what, reason }
                if what == "manifest m" && reason.contains("layers")),
            "{err}"
        );
    }
}
