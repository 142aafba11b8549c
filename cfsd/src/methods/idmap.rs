//! `io.cfsd.Oci.Idmap`, and the ID maps of `Mount`: the wire's map lists
//! checked by the repository's rules, and its errors.

use cfsd_repo::idmap::IdMapping;
use cfsd_varlink::oci::{IdmapParams, IdmapReply, OciError};

use super::oci::{blocking, open, wire_error};
use crate::{dispatch::Outcome, server::Daemon};

/// `Idmap`: the variant, made on a blocking thread.
pub(super) async fn idmap(daemon: &Daemon, params: IdmapParams) -> Result<Outcome, OciError> {
    let mapping = IdMapping::parse(&params.uidmap, &params.gidmap).map_err(wire_error)?;
    let repo = open(daemon).await?;
    let report = blocking(move || repo.idmap_image(&params.image, &params.tag, &mapping)).await?;
    Ok(Outcome::reply(&IdmapReply {
        manifest_digest: report.manifest_digest,
        image_id: report.image_id,
    }))
}

/// The ID maps of a `Mount`: both or neither (an empty list is none).
pub(super) fn mount_maps(
    uidmap: Option<Vec<String>>,
    gidmap: Option<Vec<String>>,
) -> Result<Option<IdMapping>, OciError> {
    let uidmap = uidmap.unwrap_or_default();
    let gidmap = gidmap.unwrap_or_default();
    if uidmap.is_empty() && gidmap.is_empty() {
        return Ok(None);
    }
    IdMapping::parse(&uidmap, &gidmap)
        .map(Some)
        .map_err(wire_error)
}
