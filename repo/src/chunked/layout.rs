//! Where a zstd:chunked blob keeps its metadata: the layer descriptor's
//! annotations, or the footer at the blob's end.

use super::{TocFault, is_sha256_digest};

/// The magic number of the zstd skippable frames the metadata travels
/// in (0x184D2A50, little-endian), which decoders pass over.
pub const SKIPPABLE_MAGIC: [u8; 4] = [0x50, 0x2a, 0x4d, 0x18];
/// A skippable frame's header: the magic and a 32-bit content size.
pub const SKIPPABLE_HEADER: u64 = 8;
/// The content size of the current variant's footer frame.
pub const CURRENT_FOOTER_SIZE: u64 = 64;
/// The content size of the legacy variant's footer frame.
pub const LEGACY_FOOTER_SIZE: u64 = 40;

/// The last eight bytes of a current footer. The legacy one differs in
/// one letter's case; containers/storage changed it with the footer.
const CURRENT_MAGIC: &[u8; 8] = b"GNUlInUx";
/// The last eight bytes of a legacy footer.
const LEGACY_MAGIC: &[u8; 8] = b"GnUlInUx";
/// The one TOC format there is, "CRFS", in the footer and the position
/// annotation.
const MANIFEST_TYPE_CRFS: u64 = 1;

/// The current annotation of the compressed TOC's sha256.
pub(crate) const CURRENT_CHECKSUM: &str = "io.github.containers.zstd-chunked.manifest-checksum";
/// The current annotation of where the TOC is.
pub(crate) const CURRENT_POSITION: &str = "io.github.containers.zstd-chunked.manifest-position";
/// The current annotation of where the tar-split is.
pub(crate) const TAR_SPLIT_POSITION: &str = "io.github.containers.zstd-chunked.tarsplit-position";
/// The legacy annotation of the compressed TOC's sha256.
pub(crate) const LEGACY_CHECKSUM: &str = "io.containers.zstd-chunked.manifest-checksum";
/// The legacy annotation of where the TOC is.
pub(crate) const LEGACY_POSITION: &str = "io.containers.zstd-chunked.manifest-position";

/// Which generation of the format a blob is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `io.containers.zstd-chunked.*` annotations or a 40-byte footer, and
    /// no tar-split: what containers/storage wrote until 2023, Debian
    /// bookworm's skopeo 1.9.3 among them.
    Legacy,
    /// `io.github.containers.zstd-chunked.*` annotations and a 64-byte
    /// footer locating the TOC and the tar-split.
    Current,
}

/// A skippable frame's content: where it starts in the blob (after the
/// frame header), how long it is, and how long it decompresses to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The offset of the compressed bytes in the blob.
    pub offset: u64,
    /// How many compressed bytes there are.
    pub length: u64,
    /// How many bytes they decompress to.
    pub uncompressed: u64,
}

impl Position {
    /// Where the compressed bytes end, or `None` if that overflows.
    pub fn end(&self) -> Option<u64> {
        self.offset.checked_add(self.length)
    }
}

/// The footer frame at the end of a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    /// Which footer it is.
    pub variant: Variant,
    /// Where the TOC is.
    pub toc: Position,
    /// Where the tar-split is; the legacy footer has none.
    pub tar_split: Option<Position>,
}

impl Footer {
    /// The size of the whole footer frame of `variant`, header included:
    /// how many bytes from the end of a blob to read for [`Footer::parse`].
    pub fn frame_size(variant: Variant) -> u64 {
        SKIPPABLE_HEADER
            + match variant {
                Variant::Legacy => LEGACY_FOOTER_SIZE,
                Variant::Current => CURRENT_FOOTER_SIZE,
            }
    }

    /// The footer at the end of `tail`, the last bytes of a blob (72 are
    /// enough for either variant).
    pub fn parse(tail: &[u8]) -> Result<Footer, TocFault> {
        for variant in [Variant::Current, Variant::Legacy] {
            let size = Footer::frame_size(variant) as usize;
            let Some(frame) = tail.len().checked_sub(size).map(|at| &tail[at..]) else {
                continue;
            };
            let magic = match variant {
                Variant::Legacy => LEGACY_MAGIC,
                Variant::Current => CURRENT_MAGIC,
            };
            if !frame.ends_with(magic) {
                continue;
            }
            let declared = u32::from_le_bytes(frame[4..8].try_into().expect("four bytes"));
            if frame[..4] != SKIPPABLE_MAGIC || u64::from(declared) != size as u64 - 8 {
                return Err(TocFault::Footer {
                    reason: format!(
                        "it ends in {:?} but is not a skippable frame of {} bytes",
                        String::from_utf8_lossy(magic),
                        size - 8
                    ),
                });
            }
            return Footer::fields(variant, &frame[8..]);
        }
        Err(TocFault::Footer {
            reason: "the blob does not end in a zstd:chunked footer".to_owned(),
        })
    }

