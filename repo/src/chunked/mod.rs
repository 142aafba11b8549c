//! The zstd:chunked layer format, read and written with one set of types.
//!
//! A zstd:chunked blob is an ordinary zstd stream of the layer tar whose
//! frames are cut where the tar's files start and end, followed by
//! skippable frames that a plain zstd decoder passes over: the table of
//! contents ([`Toc`]), in the current variant the [`TarSplit`], and a
//! [`Footer`] locating them. Which frames hold which file is what lets a
//! pull fetch only the files it lacks. See `docs/zstd-chunked.md` for the
//! two variants as we read them and what we write.
//!
//! Everything here is read from a registry and untrusted: each way the
//! metadata can lie or be too large is a [`TocFault`], which a caller
//! names the layer of with [`TocFault::in_layer`].

mod chunker;
mod frames;
mod layout;
mod tarsplit;
mod toc;
mod write;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod write_tests;

pub use layout::{
    CURRENT_FOOTER_SIZE, Footer, LEGACY_FOOTER_SIZE, Layout, Position, SKIPPABLE_HEADER,
    SKIPPABLE_MAGIC, Variant,
};
pub use tarsplit::{TarSplit, TarSplitEntry, TarSplitReader, crc64_iso};
pub use toc::{EntryType, FileFrame, Toc, TocEntry, TocFile};
pub use write::{ChunkedLayer, ChunkedWriter};

use crate::oci::digest::Digest;

/// How large the metadata of a layer may be once decompressed. A TOC
/// lists every file of the layer in JSON (a few hundred bytes each); the
/// tar-split holds every tar header in base64. Debian's 9,000-file image
/// has a TOC of about 3 MB, so these leave room for layers a hundred
/// times larger while bounding what a hostile blob can make us hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest decompressed TOC.
    pub toc: u64,
    /// The largest decompressed tar-split.
    pub tar_split: u64,
    /// The longest single line of the tar-split: one tar header with its
    /// PAX records, in base64.
    pub tar_split_line: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            toc: 256 << 20,
            tar_split: 1 << 30,
            tar_split_line: 16 << 20,
        }
    }
}

/// Why the zstd:chunked metadata of a layer cannot be used. The variants
/// are the ways it can lie; [`TocFault::kind`] names them on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TocFault {
    /// An annotation is present but not what the format says.
    #[error("the annotation {key} is {value:?}: {reason}")]
    Annotation {
        /// The annotation key.
        key: String,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The blob's last bytes are not a footer we know.
    #[error("the footer is invalid: {reason}")]
    Footer {
        /// What is wrong with it.
        reason: String,
    },
    /// The compressed TOC (or tar-split) is not the one its checksum
    /// names.
    #[error("the {what} has digest {actual}, not the {expected} recorded for it")]
    Checksum {
        /// "TOC" or "tar-split".
        what: &'static str,
        /// The recorded digest.
        expected: String,
        /// The digest of what the blob holds.
        actual: String,
    },
    /// A range the metadata names lies outside the blob or the region it
    /// belongs in.
    #[error("{what} ends at byte {end}, past {limit}")]
    OutOfBounds {
        /// What the range is.
        what: String,
        /// Where it ends.
        end: u64,
        /// Where it may end at most.
        limit: String,
    },
    /// Two frames claim the same bytes of the blob.
    #[error("{first} and {second} overlap at byte {at}")]
    Overlap {
        /// The frame that starts first.
        first: String,
        /// The frame that starts inside it.
        second: String,
        /// Where the second starts.
        at: u64,
    },
    /// Metadata that decompresses to more than it declares or than the
    /// limit allows: a decompression bomb.
    #[error("the {what} is larger than {limit} bytes")]
    TooLarge {
        /// "TOC", "tar-split" or a line of it.
        what: &'static str,
        /// The size it may have at most.
        limit: u64,
    },
    /// Metadata that is not a zstd frame, or decodes to another size than
    /// declared.
    #[error("the {what} cannot be decompressed: {reason}")]
    Compression {
        /// "TOC" or "tar-split".
        what: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// Metadata that is not the JSON the format describes.
    #[error("the {what} is not valid: {reason}")]
    Json {
        /// "TOC" or "tar-split".
        what: &'static str,
        /// Where and what is wrong.
        reason: String,
    },
    /// An entry whose name could reach outside the layer or name nothing.
    #[error("the entry {name:?} has an unsafe name: {reason}")]
    UnsafeName {
        /// The name, cut short if long.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An entry whose sizes, digests or chunks do not add up.
    #[error("the entry {name:?} is inconsistent: {reason}")]
    Entry {
        /// The entry's name, cut short if long.
        name: String,
        /// What does not add up.
        reason: String,
    },
}

impl TocFault {
    /// A short stable name of the kind of fault, for the wire and for
    /// tests: `annotation`, `footer`, `checksum`, `bounds`, `overlap`,
    /// `too-large`, `compression`, `json`, `name` or `entry`.
    pub fn kind(&self) -> &'static str {
        match self {
            TocFault::Annotation { .. } => "annotation",
            TocFault::Footer { .. } => "footer",
            TocFault::Checksum { .. } => "checksum",
            TocFault::OutOfBounds { .. } => "bounds",
            TocFault::Overlap { .. } => "overlap",
            TocFault::TooLarge { .. } => "too-large",
            TocFault::Compression { .. } => "compression",
            TocFault::Json { .. } => "json",
            TocFault::UnsafeName { .. } => "name",
            TocFault::Entry { .. } => "entry",
        }
    }

    /// This fault as the repository error for the layer blob `layer`.
    pub fn in_layer(self, layer: &str) -> crate::Error {
        crate::Error::InvalidChunkedToc {
            layer: layer.to_owned(),
            fault: self,
        }
    }
}

/// Fail unless `frame`, the compressed `what` (TOC or tar-split), has
/// the `length` its position says and the digest `expected`, if known.
fn check_frame(
    what: &'static str,
    frame: &[u8],
    length: u64,
    expected: Option<&str>,
) -> Result<(), TocFault> {
    if frame.len() as u64 != length {
        return Err(TocFault::Compression {
            what,
            reason: format!("{} bytes were given for a frame of {length}", frame.len()),
        });
    }
    if let Some(expected) = expected {
        let actual = sha256_digest(frame);
        if actual != expected {
            return Err(TocFault::Checksum {
                what,
                expected: expected.to_owned(),
                actual,
            });
        }
    }
    Ok(())
}

/// `sha256:<hex>` of `bytes`, as OCI and the TOC write digests.
pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    Digest::of(bytes).to_string()
}

/// `sha256:<hex>` of a finished hash.
pub(crate) fn hex_digest(hash: [u8; 32]) -> String {
    Digest::from_hash(hash).to_string()
}

/// Whether `text` is `sha256:` and 64 lowercase hex digits.
pub(crate) fn is_sha256_digest(text: &str) -> bool {
    Digest::is_sha256(text)
}

/// A name for a message: cut short if it is long, so that a hostile TOC
/// cannot make the error itself huge.
pub(crate) fn shown(name: &str) -> String {
    const SHOWN: usize = 200;
    if name.len() <= SHOWN {
        return name.to_owned();
    }
    let mut end = SHOWN;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &name[..end])
}
