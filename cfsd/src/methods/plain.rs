//! The plain-image methods of `io.cfsd.Repository`: images made from a
//! directory tree the client passes, as upstream `cfsctl create-image`.

use std::{
    os::fd::OwnedFd,
    sync::{Arc, atomic::AtomicBool},
};

use cfsd_repo::{
    self as repo, Repository,
    plain::{Limits, TreeOptions},
};
use cfsd_varlink::{
    idl::REPOSITORY_INTERFACE,
    repository::{
        ComputeImageIdParams, CreateImageParams, ImageIdReply, ImageObjectsReply,
        ListNamedImagesReply, NamedImage, PlainImageParams, RepositoryError,
    },
};
use rustix::fs::FileType;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::oci::CancelOnDrop;
use crate::{
    access::Peer,
    dispatch::{self, NoParams, Outcome},
    server::Daemon,
};

/// The methods of `io.cfsd.Repository` served here.
const SERVED: &[&str] = &[
    "CreateImage",
    "ComputeImageId",
    "ListNamedImages",
    "ImageObjects",
    "MountImage",
];

/// Whether `method` is one of these.
pub fn serves(method: &str) -> bool {
    SERVED.contains(&method)
}

/// Handle `method`, which dispatch let through by the access table. Only `CreateImage` and
/// `ComputeImageId` take an fd; any other passed is closed.
pub async fn handle(
    daemon: &Daemon,
    peer: &Peer,
    method: &str,
    params: Option<Value>,
    fds: Vec<OwnedFd>,
) -> Outcome {
    let result = match method {
        "CreateImage" => {
            let call = |p| create(daemon, peer, p, fds);
            run(params, call).await
        }
        "ComputeImageId" => run(params, |p| compute(daemon, peer, p, fds)).await,
        "ListNamedImages" => run(params, |_: NoParams| list(daemon)).await,
        "ImageObjects" => run(params, |p| objects(daemon, p)).await,
        "MountImage" => run(params, |p| mount(daemon, p)).await,
        _ => return dispatch::method_not_found(REPOSITORY_INTERFACE, method),
    };
    result.unwrap_or_else(|e| Outcome::error(&denied(e, peer, method)))
}

/// Parse the parameters, then run the method; invalid parameters are an
/// `org.varlink.service` error.
async fn run<P, F, Fut>(params: Option<Value>, method: F) -> Result<Outcome, repo::Error>
where
    P: DeserializeOwned,
    F: FnOnce(P) -> Fut,
    Fut: Future<Output = Result<Outcome, repo::Error>>,
{
    match dispatch::params::<P>(params) {
        Ok(p) => method(p).await,
        Err(e) => Ok(Outcome::error(&e)),
    }
}

/// The tree: the call's first fd, a directory opened for reading.
fn tree(fds: Vec<OwnedFd>, method: &str) -> Result<OwnedFd, RepositoryError> {
    fds.into_iter()
        .next()
        .filter(|fd| super::oci::is_readable(fd, FileType::Directory))
        .ok_or_else(|| RepositoryError::MissingFd {
            method: format!("{REPOSITORY_INTERFACE}.{method}"),
            expected: "the tree as a directory opened for reading".to_owned(),
        })
}

fn options(peer: &Peer, no_propagate_usr: Option<bool>, keep_user: Option<bool>) -> TreeOptions {
    TreeOptions {
        no_propagate_usr: no_propagate_usr.unwrap_or(false),
        keep_user_xattrs: keep_user.unwrap_or(false),
        reader: peer.tree_reader(),
        peer_pid: Some(peer.pid),
        limits: Limits::default(),
    }
}

/// The work of `CreateImage` or `ComputeImageId`, given the repository,
/// the tree, how to read it and the flag that a hang-up sets.
type TreeWork = Box<
    dyn FnOnce(Arc<Repository>, OwnedFd, TreeOptions, &AtomicBool) -> repo::Result<String> + Send,
>;

