//! Opening, creating and describing the repository.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use composefs::{
    fsverity::{Algorithm, Sha256HashValue, Sha512HashValue},
    repository::{Repository as Store, RepositoryConfig, RepositoryOpenError, read_repo_algorithm},
};
use rustix::fs::{CWD, Mode, OFlags};

use crate::{
    Error, FsckReport, GcReport, HashAlgorithm, Result, Usage, VerityPolicy, VerityStatus, mounts,
    privacy, usage, verity,
};

/// The composefs store behind a repository, for either hash type.
#[derive(Debug)]
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
}

/// An open composefs repository.
#[derive(Debug)]
pub struct Repository {
    path: PathBuf,
    algorithm: HashAlgorithm,
    verity: VerityStatus,
    store: AnyStore,
}

impl Repository {
    /// Open the repository at `path`, refusing it under
    /// [`VerityPolicy::Required`] unless fs-verity is enforced.
    pub fn open(path: &Path, policy: VerityPolicy) -> Result<Self> {
        let algorithm = existing_algorithm(path)?.ok_or_else(|| Error::NotInitialized {
            path: path.to_owned(),
        })?;
        privacy::ensure_private(path)?;
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
        if let (VerityPolicy::Required, VerityStatus::Insecure(reason)) = (policy, &verity) {
            return Err(Error::VerityRequired {
                path: path.to_owned(),
                reason: reason.clone(),
            });
        }
        let repo = Repository {
            path: path.to_owned(),
            algorithm,
            verity,
            store,
        };
        repo.finish_interrupted_gc()?;
        Ok(repo)
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
        privacy::create_root(path)?;
        if let Some(existing) = existing_algorithm(path)? {
            if existing != algorithm {
                return Err(Error::AlgorithmMismatch {
                    path: path.to_owned(),
                    existing: existing.to_string(),
                    requested: algorithm.to_string(),
                });
            }
            return Ok((Self::open(path, policy)?, false));
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
        Ok((Self::open(path, policy)?, created))
    }

    /// The repository directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The typed composefs store.
    pub(crate) fn store(&self) -> &AnyStore {
        &self.store
    }

    /// Whether fs-verity protects the repository.
    pub fn verity(&self) -> &VerityStatus {
        &self.verity
    }

    /// Describe the repository and count what it holds.
    pub fn info(&self) -> Result<RepositoryInfo> {
        let count = |e| Error::storage("counting the repository's contents", e);
        Ok(RepositoryInfo {
            path: self.path.clone(),
            algorithm: self.algorithm,
            verity: self.verity.clone(),
            objects: usage::objects(&self.path).map_err(count)?,
            streams: usage::entries(&self.path.join("streams")).map_err(count)?,
            images: usage::entries(&self.path.join("images")).map_err(count)?,
        })
    }

    /// Check the repository. With `metadata_only`, object contents are not
    /// read and only references are checked.
    ///
    /// Must run inside a tokio runtime: composefs spreads the object
    /// checks over blocking threads.
    pub async fn fsck(&self, metadata_only: bool) -> Result<FsckReport> {
        let result = with_store!(&self.store, s => if metadata_only {
            s.fsck_metadata_only().await
        } else {
            s.fsck().await
        })
        .map_err(|e| Error::storage("checking the repository", e))?;
        Ok(FsckReport::from(&result))
    }

    /// Remove the objects and dangling references that no image or stream
    /// needs; with `dry_run`, only report them. Blocks on disk work.
    ///
    /// Every image that is still mounted is a root, wherever and by
    /// whichever process it was mounted: see [`crate::mounts`].
    pub fn gc(&self, dry_run: bool) -> Result<GcReport> {
        let mounted = self.mounted_images()?;
        let roots: Vec<&str> = mounted.iter().map(String::as_str).collect();
        if dry_run {
            let result = with_store!(&self.store, s => s.gc_dry_run(&roots))
                .map_err(|e| Error::storage("collecting garbage", e))?;
            return Ok(GcReport::new(true, &result));
        }
        // composefs removes unreferenced objects before the stream and
        // image names that point at them; a crash in between leaves names
        // whose objects are gone, which a later pull would trust. The
        // marker makes the next open finish the collection first.
        let marker = self.path.join(GC_MARKER);
        durable_create(&marker).map_err(|e| Error::storage("marking a collection", e))?;
        let result = with_store!(&self.store, s => s.gc(&roots))
            .map_err(|e| Error::storage("collecting garbage", e))?;
        // The marker may go only once every removal is on disk.
        with_store!(&self.store, s => s.sync())
            .map_err(|e| Error::storage("syncing the repository", e))?;
        std::fs::remove_file(&marker).map_err(|e| Error::storage("ending a collection", e))?;
        Ok(GcReport::new(false, &result))
    }

    /// Refuse a change to a repository on a read-only filesystem with the
    /// kind of failure it is: composefs says so only in words.
    pub(crate) fn ensure_writable(&self, operation: &'static str) -> Result<()> {
        let st = rustix::fs::statvfs(&self.path)
            .map_err(|e| Error::storage(operation, std::io::Error::from(e)))?;
        if st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) {
            return Err(Error::storage(
                operation,
                std::io::Error::from(rustix::io::Errno::ROFS),
            ));
        }
        Ok(())
    }

    /// The ids of this repository's images that are mounted now.
    fn mounted_images(&self) -> Result<std::collections::BTreeSet<String>> {
        let mounted = mounts::mounted_images(&self.path.join("objects"))
            .map_err(|e| Error::storage("finding the mounted images", e))?;
        if !mounted.is_empty() {
            tracing::info!(?mounted, "keeping the images that are mounted");
        }
        Ok(mounted)
    }

    /// Finish a collection that a crash interrupted, if one did.
    fn finish_interrupted_gc(&self) -> Result<()> {
        if !self.path.join(GC_MARKER).exists() {
            return Ok(());
        }
        tracing::warn!(
            "a garbage collection of {} was interrupted; finishing it",
            self.path.display()
        );
        self.gc(false).map(|_| ())
    }
}

/// Present while a collection runs; see [`Repository::gc`].
const GC_MARKER: &str = ".cfsd-gc-running";

/// Create `path` and make it and its name durable.
fn durable_create(path: &Path) -> std::io::Result<()> {
    std::fs::File::create(path)?.sync_all()?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
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
    open: Mutex<Option<Arc<Repository>>>,
}

impl RepositoryDir {
    /// The directory at `path`, served under `policy`.
    pub fn new(path: PathBuf, policy: VerityPolicy) -> Self {
        RepositoryDir {
            path,
            policy,
            open: Mutex::new(None),
        }
    }

    /// The directory of `repo`, already open, served under `policy`.
    pub fn from_open(repo: Repository, policy: VerityPolicy) -> Self {
        RepositoryDir {
            path: repo.path.clone(),
            policy,
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
        let repo = Arc::new(Repository::open(&self.path, self.policy)?);
        *open = Some(repo.clone());
        Ok(repo)
    }

    /// Create the repository, or open it if it exists with `algorithm`.
    /// Returns whether it was created.
    pub fn init(&self, algorithm: HashAlgorithm) -> Result<(Arc<Repository>, bool)> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (repo, created) = Repository::init(&self.path, algorithm, self.policy)?;
        let repo = Arc::new(repo);
        *open = Some(repo.clone());
        Ok((repo, created))
    }
}
