//! Bootable variants of an image, as upstream `cfsctl` 0.9.4 makes them
//! (`oci compute-id --bootable`, `oci mount --bootable`, `compute-karg`).
//!
//! The boot transform is composefs-boot's own: `/boot` and `/sysroot`
//! emptied (their mtimes set to `/usr`'s), then every file relabelled
//! from the image's SELinux policy (`/etc/selinux/config` and the
//! policy's `file_contexts`), or every `security.selinux` label stripped
//! when the image has no policy. Only that code gives upstream's ids.
//!
//! The bootable EROFS is linked from the config stream under upstream's
//! reference names (`composefs.image.boot`, `composefs.image.boot.v1`),
//! beside the plain image, so GC keeps it through the tag chain and
//! upstream tools find it.

use std::{ffi::OsStr, path::Path, sync::Arc};

use composefs::{
    erofs::format::{FormatEpoch, FormatVersion},
    fsverity::FsVerityHashValue,
    repository::Repository as Store,
    tree::FileSystem,
};
use composefs_boot::{BootOps, cmdline::ComposefsCmdline};
use composefs_oci::{BOOT_IMAGE_REF_KEY, BOOT_IMAGE_REF_KEY_V1, OciDigest, oci_image::OciImage};

use super::{
    images::{filesystem, open},
    mount::{MountOptions, mount_image},
    publish::{self, Linked},
    pull::durable,
};
use crate::{Error, Repository, repository::with_store};

/// The largest SELinux policy file (`config`, `file_contexts*`) read.
/// composefs-boot reads each whole, line by line, and compiles every
/// line into its matcher: an image's policy bigger than this would cost
/// the daemon memory and time the image chose. Distribution policies
/// are far smaller (Debian's `file_contexts` is 330 kB, Fedora's 1.5 MB).
pub const MAX_POLICY_FILE: u64 = 16 << 20;

/// An image's kernel argument and the bootable image id it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelArgument {
    /// `composefs=HEX` (EROFS format 2), or
    /// `composefs.digest=v1-ALGORITHM:HEX` (format 1), as upstream writes it.
    pub argument: String,
    /// The bootable image id.
    pub image_id: String,
}

impl Repository {
    /// The bootable image id of `image`, computed afresh from its layers
    /// as upstream `cfsctl oci compute-id --bootable` does; nothing is
    /// written.
    pub fn compute_bootable_id(&self, image: &str) -> Result<String, Error> {
        with_store!(self.store(), s => {
            let fs = bootable_filesystem(s, image)?;
            Ok(fs.compute_image_id(s.erofs_version()).to_hex())
        })
    }

    /// Build the bootable EROFS of `image` and link it from the image's
    /// config, beside the plain one; its id. Does nothing but answer when
    /// it is linked already.
    pub fn make_bootable(&self, image: &str) -> Result<String, Error> {
        let _hold = self.hold(format!("making {image} bootable"));
        with_store!(self.store(), s => {
            if let Some(id) = linked(s, image)? {
                return Ok(id.to_hex());
            }
            self.ensure_writable("making an image bootable")?;
            build_and_link(s, image).map(|id| id.to_hex())
        })
    }

    /// The kernel argument that boots `image`'s bootable variant, in the
    /// repository's EROFS format, as upstream `cfsctl compute-karg` words
    /// it. Uses the linked bootable image when there is one.
    pub fn kernel_argument(&self, image: &str) -> Result<KernelArgument, Error> {
        with_store!(self.store(), s => {
            let id = match linked(s, image)? {
                Some(id) => id,
                None => bootable_filesystem(s, image)?.compute_image_id(s.erofs_version()),
            };
            let image_id = id.to_hex();
            let cmdline = match s.erofs_version().epoch() {
                FormatEpoch::Epoch1 => ComposefsCmdline::new_v1(id, false),
                FormatEpoch::Epoch2 => ComposefsCmdline::new_v2(id, false),
            };
            Ok(KernelArgument {
                argument: cmdline.to_cmdline_arg(),
                image_id,
            })
        })
    }

    /// A detached, read-only mount of `image`'s bootable variant, made
    /// and linked first if it is not yet; otherwise as
    /// [`Repository::mount`].
    pub fn mount_bootable(
        &self,
        image: &str,
        options: MountOptions,
        idmap: Option<&crate::idmap::IdMapping>,
    ) -> Result<std::os::fd::OwnedFd, Error> {
        let id = self.make_bootable(image)?;
        let userns = super::images::mapping_namespace(image, idmap)?;
        let hold = self.hold(format!("a bootable mount of {image} not yet attached"));
        let mount = with_store!(self.store(), s => {
            mount_image(s, &id, options, userns.as_ref()).map_err(|e| Error::MountFailed {
                image: image.to_owned(),
                reason: format!("{e:#}"),
            })
        })?;
        self.hold_until_attached(&mount, hold);
        Ok(mount)
    }
}

