//! `io.cfsd.Oci.MountFuse`: an image served over FUSE on a `/dev/fuse`
//! the caller mounted itself.

use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};

use crate::{
    CallError, Client,
    client::{CallResult, Replies},
    idl::OCI_INTERFACE,
    oci::OciError,
};

/// The parameters of `MountFuse`; the mounted `/dev/fuse` travels as the
/// call's fd.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountFuseParams {
    /// A tag, a `sha256:` manifest digest or a unique prefix.
    pub image: String,
}

/// A reply of `MountFuse`: the first once the mount is served, the last
/// (`ended`) once it has gone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MountFuseReply {
    /// The composefs image id served.
    pub image_id: String,
    /// `false` while the mount is served; `true` in the last reply, sent
    /// when the mount was unmounted.
    pub ended: bool,
}

impl Client {
    /// `io.cfsd.Oci.MountFuse`: serve `params.image` on `dev_fuse`, a
    /// `/dev/fuse` whose mount waits for its server. The first reply,
    /// and the replies that remain: the next is the last, once the mount
    /// has gone. Dropping them hangs up, which ends the mount.
    pub async fn mount_fuse(
        &mut self,
        params: &MountFuseParams,
        dev_fuse: OwnedFd,
    ) -> CallResult<(MountFuseReply, Replies<'_>), OciError> {
        let method = format!("{OCI_INTERFACE}.MountFuse");
        let mut replies = self.call_more(&method, params, vec![dev_fuse]).await?;
        match replies.next::<MountFuseReply, OciError>().await {
            Some(Ok((reply, _))) => Ok((reply, replies)),
            Some(Err(e)) => Err(e),
            None => Err(CallError::Transport("MountFuse sent no reply".to_owned())),
        }
    }
}
