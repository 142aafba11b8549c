//! `io.cfsd.Oci.Copy`, and a Pull's `sourceRepo`: reading another
//! composefs repository the client opened, or the one the admin
//! configured with `--source-repo`.
//!
//! The daemon reads as root, so a client's repository is read within the
//! client's own rights unless the access table says the client has the
//! daemon's ([`Right::ReadClientFiles`]); see `cfsd_repo::secondary`.

use std::{os::fd::OwnedFd, sync::Arc};

use cfsd_repo::{
    self as repo,
    oci::{PullOptions, Source},
    secondary::{Reader, SecondaryRepository},
};
use cfsd_varlink::{
    idl::OCI_INTERFACE,
    oci::{CopyParams, OciError, PullParams},
};
use rustix::fs::FileType;

use super::oci::{blocking, capped_jobs, is_readable, open, stream_prepared};
use crate::{
    access::{Peer, Right},
    dispatch::Outcome,
    server::Daemon,
};

/// Where a pull's delta may find its source image.
pub(super) enum SourceRepo {
    /// Nowhere but this repository.
    None,
    /// The repository the admin configured.
    Configured(Arc<SecondaryRepository>),
    /// A directory the client passed, to be read as `reader` may.
    Passed {
        dir: OwnedFd,
        reader: Option<Reader>,
        pid: u32,
    },
}

impl SourceRepo {
    /// The repository, opened and checked; blocks.
    pub(super) fn open(self) -> repo::Result<Option<Arc<SecondaryRepository>>> {
        match self {
            SourceRepo::None => Ok(None),
            SourceRepo::Configured(repo) => Ok(Some(repo)),
            SourceRepo::Passed { dir, reader, pid } => open_passed(dir, reader, pid).map(Some),
        }
    }
}

/// The client's repository `dir`: refused on FUSE before anything is
/// read from it, as any source is.
fn open_passed(
    dir: OwnedFd,
    reader: Option<Reader>,
    pid: u32,
) -> repo::Result<Arc<SecondaryRepository>> {
    repo::oci::check_source_filesystem(&dir, Some(pid))?;
    SecondaryRepository::open(dir, reader).map(Arc::new)
}

/// Whose rights bound what is read of a repository `peer` passes.
fn reader(peer: &Peer) -> Option<Reader> {
    (!peer.may(Right::ReadClientFiles)).then(|| Reader::of_process(peer.uid, peer.pid))
}

/// A Pull's source repository: with `sourceRepo`, the call's last fd;
/// otherwise the configured one, if any.
pub(super) fn source_repo(
    daemon: &Daemon,
    peer: &Peer,
    params: &PullParams,
    fds: &mut Vec<OwnedFd>,
) -> Result<SourceRepo, OciError> {
    if params.source_repo != Some(true) {
        return Ok(match &daemon.source_repo {
            Some(repo) => SourceRepo::Configured(repo.clone()),
            None => SourceRepo::None,
        });
    }
    let dir = fds
        .pop()
        .filter(|fd| is_readable(fd, FileType::Directory))
        .ok_or_else(|| missing_dir("Pull"))?;
    Ok(SourceRepo::Passed {
        dir,
        reader: reader(peer),
        pid: peer.pid,
    })
}

fn missing_dir(method: &str) -> OciError {
    OciError::MissingFd {
        method: format!("{OCI_INTERFACE}.{method}"),
        expected: "a composefs repository's directory opened for reading".to_owned(),
    }
}

/// `Copy`: a pull whose source is the repository the client passed.
pub(super) async fn copy(
    daemon: &Daemon,
    peer: &Peer,
    params: CopyParams,
    fds: Vec<OwnedFd>,
) -> Result<Outcome, OciError> {
    let dir = fds
        .into_iter()
        .next()
        .filter(|fd| is_readable(fd, FileType::Directory))
        .ok_or_else(|| missing_dir("Copy"))?;
    let (reader, pid) = (reader(peer), peer.pid);
    let repo = open(daemon).await?;
    let options = PullOptions {
        reference: Some(params.image),
        tag: params.tag,
        jobs: capped_jobs(params.jobs),
        ..PullOptions::default()
    };
    let prepared = blocking(move || {
        let source = Source::Repository(open_passed(dir, reader, pid)?);
        repo::Repository::prepare_pull(source, &options)
    })
    .await?;
    Ok(stream_prepared(repo, prepared))
}
