//! A typed client for one connection to cfsd.

use std::os::fd::OwnedFd;

use serde::{Serialize, de::DeserializeOwned};
use zlink::{Call, Connection, tokio::unix::Stream};

use crate::{
    address::Address,
    oci::{
        ComputeIdParams, ComputeIdReply, CreateDeltaParams, CreateDeltaReply, EmptyReply,
        ExportImageReply, ExportParams, ExportReply, IdmapParams, IdmapReply, ImageParams,
        InspectReply, KernelArgumentReply, ListImagesReply, MakeBootableReply, MountParams,
        OciError, PullParams, PushDeltaParams, PushDeltaReply, PushParams, PushReply, RemoveReply,
        TagParams, UntagParams,
    },
    repository::{
        FsckParams, FsckReply, GcParams, GcReply, HoldParams, HoldReply, InfoReply, InitParams,
        InitReply, RepositoryError,
    },
    service::{DescriptionParams, DescriptionReply, ServiceError, ServiceInfo},
};

/// Why a call did not produce a reply.
#[derive(Debug, thiserror::Error)]
pub enum CallError<E> {
    /// The interface's own error: the call was understood and refused.
    #[error(transparent)]
    Interface(E),
    /// An `org.varlink.service` error: the call itself was not acceptable.
    #[error(transparent)]
    Service(ServiceError),
    /// The daemon turned the connection away (too many connections, a
    /// message too large), whatever the call's interface; it is closed.
    #[error(transparent)]
    Connection(RepositoryError),
    /// An error name this client does not know, e.g. from a newer daemon.
    #[error("cfsd replied with an error this client does not know: {0}")]
    Unknown(String),
    /// The connection failed or the daemon sent something unreadable.
    #[error("talking to cfsd failed: {0}")]
    Transport(String),
}

/// The result of a call on interface errors `E`.
pub type CallResult<T, E> = Result<T, CallError<E>>;

/// A call's method name and parameters, as the wire wants them.
#[derive(Debug, Serialize)]
struct Outgoing<'a, P> {
    method: &'a str,
    parameters: P,
}

/// One connection to a cfsd daemon.
#[derive(Debug)]
pub struct Client {
    conn: Connection<Stream>,
}

impl Client {
    /// Connect to the daemon at `address`.
    pub async fn connect(address: &Address) -> std::io::Result<Self> {
        let Address::Unix(path) = address;
        let stream = tokio::net::UnixStream::connect(path).await?;
        Self::from_stream(stream)
    }

    /// Use an already connected socket, e.g. one end of a socketpair
    /// whose other end a private daemon serves.
    pub fn from_stream(stream: tokio::net::UnixStream) -> std::io::Result<Self> {
        let stream = Stream::try_from(stream).map_err(std::io::Error::other)?;
        Ok(Self {
            conn: Connection::new(stream),
        })
    }

    /// Call `method` (fully qualified) with `parameters` and file
    /// descriptors, and wait for its single reply.
    pub async fn call<P, R, E>(
        &mut self,
        method: &str,
        parameters: &P,
        fds: Vec<OwnedFd>,
    ) -> CallResult<(R, Vec<OwnedFd>), E>
    where
        P: Serialize + std::fmt::Debug,
        R: DeserializeOwned + std::fmt::Debug,
        E: DeserializeOwned + std::fmt::Debug,
    {
        let call = Call::new(Outgoing { method, parameters });
        self.conn.send_call(&call, fds).await.map_err(transport)?;
        self.receive().await.map(|(reply, _, fds)| (reply, fds))
    }

    /// Call `method` with `more` set and return the stream of its replies.
    pub async fn call_more<P, E>(
        &mut self,
        method: &str,
        parameters: &P,
        fds: Vec<OwnedFd>,
    ) -> CallResult<Replies<'_>, E>
    where
        P: Serialize + std::fmt::Debug,
        E: DeserializeOwned + std::fmt::Debug,
    {
        let call = Call::new(Outgoing { method, parameters }).set_more(true);
        self.conn.send_call(&call, fds).await.map_err(transport)?;
        Ok(Replies {
            client: self,
            done: false,
        })
    }

