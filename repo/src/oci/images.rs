//! The images in the repository: listing, describing, naming, removing,
//! computing ids and mounting.

use std::os::fd::OwnedFd;

use composefs::{fsverity::FsVerityHashValue, repository::Repository as Store};
use composefs_oci::oci_image::OciImage;

use super::{
    digest::Digest,
    mount::{MountOptions, mount_image},
    pull::durable,
};
use crate::{Error, Repository, idmap::IdMapping, repository::with_store};

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
    /// The bootable image id, when its bootable EROFS is kept (see
    /// [`Repository::make_bootable`]).
    pub bootable_image_id: Option<String>,
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
        self.ensure_writable("tagging")?;
        let _hold = self.hold(format!("tagging {image} as {tag}"));
        with_store!(self.store(), s => {
            let found = open(s, image)?;
            check_tag_names(tag, found.manifest_digest().as_ref())?;
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
                return Err(Error::TagNotFound { tag: tag.to_owned() });
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
            let fs = filesystem(s, image)?;
            Ok(fs.compute_image_id(s.erofs_version()).to_hex())
        })
    }

    /// A detached, read-only mount of `image`, to be attached by whoever
    /// receives it; `nosuid` and `nodev` unless `options` allow them. GC
    /// keeps the image until it is attached (see
    /// [`Repository::hold_until_attached`]), then while it is mounted.
    ///
    /// With `idmap`, the mount is idmapped: a file the image has owned by
    /// uid U shows as owned by the uid map's image of U (and likewise for
    /// gids); ids the maps do not cover show as the overflow id 65534.
    pub fn mount(
        &self,
        image: &str,
        options: MountOptions,
        idmap: Option<&IdMapping>,
    ) -> Result<OwnedFd, Error> {
        // Made before the hold, and refused before anything is mounted.
        let userns = mapping_namespace(image, idmap)?;
        let hold = self.hold(format!("a mount of {image} not yet attached"));
        let mount = with_store!(self.store(), s => {
            let found = open(s, image)?;
            found
                .erofs_image_ref(s, false)
                .and_then(|id| mount_image(s, &id.to_hex(), options, userns.as_ref()))
                .map_err(|e| Error::MountFailed {
                    image: image.to_owned(),
                    reason: format!("{e:#}"),
                })
        })?;
        self.hold_until_attached(&mount, hold);
        Ok(mount)
    }
}

/// The user namespace whose ID maps are `idmap`, for a mount of `image`.
pub(crate) fn mapping_namespace(
    image: &str,
    idmap: Option<&IdMapping>,
) -> Result<Option<OwnedFd>, Error> {
    idmap
        .map(crate::userns::user_namespace)
        .transpose()
        .map_err(|e| Error::MountFailed {
            image: image.to_owned(),
            reason: e.to_string(),
        })
}

/// The filesystem `image` names, merged from its layers as upstream
/// merges it for `compute-id`, `dump` and its EROFS (and, without a
/// `/usr`, as [`super::merge`] says).
pub(crate) fn filesystem<H: FsVerityHashValue>(
    store: &Store<H>,
    image: &str,
) -> Result<composefs::tree::FileSystem<H>, Error> {
    let found = open(store, image)?;
    let config = found
        .read_config_json(store)
        .map_err(|e| Error::storage("reading the image's config", e))?;
    super::merge::merge_layers(store, found.config_digest(), found.config_verity(), &config)
        .map_err(|e| Error::storage("reading the image's layers", e))
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
    } else if tag == "." || tag == ".." {
        // A tag is a file name under the refs directory: these two name
        // the directory itself and its parent.
        "it is . or .., which name directories"
    } else {
        return Ok(());
    };
    Err(Error::InvalidTag {
        tag: tag.to_owned(),
        reason: reason.to_owned(),
    })
}

/// Refuse a tag shaped like a digest unless it is the digest of the
/// manifest it is to name (as a pull's default tag is): every image
/// argument is read as a digest when it looks like one, so any other such
/// tag would list under one image and resolve to another, or to none.
pub(crate) fn check_tag_names(tag: &str, manifest_digest: &str) -> Result<(), Error> {
    if !is_digest_shaped(tag) || tag == manifest_digest {
        return Ok(());
    }
    Err(Error::InvalidTag {
        tag: tag.to_owned(),
        reason: format!(
            "it is shaped like a digest (ALGORITHM:HEX) but is not the image's manifest \
             digest {manifest_digest}"
        ),
    })
}

/// The digest algorithms whose names mark a digest whatever the length of
/// the hex that follows.
const DIGEST_ALGORITHMS: &[&str] = &["sha256", "sha384", "sha512", "blake3", "sha1", "md5"];

/// The length of hex from which any `ALGORITHM:` reads as a digest; it
/// keeps everyday tags like `debian:12` free.
const DIGEST_HEX: usize = 32;

