//! Opening, creating and describing the repository.

use std::{
    collections::HashMap,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use composefs::{
    fsverity::{Algorithm, Sha256HashValue, Sha512HashValue},
    repository::{Repository as Store, RepositoryConfig, RepositoryOpenError, read_repo_algorithm},
};
use rustix::fs::{CWD, Mode, OFlags};

use crate::{
    Error, FsckReport, HashAlgorithm, Result, Usage, VerityPolicy, VerityStatus,
    coordination::{Coordinator, Hold, Pulls},
    mounts,
    oci::split::Cancel,
    owner::{self, Owner, OwnerLock},
    privacy, usage, verity,
};

/// The composefs store behind a repository, for either hash type.
#[derive(Debug, Clone)]
pub(crate) enum AnyStore {
    Sha256(Arc<Store<Sha256HashValue>>),
    Sha512(Arc<Store<Sha512HashValue>>),
}

/// Run `$body` with `$store` bound to the typed composefs repository.
macro_rules! with_store {
    ($any:expr, $store:ident => $body:expr) => {
        match $any {
            $crate::repository::AnyStore::Sha256($store) => $body,
            $crate::repository::AnyStore::Sha512($store) => $body,
        }
    };
}
pub(crate) use with_store;

/// A description of the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryInfo {
    /// The repository directory.
    pub path: PathBuf,
    /// The algorithm naming its objects.
    pub algorithm: HashAlgorithm,
    /// Whether fs-verity protects it.
    pub verity: VerityStatus,
    /// Content-addressed files.
    pub objects: Usage,
    /// Split streams.
    pub streams: Usage,
    /// EROFS images.
    pub images: Usage,
    /// What keeps garbage collection off now, by the reasons given: GC
    /// holds, imports and mounts not yet attached.
    pub gc_holders: Vec<String>,
}

/// An open composefs repository.
///
/// Its methods may be called from many threads at once: the handle
/// coordinates garbage collection with the imports, tag changes and
/// mounts in flight, and lets identical pulls share one import (see
/// [`crate::coordination`]). Every open of one directory in a process
/// shares one handle, and only one process may have it open (see
/// [`crate::owner`]).
#[derive(Debug, Clone)]
pub struct Repository {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    algorithm: HashAlgorithm,
    verity: VerityStatus,
    store: AnyStore,
    coordinator: Arc<Coordinator>,
    pulls: Pulls,
    served: crate::fuse::ServedImages,
    _owner: OwnerLock,
}

/// The repositories open in this process, by device and inode.
type OpenRepositories = HashMap<(u64, u64), Weak<Inner>>;

/// Every [`Repository`] open in this process.
static OPEN: Mutex<Option<OpenRepositories>> = Mutex::new(None);

impl Repository {
    /// Open the repository at `path`, refusing it under
    /// [`VerityPolicy::Required`] unless fs-verity is enforced. This
    /// process is recorded as its owner by its command line.
    pub fn open(path: &Path, policy: VerityPolicy) -> Result<Self> {
        Self::open_as(path, policy, &Owner::this_process())
    }

    /// [`Repository::open`], recording `owner` as what holds it, or
    /// [`Error::RepositoryInUse`] if another process does.
    pub fn open_as(path: &Path, policy: VerityPolicy, owner: &Owner) -> Result<Self> {
        let algorithm = existing_algorithm(path)?.ok_or_else(|| Error::NotInitialized {
            path: path.to_owned(),
        })?;
        privacy::ensure_private(path)?;
        let dir = open_dir(path)?;
        let key = rustix::fs::fstat(&dir)
            .map(|st| (st.st_dev, st.st_ino))
            .map_err(|e| {
                Error::storage("opening the repository directory", std::io::Error::from(e))
            })?;
        let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
        let open = open.get_or_insert_with(HashMap::new);
        open.retain(|_, inner| inner.strong_count() > 0);
        if let Some(inner) = open.get(&key).and_then(Weak::upgrade) {
            let repo = Repository { inner };
            repo.check_policy(policy)?;
            return Ok(repo);
        }
        let lock = owner::take(&dir, path, owner)?;
        let repo = Self::open_store(path, algorithm, lock)?;
        repo.check_policy(policy)?;
        open.insert(key, Arc::downgrade(&repo.inner));
        repo.finish_interrupted_gc()?;
        // Listing reads them as incomplete anyway: a repository on a
        // read-only filesystem is still served.
        if let Err(e) = repo.mark_interrupted_stages() {
            tracing::warn!("cannot mark interrupted stages incomplete: {e}");
        }
        Ok(repo)
    }

