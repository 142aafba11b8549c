//! Layer tars rebuilt from the repository's split streams, for whatever
//! sends a layer on without its original blob: a push to a registry, a
//! delta, and the consistency check that a stream still rebuilds the tar
//! its name promises.

use std::io::{self, Write};

use composefs::{fsverity::FsVerityHashValue, repository::Repository as Store};

use crate::{
    Error,
    oci::digest::{Digest, HashingWriter},
};

/// Write the tar of the layer named `diff_id`, merged from its split
/// stream and objects, to `out`; the sha256 of what was written, which a
/// sound stream makes `diff_id`, and `out`.
pub(crate) fn rebuild_layer_tar<H: FsVerityHashValue, W: Write>(
    store: &Store<H>,
    diff_id: &Digest,
    out: W,
) -> anyhow::Result<(Digest, W)> {
    let mut hashing = HashingWriter::new(out);
    composefs_oci::oci_image::layer_tar(store, &diff_id.to_oci(), &mut hashing)?;
    Ok(hashing.into_parts())
}

/// [`rebuild_layer_tar`], and a tar that does not hash to `diff_id` is a
/// [`Error::DigestMismatch`] for `layer` (its blob digest, for the
/// message). `out` has had the whole tar by then: a caller that sends it
/// on must not commit what it sent before this returns.
pub(crate) fn verified_layer_tar<H: FsVerityHashValue, W: Write>(
    store: &Store<H>,
    diff_id: &Digest,
    layer: &Digest,
    out: W,
) -> Result<W, Error> {
    let (rebuilt, out) = rebuild_layer_tar(store, diff_id, out)
        .map_err(|e| Error::storage("rebuilding a layer tar", e))?;
    diff_id.verify(
        &rebuilt,
        format!("diff_id of layer {layer} rebuilt from the repository"),
    )?;
    Ok(out)
}

/// A writer that drops what it is given and counts it.
#[derive(Debug, Default)]
pub(crate) struct Counting(pub(crate) u64);

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
