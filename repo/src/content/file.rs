//! One index file: the content digests of one stream's (or plain
//! image's) regular-file objects, as sorted fixed-size records, and the
//! chunks of those files a zstd:chunked TOC named.
//!
//! ```text
//! magic "CFSDCIX1" | id length: u32 LE | records: u64 LE
//! records × (sha256 of the content: 32 bytes | object id: id length bytes)
//! sha256 of everything before it: 32 bytes
//! ```
//!
//! A file with chunks is `CFSDCIX2`, whose header also counts them and
//! whose file records are followed by chunk records:
//!
//! ```text
//! magic "CFSDCIX2" | id length: u32 LE | records: u64 LE | chunks: u64 LE
//! records × (sha256 | object id)
//! chunks × (sha256 of the chunk's bytes: 32 | object id | offset: u64 LE | size: u64 LE)
//! sha256 of everything before it: 32 bytes
//! ```
//!
//! Records of each kind are sorted by digest with no digest twice, so
//! that a file is one `read` and a merge, and the trailing digest tells a
//! file cut short or garbled from a good one without trusting any of its
//! fields first. Files without chunks keep the first form, which every
//! earlier cfsd reads.

use composefs::fsverity::FsVerityHashValue;
use openssl::sha::{Sha256, sha256};

/// How an index file without chunks begins.
const MAGIC: &[u8; 8] = b"CFSDCIX1";
/// How an index file with chunks begins.
const MAGIC_CHUNKS: &[u8; 8] = b"CFSDCIX2";

/// Bytes before the first record, without and with chunks.
const HEADER: usize = 8 + 4 + 8;
const HEADER_CHUNKS: usize = HEADER + 8;

/// The bytes of the trailing digest.
const TRAILER: usize = 32;

/// A content digest: the sha256 of a file's uncompressed bytes.
pub(crate) type Sha256Digest = [u8; 32];

/// Where a chunk's bytes are stored: a stretch of a file object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredChunk<H> {
    /// The object of the file the chunk is part of.
    pub object: H,
    /// Where in that file the chunk starts.
    pub offset: u64,
    /// How many bytes it has.
    pub size: u64,
}

/// Why an index file was not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Damaged(pub String);

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The bytes of an index file holding `entries` and `chunks`, which it
/// sorts and deduplicates by digest.
pub(crate) fn encode<H: FsVerityHashValue>(
    entries: &mut Vec<(Sha256Digest, H)>,
    chunks: &mut Vec<(Sha256Digest, StoredChunk<H>)>,
) -> Vec<u8> {
    entries.sort_by_key(|e| e.0);
    entries.dedup_by(|a, b| a.0 == b.0);
    chunks.sort_by_key(|c| c.0);
    chunks.dedup_by(|a, b| a.0 == b.0);
    let id_len = size_of::<H>();
    let size =
        HEADER_CHUNKS + entries.len() * (32 + id_len) + chunks.len() * (48 + id_len) + TRAILER;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(if chunks.is_empty() {
        MAGIC
    } else {
        MAGIC_CHUNKS
    });
    out.extend_from_slice(&(id_len as u32).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    if !chunks.is_empty() {
        out.extend_from_slice(&(chunks.len() as u64).to_le_bytes());
    }
    for (digest, id) in entries.iter() {
        out.extend_from_slice(digest);
        out.extend_from_slice(id.as_bytes());
    }
    for (digest, chunk) in chunks.iter() {
        out.extend_from_slice(digest);
        out.extend_from_slice(chunk.object.as_bytes());
        out.extend_from_slice(&chunk.offset.to_le_bytes());
        out.extend_from_slice(&chunk.size.to_le_bytes());
    }
    let check = sha256(&out);
    out.extend_from_slice(&check);
    out
}

/// Call `each` with every file record of the index file `bytes`, in
/// digest order, once the whole file is known to be sound; nothing is
/// passed from a damaged file. How many records there were.
pub(crate) fn decode<H: FsVerityHashValue>(
    bytes: &[u8],
    each: impl FnMut(Sha256Digest, H),
) -> Result<usize, Damaged> {
    decode_all(bytes, each, |_, _| {})
}

/// [`decode`], also calling `each_chunk` with every chunk record.
pub(crate) fn decode_all<H: FsVerityHashValue>(
    bytes: &[u8],
    mut each: impl FnMut(Sha256Digest, H),
    mut each_chunk: impl FnMut(Sha256Digest, StoredChunk<H>),
) -> Result<usize, Damaged> {
    let damaged = |why: &str| Err(Damaged(why.to_owned()));
    let header = match bytes.get(..8) {
        Some(m) if m == MAGIC => HEADER,
        Some(m) if m == MAGIC_CHUNKS => HEADER_CHUNKS,
        _ => return damaged("it is not a content index file"),
    };
    if bytes.len() < header + TRAILER {
        return damaged("it is not a content index file");
    }
    let (body, check) = bytes.split_at(bytes.len() - TRAILER);
    let mut hasher = Sha256::new();
    hasher.update(body);
    if hasher.finish() != check {
        return damaged("its checksum does not match: it is cut short or garbled");
    }
    let id_len = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes")) as usize;
    if id_len != size_of::<H>() {
        return damaged("its object ids are not this repository's algorithm");
    }
    let word = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
    let count = word(12);
    let chunk_count = if header == HEADER_CHUNKS { word(20) } else { 0 };
    let records = &body[header..];
    let (file_len, chunk_len) = (32 + id_len, 48 + id_len);
    let expected = count
        .checked_mul(file_len as u64)
        .zip(chunk_count.checked_mul(chunk_len as u64))
        .and_then(|(a, b)| a.checked_add(b));
    if expected != Some(records.len() as u64) {
        return damaged("its record count does not match its size");
    }
    let (files, chunks) = records.split_at(count as usize * file_len);
    let id_of = |id: &[u8]| {
        H::read_from_bytes(id).map_err(|_| Damaged("an object id of the wrong size".to_owned()))
    };
    let mut sorted = Sorted::default();
    for record in files.chunks_exact(file_len) {
        let (digest, id) = record.split_at(32);
        each(sorted.next(digest)?, id_of(id)?);
    }
    let mut sorted = Sorted::default();
    for record in chunks.chunks_exact(chunk_len) {
        let (digest, rest) = record.split_at(32);
        let (id, place) = rest.split_at(id_len);
        let offset = u64::from_le_bytes(place[..8].try_into().expect("8 bytes"));
        let size = u64::from_le_bytes(place[8..].try_into().expect("8 bytes"));
        if size == 0 || offset.checked_add(size).is_none() {
            return damaged("a chunk record's stretch is empty or overflows");
        }
        let object = id_of(id)?;
        each_chunk(
            sorted.next(digest)?,
            StoredChunk {
                object,
                offset,
                size,
            },
        );
    }
    Ok(count as usize)
}

/// Checks that digests come in strictly increasing order.
#[derive(Default)]
struct Sorted {
    last: Option<Sha256Digest>,
}

impl Sorted {
    fn next(&mut self, digest: &[u8]) -> Result<Sha256Digest, Damaged> {
        let digest: Sha256Digest = digest.try_into().expect("32 bytes");
        if self.last.is_some_and(|last| last >= digest) {
            return Err(Damaged("its records are not sorted".to_owned()));
        }
        self.last = Some(digest);
        Ok(digest)
    }
}
