//! Staged pulls: an image imported and verified now, named later.
//!
//! A pull with [`crate::oci::PullOptions::stage`] does everything a pull
//! does (layers, config, manifest, EROFS image, trust policy) but sets no
//! tag. It keeps a record instead, `stages/<id>` in the repository, one
//! small JSON file per stage written by rename after an fsync:
//!
//! - `pulling` while the pull runs, written before any layer is read;
//! - `complete` once everything is on disk (after a syncfs);
//! - `incomplete` when the pull was dropped (a hang-up), or found still
//!   `pulling` when the repository is opened (a crash).
//!
//! A complete stage is a GC root (its manifest stream and EROFS image);
//! GC removes incomplete records first, so that what they held is then
//! collected. Committing a stage checks that every object its image
//! needs is present, without reading a layer, and sets the tag; aborting
//! drops the record. Ids are random, 32 lowercase hex digits, checked
//! before they come near a path.

use std::{
    collections::{BTreeSet, HashMap},
    io::{self, Read, Write},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, Weak},
    time::{SystemTime, UNIX_EPOCH},
};

use composefs::{fsverity::FsVerityHashValue, repository::Repository as Store};
use composefs_oci::oci_image::OciImage;
use serde::{Deserialize, Serialize};

use super::{digest::Digest, images, manifest::Resolved, pull::durable};
use crate::{Error, Repository, repository::with_store};

/// The directory of stage records in the repository.
pub(crate) const STAGES: &str = "stages";

/// The length of a stage id: 128 random bits in hex.
const ID_LEN: usize = 32;

/// Where a stage's pull has got to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum State {
    Pulling,
    Complete,
    Incomplete,
}

/// A stage record as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    state: State,
    manifest_digest: String,
    config_digest: String,
    /// Set once complete.
    #[serde(default)]
    image_id: Option<String>,
    /// Bytes of the config and layer blobs the manifest lists.
    size: u64,
    /// Bytes of the objects the pull wrote; set once complete.
    #[serde(default)]
    bytes_new: u64,
    /// Seconds since the epoch when the pull began.
    created: u64,
}

/// One stage, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageSummary {
    /// The stage id.
    pub id: String,
    /// `pulling` (in flight now), `complete` or `incomplete`.
    pub state: String,
    /// The staged image's manifest digest.
    pub manifest_digest: String,
    /// Its config digest.
    pub config_digest: String,
    /// Its composefs image id, once complete.
    pub image_id: Option<String>,
    /// Bytes of the config and layer blobs its manifest lists.
    pub size: u64,
    /// Bytes of the objects the pull wrote.
    pub bytes_new: u64,
    /// When the pull began, in seconds since the epoch.
    pub created: u64,
}

/// What committing a stage did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitReport {
    /// The image's manifest digest.
    pub manifest_digest: String,
    /// Its config digest.
    pub config_digest: String,
    /// Its composefs image id.
    pub image_id: String,
    /// The tag set.
    pub tag: String,
}

/// The stage pulls in flight in this process, by id (ids are random, so
/// one map serves every repository).
static ACTIVE: Mutex<Option<HashMap<String, Weak<StageWork>>>> = Mutex::new(None);

/// The in-flight stage pull of `id`, if there is one.
fn active(id: &str) -> Option<Arc<StageWork>> {
    let map = ACTIVE.lock().unwrap_or_else(|e| e.into_inner());
    map.as_ref()?.get(id).and_then(Weak::upgrade)
}

/// Refuse an id that cannot be a stage's: it becomes a file name.
pub(crate) fn check_id(id: &str) -> Result<(), Error> {
    let reason = if id.len() != ID_LEN {
        format!(
            "a stage id is {ID_LEN} hex digits, this has {} bytes",
            id.len()
        )
    } else if !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        "a stage id holds only the digits 0-9 and a-f".to_owned()
    } else {
        return Ok(());
    };
    Err(Error::InvalidStageId {
        stage: id.to_owned(),
        reason,
    })
}

