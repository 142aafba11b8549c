//! `oci copy --from DIR IMAGE [TAG]`, and the directory a pull's
//! `--source-repo` names: another composefs repository, opened here with
//! the caller's own permissions and handed over as an fd.

use std::{os::fd::OwnedFd, path::Path, process::ExitCode};

use cfsd_varlink::{Client, oci::CopyParams};
use clap::Args;
use rustix::fs::{Mode, OFlags};

use crate::{
    failure::Local,
    oci::{follow_replies, print_json, print_pull},
    progress::Progress,
    render::Output,
};

/// The arguments of `oci copy`, spelled as upstream cfsctl's.
#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The composefs repository to copy from; only read.
    #[arg(long, value_name = "DIR")]
    from: std::path::PathBuf,
    /// The image there: a tag, or sha256:<hex> (or @sha256:<hex>) of its
    /// manifest.
    image: String,
    /// The tag to give it here; defaults to IMAGE as given.
    #[arg(conflicts_with = "name")]
    tag: Option<String>,
    /// The tag to give it here, as upstream cfsctl spells it.
    #[arg(long)]
    name: Option<String>,
    /// The most layers copied at once (0: one per CPU).
    #[arg(long, value_name = "N")]
    jobs: Option<u64>,
}

/// The repository directory at `dir`, opened with this user's rights.
pub fn open_repository(dir: &Path) -> Result<OwnedFd, Local> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    rustix::fs::open(dir, flags, Mode::empty()).map_err(|e| Local::OpenFailed {
        path: dir.display().to_string(),
        reason: std::io::Error::from(e).to_string(),
    })
}

/// `cfsctl oci copy`.
pub async fn copy(client: &mut Client, out: Output, args: CopyArgs) -> anyhow::Result<ExitCode> {
    let from = open_repository(&args.from)?;
    let image = args
        .image
        .strip_prefix('@')
        .unwrap_or(&args.image)
        .to_owned();
    let params = CopyParams {
        tag: Some(args.tag.or(args.name).unwrap_or_else(|| image.clone())),
        image,
        jobs: args.jobs,
    };
    let mut progress = Progress::new(out);
    let replies = client.copy(&params, from).await;
    let result = match replies {
        Ok(replies) => follow_replies(replies, &mut progress).await,
        Err(e) => Err(e.into()),
    };
    progress.finish();
    let result = result?;
    if out.json {
        print_json(result)?;
    } else {
        print_pull(&result, None);
    }
    Ok(ExitCode::SUCCESS)
}
