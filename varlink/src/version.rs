//! The version of this build, shared by cfsd (GetInfo) and cfsctl
//! (`--version`) so that both say the same.

/// The crate version followed by `git describe` of the checkout it was
/// built from, e.g. `0.1.0 (v0.1.0-3-g0123456789ab-dirty)` or, without
/// tags, `0.1.0 (0123456789ab)`; the crate version alone when it was not
/// built from a git checkout.
pub const VERSION: &str = env!("CFSD_BUILD_VERSION");

/// The date of the commit built, `YYYY-MM-DD`, for the man pages; empty
/// when it was not built from a git checkout.
pub const DATE: &str = env!("CFSD_BUILD_DATE");