/// A new random stage id.
fn new_id() -> io::Result<String> {
    let mut bytes = [0u8; ID_LEN / 2];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Write `record` as `stages/<id>` under `root`: a temporary file, fsync,
/// rename, fsync of the directory, so that it is whole or absent.
fn write_record(root: &Path, id: &str, record: &Record) -> io::Result<()> {
    let dir = root.join(STAGES);
    std::fs::create_dir_all(&dir)?;
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(&dir)?;
    tmp.write_all(&serde_json::to_vec(record)?)?;
    tmp.as_file().sync_all()?;
    tmp.persist(dir.join(id)).map_err(|e| e.error)?;
    std::fs::File::open(&dir)?.sync_all()
}

/// The record of `id`, or `None` if there is none.
fn read_record(root: &Path, id: &str) -> Result<Option<Record>, Error> {
    let bytes = match std::fs::read(root.join(STAGES).join(id)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::storage("reading a stage record", e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::InvalidJson {
            what: format!("stage record {id}"),
            reason: e.to_string(),
        })
}

/// Remove the record of `id` durably; whether there was one.
fn remove_record(root: &Path, id: &str) -> io::Result<bool> {
    let dir = root.join(STAGES);
    match std::fs::remove_file(dir.join(id)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    std::fs::File::open(&dir)?.sync_all()?;
    Ok(true)
}

/// Every valid stage id with a record under `root`, sorted.
fn ids(root: &Path) -> io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(root.join(STAGES)) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut ids = Vec::new();
    for entry in entries {
        // Temporary files and anything else not named like a stage are
        // no stage's.
        if let Ok(name) = entry?.file_name().into_string()
            && check_id(&name).is_ok()
        {
            ids.push(name);
        }
    }
    ids.sort();
    Ok(ids)
}

/// One stage pull in flight: its record, until it is settled (complete,
/// discarded, or given up).
#[derive(Debug)]
pub(crate) struct StageWork {
    root: PathBuf,
    id: String,
    /// `None` once settled; held while the record is rewritten, so that
    /// an abort or a hang-up and the completion never interleave.
    record: Mutex<Option<Record>>,
}

impl StageWork {
    /// Write the `pulling` record of a new stage of `resolved`. Blocks.
    pub(crate) fn begin(root: &Path, resolved: &Resolved) -> Result<Arc<Self>, Error> {
        let fail = |e| Error::storage("writing a stage record", e);
        let id = new_id().map_err(fail)?;
        let size =
            resolved.layers.iter().map(|l| l.size).sum::<u64>() + resolved.config.len() as u64;
        let record = Record {
            state: State::Pulling,
            manifest_digest: resolved.manifest_digest.to_string(),
            config_digest: resolved.config_digest.to_string(),
            image_id: None,
            size,
            bytes_new: 0,
            created: now(),
        };
        write_record(root, &id, &record).map_err(fail)?;
        let work = Arc::new(StageWork {
            root: root.to_owned(),
            id: id.clone(),
            record: Mutex::new(Some(record)),
        });
        let mut map = ACTIVE.lock().unwrap_or_else(|e| e.into_inner());
        let map = map.get_or_insert_with(HashMap::new);
        map.retain(|_, w| w.strong_count() > 0);
        map.insert(id, Arc::downgrade(&work));
        Ok(work)
    }

    /// The stage id.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// Mark the stage complete with `image_id`; everything it names must
    /// be durable already. Fails if it was aborted or given up meanwhile.
    pub(crate) fn finish(&self, image_id: &str, bytes_new: u64) -> Result<(), Error> {
        let mut slot = self.record.lock().unwrap_or_else(|e| e.into_inner());
        let Some(mut record) = slot.take() else {
            return Err(Error::StageIncomplete {
                stage: self.id.clone(),
            });
        };
        record.state = State::Complete;
        record.image_id = Some(image_id.to_owned());
        record.bytes_new = bytes_new;
        write_record(&self.root, &self.id, &record)
            .map_err(|e| Error::storage("writing a stage record", e))
    }

    /// The pull failed: its record goes, the objects stay for GC.
    pub(crate) fn discard(&self) {
        let mut slot = self.record.lock().unwrap_or_else(|e| e.into_inner());
        if slot.take().is_some()
            && let Err(e) = remove_record(&self.root, &self.id)
        {
            tracing::warn!("cannot remove the record of failed stage {}: {e}", self.id);
        }
    }

    /// Settle the stage as given up, unless it is settled already.
    fn give_up(&self, remove: bool) -> io::Result<()> {
        let mut slot = self.record.lock().unwrap_or_else(|e| e.into_inner());
        match slot.take() {
            Some(_) if remove => remove_record(&self.root, &self.id).map(|_| ()),
            Some(mut record) => {
                record.state = State::Incomplete;
                write_record(&self.root, &self.id, &record)
            }
            None => Ok(()),
        }
    }
}

/// Held by a stage pull's future: dropped before the stage is settled (a
/// hang-up cancelled the pull), it marks the stage incomplete, so that
/// the blocking work that may still run cannot complete it.
pub(crate) struct StageGuard(pub(crate) Arc<StageWork>);

impl Drop for StageGuard {
    fn drop(&mut self) {
        if let Err(e) = self.0.give_up(false) {
            tracing::warn!("cannot mark stage {} incomplete: {e}", self.0.id);
        }
    }
}

impl Repository {
    /// Every stage, by id.
    /// A record that cannot be read is left out, with a warning.
    pub fn stages(&self) -> Result<Vec<StageSummary>, Error> {
        self.listed(false)
    }

    /// Every stage; with `strict`, a record that cannot be read fails the
    /// listing, as GC needs: it cannot tell what such a stage keeps.
    fn listed(&self, strict: bool) -> Result<Vec<StageSummary>, Error> {
        let root = self.path();
        let listed = ids(root).map_err(|e| Error::storage("listing the stages", e))?;
        let mut stages = Vec::new();
        for id in listed {
            let record = match read_record(root, &id) {
                Ok(Some(record)) => record,
                Ok(None) => continue,
                Err(e) if !strict => {
                    tracing::warn!("stage {id} is left out of the list: {e}");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let state = match record.state {
                State::Pulling if active(&id).is_some() => "pulling",
                State::Complete => "complete",
                State::Pulling | State::Incomplete => "incomplete",
            };
            stages.push(StageSummary {
                id,
                state: state.to_owned(),
                manifest_digest: record.manifest_digest,
                config_digest: record.config_digest,
                image_id: record.image_id,
                size: record.size,
                bytes_new: record.bytes_new,
                created: record.created,
            });
        }
        Ok(stages)
    }

    /// Publish the complete stage `stage` as `tag`, with one atomic tag
    /// change, and drop its record. Reads no layer: it checks that the
    /// manifest, config and layer streams and every object the EROFS
    /// image names are present, else [`Error::StageObjectsMissing`].
    pub fn commit_stage(&self, stage: &str, tag: &str) -> Result<CommitReport, Error> {
        check_id(stage)?;
        images::check_tag(tag)?;
        self.ensure_writable("committing a stage")?;
        let _hold = self.hold(format!("committing stage {stage} as {tag}"));
        let root = self.path();
        let record = read_record(root, stage)?.ok_or_else(|| Error::StageNotFound {
            stage: stage.to_owned(),
        })?;
        if record.state != State::Complete {
            return Err(Error::StageIncomplete {
                stage: stage.to_owned(),
            });
        }
        images::check_tag_names(tag, &record.manifest_digest)?;
        let image_id = with_store!(self.store(), s => {
            let id = check_present(s, root, stage, &record)?;
            let digest = Digest::parse(&record.manifest_digest, "a stage record")?.to_oci();
            composefs_oci::oci_image::tag_image(s, &digest, tag)
                .map_err(|e| Error::storage("tagging", e))?;
            durable(s)?;
            id
        });
        // A crash before this leaves the stage, which commits again.
        remove_record(root, stage).map_err(|e| Error::storage("removing a stage record", e))?;
        Ok(CommitReport {
            manifest_digest: record.manifest_digest,
            config_digest: record.config_digest,
            image_id,
            tag: tag.to_owned(),
        })
    }

    /// Drop the stage `stage`, complete or not; GC then frees what only
    /// it kept. A stage pull in flight is given up.
    pub fn abort_stage(&self, stage: &str) -> Result<(), Error> {
        check_id(stage)?;
        let fail = |e| Error::storage("removing a stage record", e);
        if let Some(work) = active(stage) {
            work.give_up(true).map_err(fail)?;
            return Ok(());
        }
        if !remove_record(self.path(), stage).map_err(fail)? {
            return Err(Error::StageNotFound {
                stage: stage.to_owned(),
            });
        }
        Ok(())
    }

    /// Mark the stages a previous process left `pulling` incomplete: their
    /// pulls died with it. Runs when the repository is opened.
    pub(crate) fn mark_interrupted_stages(&self) -> Result<(), Error> {
        let root = self.path();
        let fail = |e| Error::storage("marking interrupted stages", e);
        for id in ids(root).map_err(fail)? {
            let Ok(Some(mut record)) = read_record(root, &id) else {
                continue;
            };
            if record.state == State::Pulling && active(&id).is_none() {
                tracing::warn!("stage {id} was never finished; it is incomplete");
                record.state = State::Incomplete;
                write_record(root, &id, &record).map_err(fail)?;
            }
        }
        Ok(())
    }

    /// The GC roots of the complete stages: their manifest streams and
    /// EROFS images.
    pub(crate) fn stage_roots(&self) -> Result<BTreeSet<String>, Error> {
        let mut roots = BTreeSet::new();
        for stage in self.listed(true)? {
            if stage.state == "complete" {
                roots.insert(format!("oci-manifest-{}", stage.manifest_digest));
                roots.extend(stage.image_id);
            }
        }
        Ok(roots)
    }

    /// Remove the records of stages that are not complete, before a
    /// collection, which then frees what they held. Only called with
    /// every pull held off, so none of them is in flight.
    pub(crate) fn drop_incomplete_stages(&self) -> Result<u64, Error> {
        let fail = |e| Error::storage("removing incomplete stages", e);
        let mut dropped = 0;
        for stage in self.listed(true)? {
            if stage.state == "incomplete" {
                tracing::info!("removing incomplete stage {}", stage.id);
                dropped += u64::from(remove_record(self.path(), &stage.id).map_err(fail)?);
            }
        }
        Ok(dropped)
    }
}

/// Check that what the stage's image needs is all present: the manifest
/// and config streams (read, they are small), each layer stream's object,
/// the EROFS image and every object it names (by `stat`, unread). The
/// image id on success.
fn check_present<H: FsVerityHashValue>(
    store: &Store<H>,
    root: &Path,
    stage: &str,
    record: &Record,
) -> Result<String, Error> {
    let missing = |first: String, count: u64| Error::StageObjectsMissing {
        stage: stage.to_owned(),
        missing: count,
        first,
    };
    let digest = Digest::parse(&record.manifest_digest, "a stage record")?.to_oci();
    let stream = format!("streams/oci-manifest-{}", record.manifest_digest);
    let verity = composefs_oci::oci_image::has_manifest(store, &digest)
        .ok()
        .flatten()
        .ok_or_else(|| missing(stream.clone(), 1))?;
    let image = OciImage::open(store, &digest, Some(&verity))
        .map_err(|e| missing(format!("{stream} or its config stream ({e:#})"), 1))?;
    let id = image
        .image_ref(store.erofs_version())
        .ok_or_else(|| missing("the EROFS image's reference".to_owned(), 1))?
        .clone();
    if record.image_id.as_deref() != Some(&id.to_hex()) {
        return Err(missing(format!("images/{}", id.to_hex()), 1));
    }
    let objects = store
        .objects_for_image(&id.to_hex())
        .map_err(|e| missing(format!("images/{} ({e:#})", id.to_hex()), 1))?;
    let absent: Vec<String> = image
        .layer_refs()
        .values()
        .chain(objects.iter())
        .map(|o| format!("objects/{}", o.to_object_pathname()))
        .filter(|path| std::fs::symlink_metadata(root.join(path)).is_err())
        .collect();
    match absent.first() {
        Some(first) => Err(missing(first.clone(), absent.len() as u64)),
        None => Ok(id.to_hex()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_ids_are_hex_of_one_length_and_never_paths() {
        let id = new_id().unwrap();
        assert!(check_id(&id).is_ok(), "{id}");
        assert_ne!(id, new_id().unwrap());
        for bad in [
            "",
            "..",
            "../../etc/passwd",
            &"A".repeat(32),
            &format!("{}/", "a".repeat(31)),
            &"a".repeat(33),
            ".tmp-abcdefabcdefabcdefabcdefabcd",
        ] {
            assert!(
                matches!(check_id(bad), Err(Error::InvalidStageId { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn records_are_replaced_whole_and_listed_by_valid_names_only() {
        let dir = tempfile::tempdir().unwrap();
        let id = new_id().unwrap();
        let record = Record {
            state: State::Pulling,
            manifest_digest: "sha256:aa".into(),
            config_digest: "sha256:bb".into(),
            image_id: None,
            size: 3,
            bytes_new: 0,
            created: 1,
        };
        write_record(dir.path(), &id, &record).unwrap();
        std::fs::write(dir.path().join(STAGES).join("stray"), b"{}").unwrap();
        assert_eq!(ids(dir.path()).unwrap(), std::slice::from_ref(&id));
        let read = read_record(dir.path(), &id).unwrap().unwrap();
        assert_eq!(read.state, State::Pulling);
        let leftovers = std::fs::read_dir(dir.path().join(STAGES)).unwrap().count();
        assert_eq!(leftovers, 2, "no temporary file is left");
        assert!(remove_record(dir.path(), &id).unwrap());
        assert!(!remove_record(dir.path(), &id).unwrap());
    }
}
