//! `io.cfsd.Oci`: pull, list, describe, name, remove and mount images.

use std::{
    fs::File,
    os::fd::{AsFd, OwnedFd},
    sync::{Arc, Mutex},
};

use std::sync::atomic::{AtomicBool, Ordering};

use cfsd_repo::{
    self as repo, CreateOptions, DeltaReport, Repository,
    oci::{Platform, PullOptions, PullReport, Source},
};
use cfsd_varlink::{
    idl::OCI_INTERFACE,
    oci::{
        ComputeIdParams, ComputeIdReply, CreateDeltaParams, CreateDeltaReply, DeltaLayer,
        DeltaMethod, EmptyReply, ImageParams, KernelArgumentReply, LayerProgress, ListImagesReply,
        MakeBootableReply, MountParams, OciError, PullParams, PullReply, RemoveReply,
        TRANSPORT_ARCHIVE, TRANSPORT_DIRECTORY, TRANSPORT_REGISTRY, TagParams, UntagParams,
    },
};
use rustix::fs::{AtFlags, FileType, OFlags, StatxFlags};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::{
    sync::{Notify, mpsc},
    task::JoinHandle,
};

mod wire;

pub(super) use wire::wire_error;
use wire::{wire_details, wire_image, wire_report};

use crate::{
    access::Peer,
    dispatch::{self, NoParams, Outcome, Streamed},
    server::Daemon,
};

/// Replies a pull may have queued for a client that reads slowly. Progress
/// beyond this waits in [`Pending`], where it is merged, so a stalled
/// client costs bounded memory and never slows the import.
const STREAM_QUEUE: usize = 16;

/// Handle `method` of `io.cfsd.Oci`. Only `Pull`, `CreateDelta`, `Push`
/// and `PushDelta` take fds; any passed with other calls are closed when this returns.
pub async fn handle(
    daemon: &Daemon,
    peer: &Peer,
    method: &str,
    params: Option<Value>,
    fds: Vec<OwnedFd>,
) -> Outcome {
    match method {
        "Pull" => run(params, |p| pull(daemon, peer, p, fds)).await,
        "Copy" => run(params, |p| super::copy::copy(daemon, peer, p, fds)).await,
        "ListImages" => run(params, |_: NoParams| list_images(daemon)).await,
        "Inspect" => run(params, |p| inspect(daemon, p)).await,
        "Tag" => run(params, |p| tag(daemon, p)).await,
        "Untag" => run(params, |p| untag(daemon, p)).await,
        "Remove" => run(params, |p| remove(daemon, p)).await,
        "ComputeId" => run(params, |p| compute_id(daemon, p)).await,
        "Mount" => run(params, |p| mount(daemon, p)).await,
        "MakeBootable" => run(params, |p| make_bootable(daemon, p)).await,
        "KernelArgument" => run(params, |p| kernel_argument(daemon, p)).await,
        "Idmap" => run(params, |p| super::idmap::idmap(daemon, p)).await,
        // It changes nothing, but its delta carries image files out.
        "CreateDelta" => run(params, |p| create_delta(daemon, peer, p, fds)).await,
        // Sends the repository's content out over the network, which only
        // those who may pull (reach registries) may do.
        "Push" => run(params, |p| super::push::push(daemon, p, fds)).await,
        "PushDelta" => run(params, |p| super::push::push_delta(daemon, p, fds)).await,
        // Image files go out through the pipe, as with CreateDelta.
        "Dump" => run(params, |p| super::export::dump(daemon, p)).await,
        "Export" => run(params, |p| super::export::export(daemon, peer, p, fds)).await,
        "ExportLayer" => run(params, |p| super::export::export_layer(daemon, p)).await,
        "ListStages" => run(params, |_: NoParams| super::stage::list(daemon)).await,
        // What Tag and Untag need: they publish and drop names.
        "Commit" => run(params, |p| super::stage::commit(daemon, p)).await,
        "Abort" => run(params, |p| super::stage::abort(daemon, p)).await,
        _ => dispatch::method_not_found(OCI_INTERFACE, method),
    }
}

/// Parse the parameters, then run the method; invalid parameters are an
/// `org.varlink.service` error, anything after that the interface's own.
async fn run<P, F, Fut>(params: Option<Value>, method: F) -> Outcome
where
    P: DeserializeOwned,
    F: FnOnce(P) -> Fut,
    Fut: Future<Output = Result<Outcome, OciError>>,
{
    match dispatch::params::<P>(params) {
        Ok(p) => method(p).await.unwrap_or_else(|e| Outcome::error(&e)),
        Err(e) => Outcome::error(&e),
    }
}

