//! Walking a directory tree that a peer handed over as a directory fd.
//!
//! The daemon runs as root and the tree is the peer's choice, so every
//! step is taken beneath the fd and never through a symlink: each name
//! is opened with `openat2` (`RESOLVE_BENEATH`, `RESOLVE_NO_SYMLINKS`,
//! `RESOLVE_NO_MAGICLINKS`, `RESOLVE_NO_XDEV`) as an `O_PATH` fd first,
//! which opens nothing a FIFO or device could act on. Only once `fstat`
//! says it is a directory or a regular file is that very inode reopened
//! for reading through `/proc/self/fd` (regular files with `O_NONBLOCK`
//! and `O_NOCTTY`), and checked to be the inode that was stat'ed. FIFOs,
//! devices, sockets and symlinks are described, never opened.
//!
//! The walk stays on the tree's own mount: a FUSE mount inside it would
//! have its server answer (or never answer) the daemon's reads, and any
//! other mount is a filesystem the tree's owner did not hand over.
//!
//! Memory is bounded by [`Limits`]: depth, entries and the bytes of
//! names, symlink targets, xattrs and inline contents kept for the image.
//! Files above composefs's inline limit are not read here: their fds go
//! to the caller over a bounded channel, to be stored or hashed.

use std::{
    collections::{BTreeMap, HashMap},
    ffi::OsStr,
    io,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::SyncSender,
    },
};

use composefs::generic_tree::{self, Directory, FileSystem, Inode, Leaf, LeafContent, LeafId};
use rustix::{
    fs::{Dir, FileType, Mode, OFlags, ResolveFlags, Stat},
    io::Errno,
};

use crate::Error;

/// How large a tree may be read. Past any of them the walk fails with
/// [`Error::InvalidTree`] rather than hold more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Directories nested below the root.
    pub depth: usize,
    /// Entries in all directories together.
    pub entries: u64,
    /// Bytes of names, symlink targets, xattrs and inline file contents.
    pub metadata_bytes: u64,
}

impl Default for Limits {
    /// Well beyond an operating system's tree (Debian's has some 10,000
    /// entries of which the deepest is 20 levels down, and under 100 MB
    /// of metadata), and far below what would exhaust a machine.
    fn default() -> Self {
        Limits {
            depth: 256,
            entries: 4 << 20,
            metadata_bytes: 1 << 30,
        }
    }
}

/// composefs keeps a file's content in the image itself up to this size.
const INLINE_MAX: u64 = composefs::INLINE_CONTENT_MAX_V0 as u64;

/// The largest xattr name list and value the kernel has (`XATTR_LIST_MAX`,
/// `XATTR_SIZE_MAX`).
const XATTR_MAX: usize = 64 << 10;

/// A file's identity, which its hardlinks share.
pub(crate) type InodeKey = (u64, u64);

/// A regular file as the walk leaves it.
#[derive(Debug)]
pub(crate) enum Pending {
    /// Content small enough to live in the image.
    Inline(Box<[u8]>),
    /// Content that becomes an object, sent to the caller as a
    /// [`LargeFile`] under `key`.
    External {
        /// The file's identity.
        key: InodeKey,
        /// Its size when it was stat'ed.
        size: u64,
    },
}

/// A file whose content becomes an object: its fd, opened for reading.
#[derive(Debug)]
pub(crate) struct LargeFile {
    pub(crate) key: InodeKey,
    pub(crate) fd: OwnedFd,
    pub(crate) size: u64,
}

/// One walk of one tree.
pub(crate) struct Walker<'a> {
    inodes: HashMap<InodeKey, LeafId>,
    leaves: Vec<Leaf<Pending>>,
    large: SyncSender<LargeFile>,
    limits: Limits,
    entries: u64,
    metadata: u64,
    cancelled: &'a AtomicBool,
    names: Vec<u8>,
    value: Vec<u8>,
}

