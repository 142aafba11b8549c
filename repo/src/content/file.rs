//! One index file: the content digests of one stream's (or plain
//! image's) regular-file objects, as sorted fixed-size records.
//!
//! ```text
//! magic "CFSDCIX1" | id length: u32 LE | records: u64 LE
//! records × (sha256 of the content: 32 bytes | object id: id length bytes)
//! sha256 of everything before it: 32 bytes
//! ```
//!
//! Records are sorted by digest with no digest twice, so that a file is
//! one `read` and a merge, and the trailing digest tells a file cut short
//! or garbled from a good one without trusting any of its fields first.

use composefs::fsverity::FsVerityHashValue;
use openssl::sha::{Sha256, sha256};

/// How every index file begins.
const MAGIC: &[u8; 8] = b"CFSDCIX1";

/// Bytes before the first record.
const HEADER: usize = 8 + 4 + 8;

/// The bytes of the trailing digest.
const TRAILER: usize = 32;

/// A content digest: the sha256 of a file's uncompressed bytes.
pub(crate) type Sha256Digest = [u8; 32];

/// Why an index file was not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Damaged(pub String);

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The bytes of an index file holding `entries`, which it sorts and
/// deduplicates by digest.
pub(crate) fn encode<H: FsVerityHashValue>(entries: &mut Vec<(Sha256Digest, H)>) -> Vec<u8> {
    entries.sort_by_key(|e| e.0);
    entries.dedup_by(|a, b| a.0 == b.0);
    let id_len = size_of::<H>();
    let mut out = Vec::with_capacity(HEADER + entries.len() * (32 + id_len) + TRAILER);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(id_len as u32).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (digest, id) in entries.iter() {
        out.extend_from_slice(digest);
        out.extend_from_slice(id.as_bytes());
    }
    let check = sha256(&out);
    out.extend_from_slice(&check);
    out
}

/// Call `each` with every record of the index file `bytes`, in digest
/// order, once the whole file is known to be sound; nothing is passed
/// from a damaged file.
pub(crate) fn decode<H: FsVerityHashValue>(
    bytes: &[u8],
    mut each: impl FnMut(Sha256Digest, H),
) -> Result<usize, Damaged> {
    let damaged = |why: &str| Err(Damaged(why.to_owned()));
    if bytes.len() < HEADER + TRAILER || &bytes[..8] != MAGIC {
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
    let count = u64::from_le_bytes(body[12..20].try_into().expect("8 bytes"));
    let records = &body[HEADER..];
    let record = 32 + id_len;
    if count.checked_mul(record as u64) != Some(records.len() as u64) {
        return damaged("its record count does not match its size");
    }
    let mut last: Option<&[u8]> = None;
    for chunk in records.chunks_exact(record) {
        let (digest, id) = chunk.split_at(32);
        if last.is_some_and(|last| last >= digest) {
            return damaged("its records are not sorted");
        }
        last = Some(digest);
        let id = H::read_from_bytes(id)
            .map_err(|_| Damaged("an object id of the wrong size".to_owned()))?;
        each(digest.try_into().expect("32 bytes"), id);
    }
    Ok(count as usize)
}
