//! Garbage collection: what it removes, how it keeps clear of work in
//! flight, and a dry run that predicts it exactly.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    io,
    os::fd::AsFd,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use composefs::{
    fsverity::FsVerityHashValue,
    repository::{GcResult, Repository as Store},
};
use rustix::{fs::FlockOperation, io::Errno};

use crate::{Error, Repository, mounts, repository::with_store};

/// What a garbage collection removed, or would remove.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Whether this was only a report and nothing was removed.
    pub dry_run: bool,
    /// Unreferenced objects.
    pub objects_removed: u64,
    /// Their bytes.
    pub bytes_freed: u64,
    /// Dangling image references.
    pub images_pruned: u64,
    /// Dangling stream references.
    pub streams_pruned: u64,
}

impl GcReport {
    pub(crate) fn new(dry_run: bool, r: &GcResult) -> Self {
        GcReport {
            dry_run,
            objects_removed: r.objects_removed,
            bytes_freed: r.objects_bytes,
            images_pruned: r.images_pruned,
            streams_pruned: r.streams_pruned,
        }
    }
}

/// Present while a collection runs; see [`Repository::gc`].
pub(crate) const GC_MARKER: &str = ".cfsd-gc-running";

/// How often a collection asks again for composefs's exclusive lock that
/// another process's shared one keeps it from.
const LOCK_RETRY: Duration = Duration::from_millis(50);

impl Repository {
    /// Remove the objects and dangling references that no image or stream
    /// needs; with `dry_run`, only report exactly what a collection now
    /// would remove. Blocks on disk work.
    ///
    /// Every image that is still mounted is a root, wherever and by
    /// whichever process it was mounted: see [`crate::mounts`]. A
    /// collection waits for the imports, tag changes and mounts in flight
    /// in this process, and for other processes that have the repository
    /// open, at most [`Repository::set_gc_wait`]'s time; then it fails
    /// with [`Error::RepositoryBusy`]. A dry run waits only for a running
    /// collection, and a collection for running dry runs, so that the two
    /// never share composefs's lock.
    pub fn gc(&self, dry_run: bool) -> Result<GcReport, Error> {
        if dry_run {
            let _hold = self.hold("a dry-run garbage collection");
            let mut roots = self.mounted_images()?;
            roots.extend(self.stage_roots()?);
            return with_store!(self.store(), s => predict(s, self.path(), &roots));
        }
        let deadline = Instant::now() + self.inner_gc_wait();
        self.coordinate_collection(|| {
            // Incomplete stages go first, so that what they held is
            // collected; complete ones are roots.
            self.drop_incomplete_stages()?;
            let mut roots = self.mounted_images()?;
            roots.extend(self.stage_roots()?);
            with_store!(self.store(), s => collect(s, self.path(), &roots, deadline))
        })
    }

    /// The ids of this repository's images that are mounted now, by the
    /// kernel or served over FUSE.
    fn mounted_images(&self) -> Result<BTreeSet<String>, Error> {
        let mut mounted = mounts::mounted_images(&self.path().join("objects"))
            .map_err(|e| Error::storage("finding the mounted images", e))?;
        // FUSE mounts name no image in the mount tables: their servers
        // lease what they serve (see crate::fuse).
        mounted.extend(self.served_images().ids());
        if !mounted.is_empty() {
            tracing::info!(?mounted, "keeping the images that are mounted");
        }
        Ok(mounted)
    }

    /// Finish a collection that a crash interrupted, if one did.
    pub(crate) fn finish_interrupted_gc(&self) -> Result<(), Error> {
        if !self.path().join(GC_MARKER).exists() {
            return Ok(());
        }
        tracing::warn!(
            "a garbage collection of {} was interrupted; finishing it",
            self.path().display()
        );
        self.gc(false).map(|_| ())
    }
}