/// A refusal at `path` in the tree.
fn refused(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::InvalidTree {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// What an errno says about the tree, for the caller.
fn explain(e: Errno) -> String {
    match e {
        Errno::XDEV => "it is a mount point; the tree is read within its own mount".into(),
        Errno::ACCESS | Errno::PERM => "the caller may not read it".into(),
        Errno::NOENT => "it vanished while the tree was read".into(),
        other => io::Error::from(other).to_string(),
    }
}

impl<'a> Walker<'a> {
    /// A walk that sends large files to `large` and stops once
    /// `cancelled` is set.
    pub(crate) fn new(
        large: SyncSender<LargeFile>,
        limits: Limits,
        cancelled: &'a AtomicBool,
    ) -> Self {
        Walker {
            inodes: HashMap::new(),
            leaves: Vec::new(),
            large,
            limits,
            entries: 0,
            metadata: 0,
            cancelled,
            names: vec![0; XATTR_MAX],
            value: vec![0; XATTR_MAX],
        }
    }

    /// Read the whole tree under `root`, a directory open for reading.
    pub(crate) fn walk(mut self, root: &OwnedFd) -> Result<FileSystem<Pending>, Error> {
        let root = self.directory(root, Path::new("."), 0)?;
        Ok(FileSystem {
            root,
            leaves: std::mem::take(&mut self.leaves),
        })
    }

    fn directory(
        &mut self,
        fd: &OwnedFd,
        path: &Path,
        depth: usize,
    ) -> Result<Directory<Pending>, Error> {
        let st = rustix::fs::fstat(fd).map_err(|e| refused(path, explain(e)))?;
        let stat = self.stat(fd.as_fd(), &st, false, path)?;
        let mut directory = Directory::new(stat);
        let dir = Dir::read_from(fd).map_err(|e| refused(path, explain(e)))?;
        for item in dir {
            let entry = item.map_err(|e| refused(path, explain(e)))?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            if self.cancelled.load(Ordering::Relaxed) {
                return Err(Error::internal(
                    "reading the tree",
                    "the call was cancelled".into(),
                ));
            }
            let child = path.join(name);
            self.spend(1, name.len(), &child)?;
            let inode = self.entry(fd, name, &child, depth)?;
            directory.insert(name, inode);
        }
        Ok(directory)
    }

    /// Count one more entry of `bytes` bytes against the limits.
    fn spend(&mut self, entries: u64, bytes: usize, path: &Path) -> Result<(), Error> {
        self.entries += entries;
        self.metadata += bytes as u64;
        if self.entries > self.limits.entries {
            return Err(refused(
                path,
                format!("the tree has more than {} entries", self.limits.entries),
            ));
        }
        if self.metadata > self.limits.metadata_bytes {
            return Err(refused(
                path,
                format!(
                    "the tree's names, xattrs, symlinks and small files exceed {} bytes",
                    self.limits.metadata_bytes
                ),
            ));
        }
        Ok(())
    }

    fn entry(
        &mut self,
        dir: &OwnedFd,
        name: &OsStr,
        path: &Path,
        depth: usize,
    ) -> Result<Inode<Pending>, Error> {
        let handle = open_beneath(dir, name).map_err(|e| refused(path, explain(e)))?;
        let st = rustix::fs::fstat(&handle).map_err(|e| refused(path, explain(e)))?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                if depth >= self.limits.depth {
                    return Err(refused(
                        path,
                        format!("directories nest deeper than {}", self.limits.depth),
                    ));
                }
                let fd = reopen(&handle, &st, OFlags::DIRECTORY).map_err(|e| refused(path, e))?;
                let dir = self.directory(&fd, path, depth + 1)?;
                Ok(Inode::Directory(Box::new(dir)))
            }
            _ => self.leaf(handle, &st, path).map(Inode::leaf),
        }
    }

    /// A non-directory, once per inode: its hardlinks share the leaf.
    fn leaf(&mut self, handle: OwnedFd, st: &Stat, path: &Path) -> Result<LeafId, Error> {
        let key = (st.st_dev, st.st_ino);
        if let Some(&id) = self.inodes.get(&key) {
            return Ok(id);
        }
        let (stat, content) = match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => {
                let flags = OFlags::NONBLOCK | OFlags::NOCTTY;
                let fd = reopen(&handle, st, flags).map_err(|e| refused(path, e))?;
                let stat = self.stat(fd.as_fd(), st, false, path)?;
                (stat, self.regular(fd, key, st, path)?)
            }
            kind => {
                let stat = self.stat(handle.as_fd(), st, true, path)?;
                (stat, self.special(&handle, kind, st, path)?)
            }
        };
        let id = LeafId(self.leaves.len());
        self.leaves.push(Leaf { stat, content });
        self.inodes.insert(key, id);
        Ok(id)
    }

    fn regular(
        &mut self,
        fd: OwnedFd,
        key: InodeKey,
        st: &Stat,
        path: &Path,
    ) -> Result<LeafContent<Pending>, Error> {
        let size = st.st_size as u64;
        if size > INLINE_MAX {
            self.large.send(LargeFile { key, fd, size }).map_err(|_| {
                Error::internal("reading the tree", "the call was cancelled".into())
            })?;
            return Ok(LeafContent::Regular(Pending::External { key, size }));
        }
        self.spend(0, size as usize, path)?;
        let mut data = vec![0; size as usize];
        read_exactly(&fd, &mut data).map_err(|e| refused(path, e))?;
        Ok(LeafContent::Regular(Pending::Inline(data.into())))
    }

    fn special(
        &mut self,
        handle: &OwnedFd,
        kind: FileType,
        st: &Stat,
        path: &Path,
    ) -> Result<LeafContent<Pending>, Error> {
        Ok(match kind {
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(handle, "", Vec::new())
                    .map_err(|e| refused(path, explain(e)))?;
                self.spend(0, target.as_bytes().len(), path)?;
                LeafContent::Symlink(OsStr::from_bytes(target.as_bytes()).into())
            }
            FileType::CharacterDevice => LeafContent::CharacterDevice(st.st_rdev),
            FileType::BlockDevice => LeafContent::BlockDevice(st.st_rdev),
            FileType::Fifo => LeafContent::Fifo,
            FileType::Socket => LeafContent::Socket,
            FileType::RegularFile | FileType::Directory | FileType::Unknown => {
                return Err(refused(path, "it is of an unknown file type"));
            }
        })
    }

    /// The image's metadata of the inode `fd` (an `O_PATH` fd when
    /// `by_path`, whose xattrs are read through `/proc/self/fd` as the
    /// `f*xattr` calls refuse such fds).
    fn stat(
        &mut self,
        fd: BorrowedFd<'_>,
        st: &Stat,
        by_path: bool,
        path: &Path,
    ) -> Result<generic_tree::Stat, Error> {
        let xattrs = self
            .xattrs(fd, by_path)
            .map_err(|e| refused(path, format!("reading its xattrs: {}", explain(e))))?;
        let bytes = xattrs.iter().map(|(k, v)| k.len() + v.len()).sum();
        self.spend(0, bytes, path)?;
        Ok(generic_tree::Stat {
            st_mode: st.st_mode & 0o7777,
            st_uid: st.st_uid,
            st_gid: st.st_gid,
            st_mtim_sec: st.st_mtime,
            st_mtim_nsec: st.st_mtime_nsec as u32,
            xattrs,
        })
    }

    fn xattrs(
        &mut self,
        fd: BorrowedFd<'_>,
        by_path: bool,
    ) -> Result<BTreeMap<Box<OsStr>, Box<[u8]>>, Errno> {
        let proc = fd_path(fd);
        let listed = match by_path {
            true => rustix::fs::listxattr(&proc, &mut self.names[..]),
            false => rustix::fs::flistxattr(fd, &mut self.names[..]),
        };
        let len = match listed {
            Ok(len) => len,
            // A filesystem without xattrs has none to keep.
            Err(Errno::NOTSUP) => 0,
            Err(e) => return Err(e),
        };
        let mut xattrs = BTreeMap::new();
        for name in self.names[..len]
            .split(|&b| b == 0)
            .filter(|n| !n.is_empty())
        {
            let name = OsStr::from_bytes(name);
            let got = match by_path {
                true => rustix::fs::getxattr(&proc, name, &mut self.value[..]),
                false => rustix::fs::fgetxattr(fd, name, &mut self.value[..]),
            };
            match got {
                Ok(n) => {
                    xattrs.insert(Box::from(name), Box::from(&self.value[..n]));
                }
                // Removed since it was listed.
                Err(Errno::NODATA) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(xattrs)
    }
}

/// `name` in `dir` as an `O_PATH` fd: beneath `dir`, through no symlink
/// or magic link, on `dir`'s mount. A symlink is opened as itself.
fn open_beneath(dir: &OwnedFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    rustix::fs::openat2(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH
            | ResolveFlags::NO_SYMLINKS
            | ResolveFlags::NO_MAGICLINKS
            | ResolveFlags::NO_XDEV,
    )
}

/// The path that names the inode `fd` is open on.
fn fd_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// The inode of `handle` (an `O_PATH` fd, stat'ed as `st`) opened for
/// reading with `flags`, refused if it is no longer that inode. Opening
/// checks the thread's credentials against the inode, as any open does.
fn reopen(handle: &OwnedFd, st: &Stat, flags: OFlags) -> Result<OwnedFd, String> {
    let flags = flags | OFlags::RDONLY | OFlags::CLOEXEC;
    let fd = rustix::fs::open(fd_path(handle.as_fd()), flags, Mode::empty()).map_err(explain)?;
    let now = rustix::fs::fstat(&fd).map_err(explain)?;
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) || now.st_mode != st.st_mode {
        return Err("it changed while the tree was read".into());
    }
    Ok(fd)
}

/// Fill `data` from `fd`, which must then be at its end: a file that
/// grew or shrank since it was stat'ed changed while read.
fn read_exactly(fd: &OwnedFd, data: &mut [u8]) -> Result<(), String> {
    let changed = || "it changed while the tree was read".to_owned();
    let mut done = 0;
    while done < data.len() {
        match rustix::io::read(fd, &mut data[done..]) {
            Ok(0) => return Err(changed()),
            Ok(n) => done += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(explain(e)),
        }
    }
    let mut more = [0u8; 1];
    match rustix::io::read(fd, &mut more) {
        Ok(0) => Ok(()),
        Ok(_) => Err(changed()),
        Err(e) => Err(explain(e)),
    }
}
