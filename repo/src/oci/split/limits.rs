//! What one layer may cost while it is split: its uncompressed size, which
//! bounds the disk and time a pull takes, and the metadata the splitter
//! keeps in memory until the layer's stream is written.
//!
//! The splitter has to keep a layer's inline bytes (every tar header, PAX
//! record, GNU long name and file of at most 64 bytes) until the last
//! object is stored, because the split stream lists them in tar order
//! among references to objects still being written; composefs's own
//! stream writer then holds them once more. The entry rules keep every
//! path. That memory grows with the number of entries, not with file
//! sizes, so it is capped separately from the size.

use std::sync::{
    Arc, RwLock,
    atomic::{AtomicU64, Ordering},
};

/// What one layer may cost; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerLimits {
    /// The most bytes of uncompressed tar one layer may have. Refused as
    /// soon as a header declares more, or the data runs past it.
    pub max_layer_size: u64,
    /// The most bytes of metadata one layer may keep in memory: its
    /// inline bytes, the paths and link targets of its entries, and
    /// [`ENTRY_COST`] for each entry.
    pub max_layer_metadata: u64,
    /// The most bytes of uncompressed tar all the layers of one pull may
    /// have together, so that many layers under the layer limit cannot
    /// fill the disk either.
    pub max_pull_size: u64,
}

/// What the splitter and the entry rules keep per entry besides its
/// bytes: its place in the stream's entry list, its slot in the rules'
/// table of paths, and, for a file stored as an object, the object's id.
pub const ENTRY_COST: u64 = 128;

impl LayerLimits {
    /// 64 GiB of tar: more than any real layer (the largest public ones,
    /// CUDA and model layers, are a few GiB to a few tens of GiB), yet
    /// bounded, so that a gzip bomb of a thousandfold cannot fill a disk
    /// from a 64 MiB blob unnoticed.
    pub const DEFAULT_MAX_LAYER_SIZE: u64 = 64 << 30;
    /// 128 MiB of metadata: at 512 to about 1,200 bytes an entry (a
    /// header, perhaps a PAX record and a small file, its path and
    /// [`ENTRY_COST`]), 100,000 to 250,000 entries, ten to twenty-five
    /// times a whole Debian image, in one layer.
    pub const DEFAULT_MAX_LAYER_METADATA: u64 = 128 << 20;

    /// 256 GiB of tar for a whole pull: four of the largest layers.
    pub const DEFAULT_MAX_PULL_SIZE: u64 = 256 << 30;

    /// The defaults.
    pub const DEFAULT: LayerLimits = LayerLimits {
        max_layer_size: Self::DEFAULT_MAX_LAYER_SIZE,
        max_layer_metadata: Self::DEFAULT_MAX_LAYER_METADATA,
        max_pull_size: Self::DEFAULT_MAX_PULL_SIZE,
    };

    /// Make these the limits of every layer imported from now on, by pull
    /// or by delta. Process-wide: a daemon serves one repository, and its
    /// limits are set once from its command line.
    pub fn install(self) {
        *INSTALLED.write().unwrap_or_else(|e| e.into_inner()) = self;
    }

    /// The limits [`LayerLimits::install`] set, or the defaults.
    pub fn installed() -> LayerLimits {
        *INSTALLED.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for LayerLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

static INSTALLED: RwLock<LayerLimits> = RwLock::new(LayerLimits::DEFAULT);

/// Which limit a layer broke, and the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Exceeded {
    /// What grew too large, for the message.
    pub what: &'static str,
    /// The limit, in bytes.
    pub limit: u64,
}

/// What [`Exceeded::what`] says of the uncompressed size.
pub(crate) const UNCOMPRESSED_SIZE: &str = "uncompressed size";

/// What [`Exceeded::what`] says of the whole pull's size.
pub(crate) const PULL_SIZE: &str = "share of the pull's uncompressed size";

/// What [`Exceeded::what`] says of the metadata in memory.
pub(crate) const METADATA: &str =
    "metadata held in memory (tar headers, PAX records, small files and paths)";

/// The metadata one layer's split keeps, counted against the limit.
#[derive(Debug)]
pub(crate) struct Kept {
    bytes: u64,
    limit: u64,
}

impl Kept {
    /// Nothing kept yet, under `limits`.
    pub(crate) fn new(limits: &LayerLimits) -> Self {
        Kept {
            bytes: 0,
            limit: limits.max_layer_metadata,
        }
    }

    /// Count `n` more bytes, failing once the total passes the limit.
    pub(crate) fn keep(&mut self, n: u64) -> Result<(), Exceeded> {
        self.bytes = self.bytes.saturating_add(n);
        if self.bytes > self.limit {
            return Err(Exceeded {
                what: METADATA,
                limit: self.limit,
            });
        }
        Ok(())
    }
}

/// The tar bytes the layers of one pull have brought so far, counted by
/// each layer's split as its chunks arrive.
#[derive(Debug, Clone, Default)]
pub(crate) struct PullTally(Arc<AtomicU64>);

impl PullTally {
    /// Count `n` more bytes, failing once the pull's total passes `limit`.
    pub(crate) fn add(&self, n: u64, limit: u64) -> Result<(), Exceeded> {
        let total = self.0.fetch_add(n, Ordering::Relaxed).saturating_add(n);
        if total > limit {
            return Err(Exceeded {
                what: PULL_SIZE,
                limit,
            });
        }
        Ok(())
    }
}

/// Check that a tar of `size` bytes fits `limit`.
pub(crate) fn check_size(size: u64, limit: u64) -> Result<(), Exceeded> {
    if size > limit {
        return Err(Exceeded {
            what: UNCOMPRESSED_SIZE,
            limit,
        });
    }
    Ok(())
}