    /// Refuse an insecure repository under [`VerityPolicy::Required`].
    fn check_policy(&self, policy: VerityPolicy) -> Result<()> {
        if let (VerityPolicy::Required, VerityStatus::Insecure(reason)) =
            (policy, &self.inner.verity)
        {
            return Err(Error::VerityRequired {
                path: self.inner.path.clone(),
                reason: reason.clone(),
            });
        }
        Ok(())
    }

    /// Open composefs's store at `path`, this process owning it by `lock`.
    fn open_store(path: &Path, algorithm: HashAlgorithm, lock: OwnerLock) -> Result<Self> {
        let unreadable = |e: RepositoryOpenError| match e {
            RepositoryOpenError::MetadataMissing => Error::NotInitialized {
                path: path.to_owned(),
            },
            other => Error::Unreadable {
                path: path.to_owned(),
                reason: other.to_string(),
            },
        };
        let store = match algorithm.0 {
            Algorithm::Sha256 { .. } => {
                AnyStore::Sha256(Arc::new(Store::open_path(CWD, path).map_err(unreadable)?))
            }
            Algorithm::Sha512 { .. } => {
                AnyStore::Sha512(Arc::new(Store::open_path(CWD, path).map_err(unreadable)?))
            }
        };
        let verity = if with_store!(&store, s => s.is_insecure()) {
            VerityStatus::Insecure(insecure_reason(path))
        } else {
            VerityStatus::Enforced
        };
        Ok(Repository {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                algorithm,
                verity,
                store,
                coordinator: Arc::default(),
                pulls: Pulls::default(),
                served: Default::default(),
                _owner: lock,
            }),
        })
    }

    /// Create a repository at `path` with `algorithm`, or open the one
    /// there if it has the same algorithm. Returns whether it was created.
    ///
    /// fs-verity is used when the filesystem supports it; otherwise the
    /// repository is created insecure, unless `policy` requires verity.
    pub fn init(
        path: &Path,
        algorithm: HashAlgorithm,
        policy: VerityPolicy,
    ) -> Result<(Self, bool)> {
        Self::init_as(path, algorithm, policy, &Owner::this_process())
    }

    /// [`Repository::init`], recording `owner` as what holds it.
    pub fn init_as(
        path: &Path,
        algorithm: HashAlgorithm,
        policy: VerityPolicy,
        owner: &Owner,
    ) -> Result<(Self, bool)> {
        privacy::create_root(path)?;
        if let Some(existing) = existing_algorithm(path)? {
            if existing != algorithm {
                return Err(Error::AlgorithmMismatch {
                    path: path.to_owned(),
                    existing: existing.to_string(),
                    requested: algorithm.to_string(),
                });
            }
            return Ok((Self::open_as(path, policy, owner)?, false));
        }
        let mut config = RepositoryConfig::new(algorithm.0);
        if let Err(reason) = verity::probe(path) {
            if policy == VerityPolicy::Required {
                return Err(Error::VerityRequired {
                    path: path.to_owned(),
                    reason,
                });
            }
            tracing::warn!(
                "{reason}: creating an insecure repository at {}",
                path.display()
            );
            config = config.set_insecure();
        }
        let created = match algorithm.0 {
            Algorithm::Sha256 { .. } => {
                Store::<Sha256HashValue>::init_path(CWD, path, config).map(|(_, c)| c)
            }
            Algorithm::Sha512 { .. } => {
                Store::<Sha512HashValue>::init_path(CWD, path, config).map(|(_, c)| c)
            }
        }
        .map_err(|e| Error::storage("initialising the repository", e))?;
        Ok((Self::open_as(path, policy, owner)?, created))
    }

    /// The repository directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The typed composefs store.
    pub(crate) fn store(&self) -> &AnyStore {
        &self.inner.store
    }

    /// Whether fs-verity protects the repository.
    pub fn verity(&self) -> &VerityStatus {
        &self.inner.verity
    }

    /// Set how long a collection waits for imports, tag changes and
    /// mounts in flight before it fails with [`Error::RepositoryBusy`];
    /// [`crate::coordination::DEFAULT_GC_WAIT`] unless set.
    pub fn set_gc_wait(&self, wait: Duration) {
        self.inner.coordinator.set_gc_wait(wait);
    }

    /// Keep collections off while the work `what` runs; see
    /// [`crate::coordination`].
    pub(crate) fn hold(&self, what: impl Into<String>) -> Hold {
        self.inner.coordinator.hold(what)
    }

    /// [`Repository::hold`] from async code.
    pub(crate) async fn hold_async(&self, what: String) -> Result<Hold> {
        self.inner.coordinator.hold_async(what).await
    }

    /// Keep garbage collection off for as long as the returned [`Hold`]
    /// lives, as an updater does between pulling an image and naming it
    /// in its boot entries. A collection already running is waited for
    /// first. `reason` names the hold in [`Repository::info`] and in the
    /// error of a collection that gave up waiting for it.
    pub async fn hold_gc(&self, reason: String) -> Result<Hold> {
        self.hold_async(reason).await
    }

    /// What keeps garbage collection off now, by the reasons given.
    pub fn gc_holders(&self) -> Vec<String> {
        self.inner.coordinator.holders()
    }

    /// The images FUSE servers serve now, which GC keeps as it keeps
    /// mounted ones.
    pub(crate) fn served_images(&self) -> &crate::fuse::ServedImages {
        &self.inner.served
    }

    /// The pulls in flight, so that identical ones share an import.
    pub(crate) fn pulls(&self) -> &Pulls {
        &self.inner.pulls
    }

    /// Describe the repository and count what it holds.
    pub fn info(&self) -> Result<RepositoryInfo> {
        let count = |e| Error::storage("counting the repository's contents", e);
        let path = &self.inner.path;
        Ok(RepositoryInfo {
            path: path.clone(),
            algorithm: self.inner.algorithm,
            verity: self.inner.verity.clone(),
            objects: usage::objects(path).map_err(count)?,
            streams: usage::entries(&path.join("streams")).map_err(count)?,
            images: usage::entries(&path.join("images")).map_err(count)?,
            gc_holders: self.gc_holders(),
        })
    }

    /// Check the repository. With `metadata_only`, object contents are not
    /// read and only references are checked. Otherwise every object is
    /// read through, which on a repository that enforces fs-verity is what
    /// makes the kernel check its bytes.
    ///
    /// Must run inside a tokio runtime: composefs spreads the object
    /// checks over blocking threads.
    pub async fn fsck(&self, metadata_only: bool) -> Result<FsckReport> {
        // The content index is checked beside composefs's own check, not
        // after it: both read every object, so each object is read from
        // the disk about once and both cores hash. It stops if this call
        // is dropped, as composefs's check does.
        let stop = Cancel::default();
        let _stop_on_drop = stop.on_drop();
        let store = self.store().clone();
        let index = tokio::task::spawn_blocking(move || {
            let mut found = FsckReport::default();
            with_store!(&store, s => found.check_content_index(s, !metadata_only, &stop))?;
            Ok::<_, std::io::Error>(found.problems)
        });
        let result = with_store!(self.store(), s => if metadata_only {
            s.fsck_metadata_only().await
        } else {
            s.fsck().await
        })
        .map_err(|e| Error::storage("checking the repository", e))?;
        let mut report = FsckReport::from(&result);
        let path = self.inner.path.clone();
        let read_objects = !metadata_only && self.inner.verity.is_enforced();
        let store = self.store().clone();
        report = tokio::task::spawn_blocking(move || {
            report.check_image_names(&path)?;
            if read_objects {
                report.read_objects(&path)?;
            }
            if !metadata_only {
                with_store!(&store, s => report.check_layer_streams(s, &path))?;
            }
            Ok::<_, std::io::Error>(report)
        })
        .await
        .map_err(|e| Error::storage("checking the repository", std::io::Error::other(e)))?
        .map_err(|e| Error::storage("reading the repository's objects", e))?;
        let problems = index
            .await
            .map_err(|e| Error::storage("checking the repository", std::io::Error::other(e)))?
            .map_err(|e| Error::storage("reading the repository's objects", e))?;
        report.problems.extend(problems);
        Ok(report)
    }

    /// How long a collection waits for holders.
    pub(crate) fn inner_gc_wait(&self) -> Duration {
        self.inner.coordinator.gc_wait()
    }

    /// Refuse a change to a repository on a read-only filesystem with the
    /// kind of failure it is: composefs says so only in words.
    pub(crate) fn ensure_writable(&self, operation: &'static str) -> Result<()> {
        let st = rustix::fs::statvfs(self.path())
            .map_err(|e| Error::storage(operation, std::io::Error::from(e)))?;
        if st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) {
            return Err(Error::storage(
                operation,
                std::io::Error::from(rustix::io::Errno::ROFS),
            ));
        }
        Ok(())
    }

    /// Run `collect` once no holder runs; see [`crate::coordination`].
    pub(crate) fn coordinate_collection<T>(
        &self,
        collect: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        self.inner
            .coordinator
            .collect("collecting garbage", collect)
    }

    /// Keep `hold` until the detached `mount` appears in a mount table,
    /// where GC finds it, or [`ATTACH_WAIT`] has passed: a client that
    /// never attaches its mount delays GC by at most that long.
    pub(crate) fn hold_until_attached(&self, mount: &OwnedFd, hold: Hold) {
        let id = match mounts::mount_id(mount) {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!("no mount id for a new mount, GC is not held off: {e}");
                return;
            }
        };
        let watch = move || {
            let deadline = std::time::Instant::now() + ATTACH_WAIT;
            loop {
                if std::time::Instant::now() >= deadline {
                    tracing::warn!(
                        "mount {id} was not attached within {ATTACH_WAIT:?}; \
                         GC no longer waits for it and may remove what it serves"
                    );
                    break;
                }
                match mounts::is_attached(id) {
                    Ok(true) => break,
                    Ok(false) => std::thread::sleep(Duration::from_millis(20)),
                    Err(e) => {
                        tracing::warn!("cannot tell whether mount {id} is attached: {e}");
                        break;
                    }
                }
            }
            drop(hold);
        };
        if let Err(e) = std::thread::Builder::new()
            .name("cfsd-mount-watch".into())
            .spawn(watch)
        {
            tracing::warn!("cannot watch a new mount, GC is not held off: {e}");
        }
    }

    /// How many pulls of `manifest` wait for another's import of it.
    #[cfg(test)]
    pub(crate) fn pulls_waiting(&self, manifest: &str) -> usize {
        self.inner.pulls.waiting(manifest)
    }
}

