//! Mounting an image: composefs's overlay of the image's EROFS over the
//! repository's `objects/`, with mount attributes that keep what an image
//! carries from acting on the host.
//!
//! An image's content is chosen by whoever published it, and pulling is
//! open to more peers than mounting. A setuid-root file in an image would
//! give root to anyone who can run it from the mount, and a device node
//! would open the host's device with the node's (image-chosen) mode. So
//! both the EROFS mount and the overlay above it are `nosuid` and `nodev`
//! unless the caller asks otherwise; who may ask is the daemon's access
//! table's business, not this module's.
//!
//! composefs-rs (0.9.4) builds its mounts without these attributes and
//! takes none from its caller, so the mount is assembled here from its
//! building blocks instead of through `Repository::mount`.
//!
//! Those building blocks are chosen when composefs is compiled: by default
//! they hand the overlay its layers as file descriptors, which only Linux
//! 6.13 and later accept (EBADF before). Kernels that updaters run today
//! (6.12 in Debian's backports and CentOS Stream 10) need the layers named
//! by path, so the overlay falls back to that at run time; see [`lower`].

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use anyhow::Context;
use composefs::{
    fsverity::FsVerityHashValue,
    mount::FsHandle,
    mountcompat::{make_erofs_mountable, overlayfs_set_lower_and_data_fds, prepare_mount},
    repository::Repository as Store,
};
use rustix::mount::{
    FsMountFlags, MountAttrFlags, fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount,
};

/// What a mount of an image honours beyond reading its files. The
/// default honours neither setuid bits nor device nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MountOptions {
    /// Honour the image's setuid and setgid bits and file capabilities
    /// when its files are run (no `nosuid`).
    pub allow_setuid: bool,
    /// Let the image's device nodes be opened (no `nodev`).
    pub allow_devices: bool,
}

impl MountOptions {
    /// The attributes of both mounts: always read-only, and `nosuid` and
    /// `nodev` unless allowed.
    pub(crate) fn attributes(self) -> MountAttrFlags {
        let mut attributes = MountAttrFlags::MOUNT_ATTR_RDONLY;
        if !self.allow_setuid {
            attributes |= MountAttrFlags::MOUNT_ATTR_NOSUID;
        }
        if !self.allow_devices {
            attributes |= MountAttrFlags::MOUNT_ATTR_NODEV;
        }
        attributes
    }
}

/// A detached mount of the EROFS image `id` (its name under `images/`)
/// with its files' data in `objects/`, as composefs lays it out: the
/// overlay's source is `composefs:<id>`, which [`crate::mounts`] reads
/// back for GC.
///
/// With `userns`, the EROFS mount is idmapped by that user namespace's
/// maps before the overlay takes it, as composefs-rs does: overlayfs
/// itself refuses `MOUNT_ATTR_IDMAP` (EINVAL) but honours an idmapped
/// lower layer, and the owners it shows are the lower layer's.
pub(crate) fn mount_image<H: FsVerityHashValue>(
    store: &Store<H>,
    id: &str,
    options: MountOptions,
    userns: Option<&OwnedFd>,
) -> anyhow::Result<OwnedFd> {
    let attributes = options.attributes();
    let (image, verity) = store.open_image(id)?;
    let objects = store
        .objects_dir()
        .context("opening the objects directory")?;
    let erofs = erofs_mount(image, attributes).context("mounting the EROFS image")?;
    if let Some(userns) = userns {
        // The kernel takes an ID map only on a mount never attached.
        composefs_ioctls::mount::mount_setattr_idmap(&erofs, userns)
            .context("ID-mapping the EROFS mount")?;
    }
    // The overlay keeps a private copy of this mount, attributes and all,
    // as its lower layer; nothing else can reach it.
    let lower = prepare_mount(erofs)?;
    let overlay = overlay(id, verity)?;
    match overlayfs_set_lower_and_data_fds(overlay.as_fd(), &lower, &[objects.as_fd()]) {
        Ok(()) => create_overlay(overlay, attributes),
        Err(rustix::io::Errno::BADF | rustix::io::Errno::INVAL) => {
            let lower = lower::Parked::park(lower).context("parking the EROFS mount")?;
            // A context whose layer option failed is not reused.
            let overlay = self::overlay(id, verity)?;
            let (lower_path, objects_path) = (lower.path(), lower::fd_path(objects.as_fd()));
            fsconfig_set_string(overlay.as_fd(), "lowerdir+", lower_path)?;
            fsconfig_set_string(overlay.as_fd(), "datadir+", objects_path)?;
            create_overlay(overlay, attributes)
        }
        Err(e) => Err(e).context("giving the overlay its layers"),
    }
}

