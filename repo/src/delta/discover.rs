//! Finding a delta by itself: before a registry pull fetches an image's
//! layers, it asks the registry for oci-delta artifacts whose subject is
//! that image's manifest, and uses one the repository can apply.
//!
//! A listed delta is usable when its embedded target manifest is the one
//! the registry resolved for the reference (the same digest, so the same
//! image) and the image it applies to (its `source-config`) is in the
//! repository. Both are read from the delta's own manifest, so a delta
//! that is not usable costs one small request. Among the usable ones the
//! one with the fewest blob bytes is taken: it is the least to receive.
//! Whatever goes wrong while looking (no referrers, a registry that
//! refuses the question, a malformed delta) leaves a full pull, with the
//! reason.

use composefs::{fsverity::FsVerityHashValue, repository::Repository as Store};

use super::{ARTIFACT_TYPE, Delta, apply::source_present, artifact::Header};
use crate::{
    Error,
    oci::{digest::Digest, document::Descriptor, source::Layout},
};

/// What looking for a delta found, and why.
#[derive(Debug)]
pub(crate) struct Found {
    /// The delta to apply, parsed and checked; `None`: pull in full.
    pub delta: Option<Delta>,
    /// Why it was chosen, or why none was.
    pub reason: String,
}

impl Found {
    fn none(reason: String) -> Self {
        Found {
            delta: None,
            reason,
        }
    }
}

/// A listed delta that passed the checks of its header.
struct Candidate {
    digest: Digest,
    raw: Vec<u8>,
    header: Header,
}

/// Look in `layout`'s registry for a delta that rebuilds the manifest
/// `target` from an image `repo` holds. Blocks on the registry.
pub(crate) fn discover<H: FsVerityHashValue>(
    layout: &Layout,
    repo: &Store<H>,
    target: &Digest,
) -> Found {
    let Some(remote) = layout.remote() else {
        return Found::none("the source is not a registry".to_owned());
    };
    let listed = match remote.referrers(target, ARTIFACT_TYPE) {
        Ok(listed) => listed,
        Err(e) => return Found::none(format!("asking for the referrers of {target} failed: {e}")),
    };
    if listed.is_empty() {
        return Found::none(format!("the registry lists no oci-delta for {target}"));
    }
    let mut refused = Vec::new();
    let mut usable: Vec<Candidate> = listed
        .iter()
        .filter_map(|entry| {
            candidate(layout, repo, target, entry)
                .map_err(|why| refused.push(format!("{}: {why}", entry.digest)))
                .ok()
        })
        .collect();
    usable.sort_by(|a, b| {
        (a.header.blob_bytes, a.digest.to_string())
            .cmp(&(b.header.blob_bytes, b.digest.to_string()))
    });
    let count = usable.len();
    for chosen in usable {
        match Delta::parse(layout, &chosen.digest, &chosen.raw) {
            Ok(delta) => {
                let reason = format!(
                    "delta {} rebuilds {target} from config {}, which the repository holds; \
                     {} bytes of blobs, the smallest of {count} usable",
                    chosen.digest, chosen.header.source_config, chosen.header.blob_bytes
                );
                return Found {
                    delta: Some(delta),
                    reason,
                };
            }
            Err(e) => refused.push(format!("{}: {e}", chosen.digest)),
        }
    }
    Found::none(format!(
        "no usable oci-delta among the {} listed for {target}: {}",
        listed.len(),
        refused.join("; ")
    ))
}

/// The delta `entry` lists, if its header says it rebuilds `target` from
/// an image the repository holds; else why not.
fn candidate<H: FsVerityHashValue>(
    layout: &Layout,
    repo: &Store<H>,
    target: &Digest,
    entry: &Descriptor,
) -> Result<Candidate, String> {
    let digest = Digest::parse(&entry.digest, "a referrer").map_err(|e| e.to_string())?;
    let what = format!("delta manifest {digest}");
    let raw = layout
        .json_blob(&digest, entry.size, &what)
        .map_err(|e| e.to_string())?;
    let header = Header::read(&digest, &raw).map_err(|e| e.to_string())?;
    if header.target != *target {
        return Err(format!(
            "it rebuilds manifest {}, not {target}",
            header.target
        ));
    }
    let present = source_present(repo, &header.source_config).map_err(|e| e.to_string())?;
    if !present {
        return Err(format!(
            "it applies to the image with config {}, which is not in the repository",
            header.source_config
        ));
    }
    Ok(Candidate {
        digest,
        raw,
        header,
    })
}

/// Whether a delta attempt that failed with `e` may be followed by a full
/// pull: the delta's content was at fault, not the repository, the
/// registry's reachability or a limit, which a full pull would meet too.
pub(crate) fn fall_back_after(e: &Error) -> bool {
    matches!(
        e,
        Error::DigestMismatch { .. }
            | Error::InvalidLayer { .. }
            | Error::TarDiff { .. }
            | Error::InvalidDelta { .. }
            | Error::DeltaSourceMissing { .. }
            | Error::BlobMissing { .. }
            | Error::InvalidJson { .. }
            | Error::UnsupportedMediaType { .. }
            | Error::InvalidImage { .. }
            | Error::RegistryStatus { .. }
    )
}