/// How long GC waits for a client to attach a mount it was handed.
pub const ATTACH_WAIT: Duration = Duration::from_secs(10);

/// The repository directory at `path`, open for reading (and locking).
fn open_dir(path: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::storage("opening the repository directory", std::io::Error::from(e)))
}

/// The algorithm recorded in the repository at `path`, or `None` when
/// there is no repository there yet.
fn existing_algorithm(path: &Path) -> Result<Option<HashAlgorithm>> {
    let dir = match rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(dir) => dir,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => {
            return Err(Error::storage(
                "opening the repository directory",
                std::io::Error::from(e),
            ));
        }
    };
    read_repo_algorithm(&dir)
        .map(|a| a.map(HashAlgorithm))
        .map_err(|e| Error::Unreadable {
            path: path.to_owned(),
            reason: format!("{e:#}"),
        })
}

/// Why an insecure repository is insecure: its filesystem cannot do
/// fs-verity, or it was created without it.
fn insecure_reason(path: &Path) -> String {
    match verity::probe(path) {
        Err(reason) => reason,
        Ok(()) => "the repository was created without fs-verity, so the kernel does not verify its objects".to_owned(),
    }
}

/// The directory a daemon serves, which may not hold a repository yet.
///
/// The repository is opened on first use and kept open; `init` creates it.
#[derive(Debug)]
pub struct RepositoryDir {
    path: PathBuf,
    policy: VerityPolicy,
    owner: Owner,
    open: Mutex<Option<Arc<Repository>>>,
}

