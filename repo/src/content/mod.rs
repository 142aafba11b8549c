//! The content index: which object holds a regular file whose content has
//! a given sha256, for pulls that fetch only what the repository lacks.
//!
//! It lives in `content-index/` beside `objects/` and `streams/`, as one
//! file per layer stream or plain image, named by that stream's (or
//! image's) object id and listing the file objects it refers to (see
//! [`file`] for the format). A file is put in place only once its stream
//! or image is named, and whole or not at all: a temporary file written
//! before the sync that names its stream, renamed after it (see
//! [`Unplaced`]). Garbage collection removes it with its stream's object.
//! So an entry names only objects that a live stream or image refers
//! to, which collection keeps, and a crash leaves at worst a stream
//! without its file, which [`crate::Repository::index_content`] builds again.
//! Opening merges every file into one map in memory: one read per layer,
//! and a lookup per incoming file costs a hash probe.
//!
//! An answer is a hint: callers read the object and check its content
//! against the digest they wanted.

mod build;
mod check;
mod file;
pub mod probe;
#[cfg(test)]
mod tests;

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io::{self, Read, Seek, Write},
    os::fd::OwnedFd,
    sync::atomic::{AtomicU64, Ordering},
};

use composefs::{fsverity::FsVerityHashValue, repository::Repository as Store};
use openssl::sha::Sha256;
use rustix::{
    fs::{AtFlags, Dir, Mode, OFlags, fsync, mkdirat, openat, renameat, statat, unlinkat},
    io::Errno,
};

pub use self::build::IndexProgress;
pub(crate) use self::file::{Sha256Digest, StoredChunk};

/// The content digest of each regular file a stream or image refers to,
/// and its object: what its index file holds.
pub(crate) type Contents<H> = Vec<(Sha256Digest, H)>;

/// Chunks of those files, by each chunk's digest: what an index file
/// also holds once a zstd:chunked TOC named them.
pub(crate) type Chunks<H> = Vec<(Sha256Digest, StoredChunk<H>)>;

/// How files are cut into chunks, by the file's content digest: each
/// chunk's digest, where it starts in the file and its size, as a
/// zstd:chunked TOC says. Untrusted: a reader checks a chunk's bytes
/// before it uses them.
pub(crate) type ChunkHints = HashMap<Sha256Digest, Vec<(Sha256Digest, u64, u64)>>;

/// The chunks `hints` names of the files of `contents`, placed in their
/// objects. A hint joins only a file whose content the splitter hashed
/// to the hint's key, so a TOC can name chunks only of files it really
/// describes.
pub(crate) fn chunks_of<H: Clone>(contents: &Contents<H>, hints: &ChunkHints) -> Chunks<H> {
    let mut chunks = Vec::new();
    for (digest, id) in contents {
        for (chunk, offset, size) in hints.get(digest).into_iter().flatten() {
            let stored = StoredChunk {
                object: id.clone(),
                offset: *offset,
                size: *size,
            };
            chunks.push((*chunk, stored));
        }
    }
    chunks
}

/// The directory of the index files, under the repository's root.
pub(crate) const DIR: &str = "content-index";

/// Every stored regular file's content digest, mapped to its object.
pub(crate) struct ContentIndex<H> {
    objects: HashMap<Sha256Digest, H>,
    /// Where chunks of stored files are, by the chunk's digest.
    chunks: HashMap<Sha256Digest, StoredChunk<H>>,
    /// Index files read.
    files: usize,
    /// Index files left out: damaged, or of a stream that is gone.
    skipped: usize,
}

impl<H: FsVerityHashValue> ContentIndex<H> {
    /// Read every index file of `repo`. A damaged file, or one whose
    /// stream's object is gone, is left out (logged): fsck reports it and
    /// [`crate::Repository::index_content`] builds it again.
    pub(crate) fn open(repo: &Store<H>) -> Result<ContentIndex<H>, crate::Error> {
        let mut index = ContentIndex {
            objects: HashMap::new(),
            chunks: HashMap::new(),
            files: 0,
            skipped: 0,
        };
        let read = for_each_file(repo, |key, bytes| {
            let Some(bytes) = bytes else {
                index.skipped += 1;
                return;
            };
            let (objects, chunks) = (&mut index.objects, &mut index.chunks);
            let decoded = file::decode_all::<H>(
                &bytes,
                |digest, id| {
                    objects.entry(digest).or_insert(id);
                },
                |digest, chunk| {
                    chunks.entry(digest).or_insert(chunk);
                },
            );
            match decoded {
                Ok(_) => index.files += 1,
                Err(why) => {
                    tracing::warn!("content index file of {key:?} left out: {why}");
                    index.skipped += 1;
                }
            }
        });
        read.map_err(|e| crate::Error::storage("reading the content index", e))?;
        Ok(index)
    }

