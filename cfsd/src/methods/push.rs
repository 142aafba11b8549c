//! `io.cfsd.Oci.Push`: an image of the repository sent to a registry.
//! The call names the image and the destination; the caller's auth file
//! comes as its first fd, as for a docker Pull.

use std::os::fd::OwnedFd;

use cfsd_repo::registry::{self, Registry, RegistryRequest};
use cfsd_varlink::oci::{OciError, PushCompression, PushParams, PushReply};

use super::oci::{CancelOnDrop, blocking, open};
use crate::{dispatch::Outcome, server::Daemon};

/// `Push`; the access table let the caller through already.
pub(super) async fn push(
    daemon: &Daemon,
    params: PushParams,
    fds: Vec<OwnedFd>,
) -> Result<Outcome, OciError> {
    let request = RegistryRequest {
        reference: params.reference,
        tls_verify: params.tls_verify,
        authfile: super::registry::authfile(fds, "Push")?,
    };
    let compression = match params.compression.unwrap_or_default() {
        PushCompression::Gzip => registry::PushCompression::Gzip,
        PushCompression::Zstd => registry::PushCompression::Zstd,
    };
    let repo = open(daemon).await?;
    let settings = daemon.registry.clone();
    // A caller that hangs up stops the push before its manifest.
    let cancel = CancelOnDrop::default();
    let cancelled = cancel.0.clone();
    let image = params.image;
    let report = blocking(move || {
        let registry = Registry::destination(&settings, request)?;
        repo.push(&image, registry, compression, cancelled)
    })
    .await?;
    Ok(Outcome::reply(&PushReply {
        reference: report.reference,
        manifest_digest: report.manifest_digest,
        config_digest: report.config_digest,
        layers: report.layers,
        layers_uploaded: report.layers_uploaded,
        bytes_uploaded: report.bytes_uploaded,
    }))
}