impl RepositoryDir {
    /// The directory at `path`, served under `policy`.
    pub fn new(path: PathBuf, policy: VerityPolicy) -> Self {
        RepositoryDir {
            path,
            policy,
            owner: Owner::this_process(),
            open: Mutex::new(None),
        }
    }

    /// Record `owner` as what holds the repository once it is opened.
    pub fn owned_by(mut self, owner: Owner) -> Self {
        self.owner = owner;
        self
    }

    /// The directory of `repo`, already open, served under `policy`.
    pub fn from_open(repo: Repository, policy: VerityPolicy) -> Self {
        RepositoryDir {
            path: repo.path().to_owned(),
            policy,
            owner: Owner::this_process(),
            open: Mutex::new(Some(Arc::new(repo))),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The repository, opening it if this is the first use.
    pub fn repository(&self) -> Result<Arc<Repository>> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(repo) = &*open {
            return Ok(repo.clone());
        }
        let repo = Arc::new(Repository::open_as(&self.path, self.policy, &self.owner)?);
        *open = Some(repo.clone());
        Ok(repo)
    }

    /// Create the repository, or open it if it exists with `algorithm`.
    /// Returns whether it was created.
    pub fn init(&self, algorithm: HashAlgorithm) -> Result<(Arc<Repository>, bool)> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (repo, created) = Repository::init_as(&self.path, algorithm, self.policy, &self.owner)?;
        let repo = Arc::new(repo);
        *open = Some(repo.clone());
        Ok((repo, created))
    }
}