/// Collect with `roots` kept, holding composefs's exclusive lock.
fn collect<H: FsVerityHashValue>(
    store: &Store<H>,
    path: &Path,
    roots: &BTreeSet<String>,
    deadline: Instant,
) -> Result<GcReport, Error> {
    let roots: Vec<&str> = roots.iter().map(String::as_str).collect();
    let exclusive = Exclusive::take(store, path, deadline)?;
    // composefs removes unreferenced objects before the stream and image
    // names that point at them; a crash in between leaves names whose
    // objects are gone, which a later pull would trust. The marker makes
    // the next open finish the collection first. It is written only once
    // the lock is held, so a collection that cannot start leaves none.
    let marker = path.join(GC_MARKER);
    durable_create(&marker).map_err(|e| Error::storage("marking a collection", e))?;
    // composefs takes the lock again (it is ours already) and leaves it
    // shared when it is done.
    let result = store
        .gc(&roots)
        .map_err(|e| Error::storage("collecting garbage", e))?;
    // Signatures kept for images that are gone go with them.
    // Only a manifest known to be gone counts: a failed lookup keeps them.
    crate::trust::prune_stored(path, |digest| {
        !matches!(
            composefs_oci::oci_image::has_manifest(store, &digest.to_oci()),
            Ok(None)
        )
    })?;
    // The content index files of the streams and images just removed:
    // an entry names only what a live stream or image refers to.
    crate::content::prune(store).map_err(|e| Error::storage("pruning the content index", e))?;
    drop(exclusive);
    // The marker may go only once every removal is on disk.
    store
        .sync()
        .map_err(|e| Error::storage("syncing the repository", e))?;
    std::fs::remove_file(&marker).map_err(|e| Error::storage("ending a collection", e))?;
    Ok(GcReport::new(false, &result))
}

/// composefs's exclusive lock on the repository, taken without blocking:
/// any other process that has the repository open (upstream `cfsctl`,
/// say) holds it shared, and composefs would wait for it silently and
/// without end. Turned back to shared when dropped.
struct Exclusive<'a>(std::os::fd::BorrowedFd<'a>);

impl<'a> Exclusive<'a> {
    fn take<H: FsVerityHashValue>(
        store: &'a Store<H>,
        path: &Path,
        deadline: Instant,
    ) -> Result<Self, Error> {
        let fd = store.repo_fd();
        loop {
            match rustix::fs::flock(fd, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(Exclusive(fd)),
                Err(Errno::WOULDBLOCK) if Instant::now() < deadline => {
                    std::thread::sleep(LOCK_RETRY);
                }
                Err(Errno::WOULDBLOCK) => {
                    return Err(Error::RepositoryBusy {
                        operation: "collecting garbage".to_owned(),
                        holders: other_lockers(path),
                    });
                }
                Err(e) => {
                    return Err(Error::storage(
                        "locking the repository for a collection",
                        io::Error::from(e),
                    ));
                }
            }
        }
    }
}

impl Drop for Exclusive<'_> {
    fn drop(&mut self) {
        if let Err(e) = rustix::fs::flock(self.0.as_fd(), FlockOperation::LockShared) {
            tracing::warn!("cannot turn the repository's lock back to shared: {e}");
        }
    }
}

/// The processes other than this one with a `flock` on the repository
/// directory at `path`, as `/proc/locks` lists them.
fn other_lockers(path: &Path) -> Vec<String> {
    let inode = std::fs::metadata(path).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    let me = std::process::id().to_string();
    let mut pids: Vec<String> = Vec::new();
    for line in locks.lines() {
        // "1: FLOCK  ADVISORY  READ 1234 08:01:131 0 EOF"
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(pid), Some(file)) = (fields.get(4), fields.get(5)) else {
            continue;
        };
        let same = inode.as_ref().is_ok_and(|ino| {
            file.rsplit(':').next().and_then(|i| i.parse::<u64>().ok()) == Some(*ino)
        });
        if same && *pid != me && !pids.iter().any(|p| p == pid) {
            pids.push((*pid).to_owned());
        }
    }
    if pids.is_empty() {
        return vec!["another process that has the repository open".to_owned()];
    }
    pids.into_iter()
        .map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            format!("process {pid} ({}) has the repository open", cmdline.trim())
        })
        .collect()
}

/// What a collection with `roots` kept would remove now.
///
/// composefs's own dry run counts the objects right, but prunes no
/// names: it looks for names that dangle *now*, while the real run prunes
/// those that dangle once the unreferenced objects are gone. So the live
/// objects are worked out here as composefs does, and a name counts if it
/// dangles now or leads to an object that would go.
fn predict<H: FsVerityHashValue>(
    store: &Store<H>,
    path: &Path,
    roots: &BTreeSet<String>,
) -> Result<GcReport, Error> {
    let extra: Vec<&str> = roots.iter().map(String::as_str).collect();
    let failed = |e| Error::storage("collecting garbage", e);
    let result = store.gc_dry_run(&extra).map_err(failed)?;
    let live = live_objects(store, path, roots).map_err(failed)?;
    let objects = std::fs::canonicalize(path.join("objects")).ok();
    let pruned = |category: &str| -> Result<u64, Error> {
        dangling_after(&path.join(category), objects.as_deref(), &live)
            .map_err(|e| Error::storage("collecting garbage", e))
    };
    Ok(GcReport {
        dry_run: true,
        objects_removed: result.objects_removed,
        bytes_freed: result.objects_bytes,
        images_pruned: pruned("images")?,
        streams_pruned: pruned("streams")?,
    })
}

