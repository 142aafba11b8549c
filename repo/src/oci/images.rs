//! The images in the repository: listing, describing, naming, removing,
//! computing ids and mounting.

use std::os::fd::OwnedFd;

use composefs::{
    fsverity::FsVerityHashValue, generic_tree::OciTransformOptions, mount::MountOptions,
    repository::Repository as Store,
};
use composefs_oci::{OciDigest, oci_image::OciImage};

use super::{digest::Digest, pull::durable};
use crate::{Error, Repository, repository::with_store};

/// The longest tag accepted; it becomes a file name once encoded.
const MAX_TAG: usize = 200;

/// One tagged image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSummary {
    /// The tag.
    pub name: String,
    /// The manifest's digest.
    pub manifest_digest: String,
    /// The config's digest.
    pub config_digest: String,
    /// The operating system it is for.
    pub os: String,
    /// The CPU architecture it is for.
    pub architecture: String,
    /// When it was created, as its config says.
    pub created: Option<String>,
    /// How many layers it has.
    pub layers: u64,
    /// The composefs image id, when its EROFS image is built.
    pub image_id: Option<String>,
}

/// Everything about one image.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageDetails {
    /// The manifest's digest.
    pub manifest_digest: String,
    /// The config's digest.
    pub config_digest: String,
    /// The composefs image id, when its EROFS image is built.
    pub image_id: Option<String>,
    /// Every tag naming it.
    pub tags: Vec<String>,
    /// The manifest.
    pub manifest: serde_json::Value,
    /// The config.
    pub config: serde_json::Value,
}

impl Repository {
    /// Every tagged image, by tag.
    pub fn images(&self) -> Result<Vec<ImageSummary>, Error> {
        with_store!(self.store(), s => list(s))
    }

    /// Describe `image`, a tag or `sha256:` manifest digest.
    pub fn inspect(&self, image: &str) -> Result<ImageDetails, Error> {
        with_store!(self.store(), s => inspect(s, image))
    }

    /// Give `image` the tag `tag`, moving the tag if it named another.
    pub fn tag(&self, image: &str, tag: &str) -> Result<(), Error> {
        check_tag(tag)?;
        let _hold = self.hold(format!("tagging {image} as {tag}"));
        with_store!(self.store(), s => {
            let found = open(s, image)?;
            composefs_oci::oci_image::tag_image(s, found.manifest_digest(), tag)
                .map_err(|e| Error::storage("tagging", e))?;
            durable(s)
        })
    }

    /// Remove the tag `tag`. The content stays until garbage collection.
    pub fn untag(&self, tag: &str) -> Result<(), Error> {
        let _hold = self.hold(format!("untagging {tag}"));
        with_store!(self.store(), s => {
            if !tags(s)?.iter().any(|(name, _)| name == tag) {
                return Err(Error::ImageNotFound { image: tag.to_owned() });
            }
            composefs_oci::oci_image::untag_image(s, tag)
                .map_err(|e| Error::storage("untagging", e))?;
            durable(s)
        })
    }

    /// Remove every tag of `image`; return them. The content stays until
    /// garbage collection.
    pub fn remove(&self, image: &str) -> Result<Vec<String>, Error> {
        let _hold = self.hold(format!("removing {image}"));
        with_store!(self.store(), s => {
            let digest = open(s, image)?.manifest_digest().to_string();
            let removed: Vec<String> = tags(s)?
                .into_iter()
                .filter(|(_, d)| *d == digest)
                .map(|(name, _)| name)
                .collect();
            for tag in &removed {
                composefs_oci::oci_image::untag_image(s, tag)
                    .map_err(|e| Error::storage("untagging", e))?;
            }
            durable(s)?;
            Ok(removed)
        })
    }

    /// The composefs image id of `image`, computed afresh from its layers
    /// exactly as upstream `cfsctl oci compute-id` does.
    pub fn compute_id(&self, image: &str) -> Result<String, Error> {
        with_store!(self.store(), s => {
            let found = open(s, image)?;
            let fs = composefs_oci::image::create_filesystem(
                s,
                found.config_digest(),
                Some(found.config_verity()),
                &OciTransformOptions::default(),
            )
            .map_err(|e| Error::storage("reading the image's layers", e))?;
            Ok(fs.compute_image_id(s.erofs_version()).to_hex())
        })
    }