/// `image`'s filesystem, boot-transformed as upstream transforms it.
fn bootable_filesystem<H: FsVerityHashValue>(
    store: &Store<H>,
    image: &str,
) -> Result<FileSystem<H>, Error> {
    let mut fs = filesystem(store, image)?;
    let not_bootable = |reason: String| Error::NotBootable {
        image: image.to_owned(),
        reason,
    };
    check_policy_sizes(&fs).map_err(not_bootable)?;
    fs.transform_for_boot(store)
        .map_err(|e| not_bootable(format!("{e:#}")))?;
    Ok(fs)
}

/// The bootable image linked to `image`'s config, in the repository's
/// format, if there is one.
fn linked<H: FsVerityHashValue>(store: &Store<H>, image: &str) -> Result<Option<H>, Error> {
    let found = open(store, image)?;
    Ok(found.boot_image_ref(store.erofs_version()).cloned())
}

/// Commit the bootable EROFS images of `image` (every format the
/// repository writes) and rewrite its config and manifest streams with
/// them linked; the one in the repository's format.
fn build_and_link<H: FsVerityHashValue>(store: &Arc<Store<H>>, image: &str) -> Result<H, Error> {
    let fs = bootable_filesystem(store, image)?;
    let mut images = fs
        .commit_images(store, None)
        .map_err(|e| Error::storage("writing the bootable image", e))?;
    let v2 = images.remove(&FormatVersion::V2);
    let v1 = images.remove(&FormatVersion::V1);
    let ours = match store.erofs_version().epoch() {
        FormatEpoch::Epoch1 => v1.clone(),
        FormatEpoch::Epoch2 => v2.clone(),
    }
    .ok_or_else(|| {
        Error::internal(
            "making an image bootable",
            "no bootable EROFS image was made in the repository's format".to_owned(),
        )
    })?;
    let boot: Vec<(&str, H)> = [(BOOT_IMAGE_REF_KEY, v2), (BOOT_IMAGE_REF_KEY_V1, v1)]
        .into_iter()
        .filter_map(|(name, id)| id.map(|id| (name, id)))
        .collect();
    // Under the lock publishing takes, so that a pull of the same config
    // meanwhile neither loses these references nor has its own lost.
    let _linking = publish::linking();
    let found = open(store, image)?;
    relink(store, &found, &boot).map_err(|e| Error::storage("linking the bootable image", e))?;
    durable(store)?;
    Ok(ours)
}

/// Rewrite `found`'s config stream with `boot` added to what it links,
/// then its manifest stream to name the new config stream.
fn relink<H: FsVerityHashValue>(
    store: &Arc<Store<H>>,
    found: &OciImage<H>,
    boot: &[(&str, H)],
) -> anyhow::Result<()> {
    let config_digest: &OciDigest = found.config_digest();
    let opened = composefs_oci::open_config(store, config_digest, Some(found.config_verity()))?;
    let layers = publish::linked_layers(&opened)?;
    let mut kept = opened.boot_image_refs;
    for (name, id) in boot {
        kept.insert((*name).into(), id.clone());
    }
    let linked = Linked {
        v2: opened.image_ref,
        v1: opened.image_ref_v1,
        boot: publish::sorted(kept),
    };
    let config = found.read_config_json(store)?;
    let manifest = found.read_manifest_json(store)?;
    let config_stream = publish::write_config(store, &config, &layers, &linked)?;
    publish::write_manifest(store, &manifest, config_digest, &config_stream, &layers)?;
    Ok(())
}

/// Refuse a policy file composefs-boot would read that is larger than
/// [`MAX_POLICY_FILE`]: `/etc/selinux/config`, and every
/// `file_contexts*` of every policy under `/etc/selinux`.
fn check_policy_sizes<H: FsVerityHashValue>(fs: &FileSystem<H>) -> Result<(), String> {
    let Ok(Some(selinux)) = fs.root.get_directory_opt(OsStr::new("etc/selinux")) else {
        return Ok(());
    };
    let mut files = vec![(
        "etc/selinux/config".to_owned(),
        selinux,
        OsStr::new("config"),
    )];
    for (name, _) in selinux.entries() {
        let Ok(Some(policy)) =
            selinux.get_directory_opt(&Path::new(name).join("contexts/files").into_os_string())
        else {
            continue;
        };
        for (file, _) in policy.entries() {
            if file.as_encoded_bytes().starts_with(b"file_contexts") {
                let path = format!(
                    "etc/selinux/{}/contexts/files/{}",
                    name.display(),
                    file.display()
                );
                files.push((path, policy, file));
            }
        }
    }
    for (path, dir, name) in files {
        // Anything but a regular file is composefs-boot's to refuse.
        let Ok(Some(file)) = dir.get_file_opt(name, &fs.leaves) else {
            continue;
        };
        let size = file.file_size();
        if size > MAX_POLICY_FILE {
            return Err(format!(
                "its SELinux policy file /{path} is {size} bytes, more than the {MAX_POLICY_FILE} read"
            ));
        }
    }
    Ok(())
}