/// The hex ids of the objects a collection keeps: the roots (every name
/// under `refs/`, and `extra` images), their images' objects and every
/// stream they reach.
fn live_objects<H: FsVerityHashValue>(
    store: &Store<H>,
    path: &Path,
    extra: &BTreeSet<String>,
) -> anyhow::Result<HashSet<String>> {
    let mut live = HashSet::new();
    let images = first_level::<H>(&path.join("images"))?;
    for name in root_names(&path.join("images"), &images, extra)? {
        live.insert(images[&name].to_hex());
        live.extend(store.objects_for_image(&name)?.iter().map(|id| id.to_hex()));
    }
    let streams = first_level::<H>(&path.join("streams"))?;
    let by_object: HashMap<String, String> = streams
        .iter()
        .map(|(name, id)| (id.to_hex(), name.clone()))
        .collect();
    let mut walked = HashSet::new();
    let mut pending = Vec::new();
    for name in root_names(&path.join("streams"), &streams, extra)? {
        live.insert(streams[&name].to_hex());
        pending.push(name);
    }
    while let Some(name) = pending.pop() {
        if !walked.insert(name.clone()) {
            continue;
        }
        let mut stream = store.open_stream(&name, None, None)?;
        stream.get_object_refs(|id| {
            live.insert(id.to_hex());
        })?;
        for (_, id) in stream.iter_named_refs() {
            let hex = id.to_hex();
            if let Some(next) = by_object.get(&hex) {
                pending.push(next.clone());
            }
            live.insert(hex);
        }
    }
    Ok(live)
}

/// The first-level names of a category directory and the objects they
/// name.
fn first_level<H: FsVerityHashValue>(dir: &Path) -> anyhow::Result<HashMap<String, H>> {
    let mut names = HashMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(names),
        Err(e) => return Err(e.into()),
    };
    for entry in entries {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name == "refs" || !entry.file_type()?.is_symlink() {
            continue;
        }
        let target = std::fs::read_link(entry.path())?;
        let id = H::from_object_pathname(target.as_os_str().as_encoded_bytes())?;
        names.insert(name, id);
    }
    Ok(names)
}

/// The first-level names that are roots: those a name under `refs/`
/// points to, and those in `extra`.
fn root_names<H>(
    dir: &Path,
    first: &HashMap<String, H>,
    extra: &BTreeSet<String>,
) -> anyhow::Result<BTreeSet<String>> {
    let mut roots: BTreeSet<String> = first
        .keys()
        .filter(|name| extra.contains(*name))
        .cloned()
        .collect();
    for link in symlinks(&dir.join("refs"), true)? {
        let target = std::fs::read_link(&link)?;
        if let Some(name) = target.file_name().and_then(|n| n.to_str()) {
            roots.insert(name.to_owned());
        }
    }
    // A root whose name is missing fails composefs's run, which already
    // ran; the walk skips it.
    roots.retain(|name| first.contains_key(name));
    Ok(roots)
}

/// How many names under `dir` (first level, and all of `refs/`) would
/// dangle once every object not in `live` is gone.
fn dangling_after(dir: &Path, objects: Option<&Path>, live: &HashSet<String>) -> io::Result<u64> {
    let mut count = 0;
    let links = symlinks(dir, false)?
        .into_iter()
        .chain(symlinks(&dir.join("refs"), true)?);
    for link in links {
        let gone = match std::fs::canonicalize(&link) {
            Err(_) => true,
            Ok(target) => object_hex(&target, objects).is_some_and(|hex| !live.contains(&hex)),
        };
        count += u64::from(gone);
    }
    Ok(count)
}

/// The hex id of the object at `path`, if it is in `objects`.
fn object_hex(path: &Path, objects: Option<&Path>) -> Option<String> {
    let shard = path.parent()?;
    if shard.parent()? != objects? {
        return None;
    }
    Some(format!(
        "{}{}",
        shard.file_name()?.to_str()?,
        path.file_name()?.to_str()?
    ))
}

/// The symlinks in `dir`, and with `recursive` in its subdirectories.
fn symlinks(dir: &Path, recursive: bool) -> io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            found.push(entry.path());
        } else if kind.is_dir() && recursive {
            found.extend(symlinks(&entry.path(), true)?);
        }
    }
    Ok(found)
}

/// Create `path` and make it and its name durable.
fn durable_create(path: &Path) -> io::Result<()> {
    std::fs::File::create(path)?.sync_all()?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