/// Run `work` on the tree passed as the call's fd, read as `peer`.
async fn on_tree(
    daemon: &Daemon,
    peer: &Peer,
    method: &str,
    fds: Vec<OwnedFd>,
    options: (Option<bool>, Option<bool>),
    work: TreeWork,
) -> Result<Outcome, repo::Error> {
    let tree = match tree(fds, method) {
        Ok(tree) => tree,
        Err(e) => return Ok(Outcome::error(&e)),
    };
    let options = self::options(peer, options.0, options.1);
    let repo = super::repository(daemon).await?;
    // Dropped with the call when the client hangs up: the walk stops.
    let cancel = CancelOnDrop::default();
    let cancelled = Arc::clone(&cancel.0);
    let image_id = super::blocking(move || work(repo, tree, options, &cancelled)).await?;
    Ok(Outcome::reply(&ImageIdReply { image_id }))
}

async fn create(
    daemon: &Daemon,
    peer: &Peer,
    p: CreateImageParams,
    fds: Vec<OwnedFd>,
) -> Result<Outcome, repo::Error> {
    let options = (p.no_propagate_usr, p.keep_user_xattrs);
    let work: TreeWork = Box::new(move |repo, tree, options, cancelled| {
        repo.create_image(tree, p.name.as_deref(), &options, cancelled)
    });
    on_tree(daemon, peer, "CreateImage", fds, options, work).await
}

async fn compute(
    daemon: &Daemon,
    peer: &Peer,
    p: ComputeImageIdParams,
    fds: Vec<OwnedFd>,
) -> Result<Outcome, repo::Error> {
    let options = (p.no_propagate_usr, p.keep_user_xattrs);
    let work: TreeWork =
        Box::new(|repo, tree, options, cancelled| repo.compute_tree_id(tree, &options, cancelled));
    on_tree(daemon, peer, "ComputeImageId", fds, options, work).await
}

async fn list(daemon: &Daemon) -> Result<Outcome, repo::Error> {
    let repo = super::repository(daemon).await?;
    let images = super::blocking(move || repo.named_images()).await?;
    Ok(Outcome::reply(&ListNamedImagesReply {
        images: images
            .into_iter()
            .map(|i| NamedImage {
                name: i.name,
                image_id: i.image_id,
            })
            .collect(),
    }))
}

async fn objects(daemon: &Daemon, p: PlainImageParams) -> Result<Outcome, repo::Error> {
    let repo = super::repository(daemon).await?;
    let objects = super::blocking(move || repo.image_objects(&p.image)).await?;
    Ok(Outcome::reply(&ImageObjectsReply { objects }))
}

async fn mount(daemon: &Daemon, p: PlainImageParams) -> Result<Outcome, repo::Error> {
    let repo = super::repository(daemon).await?;
    // The repository keeps GC off until the client has attached it.
    let mount = super::blocking(move || repo.mount_plain_image(&p.image)).await?;
    Ok(Outcome::Reply(
        Value::Object(Default::default()),
        vec![mount],
    ))
}

/// The repository's errors as this interface's. What the daemon may not
/// do for the caller (take its credentials, write files of another
/// user) is refused as the call would be.
fn denied(e: repo::Error, peer: &Peer, method: &str) -> RepositoryError {
    use repo::Error as E;
    match e {
        E::AccessDenied { operation, reason } => {
            tracing::info!(uid = peer.uid, "{operation} failed: {reason}");
            RepositoryError::PermissionDenied {
                method: format!("{REPOSITORY_INTERFACE}.{method}"),
                uid: peer.uid,
            }
        }
        E::InvalidTree { path, reason } => RepositoryError::InvalidTree { path, reason },
        E::InvalidImageName { name, reason } => RepositoryError::InvalidImageName { name, reason },
        E::ImageNotFound { image } => RepositoryError::ImageNotFound { image },
        E::MountFailed { image, reason } => RepositoryError::MountFailed { image, reason },
        e => super::repository::wire_error(e),
    }
}