async fn pull(
    daemon: &Daemon,
    peer: &Peer,
    params: PullParams,
    mut fds: Vec<OwnedFd>,
) -> Result<Outcome, OciError> {
    // Taken first: it is the last fd, whatever the transport takes.
    let source_repo = super::copy::source_repo(daemon, peer, &params, &mut fds)?;
    // A registry is reached only here, for a caller the access table let
    // through; its reference names the image, not a manifest in a layout.
    let (source, options) = if params.transport == TRANSPORT_REGISTRY {
        let request = super::registry::request(&params, fds)?;
        let options = pull_options(PullParams {
            reference: None,
            ..params
        })?;
        (Err(request), options)
    } else {
        (Ok(source(&params.transport, fds)?), pull_options(params)?)
    };
    let repo = open(daemon).await?;
    let pid = peer.pid;
    let settings = daemon.registry.clone();
    let prepared = blocking(move || {
        let mut options = options;
        options.source_repo = source_repo.open()?;
        let source = match source {
            Ok(local) => {
                if let Some(fd) = local.fd() {
                    repo::oci::check_source_filesystem(fd, Some(pid))?;
                }
                // The machine's policy covers local sources too.
                options.policy = Some(repo::trust::Policy::load(&settings.policy)?);
                local
            }
            Err(request) => {
                Source::Registry(Box::new(repo::registry::Registry::new(&settings, request)?))
            }
        };
        repo::Repository::prepare_pull(source, &options)
    })
    .await?;
    Ok(stream_prepared(repo, prepared))
}

/// Run the pull `prepared` in a task of its own and stream its progress
/// and result.
pub(super) fn stream_prepared(repo: Arc<Repository>, prepared: repo::oci::PreparedPull) -> Outcome {
    // The import's threads count as this call's and this connection's;
    // they go with the task, which may outlive the call.
    let held = crate::work::hold();
    let pending = Arc::new(Pending::default());
    let progress = {
        let pending = pending.clone();
        move |p: repo::oci::LayerProgress| pending.push(p)
    };
    // The repository coordinates this pull with GC and identical pulls,
    // and tells when this one waits for an identical import.
    let shared = Arc::new(AtomicBool::new(false));
    let sharing = shared.clone();
    let manifest = prepared.manifest_digest();
    let work = tokio::spawn(async move {
        let _held = held;
        let noticed = move || {
            tracing::info!(%manifest, "pull waits for an identical pull's import");
            sharing.store(true, Ordering::Relaxed);
        };
        let pull = repo.pull_prepared(prepared, progress);
        repo::coordination::noticing_import_wait(noticed, pull).await
    });
    let (replies, receiver) = mpsc::channel(STREAM_QUEUE);
    let work = AbortOnDrop(work);
    tokio::spawn(stream_pull(work, shared, pending, replies));
    Outcome::Stream(receiver)
}

/// The source the client passed as the call's first fd, checked to be
/// of the kind its transport reads: the daemon opens no path itself.
fn source(transport: &str, fds: Vec<OwnedFd>) -> Result<Source, OciError> {
    let (kind, expected) = match transport {
        TRANSPORT_ARCHIVE => (
            FileType::RegularFile,
            "the oci-archive tar as a regular file opened for reading",
        ),
        TRANSPORT_DIRECTORY => (
            FileType::Directory,
            "the OCI layout as a directory opened for reading",
        ),
        other => {
            return Err(OciError::UnknownTransport {
                transport: other.to_owned(),
            });
        }
    };
    let fd = fds
        .into_iter()
        .next()
        .filter(|fd| is_readable(fd, kind))
        .ok_or_else(|| OciError::MissingFd {
            method: format!("{OCI_INTERFACE}.Pull"),
            expected: expected.to_owned(),
        })?;
    Ok(match kind {
        FileType::RegularFile => Source::Archive(File::from(fd)),
        _ => Source::Directory(fd),
    })
}

/// Whether `fd` is of `kind` and open for reading. An `O_PATH` fd is
/// refused: it would let the daemon read what the client could not. The
/// type comes from the kernel's cache (`AT_STATX_DONT_SYNC`): this runs
/// on the async threads, and `fstat` of a FUSE file may wait for its
/// server.
pub(super) fn is_readable(fd: &OwnedFd, kind: FileType) -> bool {
    let of_kind = rustix::fs::statx(
        fd,
        "",
        AtFlags::EMPTY_PATH | AtFlags::STATX_DONT_SYNC,
        StatxFlags::TYPE,
    )
    .is_ok_and(|st| FileType::from_raw_mode(st.stx_mode.into()) == kind);
    let readable = rustix::fs::fcntl_getfl(fd.as_fd()).is_ok_and(|flags| {
        !flags.contains(OFlags::PATH)
            && matches!(flags & OFlags::RWMODE, OFlags::RDONLY | OFlags::RDWR)
    });
    of_kind && readable
}

