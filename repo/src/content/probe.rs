//! Timing the content index on a real or made-up repository, for the
//! figures in docs/benchmarks.md (`repo/examples/content_index.rs`). Not
//! a supported interface.

use std::time::{Duration, Instant};

use composefs::{fsverity::FsVerityHashValue, repository::Repository as Store};
use openssl::sha::sha256;

use super::{ContentIndex, file, for_each_file, record};
use crate::{Error, Repository, repository::with_store};

/// What one open and a round of lookups took.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Index files read.
    pub files: usize,
    /// Distinct contents known.
    pub entries: usize,
    /// Opening: reading and merging every file.
    pub open: Duration,
    /// Lookups made: each known digest once, and as many unknown ones.
    pub lookups: usize,
    /// Of those, found.
    pub found: usize,
    /// All the lookups.
    pub lookup_time: Duration,
}

/// Open the content index of `repo` and look up every digest it knows
/// and as many it does not.
pub fn probe(repo: &Repository) -> Result<Probe, Error> {
    with_store!(repo.store(), s => probe_store(s))
}

fn probe_store<H: FsVerityHashValue>(store: &Store<H>) -> Result<Probe, Error> {
    let mut known = Vec::new();
    for_each_file(store, |_, bytes| {
        if let Some(bytes) = bytes {
            let _ = file::decode::<H>(&bytes, |digest, _| known.push(digest));
        }
    })
    .map_err(|e| Error::storage("reading the content index", e))?;
    let unknown: Vec<[u8; 32]> = (0..known.len() as u64)
        .map(|i| sha256(&i.to_le_bytes()))
        .collect();
    let start = Instant::now();
    let index = ContentIndex::open(store)?;
    let open = start.elapsed();
    let start = Instant::now();
    let found = known
        .iter()
        .chain(&unknown)
        .filter(|d| index.find(d).is_some())
        .count();
    Ok(Probe {
        files: index.files().0,
        entries: index.len(),
        open,
        lookups: known.len() + unknown.len(),
        found,
        lookup_time: start.elapsed(),
    })
}

/// Add `layers` made-up index files of `per_layer` entries each to
/// `repo`, each keyed by a small object written for it: a repository of
/// that many layers, as far as the index can tell.
pub fn synthesize(repo: &Repository, layers: u64, per_layer: u64) -> Result<(), Error> {
    with_store!(repo.store(), s => synthesize_store(s, layers, per_layer))
}

fn synthesize_store<H: FsVerityHashValue>(
    store: &Store<H>,
    layers: u64,
    per_layer: u64,
) -> Result<(), Error> {
    let failed = |e| Error::storage("making up an index", e);
    for layer in 0..layers {
        let key: H = store
            .ensure_object(format!("made-up layer stream {layer}").as_bytes())
            .map_err(|e| Error::storage("making up an index", e))?;
        let entries = (0..per_layer)
            .map(|i| {
                let n = (layer * per_layer + i).to_le_bytes();
                (sha256(&n), composefs::fsverity::compute_verity::<H>(&n))
            })
            .collect();
        record(store, &key, entries, Vec::new()).map_err(failed)?;
    }
    Ok(())
}
