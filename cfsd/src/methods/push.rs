//! `io.cfsd.Oci.Push` and `PushDelta`: an image of the repository, or a
//! delta between two, sent to a registry.
//! The call names the image and the destination; the caller's auth file
//! comes as its first fd, as for a docker Pull.

use std::os::fd::OwnedFd;

use cfsd_repo::{
    CreateOptions,
    registry::{self, Registry, RegistryRequest},
};
use cfsd_varlink::oci::{
    DeltaMethod, OciError, PushCompression, PushDeltaParams, PushDeltaReply, PushParams, PushReply,
};

use super::oci::{CancelOnDrop, blocking, capped_jobs, open, wire_delta};
use crate::{dispatch::Outcome, server::Daemon};

/// Where `method` pushes to, with the caller's auth file from `fds`.
fn destination(
    reference: String,
    tls_verify: Option<bool>,
    fds: Vec<OwnedFd>,
    method: &str,
) -> Result<RegistryRequest, OciError> {
    Ok(RegistryRequest {
        reference,
        tls_verify,
        authfile: super::registry::authfile(fds, method)?,
    })
}

/// `Push`; the access table let the caller through already.
pub(super) async fn push(
    daemon: &Daemon,
    params: PushParams,
    fds: Vec<OwnedFd>,
) -> Result<Outcome, OciError> {
    let request = destination(params.reference, params.tls_verify, fds, "Push")?;
    let compression = compression(params.compression);
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

/// `PushDelta`; the access table let the caller through already.
pub(super) async fn push_delta(
    daemon: &Daemon,
    params: PushDeltaParams,
    fds: Vec<OwnedFd>,
) -> Result<Outcome, OciError> {
    let request = destination(params.reference, params.tls_verify, fds, "PushDelta")?;
    let options = CreateOptions {
        jobs: capped_jobs(params.jobs),
        method: match params.method.unwrap_or_default() {
            DeltaMethod::Zstd => cfsd_repo::DeltaMethod::Zstd,
            DeltaMethod::Bsdiff => cfsd_repo::DeltaMethod::Bsdiff,
        },
        reference: None,
        max_scratch: daemon.max_delta_scratch,
    };
    let repo = open(daemon).await?;
    let settings = daemon.registry.clone();
    let cancel = CancelOnDrop::default();
    let cancelled = cancel.0.clone();
    let (source, target) = (params.source, params.target);
    let report = blocking(move || {
        let registry = Registry::destination(&settings, request)?;
        repo.push_delta(&source, &target, registry, options, cancelled)
    })
    .await?;
    let delta = wire_delta(report.delta);
    Ok(Outcome::reply(&PushDeltaReply {
        reference: report.reference,
        manifest_digest: delta.manifest_digest,
        source_digest: delta.source_digest,
        target_digest: delta.target_digest,
        subject_in_registry: report.subject_in_registry,
        referrers_tag: report.referrers_tag,
        delta_bytes: delta.delta_bytes,
        bytes_uploaded: report.bytes_uploaded,
        layers: delta.layers,
        layers_changed: delta.layers_changed,
        changed: delta.changed,
    }))
}

/// The repository's compression for the wire's; gzip when none is asked.
pub(super) fn compression(wire: Option<PushCompression>) -> registry::PushCompression {
    match wire.unwrap_or_default() {
        PushCompression::Gzip => registry::PushCompression::Gzip,
        PushCompression::Zstd => registry::PushCompression::Zstd,
        PushCompression::ZstdChunked => registry::PushCompression::ZstdChunked,
    }
}