/// `CreateDelta`: the output is the call's first fd, which must be a
/// regular file open for writing; the daemon opens nothing itself.
///
/// The daemon writes as root, past the peer's quota and the blocks kept
/// for root, so an unprivileged peer's output must be a file it owns:
/// writing to any other file it may open would spend someone else's
/// space. Checking the owner is simpler than writing with the peer's
/// credentials, which would need a thread of the peer's uid per call.
async fn create_delta(
    daemon: &Daemon,
    peer: &Peer,
    params: CreateDeltaParams,
    fds: Vec<OwnedFd>,
) -> Result<Outcome, OciError> {
    let out = output_file(peer, fds, "CreateDelta").await?;
    let repo = open(daemon).await?;
    let options = CreateOptions {
        jobs: capped_jobs(params.jobs),
        method: match params.method.unwrap_or_default() {
            DeltaMethod::Zstd => repo::DeltaMethod::Zstd,
            DeltaMethod::Bsdiff => repo::DeltaMethod::Bsdiff,
        },
        reference: params.reference,
        max_scratch: daemon.max_delta_scratch,
    };
    // Reading holds off no GC (see cfsd_repo::coordination).
    let cancel = CancelOnDrop::default();
    let cancelled = cancel.0.clone();
    // blocking() keeps this connection's slot taken until the encoder
    // has stopped.
    let report = blocking(move || {
        let (source, target, out) = (&params.source, &params.target, File::from(out));
        repo.create_delta_cancellable(source, target, out, options, &cancelled)
    })
    .await?;
    Ok(Outcome::reply(&wire_delta(report)))
}

/// The output file of `method`: the call's first fd, a regular file open
/// for writing that the peer owns (root may pass any). The daemon writes
/// as root, past the peer's quota and the blocks kept for root, so
/// writing to a file someone else owns would spend their space.
pub(super) async fn output_file(
    peer: &Peer,
    fds: Vec<OwnedFd>,
    method: &str,
) -> Result<OwnedFd, OciError> {
    let (uid, pid) = (peer.uid, peer.pid);
    let expected = format!("the output as a regular file that uid {uid} owns, opened for writing");
    let missing = |expected: String| OciError::MissingFd {
        method: format!("{OCI_INTERFACE}.{method}"),
        expected,
    };
    let Some(fd) = fds.into_iter().next() else {
        return Err(missing(expected));
    };
    // Its filesystem first, from the mount tables alone: a write into
    // FUSE, and even an fstat there, waits on the peer's own server.
    // The fstat goes off the async threads all the same.
    let refusal = super::blocking(move || {
        if let Some(why) = repo::oci::output_filesystem_refusal(&fd, Some(pid))? {
            return Ok(Err(format!(", not on FUSE: {why}")));
        }
        let owned =
            |fd: &OwnedFd| uid == 0 || rustix::fs::fstat(fd).is_ok_and(|st| st.st_uid == uid);
        if is_writable_file(&fd) && owned(&fd) {
            Ok(Ok(fd))
        } else {
            Ok(Err(String::new()))
        }
    })
    .await
    .map_err(wire_error)?;
    refusal.map_err(|why| missing(format!("{expected}{why}")))
}

/// Sets its flag when dropped: the work it stands for is no longer wanted.
#[derive(Default)]
pub(super) struct CancelOnDrop(pub(super) Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Whether `fd` is a regular file open for writing (not `O_PATH`).
fn is_writable_file(fd: &OwnedFd) -> bool {
    let regular = rustix::fs::fstat(fd)
        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile);
    let writable = rustix::fs::fcntl_getfl(fd.as_fd()).is_ok_and(|flags| {
        !flags.contains(OFlags::PATH)
            && matches!(flags & OFlags::RWMODE, OFlags::WRONLY | OFlags::RDWR)
    });
    regular && writable
}

/// The jobs a client asked for, at most one per core; 0 means one per
/// core.
pub(super) fn capped_jobs(jobs: Option<u64>) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let jobs = usize::try_from(jobs.unwrap_or(0)).unwrap_or(usize::MAX);
    match jobs {
        0 => cores,
        n => n.min(cores),
    }
}

