//! `create-image`, `compute-id`, `images`, `mount` and `image-objects`:
//! plain composefs images of a directory tree, as upstream cfsctl's.

use std::{
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
    process::ExitCode,
};

use cfsd_varlink::{
    Client,
    oci::EmptyReply,
    repository::{ComputeImageIdParams, CreateImageParams},
};
use rustix::{
    fs::{CWD, Mode, OFlags},
    mount::{MoveMountFlags, move_mount},
};

use crate::{failure::Local, render::Output};

/// Which xattrs an image keeps, by upstream's names for the choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Xattrs {
    /// Only security.capability.
    #[default]
    AllowlistOnly,
    /// security.capability and user.*.
    KeepUserXattrs,
}

/// How the tree is made an image, as upstream's options say it.
#[derive(Debug, Clone, clap::Args)]
pub struct TreeArgs {
    /// The directory tree, read with your own permissions.
    pub path: PathBuf,
    /// Keep the root directory's own metadata instead of /usr's (and
    /// skip the rest of the OCI transformation: /run and every xattr
    /// are kept).
    #[arg(long)]
    pub no_propagate_usr_to_root: bool,
    /// Which extended attributes to keep.
    #[arg(long, value_enum, default_value_t)]
    pub xattrs: Xattrs,
}

impl TreeArgs {
    /// Open the tree with this user's permissions; the daemon reads only
    /// through the fd.
    fn open(&self) -> Result<OwnedFd, Local> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        rustix::fs::open(&self.path, flags, Mode::empty()).map_err(|e| Local::OpenFailed {
            path: self.path.display().to_string(),
            reason: std::io::Error::from(e).to_string(),
        })
    }

    fn keep_user_xattrs(&self) -> Option<bool> {
        Some(self.xattrs == Xattrs::KeepUserXattrs)
    }
}

/// An image id as upstream prints it: `ALGORITHM:HEX`, the algorithm
/// told by the digest's length.
fn with_algorithm(hex: &str) -> String {
    match hex.len() {
        64 => format!("sha256:{hex}"),
        _ => format!("sha512:{hex}"),
    }
}

/// `cfsctl create-image PATH [NAME]`.
pub async fn create(
    client: &mut Client,
    out: Output,
    tree: &TreeArgs,
    name: Option<String>,
) -> anyhow::Result<ExitCode> {
    let params = CreateImageParams {
        name,
        no_propagate_usr: Some(tree.no_propagate_usr_to_root),
        keep_user_xattrs: tree.keep_user_xattrs(),
    };
    let reply = client.create_image(&params, tree.open()?).await?;
    out.show(&reply, |r| println!("{}", with_algorithm(&r.image_id)))?;
    Ok(ExitCode::SUCCESS)
}

/// `cfsctl compute-id PATH`.
pub async fn compute_id(
    client: &mut Client,
    out: Output,
    tree: &TreeArgs,
) -> anyhow::Result<ExitCode> {
    let params = ComputeImageIdParams {
        no_propagate_usr: Some(tree.no_propagate_usr_to_root),
        keep_user_xattrs: tree.keep_user_xattrs(),
    };
    let reply = client.compute_image_id(&params, tree.open()?).await?;
    out.show(&reply, |r| println!("{}", r.image_id))?;
    Ok(ExitCode::SUCCESS)
}

/// `cfsctl images`.
pub async fn images(client: &mut Client, out: Output, no_trunc: bool) -> anyhow::Result<ExitCode> {
    let reply = client.list_named_images().await?;
    out.show(&reply, |r| {
        if r.images.is_empty() {
            println!("No images found");
            return;
        }
        let width = r.images.iter().map(|i| i.name.len()).max().unwrap_or(0);
        println!("{:width$}  DIGEST", "NAME");
        for image in &r.images {
            let digest = match no_trunc {
                true => &image.image_id[..],
                false => &image.image_id[..image.image_id.len().min(12)],
            };
            println!("{:width$}  {digest}", image.name);
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `cfsctl image-objects NAME`.
pub async fn objects(client: &mut Client, out: Output, image: &str) -> anyhow::Result<ExitCode> {
    let reply = client.image_objects(image).await?;
    out.show(&reply, |r| r.objects.iter().for_each(|o| println!("{o}")))?;
    Ok(ExitCode::SUCCESS)
}

/// `cfsctl mount NAME DIR`: the daemon mounts, this process attaches
/// the mount in its own mount namespace.
pub async fn mount(
    client: &mut Client,
    out: Output,
    image: &str,
    dir: &Path,
) -> anyhow::Result<ExitCode> {
    let failed = |reason: String| Local::MountFailed {
        operation: "attaching a mount at".to_owned(),
        dir: dir.display().to_string(),
        reason,
    };
    // Checked before the call: the daemon would make a mount for nothing.
    if !std::fs::metadata(dir)
        .map_err(|e| failed(e.to_string()))?
        .is_dir()
    {
        let reason = "it is not a directory; an image is mounted on a directory";
        return Err(failed(reason.into()).into());
    }
    let mount = client.mount_image(image).await?;
    let flags = MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH;
    move_mount(mount.as_fd(), "", CWD, dir, flags)
        .map_err(|e| failed(std::io::Error::from(e).to_string()))?;
    out.show(&EmptyReply {}, |_| {
        println!("Mounted {image} at {}", dir.display())
    })?;
    Ok(ExitCode::SUCCESS)
}