    /// The object whose content has the sha256 `sha256`, if one is known.
    pub(crate) fn find(&self, sha256: &[u8; 32]) -> Option<H> {
        self.objects.get(sha256).cloned()
    }

    /// Where a chunk of a stored file whose bytes have the sha256
    /// `sha256` is, if one is known.
    pub(crate) fn find_chunk(&self, sha256: &[u8; 32]) -> Option<StoredChunk<H>> {
        self.chunks.get(sha256).cloned()
    }

    /// How many distinct chunks are known.
    #[cfg(test)]
    pub(crate) fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// How many distinct contents are known.
    #[allow(dead_code)]
    pub(crate) fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether no content is known.
    #[allow(dead_code)]
    pub(crate) fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Index files read, and left out.
    #[allow(dead_code)]
    pub(crate) fn files(&self) -> (usize, usize) {
        (self.files, self.skipped)
    }

    /// The content digests of those of `ids` this index knows.
    pub(crate) fn digests_of(&self, ids: &HashSet<H>) -> HashMap<H, Sha256Digest> {
        let mut found = HashMap::with_capacity(ids.len());
        for (digest, id) in &self.objects {
            if ids.contains(id) {
                found.insert(id.clone(), *digest);
            }
        }
        found
    }
}

/// Call `each` with every index file of `repo` whose key object (a
/// stream's or an image's) is present: its key and bytes, or `None` for
/// the bytes of a file whose key object is gone.
fn for_each_file<H: FsVerityHashValue>(
    repo: &Store<H>,
    mut each: impl FnMut(H, Option<Vec<u8>>),
) -> io::Result<()> {
    let Some(dir) = open_dir(repo, false)? else {
        return Ok(());
    };
    let objects = repo.objects_dir()?;
    for (name, key) in keys::<H>(&dir)? {
        if !object_present(objects, &key)? {
            each(key, None);
            continue;
        }
        let fd = match openat(&dir, &name, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut bytes = Vec::new();
        File::from(fd).read_to_end(&mut bytes)?;
        each(key, Some(bytes));
    }
    Ok(())
}

/// The index files in `dir` by name and key, in name order; temporary
/// files and anything else not named by an object id are not listed.
fn keys<H: FsVerityHashValue>(dir: &OwnedFd) -> io::Result<Vec<(String, H)>> {
    let mut keys = Vec::new();
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if let Ok(key) = H::from_hex(&name) {
            keys.push((name, key));
        }
    }
    keys.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(keys)
}