pub(super) fn wire_delta(r: DeltaReport) -> CreateDeltaReply {
    CreateDeltaReply {
        delta_bytes: r.delta_bytes,
        layers: r.layers,
        layers_changed: r.changed.len() as u64,
        manifest_digest: r.manifest_digest,
        source_digest: r.source,
        target_digest: r.target,
        changed: r
            .changed
            .into_iter()
            .map(|l| DeltaLayer {
                layer: l.layer,
                diff_id: l.diff_id,
                method: l.method,
                tar_size: l.tar_size,
                delta_size: l.delta_size,
                files_copied: l.files_copied,
                files_diffed: l.files_diffed,
                files_added: l.files_added,
            })
            .collect(),
    }
}

fn pull_options(params: PullParams) -> Result<PullOptions, OciError> {
    let platform = params
        .platform
        .as_deref()
        .map(str::parse::<Platform>)
        .transpose()
        .map_err(wire_error)?;
    // A client may not claim more threads than the machine has cores.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let jobs = usize::try_from(params.jobs.unwrap_or(0)).unwrap_or(usize::MAX);
    Ok(PullOptions {
        reference: params.reference,
        tag: params.tag,
        platform,
        jobs: jobs.min(cores),
        no_delta: params.no_delta.unwrap_or(false),
        no_partial: params.no_partial.unwrap_or(false),
        digest: params.digest,
        policy: None,
        stage: params.stage.unwrap_or(false),
        source_repo: None,
    })
}

/// Progress not yet sent. Workers report from their threads and must not
/// wait, so reports are merged here rather than queued: a layer's byte
/// count replaces the unsent one of the same stage, and a new stage is
/// kept in order, so stage changes are never lost.
#[derive(Debug, Default)]
struct Pending {
    unsent: Mutex<Vec<LayerProgress>>,
    changed: Notify,
}

impl Pending {
    fn push(&self, p: repo::oci::LayerProgress) {
        let p = LayerProgress {
            layer: p.layer,
            stage: p.stage.to_string(),
            done: p.done,
            total: p.total,
        };
        let mut unsent = self.unsent.lock().unwrap_or_else(|e| e.into_inner());
        match unsent
            .iter_mut()
            .find(|q| q.layer == p.layer && q.stage == p.stage)
        {
            Some(same) => *same = p,
            None => unsent.push(p),
        }
        drop(unsent);
        self.changed.notify_one();
    }

