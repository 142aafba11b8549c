//! `io.cfsd.Oci.Export`, an image written as an archive into a file the
//! client passes; and `Dump` and `ExportLayer`, repository content
//! written into a pipe the daemon makes and hands to the client.
//!
//! The daemon makes the pipe rather than writing into an fd the client
//! passes, because its own write end can be non-blocking without touching
//! a file description the client shares: a client that stops reading
//! holds a blocking thread for at most the client timeout, then the call
//! ends with `OutputFailed`. One that hangs up stops the writing at its
//! next piece.

use std::{
    io::{self, Write},
    os::fd::OwnedFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use cfsd_repo::{self as repo, Repository, oci::LayerFormat};
use cfsd_varlink::oci::{
    self as wire, DumpParams, ExportImageReply, ExportLayerParams, ExportParams, ExportReply,
    OciError,
};
use rustix::{
    event::{PollFd, PollFlags},
    fs::OFlags,
    io::Errno,
    pipe::PipeFlags,
};
use tokio::sync::mpsc;

use super::oci::{open, output_file, wire_error};
use crate::{
    access::Peer,
    dispatch::{Outcome, Streamed},
    server::Daemon,
};

/// How often a stalled write looks whether its client has gone.
const STALL_TICK: Duration = Duration::from_millis(100);

/// `Export`: the image as an `oci-archive:`, into the caller's file.
pub async fn export(
    daemon: &Daemon,
    peer: &Peer,
    params: ExportParams,
    fds: Vec<OwnedFd>,
) -> Result<Outcome, OciError> {
    let out = output_file(peer, fds, "Export").await?;
    let repo = open(daemon).await?;
    let compression = super::push::compression(params.compression);
    let report = super::oci::blocking(move || {
        let mut file = std::io::BufWriter::new(std::fs::File::from(out));
        let (image, reference) = (&params.image, params.reference.as_deref());
        repo.save(image, compression, reference, &mut file)
    })
    .await?;
    Ok(Outcome::reply(&ExportImageReply {
        manifest_digest: report.manifest_digest,
        config_digest: report.config_digest,
        bytes: report.bytes,
    }))
}

/// `Dump`: the image's composefs dumpfile.
pub async fn dump(daemon: &Daemon, params: DumpParams) -> Result<Outcome, OciError> {
    let image = params.image;
    into_pipe(daemon, move |repo, out| repo.dump(&image, out)).await
}

/// `ExportLayer`: a stored layer's tar, or its dumpfile.
pub async fn export_layer(daemon: &Daemon, params: ExportLayerParams) -> Result<Outcome, OciError> {
    let format = match params.format.unwrap_or_default() {
        wire::LayerFormat::Tar => LayerFormat::Tar,
        wire::LayerFormat::Dumpfile => LayerFormat::Dumpfile,
    };
    let diff_id = params.diff_id;
    into_pipe(daemon, move |repo, out| {
        repo.export_layer(&diff_id, format, out)
    })
    .await
}

/// Hand the client a pipe, run `write` into it on a blocking thread, and
/// answer with what it wrote once it has.
async fn into_pipe<F>(daemon: &Daemon, write: F) -> Result<Outcome, OciError>
where
    F: FnOnce(&Repository, &mut dyn Write) -> repo::Result<repo::oci::Written> + Send + 'static,
{
    let repo = open(daemon).await?;
    let (reader, writer) = pipe()?;
    let gone = Arc::new(AtomicBool::new(false));
    let mut out = PipeOut {
        fd: writer,
        stall: daemon.client_timeout,
        gone: gone.clone(),
    };
    // The writing counts as this call's and this connection's work.
    let held = crate::work::hold();
    let (replies, receiver) = mpsc::channel(1);
    tokio::spawn(async move {
        let first = Streamed::More(serde_json::json!({}), vec![reader]);
        if replies.send(first).await.is_err() {
            return;
        }
        let job = tokio::task::spawn_blocking(move || {
            let _held = held;
            // `out`, the write end, goes with the closure: the client
            // reads its end of file before the last reply.
            write(&repo, &mut out)
        });
        let done = tokio::select! {
            done = job => done,
            () = replies.closed() => {
                gone.store(true, Ordering::Relaxed);
                return;
            }
        };
        let last = match done {
            Ok(Ok(written)) => Outcome::reply(&ExportReply {
                bytes: Some(written.bytes),
            }),
            Ok(Err(e)) => Outcome::error(&wire_error(e)),
            Err(e) => Outcome::error(&OciError::StorageFailed {
                operation: "writing the output".to_owned(),
                reason: e.to_string(),
            }),
        };
        let _ = replies.send(Streamed::Last(last)).await;
    });
    Ok(Outcome::Stream(receiver))
}

/// A pipe: the end for the client, and the daemon's non-blocking end.
fn pipe() -> Result<(OwnedFd, OwnedFd), OciError> {
    let failed = |e: Errno| OciError::StorageFailed {
        operation: "making the output pipe".to_owned(),
        reason: io::Error::from(e).to_string(),
    };
    let (reader, writer) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC).map_err(failed)?;
    rustix::fs::fcntl_setfl(&writer, OFlags::NONBLOCK).map_err(failed)?;
    Ok((reader, writer))
}

/// The daemon's end of the pipe, giving up on a reader that takes nothing
/// for `stall`, and at once on one whose call is gone.
struct PipeOut {
    fd: OwnedFd,
    stall: Duration,
    gone: Arc<AtomicBool>,
}

impl Write for PipeOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let since = Instant::now();
        loop {
            if self.gone.load(Ordering::Relaxed) {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the client hung up",
                ));
            }
            match rustix::io::write(&self.fd, buf) {
                Ok(n) => return Ok(n),
                Err(Errno::AGAIN) if since.elapsed() >= self.stall => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the client read nothing for {:?}", self.stall),
                    ));
                }
                Err(Errno::AGAIN) => {
                    let mut fds = [PollFd::new(&self.fd, PollFlags::OUT)];
                    let tick =
                        rustix::event::Timespec::try_from(STALL_TICK).map_err(io::Error::other)?;
                    match rustix::event::poll(&mut fds, Some(&tick)) {
                        Ok(_) | Err(Errno::INTR) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(Errno::INTR) => {}
                Err(Errno::PIPE) => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the client closed its end of the pipe",
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