    /// Receive one reply: its parameters, whether more follow, and its fds.
    async fn receive<R, E>(&mut self) -> CallResult<(R, bool, Vec<OwnedFd>), E>
    where
        R: DeserializeOwned + std::fmt::Debug,
        E: DeserializeOwned + std::fmt::Debug,
    {
        let received = self
            .conn
            .receive_reply::<serde_json::Value, InterfaceOrConnection<E>>()
            .await;
        let (result, fds) = match received {
            Ok(ok) => ok,
            Err(zlink::Error::VarlinkService(e)) => {
                return Err(service_error(e.inner()));
            }
            Err(zlink::Error::UnknownErrorReply(name)) => return Err(CallError::Unknown(name)),
            Err(e) => return Err(transport(e)),
        };
        let reply = result.map_err(|e| match e {
            InterfaceOrConnection::Interface(e) => CallError::Interface(e),
            InterfaceOrConnection::Connection(e) => CallError::Connection(e),
        })?;
        let continues = reply.continues().unwrap_or(false);
        // A reply without parameters is the same as one with empty parameters.
        let params = reply
            .into_parameters()
            .unwrap_or_else(|| serde_json::Value::Object(Default::default()));
        let params = serde_json::from_value(params)
            .map_err(|e| CallError::Transport(format!("unexpected reply: {e}")))?;
        Ok((params, continues, fds))
    }

    /// `org.varlink.service.GetInfo`.
    pub async fn service_info(&mut self) -> CallResult<ServiceInfo, ServiceError> {
        let (info, _) = self
            .call("org.varlink.service.GetInfo", &Empty {}, vec![])
            .await?;
        Ok(info)
    }

    /// `org.varlink.service.GetInterfaceDescription`.
    pub async fn interface_description(
        &mut self,
        interface: &str,
    ) -> CallResult<String, ServiceError> {
        let params = DescriptionParams {
            interface: interface.to_owned(),
        };
        let (reply, _): (DescriptionReply, _) = self
            .call(
                "org.varlink.service.GetInterfaceDescription",
                &params,
                vec![],
            )
            .await?;
        Ok(reply.description)
    }

    /// `io.cfsd.Repository.Info`.
    pub async fn info(&mut self) -> CallResult<InfoReply, RepositoryError> {
        self.repository("Info", &Empty {}).await
    }

    /// `io.cfsd.Repository.Init`.
    pub async fn init(&mut self, params: &InitParams) -> CallResult<InitReply, RepositoryError> {
        self.repository("Init", params).await
    }

    /// `io.cfsd.Repository.Fsck`.
    pub async fn fsck(&mut self, params: &FsckParams) -> CallResult<FsckReply, RepositoryError> {
        self.repository("Fsck", params).await
    }

    /// `io.cfsd.Repository.Gc`.
    pub async fn gc(&mut self, params: &GcParams) -> CallResult<GcReply, RepositoryError> {
        self.repository("Gc", params).await
    }