    fn take(&self) -> Vec<LayerProgress> {
        std::mem::take(&mut *self.unsent.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Cancels a task when dropped: work nobody waits for any more.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Forward a pull's progress to the connection, then its result. When the
/// connection stops taking replies (the client hung up or the daemon is
/// shutting down), return, which cancels the pull.
async fn stream_pull(
    mut work: AbortOnDrop<repo::Result<PullReport>>,
    shared: Arc<AtomicBool>,
    pending: Arc<Pending>,
    replies: mpsc::Sender<Streamed>,
) {
    let finished = loop {
        tokio::select! {
            _ = replies.closed() => return,
            _ = pending.changed.notified() => {
                if send_progress(&pending, &replies).await.is_err() {
                    return;
                }
            }
            finished = &mut work.0 => break finished,
        }
    };
    if send_progress(&pending, &replies).await.is_err() {
        return;
    }
    let last = match finished {
        Ok(Ok(report)) => Outcome::reply(&PullReply {
            progress: None,
            // A pull that waited for one that then failed imported the
            // image itself: it shared nothing.
            result: Some({
                let shared = shared.load(Ordering::Relaxed) && report.already_present;
                wire_report(report, shared)
            }),
        }),
        Ok(Err(e)) => Outcome::error(&wire_error(e)),
        Err(e) => Outcome::error(&OciError::StorageFailed {
            operation: "pulling".to_owned(),
            reason: e.to_string(),
        }),
    };
    let _ = replies.send(Streamed::Last(last)).await;
}

async fn send_progress(
    pending: &Pending,
    replies: &mpsc::Sender<Streamed>,
) -> Result<(), mpsc::error::SendError<Streamed>> {
    for progress in pending.take() {
        let reply = PullReply {
            progress: Some(progress),
            result: None,
        };
        let value = serde_json::to_value(&reply).unwrap_or_default();
        replies.send(Streamed::More(value, Vec::new())).await?;
    }
    Ok(())
}

async fn list_images(daemon: &Daemon) -> Result<Outcome, OciError> {
    let repo = open(daemon).await?;
    let images = blocking(move || repo.images()).await?;
    Ok(Outcome::reply(&ListImagesReply {
        images: images.into_iter().map(wire_image).collect(),
    }))
}

async fn inspect(daemon: &Daemon, params: ImageParams) -> Result<Outcome, OciError> {
    let repo = open(daemon).await?;
    let details = blocking(move || repo.inspect(&params.image)).await?;
    Ok(Outcome::reply(&wire_details(details)))
}

async fn tag(daemon: &Daemon, params: TagParams) -> Result<Outcome, OciError> {
    let repo = open(daemon).await?;
    blocking(move || repo.tag(&params.image, &params.tag)).await?;
    Ok(Outcome::reply(&EmptyReply {}))
}

async fn untag(daemon: &Daemon, params: UntagParams) -> Result<Outcome, OciError> {
    let repo = open(daemon).await?;
    blocking(move || repo.untag(&params.tag)).await?;
    Ok(Outcome::reply(&EmptyReply {}))
}

async fn remove(daemon: &Daemon, params: ImageParams) -> Result<Outcome, OciError> {
    let repo = open(daemon).await?;
    let untagged = blocking(move || repo.remove(&params.image)).await?;
    Ok(Outcome::reply(&RemoveReply { untagged }))
}

async fn compute_id(daemon: &Daemon, params: ComputeIdParams) -> Result<Outcome, OciError> {
    let repo = open(daemon).await?;
    let image_id = blocking(move || match params.bootable {
        Some(true) => repo.compute_bootable_id(&params.image),
        _ => repo.compute_id(&params.image),
    })
    .await?;
    Ok(Outcome::reply(&ComputeIdReply { image_id }))
}

async fn make_bootable(daemon: &Daemon, params: ImageParams) -> Result<Outcome, OciError> {
    let repo = open(daemon).await?;
    let image_id = blocking(move || repo.make_bootable(&params.image)).await?;
    Ok(Outcome::reply(&MakeBootableReply { image_id }))
}

async fn kernel_argument(daemon: &Daemon, params: ImageParams) -> Result<Outcome, OciError> {
    let repo = open(daemon).await?;
    let karg = blocking(move || repo.kernel_argument(&params.image)).await?;
    Ok(Outcome::reply(&KernelArgumentReply {
        argument: karg.argument,
        image_id: karg.image_id,
    }))
}

/// `Mount`; whether the peer may ask for its options was decided with
/// the access table before the call got here.
async fn mount(daemon: &Daemon, params: MountParams) -> Result<Outcome, OciError> {
    let repo = open(daemon).await?;
    let options = repo::oci::MountOptions {
        allow_setuid: params.allow_setuid.unwrap_or(false),
        allow_devices: params.allow_devices.unwrap_or(false),
    };
    let idmap = super::idmap::mount_maps(params.uidmap, params.gidmap)?;
    // The repository keeps GC off until the client has attached it.
    let mount = blocking(move || match params.bootable {
        Some(true) => repo.mount_bootable(&params.image, options, idmap.as_ref()),
        _ => repo.mount(&params.image, options, idmap.as_ref()),
    })
    .await?;
    // The reply is empty; the mount travels beside it.
    Ok(Outcome::Reply(
        Value::Object(Default::default()),
        vec![mount],
    ))
}

pub(super) async fn open(daemon: &Daemon) -> Result<Arc<Repository>, OciError> {
    super::repository(daemon).await.map_err(wire_error)
}

/// [`super::blocking`], with the interface's error.
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> repo::Result<T> + Send + 'static,
) -> Result<T, OciError> {
    super::blocking(work).await.map_err(wire_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_delta_writes_only_to_regular_files_open_for_writing() {
        let path = std::env::temp_dir().join(format!("cfsd-delta-fd-{}", std::process::id()));
        let writable = File::create(&path).unwrap();
        let readable = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(is_writable_file(&OwnedFd::from(writable)));
        assert!(!is_writable_file(&OwnedFd::from(readable)));
        let dir = File::open(std::env::temp_dir()).unwrap();
        assert!(!is_writable_file(&OwnedFd::from(dir)));
        let null = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .unwrap();
        assert!(
            !is_writable_file(&OwnedFd::from(null)),
            "not a regular file"
        );
    }

    #[test]
    fn jobs_are_capped_at_the_cores() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(capped_jobs(None), cores);
        assert_eq!(capped_jobs(Some(0)), cores);
        assert_eq!(capped_jobs(Some(1)), 1);
        assert_eq!(capped_jobs(Some(u64::MAX)), cores);
    }
}
