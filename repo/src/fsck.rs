//! What a consistency check found.
//!
//! composefs's own check measures each object's fs-verity digest. On a
//! repository that enforces fs-verity that measurement is the digest the
//! kernel recorded when verity was enabled, and it stays right when the
//! bytes on the disk are changed underneath: the kernel notices only when
//! the damaged blocks are read. So the full check also reads every object
//! through, and counts an object whose read fails as corrupted.
//!
//! composefs also checks each image's EROFS but not that `images/ID` links
//! to the object named ID, nor that a layer stream, named by its diff_id,
//! still rebuilds the tar of that diff_id. An image or a layer stream
//! swapped for another valid one would pass, so both are checked here.

use std::{
    fs::File,
    io::{self, Read},
    path::Path,
};

use composefs::{
    fsverity::FsVerityHashValue,
    repository::{FsckError, FsckResult, Repository as Store},
};

use crate::oci::{digest::Digest, export::rebuild_layer_tar};

/// One inconsistency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsckProblem {
    /// A stable kebab-case name of the kind of problem.
    pub kind: String,
    /// What is wrong and where.
    pub detail: String,
}

/// What a consistency check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsckReport {
    /// Objects whose contents were verified.
    pub objects_checked: u64,
    /// Objects whose contents do not match their names.
    pub objects_corrupted: u64,
    /// Streams checked.
    pub streams_checked: u64,
    /// Streams found damaged.
    pub streams_corrupted: u64,
    /// Images checked.
    pub images_checked: u64,
    /// Images found damaged.
    pub images_corrupted: u64,
    /// References that point nowhere.
    pub broken_links: u64,
    /// Objects referred to but absent.
    pub missing_objects: u64,
    /// Every problem, in the order found.
    pub problems: Vec<FsckProblem>,
}

impl FsckReport {
    /// Whether nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl From<&FsckResult> for FsckReport {
    fn from(r: &FsckResult) -> Self {
        FsckReport {
            objects_checked: r.objects_checked(),
            objects_corrupted: r.objects_corrupted(),
            streams_checked: r.streams_checked(),
            streams_corrupted: r.streams_corrupted(),
            images_checked: r.images_checked(),
            images_corrupted: r.images_corrupted(),
            broken_links: r.broken_links(),
            missing_objects: r.missing_objects(),
            problems: r.errors().iter().map(problem).collect(),
        }
    }
}

fn problem(e: &FsckError) -> FsckProblem {
    // composefs names each kind through its serde tag; the display text
    // repeats that name after a "fsck: " prefix, both dropped here so that
    // the kind is said once.
    let kind = serde_json::to_value(e)
        .ok()
        .and_then(|v| v.get("type")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned());
    let text = e.to_string();
    let text = text.strip_prefix("fsck: ").unwrap_or(&text);
    let detail = text
        .strip_prefix(kind.as_str())
        .and_then(|rest| rest.strip_prefix(": "))
        .unwrap_or(text)
        .to_owned();
    FsckProblem { kind, detail }
}

impl FsckReport {
    /// Read every object of the repository at `repo` through, so that the
    /// kernel checks each block against its fs-verity Merkle tree, and
    /// record those that fail. Only meaningful where fs-verity is enforced:
    /// elsewhere composefs's check already hashes every byte.
    pub(crate) fn read_objects(&mut self, repo: &Path) -> io::Result<()> {
        let mut buffer = vec![0u8; 1 << 20];
        crate::usage::each_object(repo, |name, object| {
            if let Err(e) = read_through(&object.path(), &mut buffer) {
                self.record_unreadable(name, &e);
            }
            Ok(())
        })
    }

    fn record_unreadable(&mut self, name: &Path, e: &io::Error) {
        self.objects_corrupted += 1;
        let why = if e.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) {
            "its content no longer matches its fs-verity digest"
        } else {
            "it cannot be read"
        };
        self.problems.push(FsckProblem {
            kind: "object-unreadable".to_owned(),
            detail: format!("{}: {why} ({e})", name.display()),
        });
    }
}

fn read_through(path: &Path, buffer: &mut [u8]) -> io::Result<()> {
    let mut file = File::open(path)?;
    while file.read(buffer)? != 0 {}
    Ok(())
}

impl FsckReport {
    /// Record every `images/ID` that does not link to the object named
    /// ID: an image id is the fs-verity digest of its EROFS, which is
    /// also that object's name.
    pub(crate) fn check_image_names(&mut self, repo: &Path) -> io::Result<()> {
        let images = match std::fs::read_dir(repo.join("images")) {
            Ok(images) => images,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in images {
            let entry = entry?;
            if !entry.file_type()?.is_symlink() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let target = std::fs::read_link(entry.path())?;
            let mut parts = target.iter().rev().map(|p| p.to_string_lossy());
            let object = match (parts.next(), parts.next()) {
                (Some(rest), Some(shard)) => format!("{shard}{rest}"),
                _ => String::new(),
            };
            if object != name {
                self.images_corrupted += 1;
                self.problems.push(FsckProblem {
                    kind: "image-name-mismatch".to_owned(),
                    detail: format!(
                        "images/{name}: links to {}, another image's object",
                        target.display()
                    ),
                });
            }
        }
        Ok(())
    }
}

impl FsckReport {
    /// Record every layer stream `streams/oci-layer-sha256:D` whose tar,
    /// rebuilt from the stream and its objects, does not hash to D: a
    /// later pull of an image with that layer would build its EROFS from
    /// the wrong files without reading a byte of the layer.
    pub(crate) fn check_layer_streams<H: FsVerityHashValue>(
        &mut self,
        store: &Store<H>,
        repo: &Path,
    ) -> io::Result<()> {
        let streams = match std::fs::read_dir(repo.join("streams")) {
            Ok(streams) => streams,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in streams {
            let name = entry?.file_name().to_string_lossy().into_owned();
            let Some(diff_id) = name.strip_prefix(LAYER_STREAM) else {
                continue;
            };
            let Ok(diff_id) = Digest::parse(diff_id, "a layer stream's diff_id") else {
                continue;
            };
            let problem = match rebuild_layer_tar(store, &diff_id, io::sink()) {
                // Unreadable objects are reported on their own already.
                Err(_) => None,
                Ok((rebuilt, _)) => (rebuilt != diff_id)
                    .then(|| format!("streams/{name}: its tar hashes to {rebuilt}")),
            };
            if let Some(detail) = problem {
                self.streams_corrupted += 1;
                self.problems.push(FsckProblem {
                    kind: "layer-stream-mismatch".to_owned(),
                    detail,
                });
            }
        }
        Ok(())
    }
}

/// How the name of a layer's split stream begins: composefs-oci's
/// `oci-layer-` and the diff_id's algorithm.
const LAYER_STREAM: &str = "oci-layer-";
