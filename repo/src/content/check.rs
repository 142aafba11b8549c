//! What fsck checks of the content index: every file sound, every entry
//! naming an object that is there and, when contents are read, whose
//! content has the entry's digest.

use std::io;

use composefs::{fsverity::FsVerityHashValue, repository::Repository as Store};
use rustix::io::Errno;

use super::{DIR, file, for_each_file, hash_object, object_present};
use crate::{FsckProblem, FsckReport, oci::digest::Digest};

impl FsckReport {
    /// Check every content index file of `store`; with `read_contents`,
    /// hash each entry's object too.
    pub(crate) fn check_content_index<H: FsVerityHashValue>(
        &mut self,
        store: &Store<H>,
        read_contents: bool,
    ) -> io::Result<()> {
        let objects = store.objects_dir()?;
        let mut problems = Vec::new();
        let mut entries = Vec::new();
        for_each_file(store, |key, bytes| {
            let name = format!("{DIR}/{}", key.to_hex());
            let Some(bytes) = bytes else {
                problems.push(problem(
                    "content-index-stale",
                    format!("{name}: its stream or image is gone"),
                ));
                return;
            };
            let decoded = file::decode::<H>(&bytes, |digest, id| {
                entries.push((name.clone(), digest, id));
            });
            if let Err(why) = decoded {
                problems.push(problem("content-index-damaged", format!("{name}: {why}")));
            }
        })?;
        for (name, digest, id) in entries {
            let path = id.to_object_pathname();
            if !object_present(objects, &id)? {
                let detail = format!("{name}: names objects/{path}, which is missing");
                problems.push(problem("content-index-missing-object", detail));
                continue;
            }
            if !read_contents {
                continue;
            }
            match hash_object(store, &id) {
                Ok(actual) if actual == digest => {}
                Ok(actual) => {
                    let detail = format!(
                        "{name}: objects/{path} has content {}, not {}",
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

fn problem(kind: &str, detail: String) -> FsckProblem {
    FsckProblem {
        kind: kind.to_owned(),
        detail,
    }
}