    /// A detached, read-only mount of `image`, to be attached by whoever
    /// receives it. GC keeps the image until it is attached (see
    /// [`Repository::hold_until_attached`]), then while it is mounted.
    pub fn mount(&self, image: &str) -> Result<OwnedFd, Error> {
        let hold = self.hold(format!("a mount of {image} not yet attached"));
        let mount = with_store!(self.store(), s => {
            let found = open(s, image)?;
            found
                .mount(s, false, &MountOptions::default())
                .map_err(|e| Error::MountFailed {
                    image: image.to_owned(),
                    reason: format!("{e:#}"),
                })
        })?;
        self.hold_until_attached(&mount, hold);
        Ok(mount)
    }
}

/// Refuse tags that cannot name an image.
pub(crate) fn check_tag(tag: &str) -> Result<(), Error> {
    let reason = if tag.is_empty() {
        "it is empty"
    } else if tag.len() > MAX_TAG {
        "it is longer than 200 bytes"
    } else if tag.starts_with('@') {
        "it starts with @, which marks a digest"
    } else if tag.chars().any(char::is_control) {
        "it contains control characters"
    } else {
        return Ok(());
    };
    Err(Error::InvalidTag {
        tag: tag.to_owned(),
        reason: reason.to_owned(),
    })
}

/// Every tag and the manifest digest it names.
fn tags<H: FsVerityHashValue>(repo: &Store<H>) -> Result<Vec<(String, String)>, Error> {
    let refs =
        composefs_oci::oci_image::list_refs(repo).map_err(|e| Error::storage("listing tags", e))?;
    Ok(refs
        .into_iter()
        .map(|(name, digest)| (name, digest.to_string()))
        .collect())
}

/// Open the image a tag or `sha256:` manifest digest (with or without a
/// leading `@`) names.
pub(crate) fn open<H: FsVerityHashValue>(
    repo: &Store<H>,
    image: &str,
) -> Result<OciImage<H>, Error> {
    let not_found = || Error::ImageNotFound {
        image: image.to_owned(),
    };
    let digest_text = image.strip_prefix('@').unwrap_or(image);
    if digest_text.starts_with("sha256:") {
        let digest: OciDigest = Digest::parse(digest_text, "the image name")?.to_oci();
        let verity = composefs_oci::oci_image::has_manifest(repo, &digest)
            .map_err(|e| Error::storage("looking up the image", e))?
            .ok_or_else(not_found)?;
        return OciImage::open(repo, &digest, Some(&verity))
            .map_err(|e| Error::storage("opening the image", e));
    }
    if !tags(repo)?.iter().any(|(name, _)| name == image) {
        return Err(not_found());
    }
    OciImage::open_ref(repo, image).map_err(|e| Error::storage("opening the image", e))
}

fn list<H: FsVerityHashValue>(repo: &Store<H>) -> Result<Vec<ImageSummary>, Error> {
    let mut images = Vec::new();
    for (name, _) in tags(repo)? {
        // A tag whose image cannot be read is fsck's business; the list
        // shows the rest.
        let Ok(image) = OciImage::open_ref(repo, &name) else {
            tracing::warn!("tag {name:?} names an image that cannot be read");
            continue;
        };
        images.push(ImageSummary {
            name,
            manifest_digest: image.manifest_digest().to_string(),
            config_digest: image.config_digest().to_string(),
            os: image.os(),
            architecture: image.architecture(),
            created: image.created().map(str::to_owned),
            layers: image.manifest().layers().len() as u64,
            image_id: image.image_ref(repo.erofs_version()).map(|id| id.to_hex()),
        });
    }
    images.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(images)
}

fn inspect<H: FsVerityHashValue>(repo: &Store<H>, image: &str) -> Result<ImageDetails, Error> {
    let found = open(repo, image)?;
    let digest = found.manifest_digest().to_string();
    let json = |bytes: anyhow::Result<Vec<u8>>, what: &str| -> Result<serde_json::Value, Error> {
        let bytes = bytes.map_err(|e| Error::storage("reading the image", e))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::InvalidJson {
            what: what.to_owned(),
            reason: e.to_string(),
        })
    };
    Ok(ImageDetails {
        manifest: json(found.read_manifest_json(repo), "the stored manifest")?,
        config: json(found.read_config_json(repo), "the stored config")?,
        manifest_digest: digest.clone(),
        config_digest: found.config_digest().to_string(),
        image_id: found.image_ref(repo.erofs_version()).map(|id| id.to_hex()),
        tags: tags(repo)?
            .into_iter()
            .filter(|(_, d)| *d == digest)
            .map(|(name, _)| name)
            .collect(),
    })
}
