//! The composefs repository that cfsd serves.
//!
//! This crate holds every domain rule and knows nothing of varlink,
//! sockets or the command line: the daemon maps its calls onto this API,
//! and the same API can be used directly from Rust.
//!
//! The on-disk format is composefs-rs's own, so upstream `cfsctl` of the
//! same version can read what is written here and the other way round.

mod algorithm;
pub mod chunked;
#[cfg(test)]
mod concurrency_tests;
mod content;
pub mod coordination;
mod delta;
mod error;
mod fsck;
pub mod fuse;
#[doc(hidden)]
pub mod fuzzing;
mod gc;
pub mod idmap;
pub mod mounts;
pub mod oci;
mod owner;
pub mod plain;
mod privacy;
pub mod registry;
mod repository;
pub mod secondary;
#[cfg(test)]
mod test_image;
pub mod trust;
mod usage;
mod userns;
pub mod verity;

pub use algorithm::HashAlgorithm;
pub use content::IndexProgress;
#[doc(hidden)]
pub use content::probe as content_probe;
pub use coordination::Hold;
pub use delta::create::{CreateOptions, DeltaMethod, DeltaReport, LayerDelta};
pub use error::{DiskFault, Error};
pub use fsck::{FsckProblem, FsckReport};
pub use gc::GcReport;
pub use owner::Owner;
pub use repository::{Repository, RepositoryDir, RepositoryInfo};
pub use usage::Usage;
pub use verity::{VerityPolicy, VerityStatus};

/// The result of a repository operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;
