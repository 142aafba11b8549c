//! What fsck checks of the content index: every file sound, every entry
//! naming an object that is there and, when contents are read, whose
//! content (or, for a chunk, whose stretch of it) has the entry's digest.

use std::io;

use composefs::{fsverity::FsVerityHashValue, repository::Repository as Store};
use rustix::io::Errno;

use super::{DIR, Sha256Digest, file, for_each_file, hash_object, hash_stretch, object_present};
use crate::{FsckProblem, FsckReport, oci::digest::Digest, oci::split::Cancel};

/// One entry of an index file to check: the file's name, the digest, the
/// object, and for a chunk record its stretch (offset and size).
type Entry<H> = (String, Sha256Digest, H, Option<(u64, u64)>);

impl FsckReport {
    /// Check every content index file of `store`; with `read_contents`,
    /// hash each entry's object (or a chunk record's stretch of it) too.
    /// `stop` ends the check between two entries, as `Interrupted`.
    pub(crate) fn check_content_index<H: FsVerityHashValue>(
        &mut self,
        store: &Store<H>,
        read_contents: bool,
        stop: &Cancel,
    ) -> io::Result<()> {
        let objects = store.objects_dir()?;
        let (mut problems, entries) = read_entries(store)?;
        for (name, digest, id, stretch) in entries {
            if stop.is_cancelled() {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let path = id.to_object_pathname();
            if !object_present(objects, &id)? {
                let detail = format!("{name}: names objects/{path}, which is missing");
                problems.push(problem("content-index-missing-object", detail));
                continue;
            }
            if !read_contents {
                continue;
            }
            let (hashed, what) = match stretch {
                None => (hash_object(store, &id), String::new()),
                Some((offset, size)) => (
                    hash_stretch(store, &id, offset, size),
                    format!("bytes {offset}..{} of ", offset + size),
                ),
            };
            match hashed {
                Ok(actual) if actual == digest => {}
                Ok(actual) => {
                    let detail = format!(
                        "{name}: {what}objects/{path} has content {}, not {}",
                        Digest::from_hash(actual),
                        Digest::from_hash(digest)
                    );
                    problems.push(problem("content-index-wrong-content", detail));
                }
                // An object that cannot be read is reported by composefs's
                // own check.
                Err(e) if e.raw_os_error() == Some(Errno::IO.raw_os_error()) => {}
                Err(e) => return Err(e),
            }
        }
        self.problems.extend(problems);
        Ok(())
    }
}

/// The entries of every sound index file of `store`, file records then
/// chunk records, and the problems of the others.
fn read_entries<H: FsVerityHashValue>(
    store: &Store<H>,
) -> io::Result<(Vec<FsckProblem>, Vec<Entry<H>>)> {
    let (mut problems, mut entries, mut chunks) = (Vec::new(), Vec::new(), Vec::new());
    for_each_file(store, |key, bytes| {
        let name = format!("{DIR}/{}", key.to_hex());
        let Some(bytes) = bytes else {
            problems.push(problem(
                "content-index-stale",
                format!("{name}: its stream or image is gone"),
            ));
            return;
        };
        let decoded = file::decode_all::<H>(
            &bytes,
            |digest, id| entries.push((name.clone(), digest, id, None)),
            |digest, c| chunks.push((name.clone(), digest, c.object, Some((c.offset, c.size)))),
        );
        if let Err(why) = decoded {
            problems.push(problem("content-index-damaged", format!("{name}: {why}")));
        }
    })?;
    entries.extend(chunks);
    Ok((problems, entries))
}

fn problem(kind: &str, detail: String) -> FsckProblem {
    FsckProblem {
        kind: kind.to_owned(),
        detail,
    }
}
