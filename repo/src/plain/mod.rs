//! Plain composefs images: an EROFS image made from a directory tree,
//! as upstream `cfsctl create-image` makes it, named or not, with no OCI
//! image around it.
//!
//! The tree comes as a directory fd from a peer and is read only through
//! it, with the peer's credentials (see [`credentials`] and [`walk`]).
//! The image is upstream's to the byte: the same tree (composefs's
//! `generic_tree`), the same OCI transformation (`/usr`'s metadata on the
//! root, an empty `/run`, xattrs kept by composefs's allowlist), and
//! composefs's own EROFS writer. Its id is therefore upstream's
//! `cfsctl compute-id` of the same tree. A name is upstream's too: a link
//! `images/refs/NAME`, which upstream's GC and ours keep as a root.

pub mod credentials;
pub mod walk;

use std::{
    collections::HashMap,
    io::Read,
    os::fd::OwnedFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
};

use composefs::{
    erofs::writer::{ValidatedFileSystem, mkfs_erofs_versioned},
    fsverity::{FsVerityHashValue, FsVerityHasher, compute_verity},
    generic_tree::{OciTransformOptions, XattrFiltering},
    repository::Repository as Store,
    tree::{FileSystem, RegularFile},
};

pub use credentials::Credentials;
pub use walk::Limits;
use walk::{InodeKey, LargeFile, Pending, Walker};

use crate::{
    Error, Repository,
    content::{Contents, Sha256Digest},
    oci::MountOptions,
    repository::with_store,
};

/// How a tree is read and made an image.
#[derive(Debug, Clone, Default)]
pub struct TreeOptions {
    /// Keep the root's own metadata instead of copying `/usr`'s onto it
    /// (upstream's `--no-propagate-usr-to-root`). That also skips the
    /// rest of the OCI transformation: `/run` is kept and so is every
    /// xattr, as upstream does.
    pub no_propagate_usr: bool,
    /// Keep `user.*` xattrs beside the allowlisted ones (upstream's
    /// `--xattrs keep-user-xattrs`).
    pub keep_user_xattrs: bool,
    /// Whose rights the tree is read with; `None` for the process's own.
    pub reader: Option<Credentials>,
    /// The process that handed the tree over, whose mount table may name
    /// the tree's filesystem.
    pub peer_pid: Option<u32>,
    /// How large the tree may be.
    pub limits: Limits,
}

/// A named plain image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedImage {
    /// Its name under `images/refs/`.
    pub name: String,
    /// The image id (fs-verity digest of its EROFS, hex).
    pub image_id: String,
}

/// The longest image name accepted.
const MAX_NAME: usize = 200;

impl Repository {
    /// Store the tree under `tree` (a directory fd open for reading) and
    /// an image of it, named `name` if given; its id. Nothing is named
    /// unless the whole tree was read. Blocks on disk work; stops soon
    /// after `cancelled` is set.
    pub fn create_image(
        &self,
        tree: OwnedFd,
        name: Option<&str>,
        options: &TreeOptions,
        cancelled: &AtomicBool,
    ) -> Result<String, Error> {
        if let Some(name) = name {
            check_name(name)?;
        }
        // Objects land before the image that refers to them.
        let _hold = self.hold("creating an image from a directory tree");
        with_store!(self.store(), s => {
            let (fs, contents) = read_tree(Some(s), tree, options, cancelled)?;
            let recording = |e| Error::storage("recording the tree's files in the content index", e);
            // Written before the sync, which makes it durable too, and put
            // in place only once the image is written: the index may name
            // only what a present image or stream refers to.
            let index = crate::content::write(s, contents, Vec::new()).map_err(recording)?;
            let id = fs
                .commit_image(s, name)
                .map_err(|e| Error::storage("writing the image", e))?;
            s.sync().map_err(|e| Error::storage("syncing the repository", e))?;
            index.place(&id).map_err(recording)?;
            Ok(id.to_hex())
        })
    }

    /// The id [`Repository::create_image`] would give the tree, with
    /// nothing stored.
    pub fn compute_tree_id(
        &self,
        tree: OwnedFd,
        options: &TreeOptions,
        cancelled: &AtomicBool,
    ) -> Result<String, Error> {
        with_store!(self.store(), s => tree_id(s, tree, options, cancelled))
    }

    /// Every named image, by name, as upstream `cfsctl images` lists them.
    pub fn named_images(&self) -> Result<Vec<NamedImage>, Error> {
        let refs = with_store!(self.store(), s => s.list_image_refs(""))
            .map_err(|e| Error::storage("listing the named images", e))?;
        let mut images: Vec<NamedImage> = refs
            .into_iter()
            .map(|(name, target)| NamedImage {
                name,
                image_id: target.rsplit('/').next().unwrap_or(&target).to_owned(),
            })
            .collect();
        images.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(images)
    }

