//! Merging an image's layers into the filesystem its EROFS image, its id
//! and its dump are made from.
//!
//! composefs-oci 0.9.4's `create_filesystem` gives `/` the metadata of
//! `/usr`, and so refuses every image without one ("Directory entry
//! \"usr\" does not exist"): `FROM scratch` images, a static binary
//! alone, distroless bases. The layers are merged here the same way, with
//! composefs-oci's own entry processing; an image that has a `/usr` then
//! gets upstream's own transformation, so its id stays upstream's. One
//! without takes [`ROOT_WITHOUT_USR`] for `/` (and its mtime for an
//! emptied `/run`), where upstream has no answer at all.

use std::{collections::BTreeMap, ffi::OsStr};

use anyhow::Context;
use composefs::{
    fsverity::FsVerityHashValue,
    generic_tree::{OciTransformOptions, is_allowed_container_xattr},
    repository::Repository as Store,
    tree::{FileSystem, Stat},
};
use composefs_oci::{LAYER_CONTENT_TYPE, OciDigest};

/// The metadata `/` takes in an image without `/usr`: a directory
/// `0755`, owned by root, mtime 0, no extended attributes.
///
/// Fixed rather than taken from the layers' `./` entry, for the reason
/// upstream gives for copying `/usr`: a layer's root entry is optional,
/// tools differ in whether and how they write it, and runtimes ignore
/// it, so the same tree would get different ids. Upstream ignores `./`
/// too whenever it has a `/usr` to copy.
pub(crate) fn root_without_usr() -> Stat {
    Stat {
        st_mode: ROOT_WITHOUT_USR,
        st_uid: 0,
        st_gid: 0,
        st_mtim_sec: 0,
        st_mtim_nsec: 0,
        xattrs: BTreeMap::new(),
    }
}

/// The mode of `/` in an image without `/usr`.
pub(crate) const ROOT_WITHOUT_USR: u32 = 0o40755;

/// The filesystem of the image whose config is `config_digest` (the
/// bytes `config`), stored as `config_verity`, merged from its layer
/// streams in config order, with the owners shifted by the ID maps the
/// config records (see [`crate::oci::variant`]).
pub(crate) fn merge_layers<H: FsVerityHashValue>(
    store: &Store<H>,
    config_digest: &OciDigest,
    config_verity: &H,
    config: &[u8],
) -> anyhow::Result<FileSystem<H>> {
    let opened = composefs_oci::open_config(store, config_digest, Some(config_verity))?;
    let mut filesystem = FileSystem::new(Stat::uninitialized());
    for diff_id in opened.config.rootfs().diff_ids() {
        let layer = opened
            .layer_refs
            .get(diff_id.as_str())
            .with_context(|| format!("the config stream names no layer {diff_id}"))?;
        let mut stream = store.open_stream("", Some(layer), Some(LAYER_CONTENT_TYPE))?;
        while let Some(entry) = composefs_oci::tar::get_entry(&mut stream)? {
            composefs_oci::image::process_entry(&mut filesystem, entry)?;
        }
    }
    transform(&mut filesystem)?;
    for mapping in super::variant::recorded_maps(config)? {
        super::variant::shift(&mut filesystem, &mapping, config_digest.as_ref())?;
    }
    Ok(filesystem)
}

/// composefs-oci's transformation for images with `/usr`; the same steps
/// with [`root_without_usr`] for the others.
fn transform<H: FsVerityHashValue>(filesystem: &mut FileSystem<H>) -> anyhow::Result<()> {
    let has_usr = filesystem
        .root
        .get_directory_opt(OsStr::new("usr"))
        .is_ok_and(|usr| usr.is_some());
    if has_usr {
        filesystem.transform_for_oci(&OciTransformOptions::default())?;
        return Ok(());
    }
    filesystem.set_root_stat(root_without_usr());
    if filesystem
        .root
        .get_directory_opt(OsStr::new("run"))?
        .is_some()
    {
        let run = filesystem.root.get_directory_mut(OsStr::new("run"))?;
        // Upstream gives it /usr's mtime, the one `/` takes.
        let root = root_without_usr();
        run.stat.st_mtim_sec = root.st_mtim_sec;
        run.stat.st_mtim_nsec = root.st_mtim_nsec;
        run.clear();
    }
    filesystem.filter_xattrs(is_allowed_container_xattr);
    filesystem.compact();
    Ok(())
}
