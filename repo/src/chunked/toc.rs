//! The table of contents: every entry of the layer tar, and for each
//! regular file the frames its content is compressed in.

use std::{collections::BTreeMap, io::Read, ops::Range};

use serde::{Deserialize, Serialize};

use super::{Layout, Limits, TocFault, check_frame, is_sha256_digest, shown};

/// The longest path a TOC entry may name, as for tar entries.
const MAX_PATH: usize = 4096;
/// The longest component of such a path.
const MAX_NAME: usize = 255;
/// The most a zstd frame can expand: a 128 KiB block of one repeated
/// byte takes four bytes. A file whose frames are smaller than its size
/// over this cannot be what the TOC says.
const MAX_RATIO: u64 = 32 << 10;

/// The kind of a TOC entry, as containers/storage spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryType {
    /// A regular file.
    Reg,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A hard link to an earlier entry.
    Hardlink,
    /// A character device.
    Char,
    /// A block device.
    Block,
    /// A FIFO.
    Fifo,
    /// A further chunk of the regular file just before it.
    Chunk,
}

/// One entry of the TOC. Numbers that are zero and strings that are empty
/// are left out, as Go's `omitempty` does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TocEntry {
    /// What the entry is.
    #[serde(rename = "type")]
    pub entry_type: EntryType,
    /// Its path in the layer, as in the tar.
    pub name: String,
    /// A symlink's target, or the path a hard link names.
    #[serde(rename = "linkName", default, skip_serializing_if = "String::is_empty")]
    pub link_name: String,
    /// Permission bits (and set-id, sticky).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mode: u64,
    /// A regular file's size.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// The owner.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub uid: u64,
    /// The group.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gid: u64,
    /// The modification time, RFC 3339.
    #[serde(rename = "modtime", default, skip_serializing_if = "Option::is_none")]
    pub mod_time: Option<String>,
    /// The access time, RFC 3339, where the tar had one.
    #[serde(
        rename = "accesstime",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub access_time: Option<String>,
    /// The change time, RFC 3339, where the tar had one.
    #[serde(
        rename = "changetime",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub change_time: Option<String>,
    /// A device's major number.
    #[serde(rename = "devMajor", default, skip_serializing_if = "is_zero")]
    pub dev_major: u64,
    /// A device's minor number.
    #[serde(rename = "devMinor", default, skip_serializing_if = "is_zero")]
    pub dev_minor: u64,
    /// Extended attributes, values in base64.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
    /// `sha256:<hex>` of a regular file's whole content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Where the file's (or this chunk's) first frame starts in the blob.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: u64,
    /// Where the file's last frame ends in the blob.
    #[serde(rename = "endOffset", default, skip_serializing_if = "is_zero")]
    pub end_offset: u64,
    /// How many bytes of the file this chunk holds.
    #[serde(rename = "chunkSize", default, skip_serializing_if = "is_zero")]
    pub chunk_size: u64,
    /// Where in the file this chunk starts.
    #[serde(rename = "chunkOffset", default, skip_serializing_if = "is_zero")]
    pub chunk_offset: u64,
    /// `sha256:<hex>` of this chunk's bytes.
    #[serde(
        rename = "chunkDigest",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub chunk_digest: Option<String>,
    /// `zeros` for a chunk of zero bytes; absent for data.
    #[serde(rename = "chunkType", default, skip_serializing_if = "Option::is_none")]
    pub chunk_type: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl TocEntry {
    /// An entry of `entry_type` named `name`, everything else empty.
    pub fn new(entry_type: EntryType, name: impl Into<String>) -> Self {
        TocEntry {
            entry_type,
            name: name.into(),
            link_name: String::new(),
            mode: 0,
            size: 0,
            uid: 0,
            gid: 0,
            mod_time: None,
            access_time: None,
            change_time: None,
            dev_major: 0,
            dev_minor: 0,
            xattrs: BTreeMap::new(),
            digest: None,
            offset: 0,
            end_offset: 0,
            chunk_size: 0,
            chunk_offset: 0,
            chunk_digest: None,
            chunk_type: None,
        }
    }
}

