//! Building the content index of streams and images named before it
//! existed (or whose index file a crash or damage took): once, on
//! request, with progress.

use std::{
    collections::{HashMap, HashSet},
    sync::atomic::{AtomicBool, Ordering},
};

use composefs::{fsverity::FsVerityHashValue, repository::Repository as Store};
use composefs_oci::LAYER_CONTENT_TYPE;
use rustix::{
    fs::{Dir, Mode, OFlags, openat},
    io::Errno,
};

use super::{Contents, Sha256Digest, file, for_each_file, hash_object, record};
use crate::{Error, Repository, repository::with_store};

/// How far building the content index is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexProgress {
    /// Streams and images indexed so far.
    pub done: u64,
    /// Streams and images that had no sound index file.
    pub total: u64,
    /// File objects hashed so far: those no index file knew.
    pub objects_hashed: u64,
}

/// How the name of a layer's split stream begins, in `streams/`.
const LAYER_STREAM: &str = "oci-layer-";

impl Repository {
    /// Give every layer stream and image that has no sound content index
    /// file one, reading and hashing the file objects it refers to that
    /// no index file knows; `progress` hears after each. A repository
    /// written before the index existed needs this once; after that only
    /// a crash between naming a stream and recording it leaves work.
    /// Keeps GC off while it runs; stops soon after `cancelled` is set.
    /// Returns the final progress.
    pub fn index_content(
        &self,
        progress: &dyn Fn(IndexProgress),
        cancelled: &AtomicBool,
    ) -> Result<IndexProgress, Error> {
        self.ensure_writable("building the content index")?;
        let _hold = self.hold("building the content index");
        with_store!(self.store(), s => build(s, progress, cancelled))
    }
}

/// See [`Repository::index_content`].
pub(super) fn build<H: FsVerityHashValue>(
    store: &Store<H>,
    progress: &dyn Fn(IndexProgress),
    cancelled: &AtomicBool,
) -> Result<IndexProgress, Error> {
    let mut hashing = Hashing {
        known: HashMap::new(),
        cancelled,
    };
    let storage = |what| move |e| Error::storage(what, e);
    let indexed;
    (indexed, hashing.known) = sound_files(store).map_err(storage("reading the content index"))?;
    let streams = layer_streams(store).map_err(storage("listing the layer streams"))?;
    let images = images(store).map_err(storage("listing the images"))?;
    let streams: Vec<_> = streams
        .into_iter()
        .filter(|(_, k)| !indexed.contains(k))
        .collect();
    let images: Vec<_> = images
        .into_iter()
        .filter(|k| !indexed.contains(k))
        .collect();
    let mut state = IndexProgress {
        done: 0,
        total: (streams.len() + images.len()) as u64,
        objects_hashed: 0,
    };
    progress(state);
    for (name, key) in streams {
        let mut objects = Vec::new();
        store
            .open_stream(&name, Some(&key), Some(LAYER_CONTENT_TYPE))
            .and_then(|mut reader| reader.get_object_refs(|id| objects.push(id.clone())))
            .map_err(|e| Error::storage("reading a layer stream", e))?;
        let entries = hashing.digests(store, objects, &mut state, true)?;
        record(store, &key, entries, Vec::new()).map_err(storage("writing the content index"))?;
        state.done += 1;
        progress(state);
    }
    // An OCI image's objects are its layers': only what no stream holds
    // (a plain image's files) is listed for an image.
    for key in images {
        let objects = store
            .objects_for_image(&key.to_hex())
            .map_err(|e| Error::storage("reading an image", e))?;
        let objects = objects.into_iter().collect();
        let entries = hashing.digests(store, objects, &mut state, false)?;
        record(store, &key, entries, Vec::new()).map_err(storage("writing the content index"))?;
        state.done += 1;
        progress(state);
    }
    Ok(state)
}

/// The digests known so far, by object, and when to stop.
struct Hashing<'c, H> {
    known: HashMap<H, Sha256Digest>,
    cancelled: &'c AtomicBool,
}

impl<H: FsVerityHashValue> Hashing<'_, H> {
    /// The entries for `objects`: digests already known, else read and
    /// hashed (and then known); with `with_known` false, only those
    /// hashed.
    fn digests(
        &mut self,
        store: &Store<H>,
        objects: Vec<H>,
        state: &mut IndexProgress,
        with_known: bool,
    ) -> Result<Contents<H>, Error> {
        let mut entries = Vec::new();
        for id in objects {
            if let Some(digest) = self.known.get(&id) {
                if with_known {
                    entries.push((*digest, id));
                }
                continue;
            }
            if self.cancelled.load(Ordering::Relaxed) {
                return Err(Error::internal(
                    "building the content index",
                    "the call was cancelled".into(),
                ));
            }
            let digest = hash_object(store, &id)
                .map_err(|e| Error::storage("hashing a stored object", e))?;
            state.objects_hashed += 1;
            self.known.insert(id.clone(), digest);
            entries.push((digest, id));
        }
        Ok(entries)
    }
}

/// The keys with a sound index file, and every object those files know
/// with its digest.
#[allow(clippy::type_complexity)]
fn sound_files<H: FsVerityHashValue>(
    store: &Store<H>,
) -> std::io::Result<(HashSet<H>, HashMap<H, Sha256Digest>)> {
    let (mut keys, mut known) = (HashSet::new(), HashMap::new());
    for_each_file(store, |key, bytes| {
        let Some(bytes) = bytes else { return };
        let decoded = file::decode::<H>(&bytes, |digest, id| {
            known.insert(id, digest);
        });
        if decoded.is_ok() {
            keys.insert(key);
        }
    })?;
    Ok((keys, known))
}

/// The names of the directory `path` of the repository.
fn names<H: FsVerityHashValue>(store: &Store<H>, path: &str) -> std::io::Result<Vec<String>> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let dir = match openat(store.repo_fd(), path, flags, Mode::empty()) {
        Ok(dir) => dir,
        Err(Errno::NOENT) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut names = Vec::new();
    for entry in Dir::read_from(&dir)? {
        if let Ok(name) = entry?.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Every layer stream: its name and object.
fn layer_streams<H: FsVerityHashValue>(store: &Store<H>) -> std::io::Result<Vec<(String, H)>> {
    let mut streams = Vec::new();
    for name in names(store, "streams")? {
        if !name.starts_with(LAYER_STREAM) {
            continue;
        }
        if let Ok(Some(id)) = store.has_stream(&name) {
            streams.push((name, id));
        }
    }
    Ok(streams)
}

/// Every image, by its id.
fn images<H: FsVerityHashValue>(store: &Store<H>) -> std::io::Result<Vec<H>> {
    Ok(names(store, "images")?
        .iter()
        .filter_map(|name| H::from_hex(name).ok())
        .collect())
}