/// The index directory of `repo`, made if `create`; `None` if it is
/// absent and not made.
fn open_dir<H: FsVerityHashValue>(repo: &Store<H>, create: bool) -> io::Result<Option<OwnedFd>> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    match openat(repo.repo_fd(), DIR, flags, Mode::empty()) {
        Ok(fd) => return Ok(Some(fd)),
        Err(Errno::NOENT) if create => {}
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    match mkdirat(repo.repo_fd(), DIR, Mode::from_raw_mode(0o755)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    fsync(repo.repo_fd())?;
    Ok(Some(openat(repo.repo_fd(), DIR, flags, Mode::empty())?))
}

/// Whether the object `id` is in `objects`.
fn object_present<H: FsVerityHashValue>(objects: &OwnedFd, id: &H) -> io::Result<bool> {
    match statat(objects, id.to_object_pathname(), AtFlags::empty()) {
        Ok(_) => Ok(true),
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// An index file written under a temporary name, not yet in place: what a
/// writer makes before the sync that names its stream or image, and puts
/// in place after it. So the sync that makes the name durable makes the
/// file's bytes durable too, and a power cut leaves either a temporary
/// file, which collection removes, or the whole file, never a torn one,
/// with no fsync of its own on the pull's critical path. Dropped before
/// [`Unplaced::place`], it removes its temporary file.
pub(crate) struct Unplaced {
    dir: OwnedFd,
    file: File,
    tmp: String,
    placed: bool,
}

impl Unplaced {
    /// Put the file in place as the index file of the stream or image
    /// `key`. Durable once the repository was synced after [`write`]
    /// returned it; called only once `key` is named, so that collection,
    /// which removes the file with `key`'s object, cannot miss it.
    pub(crate) fn place<H: FsVerityHashValue>(mut self, key: &H) -> io::Result<()> {
        renameat(&self.dir, &self.tmp, &self.dir, key.to_hex())?;
        self.placed = true;
        Ok(())
    }
}

impl Drop for Unplaced {
    fn drop(&mut self) {
        if !self.placed {
            let _ = unlinkat(&self.dir, &self.tmp, AtFlags::empty());
        }
    }
}

/// Tells concurrent writers' temporary files apart.
static TMP_SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// Write `entries` and `chunks` as an index file, still under a temporary
/// name that readers do not list.
pub(crate) fn write<H: FsVerityHashValue>(
    repo: &Store<H>,
    mut entries: Contents<H>,
    mut chunks: Chunks<H>,
) -> io::Result<Unplaced> {
    let bytes = file::encode(&mut entries, &mut chunks);
    let dir = open_dir(repo, true)?.expect("made");
    let n = TMP_SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let tmp = format!(".tmp-{}-{n}", std::process::id());
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::CLOEXEC;
    let file = File::from(openat(&dir, &tmp, flags, Mode::from_raw_mode(0o644))?);
    let mut unplaced = Unplaced {
        dir,
        file,
        tmp,
        placed: false,
    };
    unplaced.file.write_all(&bytes)?;
    Ok(unplaced)
}

/// Record `entries` and `chunks` as the index file of `key`, which is
/// already named, durably: for writers with no sync of the repository to
/// come, such as [`crate::Repository::index_content`].
pub(crate) fn record<H: FsVerityHashValue>(
    repo: &Store<H>,
    key: &H,
    entries: Contents<H>,
    chunks: Chunks<H>,
) -> io::Result<()> {
    let unplaced = write(repo, entries, chunks)?;
    fsync(&unplaced.file)?;
    unplaced.place(key)
}

/// Remove the index files whose stream or image object is gone, and
/// temporary files a crash left; how many files went. Runs under the
/// collection's exclusive lock, so no import is writing one.
pub(crate) fn prune<H: FsVerityHashValue>(repo: &Store<H>) -> io::Result<u64> {
    let Some(dir) = open_dir(repo, false)? else {
        return Ok(0);
    };
    let objects = repo.objects_dir()?;
    let mut removed = 0;
    for entry in Dir::read_from(&dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = match H::from_hex(&name) {
            Ok(key) => !object_present(objects, &key)?,
            Err(_) => name.starts_with(".tmp-"),
        };
        if stale {
            match unlinkat(&dir, name.as_str(), AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => removed += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }
    if removed > 0 {
        fsync(&dir)?;
    }
    Ok(removed)
}

/// The sha256 of the content of object `id`, read from the disk.
pub(crate) fn hash_object<H: FsVerityHashValue>(
    repo: &Store<H>,
    id: &H,
) -> io::Result<Sha256Digest> {
    hash_file(&mut open_object(repo, id)?)
}

/// The sha256 of `size` bytes at `offset` of object `id`, as a chunk
/// record names them; an object too short for them gives the digest of
/// what is there.
pub(crate) fn hash_stretch<H: FsVerityHashValue>(
    repo: &Store<H>,
    id: &H,
    offset: u64,
    size: u64,
) -> io::Result<Sha256Digest> {
    let mut file = open_object(repo, id)?;
    file.seek(io::SeekFrom::Start(offset))?;
    hash_file(&mut file.take(size))
}

/// Object `id` of `repo`, opened for reading.
fn open_object<H: FsVerityHashValue>(repo: &Store<H>, id: &H) -> io::Result<File> {
    let fd = openat(
        repo.objects_dir()?,
        id.to_object_pathname(),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

/// The sha256 of what is left to read of `file`.
pub(crate) fn hash_file(file: &mut impl Read) -> io::Result<Sha256Digest> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(hasher.finish()),
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The content digests of the objects `ids` refers to: taken from the
/// index where it knows them, else read from the objects. For contents
/// a producer took whole from objects already stored, which the index
/// usually knows from the stream they were taken from.
pub(crate) fn digests_of_stored<H: FsVerityHashValue>(
    repo: &Store<H>,
    ids: &HashSet<H>,
) -> Result<HashMap<H, Sha256Digest>, crate::Error> {
    let mut found = ContentIndex::open(repo)?.digests_of(ids);
    for id in ids {
        if !found.contains_key(id) {
            let digest = hash_object(repo, id)
                .map_err(|e| crate::Error::storage("hashing a stored object", e))?;
            found.insert(id.clone(), digest);
        }
    }
    Ok(found)
}