    /// `io.cfsd.Repository.IndexContent` with `more`: a reply per stream
    /// or image indexed, the last with the totals.
    pub async fn index_content(&mut self) -> CallResult<Replies<'_>, RepositoryError> {
        let method = format!("{}.IndexContent", crate::idl::REPOSITORY_INTERFACE);
        self.call_more(&method, &Empty {}, vec![]).await
    }

    /// `io.cfsd.Repository.Hold`: garbage collection is held off once
    /// this returns, until the connection closes. The replies that remain
    /// end only when the daemon lets go of the hold (it closed the
    /// connection, or failed): wait on them to learn that.
    pub async fn hold(
        &mut self,
        reason: &str,
    ) -> CallResult<(HoldReply, Replies<'_>), RepositoryError> {
        let method = format!("{}.Hold", crate::idl::REPOSITORY_INTERFACE);
        let params = HoldParams {
            reason: reason.to_owned(),
        };
        let mut replies = self.call_more(&method, &params, vec![]).await?;
        match replies.next::<HoldReply, RepositoryError>().await {
            Some(Ok((reply, _))) => Ok((reply, replies)),
            Some(Err(e)) => Err(e),
            None => Err(CallError::Transport("Hold sent no reply".to_owned())),
        }
    }

    /// `io.cfsd.Oci.Dump` or `ExportLayer` (`method`): the pipe the output
    /// comes through, and the replies that remain, whose last says how
    /// much was written once all of it was. Read the pipe to its end while
    /// waiting for that reply: the daemon gives up on a reader that stops.
    pub async fn export<P>(
        &mut self,
        method: &str,
        params: &P,
    ) -> CallResult<(OwnedFd, Replies<'_>), OciError>
    where
        P: Serialize + std::fmt::Debug,
    {
        let method = format!("{}.{method}", crate::idl::OCI_INTERFACE);
        let mut replies = self.call_more(&method, params, vec![]).await?;
        match replies.next::<ExportReply, OciError>().await {
            Some(Ok((_, fds))) => match fds.into_iter().next() {
                Some(pipe) => Ok((pipe, replies)),
                None => Err(CallError::Transport(format!("{method} sent no pipe"))),
            },
            Some(Err(e)) => Err(e),
            None => Err(CallError::Transport(format!("{method} sent no reply"))),
        }
    }

    async fn repository<P, R>(&mut self, method: &str, params: &P) -> CallResult<R, RepositoryError>
    where
        P: Serialize + std::fmt::Debug,
        R: DeserializeOwned + std::fmt::Debug,
    {
        let method = format!("{}.{method}", crate::idl::REPOSITORY_INTERFACE);
        let (reply, _) = self.call(&method, params, vec![]).await?;
        Ok(reply)
    }
}

