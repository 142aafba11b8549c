//! Why a repository operation failed.

use std::path::PathBuf;

/// Why a repository operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The directory holds no repository yet.
    #[error("no composefs repository at {}", path.display())]
    NotInitialized {
        /// The repository directory.
        path: PathBuf,
    },
    /// The repository exists with another algorithm than the one asked for.
    #[error("the repository at {} uses {existing}, not {requested}", path.display())]
    AlgorithmMismatch {
        /// The repository directory.
        path: PathBuf,
        /// The algorithm it has.
        existing: String,
        /// The algorithm asked for.
        requested: String,
    },
    /// The algorithm name is not one composefs knows.
    #[error("unsupported algorithm {algorithm:?}: {reason}")]
    UnsupportedAlgorithm {
        /// The name given.
        algorithm: String,
        /// What is wrong with it.
        reason: String,
    },
    /// fs-verity is required and the repository cannot provide it.
    #[error("fs-verity is required at {}: {reason}", path.display())]
    VerityRequired {
        /// The repository directory.
        path: PathBuf,
        /// Why it is unavailable.
        reason: String,
    },
    /// The repository's metadata is damaged or of an unknown format.
    #[error("cannot open the repository at {}: {reason}", path.display())]
    Unreadable {
        /// The repository directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing the repository failed.
    #[error("{operation} failed: {reason}")]
    Storage {
        /// What was being done.
        operation: &'static str,
        /// Why it failed, with its causes.
        reason: String,
    },
}

impl Error {
    /// A storage failure of `operation`, keeping the whole cause chain of
    /// `err` in the message since it is what a person needs to act on.
    pub(crate) fn storage(operation: &'static str, err: impl Into<StorageCause>) -> Self {
        Error::Storage {
            operation,
            reason: err.into().0,
        }
    }
}

/// The text of an underlying error with all its causes.
#[derive(Debug)]
pub(crate) struct StorageCause(String);

impl From<std::io::Error> for StorageCause {
    fn from(e: std::io::Error) -> Self {
        StorageCause(e.to_string())
    }
}

impl From<anyhow::Error> for StorageCause {
    fn from(e: anyhow::Error) -> Self {
        StorageCause(format!("{e:#}"))
    }
}