/// A decoded, checked table of contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Toc {
    /// Always 1.
    pub version: u64,
    /// The entries, in the tar's order.
    pub entries: Vec<TocEntry>,
    /// `sha256:<hex>` of the compressed tar-split, in the current variant.
    #[serde(
        rename = "tarSplitDigest",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub tar_split_digest: Option<String>,
}

/// One chunk of a regular file: the frame of the blob it is compressed in
/// and the bytes of the file it decompresses to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFrame {
    /// The compressed bytes in the blob.
    pub blob: Range<u64>,
    /// The bytes of the file they decompress to.
    pub file: Range<u64>,
    /// `sha256:<hex>` of those file bytes, where the TOC records one.
    pub digest: Option<String>,
    /// Whether the TOC says those bytes are all zeros.
    pub zeros: bool,
}

/// A regular file of the TOC with its chunk entries.
#[derive(Debug, Clone, Copy)]
pub struct TocFile<'a> {
    /// The file's own entry.
    pub entry: &'a TocEntry,
    /// The `chunk` entries after it.
    pub chunks: &'a [TocEntry],
}

impl TocFile<'_> {
    /// The frames of the file in order: one for a file without chunks,
    /// none for an empty one.
    pub fn frames(&self) -> Vec<FileFrame> {
        let entry = self.entry;
        if entry.size == 0 {
            return Vec::new();
        }
        if self.chunks.is_empty() && entry.chunk_size == 0 {
            return vec![FileFrame {
                blob: entry.offset..entry.end_offset,
                file: 0..entry.size,
                digest: entry.digest.clone(),
                zeros: false,
            }];
        }
        let all: Vec<&TocEntry> = std::iter::once(entry).chain(self.chunks).collect();
        all.iter()
            .enumerate()
            .map(|(i, chunk)| {
                let end = all.get(i + 1).map_or(entry.end_offset, |next| next.offset);
                FileFrame {
                    blob: chunk.offset..end,
                    file: chunk.chunk_offset..chunk.chunk_offset + chunk.chunk_size,
                    digest: chunk.chunk_digest.clone(),
                    zeros: chunk.chunk_type.as_deref() == Some("zeros"),
                }
            })
            .collect()
    }
}

impl Toc {
    /// The TOC of a blob of `blob_size` bytes from `frame`, the bytes at
    /// `layout.toc`: checked against the layout's checksum, decompressed
    /// within `limits` and the declared size, parsed, and validated.
    pub fn decode(
        frame: &[u8],
        layout: &Layout,
        blob_size: u64,
        limits: &Limits,
    ) -> Result<Toc, TocFault> {
        layout.check(blob_size)?;
        check_frame(
            "TOC",
            frame,
            layout.toc.length,
            layout.toc_checksum.as_deref(),
        )?;
        let json = decompress(frame, layout.toc.uncompressed, limits.toc, "TOC")?;
        let mut de = serde_json::Deserializer::from_slice(&json);
        let toc: Toc = serde_path_to_error::deserialize(&mut de).map_err(|e| TocFault::Json {
            what: "TOC",
            reason: e.to_string(),
        })?;
        de.end().map_err(|e| TocFault::Json {
            what: "TOC",
            reason: e.to_string(),
        })?;
        toc.validate(layout.data_end())?;
        Ok(toc)
    }

