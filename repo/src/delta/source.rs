//! The files of the image a delta was made against, read from its EROFS
//! image in the repository: small files inline, the rest as objects.

use std::{ffi::OsStr, fs::File, os::unix::fs::FileExt, sync::Arc};

use composefs::{
    erofs::reader::erofs_to_filesystem,
    fsverity::{FsVerityHashValue, ensure_verity_equal},
    repository::Repository as Store,
    tree::{FileSystem, Inode, LeafContent, RegularFile},
};

use super::tardiff::{SourceFile, SourceFiles, TarDiffError};
use crate::Error;

/// An image of the repository, as a tree of files to take delta sources
/// from.
pub(crate) struct SourceImage<H: FsVerityHashValue> {
    fs: FileSystem<H>,
    repo: Arc<Store<H>>,
}

impl<H: FsVerityHashValue> SourceImage<H> {
    /// Load the EROFS image `image` of `repo`.
    pub(crate) fn load(repo: Arc<Store<H>>, image: &H) -> Result<Self, Error> {
        let bytes = repo
            .read_object(image)
            .map_err(|e| Error::storage("reading the delta's source image", e))?;
        let fs = erofs_to_filesystem::<H>(&bytes)
            .map_err(|e| Error::storage("reading the delta's source image", e))?;
        Ok(SourceImage { fs, repo })
    }

    /// The regular file at the normalised `path`, never following a
    /// symlink: the tree holds symlinks as leaves, so a walk that only
    /// descends into directories cannot.
    fn find(&self, path: &str) -> Result<&RegularFile<H>, TarDiffError> {
        let (parents, name) = path.rsplit_once('/').unwrap_or(("", path));
        let mut dir = &self.fs.root;
        let mut walked = 0;
        for part in parents.split('/').filter(|p| !p.is_empty()) {
            walked += part.len() + 1;
            dir = match dir.lookup(OsStr::new(part)) {
                Some(Inode::Directory(d)) => d,
                Some(Inode::Leaf(id, _)) => {
                    return Err(match self.fs.leaf(*id).content {
                        LeafContent::Symlink(_) => TarDiffError::SourceThroughSymlink {
                            path: path.to_owned(),
                            link: path[..walked - 1].to_owned(),
                        },
                        _ => missing(path),
                    });
                }
                None => return Err(missing(path)),
            };
        }
        match dir.lookup(OsStr::new(name)) {
            Some(Inode::Leaf(id, _)) => match &self.fs.leaf(*id).content {
                LeafContent::Regular(file) => Ok(file),
                _ => Err(not_regular(path)),
            },
            Some(Inode::Directory(_)) => Err(not_regular(path)),
            None => Err(missing(path)),
        }
    }

    /// Call `visit` with the path (relative to the root) and content of
    /// every regular file, each hardlink once per name.
    pub(crate) fn for_each_file(&self, mut visit: impl FnMut(&str, &RegularFile<H>)) {
        let mut pending = vec![(String::new(), &self.fs.root)];
        while let Some((prefix, dir)) = pending.pop() {
            for (name, inode) in dir.entries() {
                // OPEN paths are UTF-8: other names cannot be delta sources.
                let Some(name) = name.to_str() else { continue };
                let path = format!("{prefix}{name}");
                match inode {
                    Inode::Directory(d) => pending.push((format!("{path}/"), d)),
                    Inode::Leaf(id, _) => {
                        if let LeafContent::Regular(file) = &self.fs.leaf(*id).content {
                            visit(&path, file);
                        }
                    }
                }
            }
        }
    }
}

impl<H: FsVerityHashValue> SourceFiles<H> for SourceImage<H> {
    fn open(&self, path: &str) -> Result<Box<dyn SourceFile<H>>, TarDiffError> {
        let (id, size, verity) = match self.find(path)? {
            RegularFile::Inline(data) => return Ok(Box::new(Inline(data.clone()))),
            RegularFile::External(id, size) => (id, *size, true),
            RegularFile::ExternalNoVerity(id, size) => (id, *size, false),
            // Composefs writes no sparse files for OCI content; one here
            // has no data to read.
            RegularFile::Sparse(_) => return Err(not_regular(path)),
        };
        let read_error = |error| TarDiffError::SourceRead {
            path: path.to_owned(),
            error,
        };
        let fd = self
            .repo
            .open_object(id)
            // Boxed, its causes (and their errno) stay reachable.
            .map_err(|e| read_error(std::io::Error::other(e.into_boxed_dyn_error())))?;
        let file = File::from(fd);
        let whole = verity && self.is_whole(&file, id, size).map_err(read_error)?;
        Ok(Box::new(Object {
            file,
            size,
            object: whole.then(|| id.clone()),
        }))
    }
}

impl<H: FsVerityHashValue> SourceImage<H> {
    /// Whether the object file `file`, which the image names `id` and
    /// gives `size` bytes, is exactly that object: what a split that
    /// hashed its bytes would have found present. Where the repository
    /// enforces fs-verity the kernel measures it to `id` (and then checks
    /// every byte read against that measure); elsewhere, as for any
    /// object found present, its name is trusted and its size checked.
    fn is_whole(&self, file: &File, id: &H, size: u64) -> std::io::Result<bool> {
        if file.metadata()?.len() != size {
            return Ok(false);
        }
        if self.repo.is_insecure() {
            return Ok(true);
        }
        Ok(ensure_verity_equal(file, id).is_ok())
    }
}

fn missing(path: &str) -> TarDiffError {
    TarDiffError::SourceMissing {
        path: path.to_owned(),
    }
}

fn not_regular(path: &str) -> TarDiffError {
    TarDiffError::SourceNotRegular {
        path: path.to_owned(),
    }
}

/// A small file whose data the EROFS image holds.
struct Inline(Box<[u8]>);

impl<H> SourceFile<H> for Inline {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let start = usize::try_from(offset).map_or(self.0.len(), |o| o.min(self.0.len()));
        let n = buf.len().min(self.0.len() - start);
        buf[..n].copy_from_slice(&self.0[start..start + n]);
        Ok(n)
    }
}

/// A file stored as an object of the repository. Its size is the one the
/// image records; an object that is shorter shows as a short read.
struct Object<H> {
    file: File,
    size: u64,
    /// The object, when the file is certainly all of it.
    object: Option<H>,
}

impl<H: FsVerityHashValue> SourceFile<H> for Object<H> {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.file.read_at(buf, offset)
    }

    fn object(&self) -> Option<&H> {
        self.object.as_ref()
    }
}
