//! What a garbage collection removed.

use composefs::repository::GcResult;

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