    /// The footer of `variant` from its frame content.
    fn fields(variant: Variant, content: &[u8]) -> Result<Footer, TocFault> {
        let word = |i: usize| {
            u64::from_le_bytes(content[i * 8..i * 8 + 8].try_into().expect("eight bytes"))
        };
        if word(3) != MANIFEST_TYPE_CRFS {
            return Err(TocFault::Footer {
                reason: format!("its manifest type is {}, not 1", word(3)),
            });
        }
        let toc = Position {
            offset: word(0),
            length: word(1),
            uncompressed: word(2),
        };
        let tar_split = (variant == Variant::Current).then(|| Position {
            offset: word(4),
            length: word(5),
            uncompressed: word(6),
        });
        Ok(Footer {
            variant,
            toc,
            tar_split,
        })
    }

    /// The whole footer frame, header included, as it ends a blob.
    pub fn encode(&self) -> Vec<u8> {
        let content = Footer::frame_size(self.variant) - SKIPPABLE_HEADER;
        let mut frame = Vec::with_capacity(72);
        frame.extend_from_slice(&SKIPPABLE_MAGIC);
        frame.extend_from_slice(&(content as u32).to_le_bytes());
        for word in [self.toc.offset, self.toc.length, self.toc.uncompressed] {
            frame.extend_from_slice(&word.to_le_bytes());
        }
        frame.extend_from_slice(&MANIFEST_TYPE_CRFS.to_le_bytes());
        match self.variant {
            Variant::Legacy => frame.extend_from_slice(LEGACY_MAGIC),
            Variant::Current => {
                let split = self.tar_split.unwrap_or(Position {
                    offset: 0,
                    length: 0,
                    uncompressed: 0,
                });
                for word in [split.offset, split.length, split.uncompressed] {
                    frame.extend_from_slice(&word.to_le_bytes());
                }
                frame.extend_from_slice(CURRENT_MAGIC);
            }
        }
        frame
    }
}

/// Where a blob's metadata is and what it must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Which generation of the format.
    pub variant: Variant,
    /// Where the compressed TOC is.
    pub toc: Position,
    /// The sha256 (`sha256:<hex>`) of the compressed TOC, from the
    /// manifest; `None` when the layout came from the footer alone.
    pub toc_checksum: Option<String>,
    /// Where the compressed tar-split is, when the blob has one.
    pub tar_split: Option<Position>,
}

impl Layout {
    /// The layout the annotations of a layer descriptor give, `get`
    /// looking one up by key; `None` when they name no zstd:chunked
    /// layer. The current keys win when a descriptor has both.
    pub fn from_annotations<'a>(
        get: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<Option<Layout>, TocFault> {
        let (variant, checksum_key, position_key) = if get(CURRENT_POSITION).is_some() {
            (Variant::Current, CURRENT_CHECKSUM, CURRENT_POSITION)
        } else if get(LEGACY_POSITION).is_some() {
            (Variant::Legacy, LEGACY_CHECKSUM, LEGACY_POSITION)
        } else {
            return Ok(None);
        };
        let position = get(position_key).expect("looked up above");
        let toc = parse_position(position_key, position, true)?;
        let checksum = get(checksum_key).ok_or_else(|| TocFault::Annotation {
            key: checksum_key.to_owned(),
            value: String::new(),
            reason: format!("it is missing, and {position_key} is set"),
        })?;
        if !is_sha256_digest(checksum) {
            return Err(TocFault::Annotation {
                key: checksum_key.to_owned(),
                value: checksum.to_owned(),
                reason: "it is not sha256:<64 lowercase hex digits>".to_owned(),
            });
        }
        let tar_split = match (variant, get(TAR_SPLIT_POSITION)) {
            (Variant::Current, Some(value)) => {
                Some(parse_position(TAR_SPLIT_POSITION, value, false)?)
            }
            _ => None,
        };
        Ok(Some(Layout {
            variant,
            toc,
            toc_checksum: Some(checksum.to_owned()),
            tar_split,
        }))
    }