/// Whether `text` reads as a digest: an OCI digest algorithm
/// (`[a-z0-9]+([+._-][a-z0-9]+)*`), a colon and hex digits, where the
/// algorithm is a known one or the hex is hash-long.
fn is_digest_shaped(text: &str) -> bool {
    let Some((algorithm, hex)) = text.split_once(':') else {
        return false;
    };
    let component =
        |c: &str| !c.is_empty() && c.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9'));
    let algorithm_ok = algorithm.split(['+', '.', '_', '-']).all(component);
    let hex_ok = !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit());
    algorithm_ok && hex_ok && (DIGEST_ALGORITHMS.contains(&algorithm) || hex.len() >= DIGEST_HEX)
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

/// Open the image `image` names: a tag, a `sha256:` manifest digest (with
/// or without a leading `@`), or failing those a unique prefix of a
/// manifest digest (with or without `sha256:`) or of an image id, as the
/// IMAGE ID column of `cfsctl oci images` shows it.
pub(crate) fn open<H: FsVerityHashValue>(
    repo: &Store<H>,
    image: &str,
) -> Result<OciImage<H>, Error> {
    let not_found = || Error::ImageNotFound {
        image: image.to_owned(),
    };
    let digest_text = image.strip_prefix('@').unwrap_or(image);
    let tags = tags(repo)?;
    if tags.iter().any(|(name, _)| name == image) {
        return OciImage::open_ref(repo, image).map_err(|e| Error::storage("opening the image", e));
    }
    let full_digest = digest_text
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64);
    let digest = if full_digest {
        // A malformed digest names no image: no tag can be shaped so.
        Digest::parse(digest_text, "the image name").map_err(|_| not_found())?
    } else {
        by_prefix(repo, &tags, image)?.ok_or_else(not_found)?
    };
    let digest = digest.to_oci();
    let verity = composefs_oci::oci_image::has_manifest(repo, &digest)
        .map_err(|e| Error::storage("looking up the image", e))?
        .ok_or_else(not_found)?;
    OciImage::open(repo, &digest, Some(&verity)).map_err(|e| Error::storage("opening the image", e))
}

/// The fewest hex digits a prefix must have to name an image: fewer
/// would too easily name one by accident.
const MIN_PREFIX: usize = 4;

/// The manifest digest of the one tagged image whose manifest digest or
/// image id starts with `prefix`; `None` when none does or `prefix` is
/// no hex prefix; [`Error::AmbiguousImage`] when several do.
fn by_prefix<H: FsVerityHashValue>(
    repo: &Store<H>,
    tags: &[(String, String)],
    prefix: &str,
) -> Result<Option<Digest>, Error> {
    let (hex, digests_only) = match prefix.strip_prefix("sha256:") {
        Some(hex) => (hex, true),
        None => (prefix, false),
    };
    let is_hex = hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if hex.len() < MIN_PREFIX || !is_hex {
        return Ok(None);
    }
    let mut matches: Vec<String> = Vec::new();
    for (name, manifest) in tags {
        if matches.contains(manifest) {
            continue;
        }
        let by_manifest = manifest
            .strip_prefix("sha256:")
            .is_some_and(|m| m.starts_with(hex));
        let by_id = !digests_only
            && OciImage::open_ref(repo, name).ok().is_some_and(|i| {
                i.image_ref(repo.erofs_version())
                    .is_some_and(|id| id.to_hex().starts_with(hex))
            });
        if by_manifest || by_id {
            matches.push(manifest.clone());
        }
    }
    match &matches[..] {
        [] => Ok(None),
        [only] => Digest::parse(only, "a stored tag").map(Some),
        _ => {
            matches.sort();
            Err(Error::AmbiguousImage {
                image: prefix.to_owned(),
                matches,
            })
        }
    }
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
        bootable_image_id: found
            .boot_image_ref(repo.erofs_version())
            .map(|id| id.to_hex()),
        tags: tags(repo)?
            .into_iter()
            .filter(|(_, d)| *d == digest)
            .map(|(name, _)| name)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_shapes_are_known_algorithms_or_hash_long_hex() {
        let long = "ab".repeat(16);
        for shaped in [
            "sha256:abcd",
            "sha512:0",
            "blake3:FF",
            &format!("x-y.z:{long}"),
        ] {
            assert!(is_digest_shaped(shaped), "{shaped}");
        }
        for plain in [
            "debian:12",
            "v1",
            "app:cafe",
            "sha256:",
            "Sha256:ab",
            "sha256:xyz",
            ":ab",
        ] {
            assert!(!is_digest_shaped(plain), "{plain}");
        }
        let own = format!("sha256:{}", "0".repeat(64));
        assert!(check_tag_names(&own, &own).is_ok());
        assert!(check_tag_names("sha256:abcd", &own).is_err());
    }
}