impl Client {
    /// `io.cfsd.Oci.Pull` with `more`, reading the image from `source`
    /// (a directory for `oci`, a regular file for `oci-archive`). Read the
    /// replies as [`PullReply`](crate::oci::PullReply)s and [`OciError`]s:
    /// progress first, the result last.
    pub async fn pull(
        &mut self,
        params: &PullParams,
        source: OwnedFd,
    ) -> CallResult<Replies<'_>, OciError> {
        self.pull_with(params, vec![source]).await
    }

    /// `io.cfsd.Oci.Pull` with any fds: for transport `docker`, none or
    /// the caller's auth file.
    pub async fn pull_with(
        &mut self,
        params: &PullParams,
        fds: Vec<OwnedFd>,
    ) -> CallResult<Replies<'_>, OciError> {
        let method = format!("{}.Pull", crate::idl::OCI_INTERFACE);
        self.call_more(&method, params, fds).await
    }

    /// `io.cfsd.Oci.Copy` with `more`, from the repository whose
    /// directory is `from`; replies as [`Client::pull`]'s.
    pub async fn copy(
        &mut self,
        params: &crate::oci::CopyParams,
        from: OwnedFd,
    ) -> CallResult<Replies<'_>, OciError> {
        let method = format!("{}.Copy", crate::idl::OCI_INTERFACE);
        self.call_more(&method, params, vec![from]).await
    }

    /// `io.cfsd.Oci.ListImages`.
    pub async fn list_images(&mut self) -> CallResult<ListImagesReply, OciError> {
        self.oci("ListImages", &Empty {}).await.map(|(r, _)| r)
    }

    /// `io.cfsd.Oci.Inspect`.
    pub async fn inspect(&mut self, image: &str) -> CallResult<InspectReply, OciError> {
        self.oci("Inspect", &image_params(image))
            .await
            .map(|(r, _)| r)
    }

    /// `io.cfsd.Oci.Tag`.
    pub async fn tag(&mut self, image: &str, tag: &str) -> CallResult<(), OciError> {
        let params = TagParams {
            image: image.to_owned(),
            tag: tag.to_owned(),
        };
        let (EmptyReply {}, _) = self.oci("Tag", &params).await?;
        Ok(())
    }

    /// `io.cfsd.Oci.Untag`.
    pub async fn untag(&mut self, tag: &str) -> CallResult<(), OciError> {
        let params = UntagParams {
            tag: tag.to_owned(),
        };
        let (EmptyReply {}, _) = self.oci("Untag", &params).await?;
        Ok(())
    }

    /// `io.cfsd.Oci.Remove`: the tags removed.
    pub async fn remove(&mut self, image: &str) -> CallResult<RemoveReply, OciError> {
        self.oci("Remove", &image_params(image))
            .await
            .map(|(r, _)| r)
    }

    /// `io.cfsd.Oci.ListStages`.
    pub async fn list_stages(&mut self) -> CallResult<crate::oci::ListStagesReply, OciError> {
        self.oci("ListStages", &Empty {}).await.map(|(r, _)| r)
    }

    /// `io.cfsd.Oci.Commit`: publish a stage as `tag`.
    pub async fn commit(
        &mut self,
        stage: &str,
        tag: &str,
    ) -> CallResult<crate::oci::CommitReply, OciError> {
        let params = crate::oci::CommitParams {
            stage: stage.to_owned(),
            tag: tag.to_owned(),
        };
        self.oci("Commit", &params).await.map(|(r, _)| r)
    }

    /// `io.cfsd.Oci.Abort`: drop a stage.
    pub async fn abort(&mut self, stage: &str) -> CallResult<(), OciError> {
        let params = crate::oci::StageParams {
            stage: stage.to_owned(),
        };
        let (EmptyReply {}, _) = self.oci("Abort", &params).await?;
        Ok(())
    }

    /// `io.cfsd.Oci.ComputeId`.
    pub async fn compute_id(&mut self, image: &str) -> CallResult<ComputeIdReply, OciError> {
        self.oci("ComputeId", &image_params(image))
            .await
            .map(|(r, _)| r)
    }

    /// `io.cfsd.Oci.ComputeId` of the image's bootable variant.
    pub async fn compute_bootable_id(
        &mut self,
        image: &str,
    ) -> CallResult<ComputeIdReply, OciError> {
        let params = ComputeIdParams {
            image: image.to_owned(),
            bootable: Some(true),
        };
        self.oci("ComputeId", &params).await.map(|(r, _)| r)
    }

    /// `io.cfsd.Oci.MakeBootable`: the bootable image id.
    pub async fn make_bootable(&mut self, image: &str) -> CallResult<MakeBootableReply, OciError> {
        self.oci("MakeBootable", &image_params(image))
            .await
            .map(|(r, _)| r)
    }

    /// `io.cfsd.Oci.KernelArgument`.
    pub async fn kernel_argument(
        &mut self,
        image: &str,
    ) -> CallResult<KernelArgumentReply, OciError> {
        self.oci("KernelArgument", &image_params(image))
            .await
            .map(|(r, _)| r)
    }

    /// `io.cfsd.Oci.Mount`: the detached mount, to be attached with
    /// `move_mount`.
    pub async fn mount(&mut self, params: &MountParams) -> CallResult<OwnedFd, OciError> {
        let (EmptyReply {}, fds) = self.oci("Mount", params).await?;
        fds.into_iter().next().ok_or_else(|| {
            CallError::Transport("cfsd replied to Mount without the mount's fd".to_owned())
        })
    }

    /// `io.cfsd.Oci.Idmap`: an ID-mapped variant of an image.
    pub async fn idmap(&mut self, params: &IdmapParams) -> CallResult<IdmapReply, OciError> {
        self.oci("Idmap", params).await.map(|(r, _)| r)
    }

    /// `io.cfsd.Oci.CreateDelta`, writing the delta archive to `out`, a
    /// regular file opened for writing.
    pub async fn create_delta(
        &mut self,
        params: &CreateDeltaParams,
        out: OwnedFd,
    ) -> CallResult<CreateDeltaReply, OciError> {
        let method = format!("{}.CreateDelta", crate::idl::OCI_INTERFACE);
        self.call(&method, params, vec![out]).await.map(|(r, _)| r)
    }

    /// `io.cfsd.Oci.Export`, writing the archive into `out`.
    pub async fn export_image(
        &mut self,
        params: &ExportParams,
        out: OwnedFd,
    ) -> CallResult<ExportImageReply, OciError> {
        let method = format!("{}.Export", crate::idl::OCI_INTERFACE);
        self.call(&method, params, vec![out]).await.map(|(r, _)| r)
    }

    /// `io.cfsd.Oci.Push`, with the caller's auth file as `authfile`.
    pub async fn push(
        &mut self,
        params: &PushParams,
        authfile: Option<OwnedFd>,
    ) -> CallResult<PushReply, OciError> {
        let method = format!("{}.Push", crate::idl::OCI_INTERFACE);
        let fds = authfile.into_iter().collect();
        self.call(&method, params, fds).await.map(|(r, _)| r)
    }

    /// `io.cfsd.Oci.PushDelta`, with the caller's auth file as `authfile`.
    pub async fn push_delta(
        &mut self,
        params: &PushDeltaParams,
        authfile: Option<OwnedFd>,
    ) -> CallResult<PushDeltaReply, OciError> {
        let method = format!("{}.PushDelta", crate::idl::OCI_INTERFACE);
        let fds = authfile.into_iter().collect();
        self.call(&method, params, fds).await.map(|(r, _)| r)
    }

    async fn oci<P, R>(
        &mut self,
        method: &str,
        params: &P,
    ) -> CallResult<(R, Vec<OwnedFd>), OciError>
    where
        P: Serialize + std::fmt::Debug,
        R: DeserializeOwned + std::fmt::Debug,
    {
        let method = format!("{}.{method}", crate::idl::OCI_INTERFACE);
        self.call(&method, params, vec![]).await
    }
}