/// A new overlay context for image `id`, before its layers are set.
fn overlay(id: &str, verity: bool) -> anyhow::Result<FsHandle> {
    let overlay = FsHandle::open("overlay")?;
    let fs = overlay.as_fd();
    fsconfig_set_string(fs, "source", format!("composefs:{id}"))?;
    fsconfig_set_string(fs, "metacopy", "on")?;
    fsconfig_set_string(fs, "redirect_dir", "on")?;
    if verity {
        fsconfig_set_string(fs, "verity", "require")?;
    }
    Ok(overlay)
}

fn create_overlay(overlay: FsHandle, attributes: MountAttrFlags) -> anyhow::Result<OwnedFd> {
    let fs = overlay.as_fd();
    fsconfig_create(fs).context("creating the overlay")?;
    Ok(fsmount(fs, FsMountFlags::FSMOUNT_CLOEXEC, attributes)?)
}

/// A detached read-only mount of the EROFS image file `image`.
fn erofs_mount(image: OwnedFd, attributes: MountAttrFlags) -> anyhow::Result<OwnedFd> {
    let image = make_erofs_mountable(image)?;
    let erofs = FsHandle::open("erofs")?;
    let fs = erofs.as_fd();
    fsconfig_set_flag(fs, "ro")?;
    fsconfig_set_string(fs, "source", format!("/proc/self/fd/{}", image.as_raw_fd()))?;
    fsconfig_create(fs)?;
    Ok(fsmount(fs, FsMountFlags::FSMOUNT_CLOEXEC, attributes)?)
}

/// Naming a detached mount by path, for kernels before 6.13.
mod lower {
    use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

    use rustix::mount::{MoveMountFlags, UnmountFlags, move_mount, unmount};

    /// A detached mount attached, for as long as this lives, on a fresh
    /// directory that only root can enter. Overlayfs before 6.13 takes
    /// its layers only as paths, and a detached mount has none.
    pub(super) struct Parked {
        dir: tempfile::TempDir,
    }

    impl Parked {
        /// Attach `mount`. The overlay that is created while this lives
        /// keeps its own reference to the mount; dropping this detaches
        /// the directory's.
        pub(super) fn park(mount: impl AsFd) -> std::io::Result<Self> {
            let dir = tempfile::Builder::new().prefix(".cfsd-lower-").tempdir()?;
            move_mount(
                mount.as_fd(),
                "",
                rustix::fs::CWD,
                dir.path(),
                MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
            )?;
            Ok(Parked { dir })
        }

        /// The path the overlay's `lowerdir+` option takes.
        pub(super) fn path(&self) -> String {
            self.dir.path().display().to_string()
        }
    }

    impl Drop for Parked {
        fn drop(&mut self) {
            // Lazily: the overlay made from it holds the mount busy.
            let _ = unmount(self.dir.path(), UnmountFlags::DETACH);
        }
    }

    /// A path that names the directory `fd` is open on, for layer
    /// options that take paths.
    pub(super) fn fd_path(fd: BorrowedFd<'_>) -> String {
        format!("/proc/self/fd/{}", fd.as_raw_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_are_read_only_nosuid_and_nodev_unless_allowed() {
        let (ro, nosuid, nodev) = (
            MountAttrFlags::MOUNT_ATTR_RDONLY,
            MountAttrFlags::MOUNT_ATTR_NOSUID,
            MountAttrFlags::MOUNT_ATTR_NODEV,
        );
        let with = |allow_setuid, allow_devices| {
            MountOptions {
                allow_setuid,
                allow_devices,
            }
            .attributes()
        };
        assert_eq!(MountOptions::default().attributes(), ro | nosuid | nodev);
        assert_eq!(with(true, false), ro | nodev);
        assert_eq!(with(false, true), ro | nosuid);
        assert_eq!(with(true, true), ro);
    }
}