    /// The TOC as the JSON the format stores (before compression).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a TOC serialises")
    }

    /// The regular files, each with its chunk entries.
    pub fn files(&self) -> impl Iterator<Item = TocFile<'_>> {
        let entries = &self.entries;
        entries
            .iter()
            .enumerate()
            .filter(|(_, entry)| entry.entry_type == EntryType::Reg)
            .map(move |(i, entry)| {
                let chunks = entries[i + 1..]
                    .iter()
                    .take_while(|e| e.entry_type == EntryType::Chunk)
                    .count();
                TocFile {
                    entry,
                    chunks: &entries[i + 1..i + 1 + chunks],
                }
            })
    }

    /// Fail unless every entry is well-formed and the files' frames lie,
    /// in order and apart, before `data_end`.
    pub fn validate(&self, data_end: u64) -> Result<(), TocFault> {
        if self.version != 1 {
            return Err(TocFault::Json {
                what: "TOC",
                reason: format!("its version is {}, not 1", self.version),
            });
        }
        if let Some(digest) = &self.tar_split_digest
            && !is_sha256_digest(digest)
        {
            return Err(TocFault::Json {
                what: "TOC",
                reason: format!("tarSplitDigest {:?} is not a sha256 digest", shown(digest)),
            });
        }
        let mut previous: Option<(&str, u64)> = None;
        for (i, entry) in self.entries.iter().enumerate() {
            check_entry(entry)?;
            match entry.entry_type {
                EntryType::Reg => {}
                EntryType::Chunk => {
                    let starts_run = i == 0 || {
                        let before = &self.entries[i - 1];
                        !matches!(before.entry_type, EntryType::Reg | EntryType::Chunk)
                    };
                    if starts_run {
                        return Err(entry_fault(entry, "a chunk that follows no regular file"));
                    }
                }
                _ => {
                    if entry.offset != 0 || entry.end_offset != 0 || entry.digest.is_some() {
                        return Err(entry_fault(
                            entry,
                            "content frames on an entry without content",
                        ));
                    }
                }
            }
        }
        for file in self.files() {
            let frames = check_file(&file, data_end)?;
            let Some(first) = frames.first() else {
                continue;
            };
            if let Some((before, end)) = previous
                && first.blob.start < end
            {
                return Err(TocFault::Overlap {
                    first: format!("the frames of {:?}", shown(before)),
                    second: format!("those of {:?}", shown(&file.entry.name)),
                    at: first.blob.start,
                });
            }
            previous = Some((&file.entry.name, file.entry.end_offset));
        }
        Ok(())
    }
}

fn entry_fault(entry: &TocEntry, reason: impl Into<String>) -> TocFault {
    TocFault::Entry {
        name: shown(&entry.name),
        reason: reason.into(),
    }
}

/// The checks of one entry that need no other entry: what a reader
/// refuses, and so what the writer must not write.
pub(super) fn check_entry(entry: &TocEntry) -> Result<(), TocFault> {
    let may_be_root = entry.entry_type == EntryType::Dir;
    check_name(&entry.name, may_be_root)?;
    match entry.entry_type {
        EntryType::Hardlink => check_name(&entry.link_name, false)?,
        EntryType::Symlink if entry.link_name.is_empty() || entry.link_name.contains('\0') => {
            return Err(entry_fault(entry, "a symlink without a usable target"));
        }
        _ => {}
    }
    if entry.mode > 0o7777777 {
        return Err(entry_fault(
            entry,
            format!("mode {:o} is not a tar mode", entry.mode),
        ));
    }
    if entry.uid > u64::from(u32::MAX) || entry.gid > u64::from(u32::MAX) {
        return Err(entry_fault(entry, "an owner past 32 bits"));
    }
    for digest in [&entry.digest, &entry.chunk_digest].into_iter().flatten() {
        if !is_sha256_digest(digest) {
            return Err(entry_fault(
                entry,
                format!("digest {:?} is not a sha256 digest", shown(digest)),
            ));
        }
    }
    Ok(())
}

/// Fail unless `name` is a path inside the layer: not empty (unless
/// `may_be_root`, for the `./` a tar often starts with), no NUL, no `..`,
/// and within the lengths a tar entry may have.
fn check_name(name: &str, may_be_root: bool) -> Result<(), TocFault> {
    let unsafe_name = |reason: &str| TocFault::UnsafeName {
        name: shown(name),
        reason: reason.to_owned(),
    };
    if name.len() > MAX_PATH {
        return Err(unsafe_name("it is longer than 4096 bytes"));
    }
    if name.contains('\0') {
        return Err(unsafe_name("it has a NUL byte"));
    }
    let mut components = 0;
    for component in name.split('/') {
        match component {
            "" | "." => {}
            ".." => return Err(unsafe_name("it has a `..` component")),
            c if c.len() > MAX_NAME => {
                return Err(unsafe_name("a component is longer than 255 bytes"));
            }
            _ => components += 1,
        }
    }
    if components == 0 && !may_be_root {
        return Err(unsafe_name("it names no file"));
    }
    Ok(())
}