    /// The objects image `image` (an image id or a name) refers to, as
    /// `ALGORITHM:HEX` ids sorted, as upstream `cfsctl image-objects`
    /// prints them.
    pub fn image_objects(&self, image: &str) -> Result<Vec<String>, Error> {
        check_image_argument(image)?;
        with_store!(self.store(), s => {
            let id = image_id(s, image)?;
            let objects = s.objects_for_image(&id).map_err(|e| not_found(image, e))?;
            let mut ids: Vec<String> = objects.iter().map(|id| id.to_id()).collect();
            ids.sort();
            Ok(ids)
        })
    }

    /// A detached read-only mount of plain image `image` (an id or a
    /// name), `nosuid` and `nodev`, held from GC as
    /// [`Repository::mount`] holds an OCI image's.
    pub fn mount_plain_image(&self, image: &str) -> Result<OwnedFd, Error> {
        check_image_argument(image)?;
        let hold = self.hold(format!("a mount of {image} not yet attached"));
        let mount = with_store!(self.store(), s => {
            // Resolved to its id: the overlay's source names the image
            // by id, which is what GC reads back from the mount table.
            let id = image_id(s, image)?;
            crate::oci::mount_image(s, &id, MountOptions::default(), None).map_err(|e| {
                Error::MountFailed { image: image.to_owned(), reason: format!("{e:#}") }
            })
        })?;
        self.hold_until_attached(&mount, hold);
        Ok(mount)
    }
}

/// The id of the image of `tree` as `store` would write it.
fn tree_id<H: FsVerityHashValue>(
    store: &Store<H>,
    tree: OwnedFd,
    options: &TreeOptions,
    cancelled: &AtomicBool,
) -> Result<String, Error> {
    let (fs, _) = read_tree(None::<&Store<H>>, tree, options, cancelled)?;
    let fs = ValidatedFileSystem::new(fs).map_err(|e| Error::InvalidTree {
        path: ".".into(),
        reason: format!("{e:#}"),
    })?;
    let image = mkfs_erofs_versioned(&fs, store.format_config().default);
    Ok(compute_verity::<H>(&image).to_hex())
}

/// The id of image `image`: itself if it is one, else what its name
/// links to.
fn image_id<H: FsVerityHashValue>(store: &Store<H>, image: &str) -> Result<String, Error> {
    if H::from_hex(image).is_ok() {
        store.open_image(image).map_err(|e| not_found(image, e))?;
        return Ok(image.to_owned());
    }
    let refs = store
        .list_image_refs("")
        .map_err(|e| Error::storage("listing the named images", e))?;
    refs.into_iter()
        .find(|(name, _)| name == image)
        .map(|(_, target)| target.rsplit('/').next().unwrap_or(&target).to_owned())
        .ok_or_else(|| Error::ImageNotFound {
            image: image.to_owned(),
        })
}

/// A missing image is [`Error::ImageNotFound`]; anything else is storage.
fn not_found(image: &str, e: anyhow::Error) -> Error {
    if e.chain().any(|c| c.is::<composefs::ImageNotFound>()) {
        return Error::ImageNotFound {
            image: image.to_owned(),
        };
    }
    Error::storage("reading the image", e)
}

/// An image argument is an id or a name, never a path out of `images/`.
fn check_image_argument(image: &str) -> Result<(), Error> {
    check_name(image).map_err(|_| Error::ImageNotFound {
        image: image.to_owned(),
    })
}

/// Refuse names that are not one relative path inside `images/refs/`.
pub(crate) fn check_name(name: &str) -> Result<(), Error> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_NAME {
        "it is longer than 200 bytes"
    } else if name.starts_with('/') || name.ends_with('/') {
        "it starts or ends with /"
    } else if name
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        "it has an empty, . or .. component"
    } else if name.chars().any(char::is_control) {
        "it contains control characters"
    } else {
        return Ok(());
    };
    Err(Error::InvalidImageName {
        name: name.to_owned(),
        reason: reason.to_owned(),
    })
}