    /// The layout a footer gives: no checksum to verify the TOC against.
    pub fn from_footer(footer: &Footer) -> Layout {
        Layout {
            variant: footer.variant,
            toc: footer.toc,
            toc_checksum: None,
            tar_split: footer.tar_split,
        }
    }

    /// The annotations a layer descriptor carries for this layout, the
    /// current keys or the legacy ones.
    pub fn annotations(&self) -> Vec<(String, String)> {
        let toc = self.toc;
        let position = format!("{}:{}:{}:1", toc.offset, toc.length, toc.uncompressed);
        let (checksum_key, position_key) = match self.variant {
            Variant::Legacy => (LEGACY_CHECKSUM, LEGACY_POSITION),
            Variant::Current => (CURRENT_CHECKSUM, CURRENT_POSITION),
        };
        let mut out = vec![(position_key.to_owned(), position)];
        if let Some(checksum) = &self.toc_checksum {
            out.push((checksum_key.to_owned(), checksum.clone()));
        }
        if let (Variant::Current, Some(split)) = (self.variant, self.tar_split) {
            let value = format!("{}:{}:{}", split.offset, split.length, split.uncompressed);
            out.push((TAR_SPLIT_POSITION.to_owned(), value));
        }
        out
    }

    /// Where the files' frames must end: the header of the first
    /// metadata frame.
    pub fn data_end(&self) -> u64 {
        let first = self
            .tar_split
            .map_or(self.toc.offset, |s| s.offset.min(self.toc.offset));
        first.saturating_sub(SKIPPABLE_HEADER)
    }

    /// Fail unless the metadata frames lie inside a blob of `blob_size`
    /// bytes, after the header of their skippable frame, apart from each
    /// other, and before the footer.
    pub fn check(&self, blob_size: u64) -> Result<(), TocFault> {
        let footer_start = blob_size.saturating_sub(Footer::frame_size(self.variant));
        let mut frames = vec![("the TOC", self.toc)];
        frames.extend(self.tar_split.map(|s| ("the tar-split", s)));
        for (what, frame) in &frames {
            let end = frame.end().unwrap_or(u64::MAX);
            if end > footer_start {
                return Err(TocFault::OutOfBounds {
                    what: (*what).to_owned(),
                    end,
                    limit: format!("the footer at byte {footer_start} of {blob_size}"),
                });
            }
            if frame.offset < SKIPPABLE_HEADER {
                return Err(TocFault::OutOfBounds {
                    what: format!("the header of {what}'s skippable frame"),
                    end: frame.offset,
                    limit: format!("byte 0, as it starts at {}", frame.offset),
                });
            }
        }
        if let [(_, a), (_, b)] = frames[..] {
            let (first, second) = if a.offset <= b.offset { (a, b) } else { (b, a) };
            let first_end = first.end().unwrap_or(u64::MAX);
            if second.offset < first_end.saturating_add(SKIPPABLE_HEADER) {
                return Err(TocFault::Overlap {
                    first: "the TOC".to_owned(),
                    second: "the tar-split".to_owned(),
                    at: second.offset,
                });
            }
        }
        Ok(())
    }
}

/// An `offset:length:uncompressed[:type]` annotation; `with_type` when
/// the fourth field, the manifest type, must be there and be 1.
fn parse_position(key: &str, value: &str, with_type: bool) -> Result<Position, TocFault> {
    let invalid = |reason: &str| TocFault::Annotation {
        key: key.to_owned(),
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let fields: Vec<&str> = value.split(':').collect();
    let expected = if with_type { 4 } else { 3 };
    if fields.len() != expected {
        return Err(invalid(if with_type {
            "it is not offset:length:uncompressed_length:type"
        } else {
            "it is not offset:length:uncompressed_length"
        }));
    }
    let numbers: Vec<u64> = fields
        .iter()
        .map(|f| {
            // Only plain decimal digits: u64's parser also takes a `+`.
            if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid("a field is not a decimal number"));
            }
            f.parse()
                .map_err(|_| invalid("a field is larger than 64 bits"))
        })
        .collect::<Result<_, _>>()?;
    if with_type && numbers[3] != MANIFEST_TYPE_CRFS {
        return Err(invalid("its manifest type is not 1"));
    }
    Ok(Position {
        offset: numbers[0],
        length: numbers[1],
        uncompressed: numbers[2],
    })
}
