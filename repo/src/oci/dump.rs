//! What the repository holds, written out as upstream `cfsctl` writes it:
//! an image's composefs dumpfile (`oci dump`), and one stored layer as its
//! tar or as the dumpfile of that layer alone (`oci layer`).
//!
//! The caller's writer is where the bytes go (for cfsd, a pipe to its
//! client); its failures are told apart from the repository's, so that a
//! client that stopped reading is never reported as a damaged store.

use std::io::Write;

use composefs::repository::Repository as Store;

use super::{
    digest::Digest,
    export::verified_layer_tar,
    images::filesystem,
    output::{Output, Written},
};
use crate::{Error, Repository, repository::with_store};

/// How a stored layer is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LayerFormat {
    /// Its tar, rebuilt from its split stream: the bytes its diff_id
    /// names.
    #[default]
    Tar,
    /// The composefs dumpfile of its entries (composefs-dump(5)).
    Dumpfile,
}

impl Repository {
    /// Write the composefs dumpfile of `image`'s filesystem to `out`, byte
    /// for byte what upstream `cfsctl oci dump` writes for it.
    pub fn dump(&self, image: &str, out: &mut dyn Write) -> Result<Written, Error> {
        let mut out = Output::new(out);
        let result = with_store!(self.store(), s => {
            let fs = filesystem(s, image)?;
            composefs::dumpfile::write_dumpfile(&mut out, &fs)
        });
        out.finish("writing the dumpfile", result.map_err(anyhow_storage))
    }

    /// Write the stored layer `diff_id` to `out` as `format` asks. A tar
    /// that does not hash to `diff_id` is an [`Error::DigestMismatch`],
    /// known only once all of it was written: a caller must not trust the
    /// bytes before this returns.
    pub fn export_layer(
        &self,
        diff_id: &str,
        format: LayerFormat,
        out: &mut dyn Write,
    ) -> Result<Written, Error> {
        let digest = Digest::parse(diff_id, "the layer's diff_id")?;
        let mut out = Output::new(out);
        let result = with_store!(self.store(), s => {
            find_layer(s, &digest)?;
            match format {
                LayerFormat::Tar => verified_layer_tar(s, &digest, &digest, &mut out).map(drop),
                LayerFormat::Dumpfile => {
                    composefs_oci::oci_image::layer_dumpfile(s, &digest.to_oci(), &mut out)
                        .map_err(|e| Error::storage("reading the layer", e))
                }
            }
        });
        out.finish("writing the layer", result)
    }
}

/// Refuse a diff_id the repository holds no layer stream of.
fn find_layer<H: composefs::fsverity::FsVerityHashValue>(
    store: &Store<H>,
    diff_id: &Digest,
) -> Result<(), Error> {
    let name = composefs_oci::layer_content_id(&diff_id.to_oci());
    match store.has_stream(&name) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(Error::LayerNotFound {
            diff_id: diff_id.to_string(),
        }),
        Err(e) => Err(Error::storage("looking up the layer", e)),
    }
}

fn anyhow_storage(e: anyhow::Error) -> Error {
    match e.downcast::<Error>() {
        Ok(e) => e,
        Err(e) => Error::storage("reading the image", e),
    }
}
