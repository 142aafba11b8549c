//! The staged-pull methods of `io.cfsd.Oci`, mapped onto the repository:
//! `ListStages`, `Commit` and `Abort`. `Pull` with `stage` makes stages
//! (in `oci.rs`); every rule about them is `cfsd_repo`'s.

use cfsd_varlink::oci::{
    CommitParams, CommitReply, EmptyReply, ListStagesReply, OciError, Stage, StageParams,
};

use super::oci::{blocking, open};
use crate::{dispatch::Outcome, server::Daemon};

/// `ListStages`.
pub(super) async fn list(daemon: &Daemon) -> Result<Outcome, OciError> {
    let repo = open(daemon).await?;
    let stages = blocking(move || repo.stages()).await?;
    let stages = stages
        .into_iter()
        .map(|s| Stage {
            id: s.id,
            state: s.state,
            manifest_digest: s.manifest_digest,
            config_digest: s.config_digest,
            image_id: s.image_id,
            size: s.size,
            bytes_new: s.bytes_new,
            created: s.created,
        })
        .collect();
    Ok(Outcome::reply(&ListStagesReply { stages }))
}

/// `Commit`.
pub(super) async fn commit(daemon: &Daemon, params: CommitParams) -> Result<Outcome, OciError> {
    let repo = open(daemon).await?;
    let r = blocking(move || repo.commit_stage(&params.stage, &params.tag)).await?;
    Ok(Outcome::reply(&CommitReply {
        manifest_digest: r.manifest_digest,
        config_digest: r.config_digest,
        image_id: r.image_id,
        tag: r.tag,
    }))
}

/// `Abort`.
pub(super) async fn abort(daemon: &Daemon, params: StageParams) -> Result<Outcome, OciError> {
    let repo = open(daemon).await?;
    blocking(move || repo.abort_stage(&params.stage)).await?;
    Ok(Outcome::reply(&EmptyReply {}))
}
