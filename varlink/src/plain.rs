//! The typed calls of the plain-image methods of `io.cfsd.Repository`.

use std::os::fd::OwnedFd;

use serde::{Serialize, de::DeserializeOwned};

use crate::{
    CallError, Client,
    client::CallResult,
    idl::REPOSITORY_INTERFACE,
    oci::EmptyReply,
    repository::{
        ComputeImageIdParams, CreateImageParams, ImageIdReply, ImageObjectsReply,
        ListNamedImagesReply, PlainImageParams, RepositoryError,
    },
};

impl Client {
    /// `io.cfsd.Repository.CreateImage` of the tree under `tree`, a
    /// directory opened for reading.
    pub async fn create_image(
        &mut self,
        params: &CreateImageParams,
        tree: OwnedFd,
    ) -> CallResult<ImageIdReply, RepositoryError> {
        self.plain("CreateImage", params, vec![tree])
            .await
            .map(|(r, _)| r)
    }

    /// `io.cfsd.Repository.ComputeImageId` of the tree under `tree`.
    pub async fn compute_image_id(
        &mut self,
        params: &ComputeImageIdParams,
        tree: OwnedFd,
    ) -> CallResult<ImageIdReply, RepositoryError> {
        self.plain("ComputeImageId", params, vec![tree])
            .await
            .map(|(r, _)| r)
    }

    /// `io.cfsd.Repository.ListNamedImages`.
    pub async fn list_named_images(&mut self) -> CallResult<ListNamedImagesReply, RepositoryError> {
        let none = serde_json::Map::new();
        self.plain("ListNamedImages", &none, vec![])
            .await
            .map(|(r, _)| r)
    }

    /// `io.cfsd.Repository.ImageObjects`.
    pub async fn image_objects(
        &mut self,
        image: &str,
    ) -> CallResult<ImageObjectsReply, RepositoryError> {
        let params = PlainImageParams {
            image: image.to_owned(),
        };
        self.plain("ImageObjects", &params, vec![])
            .await
            .map(|(r, _)| r)
    }

    /// `io.cfsd.Repository.MountImage`: the detached mount, to be
    /// attached with `move_mount`.
    pub async fn mount_image(&mut self, image: &str) -> CallResult<OwnedFd, RepositoryError> {
        let params = PlainImageParams {
            image: image.to_owned(),
        };
        let (EmptyReply {}, fds) = self.plain("MountImage", &params, vec![]).await?;
        fds.into_iter().next().ok_or_else(|| {
            CallError::Transport("cfsd replied to MountImage without the mount's fd".to_owned())
        })
    }

    async fn plain<P, R>(
        &mut self,
        method: &str,
        params: &P,
        fds: Vec<OwnedFd>,
    ) -> CallResult<(R, Vec<OwnedFd>), RepositoryError>
    where
        P: Serialize + std::fmt::Debug,
        R: DeserializeOwned + std::fmt::Debug,
    {
        let method = format!("{REPOSITORY_INTERFACE}.{method}");
        self.call(&method, params, fds).await
    }
}
