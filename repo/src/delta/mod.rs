//! oci-delta: pulling an image from a delta artifact against an image the
//! repository already holds.
//!
//! `oci pull` resolves a delta artifact to the image it rebuilds (see
//! [`artifact`]); its layers are then brought in here instead of being
//! imported from blobs: layers the delta leaves out are reused by diff_id,
//! and each layer it carries is rebuilt on a blocking thread, from a
//! tar-diff applied against the source image's files or from a whole layer
//! blob, streamed straight into composefs's tar splitter. The rebuilt tar's
//! diff_id is checked before its stream is named; the pull then finishes
//! like any other, so the result equals a full pull of the target.
//!
//! [`create`] makes such deltas from two images the repository holds.

mod apply;
mod artifact;
pub(crate) mod create;
pub(crate) mod discover;
mod source;
pub(crate) mod tardiff;

pub(crate) use apply::{DeltaLayers, source_present};
pub(crate) use artifact::{ARTIFACT_TYPE, Delta};

#[cfg(test)]
mod tests;