/// Read the tree under `root` as upstream reads one for `create-image`
/// (or `compute-id`, without `store`): the walk on a thread with the
/// reader's credentials, large files stored (or hashed) here as the walk
/// finds them. Also the content digest of each stored file, for the
/// content index.
fn read_tree<H: FsVerityHashValue>(
    store: Option<&Store<H>>,
    root: OwnedFd,
    options: &TreeOptions,
    cancelled: &AtomicBool,
) -> Result<(FileSystem<H>, Contents<H>), Error> {
    crate::oci::check_source_filesystem(&root, options.peer_pid).map_err(|e| match e {
        Error::InvalidSource { reason } => Error::InvalidTree {
            path: ".".into(),
            reason,
        },
        e => e,
    })?;
    // A few fds in flight: the walk waits for the objects to be written.
    let (sender, large) = mpsc::sync_channel::<LargeFile>(2);
    let (reader, limits) = (options.reader.clone(), options.limits);
    let pending = std::thread::scope(|scope| {
        let walk = std::thread::Builder::new()
            .name("cfsd-tree-reader".into())
            .spawn_scoped(scope, move || {
                if let Some(reader) = reader {
                    reader.assume().map_err(|e| Error::AccessDenied {
                        operation: "reading the tree with the caller's credentials",
                        reason: std::io::Error::from(e).to_string(),
                    })?;
                }
                Walker::new(sender, limits, cancelled).walk(&root)
            })
            .map_err(|e| Error::storage("starting the tree reader", e))?;
        let stored = store_large_files(store, large, cancelled);
        let walked = walk
            .join()
            .unwrap_or_else(|_| Err(Error::internal("reading the tree", "it panicked".into())));
        // A failed store stops the walk, which then fails for that.
        let ids = stored?;
        Ok::<_, Error>((walked?, ids))
    })?;
    let (fs, ids) = pending;
    let contents = ids
        .values()
        .filter_map(|(id, d)| Some(((*d)?, id.clone())))
        .collect();
    let mut fs = fs.try_map_regular(|p| match p {
        Pending::Inline(data) => Ok(RegularFile::Inline(data.clone())),
        Pending::External { key, size } => ids
            .get(key)
            .map(|(id, _)| RegularFile::External(id.clone(), *size))
            .ok_or_else(|| Error::internal("reading the tree", "a file was not stored".into())),
    })?;
    if !options.no_propagate_usr {
        let xattrs = match options.keep_user_xattrs {
            true => XattrFiltering::KeepUserXattrs,
            false => XattrFiltering::AllowlistOnly,
        };
        fs.transform_for_oci(&OciTransformOptions { xattrs })
            .map_err(|e| Error::InvalidTree {
                path: "usr".into(),
                reason: format!("{e}; the root's metadata is copied from /usr"),
            })?;
    }
    Ok((fs, contents))
}

/// Store (or only hash) each large file the walk sends, until it ends.
/// Returning early drops the receiver, which stops the walk. A stored
/// file's content digest is read from its object, which unlike the
/// peer's file cannot change after it was measured.
fn store_large_files<H: FsVerityHashValue>(
    store: Option<&Store<H>>,
    large: mpsc::Receiver<LargeFile>,
    cancelled: &AtomicBool,
) -> Result<HashMap<InodeKey, (H, Option<Sha256Digest>)>, Error> {
    let mut ids = HashMap::new();
    for file in large {
        if cancelled.load(Ordering::Relaxed) {
            return Err(self::cancelled());
        }
        let stored = match store {
            Some(s) => {
                let reader = UntilCancelled {
                    file: std::fs::File::from(file.fd),
                    cancelled,
                };
                let id =
                    s.ensure_object_from_reader(reader, file.size)
                        .map_err(|e| match cancelled.load(Ordering::Relaxed) {
                            true => self::cancelled(),
                            false => Error::storage("storing a file of the tree", e),
                        })?;
                let digest = crate::content::hash_object(s, &id)
                    .map_err(|e| Error::storage("hashing a file of the tree", e))?;
                (id, Some(digest))
            }
            None => (hash(file.fd, file.size, cancelled)?, None),
        };
        ids.insert(file.key, stored);
    }
    Ok(ids)
}

/// A file of the tree whose reads fail once `cancelled` is set: storing
/// a large file then stops at its next read, not at its end. (It also
/// keeps the store from copying the file with one `copy_file_range`,
/// which nothing could stop midway.)
struct UntilCancelled<'a> {
    file: std::fs::File,
    cancelled: &'a AtomicBool,
}

impl Read for UntilCancelled<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("the call was cancelled"));
        }
        self.file.read(buf)
    }
}

/// The error of work its caller no longer waits for.
pub(crate) fn cancelled() -> Error {
    Error::internal("reading the tree", "the call was cancelled".into())
}

/// The fs-verity digest of `size` bytes read from `fd`, unless
/// `cancelled` is set meanwhile.
fn hash<H: FsVerityHashValue>(fd: OwnedFd, size: u64, cancelled: &AtomicBool) -> Result<H, Error> {
    let mut file = std::fs::File::from(fd);
    let mut hasher = FsVerityHasher::<H>::new();
    let mut block = vec![0u8; FsVerityHasher::<H>::BLOCK_SIZE];
    let mut total = 0u64;
    loop {
        let mut filled = 0;
        while filled < block.len() {
            match file.read(&mut block[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::storage("reading a file of the tree", e)),
            }
        }
        if filled == 0 {
            break;
        }
        if cancelled.load(Ordering::Relaxed) {
            return Err(self::cancelled());
        }
        hasher.add_block(&block[..filled]);
        total += filled as u64;
        if filled < block.len() {
            break;
        }
    }
    if total != size {
        return Err(Error::InvalidTree {
            path: ".".into(),
            reason: format!("a file of {size} bytes read as {total}: it changed while read"),
        });
    }
    Ok(hasher.digest())
}

#[cfg(test)]
mod tests;
