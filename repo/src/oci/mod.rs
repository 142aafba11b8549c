//! OCI images: pulling them from `oci:` layouts and `oci-archive:` tars,
//! and naming, describing, removing and mounting what was pulled.
//!
//! The on-disk result is exactly what composefs-rs's own OCI support
//! writes (stream names, config refs, tags under `streams/refs/oci/`, the
//! EROFS image), so upstream `cfsctl oci` reads it, and the image id equals
//! upstream's `cfsctl oci compute-id`.

pub(crate) mod archive;
mod boot;
pub(crate) mod digest;
pub(crate) mod document;
mod dump;
pub(crate) mod entry_rules;
pub(crate) mod export;
mod filesystem;
pub(crate) mod images;
pub(crate) mod layer;
pub(crate) mod manifest;
mod merge;
mod mount;
mod output;
pub(crate) mod partial;
pub(crate) mod pipeline;
#[cfg(test)]
mod pipeline_tests;
mod platform;
pub(crate) mod publish;
pub(crate) mod pull;
pub(crate) mod recompress;
mod save;
pub(crate) mod source;
pub(crate) mod split;
mod stage;
#[cfg(test)]
mod stage_tests;
pub(crate) mod variant;

pub use archive::Archive;
pub use boot::{KernelArgument, MAX_POLICY_FILE};
pub use dump::LayerFormat;
pub use filesystem::{check_source_filesystem, output_filesystem_refusal};
pub use images::{ImageDetails, ImageSummary};
pub use mount::MountOptions;
pub(crate) use mount::mount_image;
pub use output::Written;
pub use partial::PartialPull;
pub use pipeline::{LayerProgress, Stage};
pub use platform::Platform;
pub use pull::{AppliedDelta, DeltaDiscovery, PreparedPull, PullOptions, PullReport};
pub use save::SaveReport;
pub use source::Source;
pub use split::LayerLimits;
pub use stage::{CommitReport, StageSummary};
pub use variant::IdmapReport;
