//! Which image a pull will import, known before anything is imported, so
//! that a daemon can run two identical pulls once.

use crate::{
    Error,
    oci::{Platform, PullOptions, Source, manifest, source::Layout},
};

/// The digest of the manifest that `source` resolves to under `options`
/// (reference and platform), checked as a pull checks it. Two pulls with
/// the same digest import the same image. Reads only the source's index,
/// manifest and config; blocks on that reading.
pub fn pull_key(source: &Source, options: &PullOptions) -> Result<String, Error> {
    let platform = options.platform.clone().unwrap_or_else(Platform::host);
    let layout = Layout::open(duplicate(source)?)?;
    let resolved = manifest::resolve(&layout, options.reference.as_deref(), &platform)?;
    Ok(resolved.manifest_digest.to_string())
}

/// A second descriptor of `source`, so the pull itself keeps the first.
/// Archives are read with `pread`, so sharing the file offset is harmless.
fn duplicate(source: &Source) -> Result<Source, Error> {
    let dup = |e| Error::storage("duplicating the source descriptor", e);
    Ok(match source {
        Source::Archive(file) => Source::Archive(file.try_clone().map_err(dup)?),
        Source::Directory(fd) => Source::Directory(fd.try_clone().map_err(dup)?),
    })
}