/// The frames of a regular file, checked: a digest for any content, the
/// chunks adding up to the size, each frame non-empty, in order, and
/// before `data_end`.
fn check_file(file: &TocFile<'_>, data_end: u64) -> Result<Vec<FileFrame>, TocFault> {
    let entry = file.entry;
    let fault = |reason: String| Err(entry_fault(entry, reason));
    if entry.size == 0 {
        if entry.offset != entry.end_offset || !file.chunks.is_empty() {
            return fault("content frames on an empty file".to_owned());
        }
        return Ok(Vec::new());
    }
    if entry.digest.is_none() {
        return fault("content without a digest".to_owned());
    }
    if entry.end_offset > data_end {
        return Err(TocFault::OutOfBounds {
            what: format!("the content of {:?}", shown(&entry.name)),
            end: entry.end_offset,
            limit: format!("the metadata at byte {data_end}"),
        });
    }
    if entry.offset >= entry.end_offset {
        return fault(format!(
            "its frames run from byte {} to {}",
            entry.offset, entry.end_offset
        ));
    }
    for chunk in file.chunks {
        if chunk.name != entry.name {
            return fault(format!("chunk of another file {:?}", shown(&chunk.name)));
        }
    }
    let frames = file.frames();
    let mut file_end = 0;
    let mut blob_start = entry.offset;
    for (i, frame) in frames.iter().enumerate() {
        let first = i == 0;
        if frame.file.start != file_end || frame.file.is_empty() {
            return fault(format!(
                "a chunk covers bytes {:?} where byte {file_end} is next",
                frame.file
            ));
        }
        if (!first && frame.blob.start <= blob_start) || frame.blob.end <= frame.blob.start {
            return fault(format!(
                "chunk frames out of order at byte {}",
                frame.blob.start
            ));
        }
        if frame.digest.is_none() && frames.len() > 1 {
            return fault("a chunk without a digest".to_owned());
        }
        file_end = frame.file.end;
        blob_start = frame.blob.start;
    }
    if file_end != entry.size {
        return fault(format!(
            "chunks add up to {file_end} bytes of {}",
            entry.size
        ));
    }
    let compressed = entry.end_offset - entry.offset;
    if entry.size / MAX_RATIO > compressed {
        return fault(format!(
            "{compressed} compressed bytes cannot hold {} bytes",
            entry.size
        ));
    }
    Ok(frames)
}

/// `frame` decompressed, failing unless it gives exactly `declared`
/// bytes, at most `limit`: a declared size past the limit is refused
/// before any work, and a frame that inflates past what it declares is
/// stopped at the first byte too many.
pub(super) fn decompress(
    frame: &[u8],
    declared: u64,
    limit: u64,
    what: &'static str,
) -> Result<Vec<u8>, TocFault> {
    if declared > limit {
        return Err(TocFault::TooLarge { what, limit });
    }
    let decoder =
        zstd::stream::read::Decoder::with_buffer(frame).map_err(|e| TocFault::Compression {
            what,
            reason: e.to_string(),
        })?;
    let mut out = Vec::with_capacity(declared.min(1 << 20) as usize);
    decoder
        .take(declared + 1)
        .read_to_end(&mut out)
        .map_err(|e| TocFault::Compression {
            what,
            reason: e.to_string(),
        })?;
    if out.len() as u64 > declared {
        return Err(TocFault::TooLarge {
            what,
            limit: declared,
        });
    }
    if (out.len() as u64) < declared {
        return Err(TocFault::Compression {
            what,
            reason: format!(
                "it decodes to {} bytes, not the {declared} declared",
                out.len()
            ),
        });
    }
    Ok(out)
}