fn image_params(image: &str) -> ImageParams {
    ImageParams {
        image: image.to_owned(),
    }
}

/// The replies of a call made with `more`, read one at a time.
#[derive(Debug)]
pub struct Replies<'c> {
    client: &'c mut Client,
    done: bool,
}

impl Replies<'_> {
    /// The next reply and the fds that came with it, or `None` after the
    /// last one.
    pub async fn next<R, E>(&mut self) -> Option<CallResult<(R, Vec<OwnedFd>), E>>
    where
        R: DeserializeOwned + std::fmt::Debug,
        E: DeserializeOwned + std::fmt::Debug,
    {
        if self.done {
            return None;
        }
        let received = self.client.receive::<R, E>().await;
        Some(match received {
            Ok((reply, continues, fds)) => {
                self.done = !continues;
                Ok((reply, fds))
            }
            Err(e) => {
                self.done = true;
                Err(e)
            }
        })
    }
}

/// Parameters of a method that takes none.
#[derive(Debug, Serialize)]
struct Empty {}

/// An error reply: the interface's own, or one of `io.cfsd.Repository`'s
/// that any call may get because it concerns the connection. For calls
/// of `io.cfsd.Repository` the first arm takes both.
#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
enum InterfaceOrConnection<E> {
    Interface(E),
    Connection(RepositoryError),
}

fn transport<E>(e: zlink::Error) -> CallError<E> {
    CallError::Transport(e.to_string())
}

fn service_error<E>(e: &zlink::varlink_service::Error<'_>) -> CallError<E> {
    // zlink's own type lacks Display of the parameters; ours carries them.
    match serde_json::to_value(e).and_then(serde_json::from_value) {
        Ok(known) => CallError::Service(known),
        Err(_) => CallError::Unknown(format!("{e:?}")),
    }
}
