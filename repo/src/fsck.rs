//! What a consistency check found.

use composefs::repository::{FsckError, FsckResult};

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
