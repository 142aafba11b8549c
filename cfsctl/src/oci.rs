//! `oci pull`, `images`, `inspect`, `tag`, `untag`, `rm`, `compute-id`,
//! `mount` and `delta create`.

use std::{
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context, bail};
use cfsd_varlink::{
    Client,
    oci::{
        CreateDeltaParams, CreateDeltaReply, DeltaMethod, EmptyReply, Image, InspectReply,
        MountParams, OciError, PullParams, PullReply, PullResult, TRANSPORT_ARCHIVE,
        TRANSPORT_DIRECTORY,
    },
};
use clap::{Args, Subcommand, ValueEnum};
use rustix::{
    fs::{CWD, Mode, OFlags},
    mount::{MoveMountFlags, move_mount},
};
use serde_json::Value;

use crate::{
    progress::Progress,
    render::{Output, bytes},
};

/// The OCI image commands.
#[derive(Debug, Subcommand)]
pub enum OciCommand {
    /// Import an image from an OCI layout directory or archive.
    Pull(PullArgs),
    /// List the images, one line per tag.
    Images,
    /// Describe an image.
    Inspect {
        /// A tag, or sha256:<hex> of the image's manifest.
        image: String,
    },
    /// Give an image another tag.
    Tag {
        /// A tag, or sha256:<hex> of the image's manifest.
        image: String,
        /// The new tag.
        tag: String,
    },
    /// Remove a tag.
    Untag {
        /// The tag.
        tag: String,
    },
    /// Remove every tag of an image; `cfsctl gc` then frees its content.
    Rm {
        /// A tag, or sha256:<hex> of the image's manifest.
        image: String,
    },
    /// Recompute an image's composefs image id.
    ComputeId {
        /// A tag, or sha256:<hex> of the image's manifest.
        image: String,
    },
    /// Mount an image read-only at a directory, nosuid and nodev.
    Mount {
        /// A tag, or sha256:<hex> of the image's manifest.
        image: String,
        /// Where to attach it.
        dir: PathBuf,
        /// Honour the image's setuid/setgid bits and file capabilities
        /// (no nosuid). Only root may ask.
        #[arg(long)]
        allow_setuid: bool,
        /// Let the image's device nodes be opened (no nodev). Only root
        /// may ask.
        #[arg(long)]
        allow_devices: bool,
    },
    /// Make oci-delta artifacts between images of the repository.
    Delta {
        #[command(subcommand)]
        command: DeltaCommand,
    },
}

/// The `oci delta` commands.
#[derive(Debug, Subcommand)]
pub enum DeltaCommand {
    /// Write a delta that rebuilds TARGET wherever SOURCE is present.
    Create(CreateArgs),
}

/// The arguments of `oci delta create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The image the delta applies to: a tag or sha256:<hex> manifest digest.
    source: String,
    /// The image the delta rebuilds: a tag or sha256:<hex> manifest digest.
    target: String,
    /// oci-archive:FILE[:REF]: the archive to write (created or replaced,
    /// with your own permissions); REF names the delta in its index.
    dest: String,
    /// The most layers encoded at once (0: one per CPU).
    #[arg(long, value_name = "N")]
    jobs: Option<u64>,
    /// How a changed file is encoded.
    #[arg(long, value_enum, default_value_t = MethodArg::Zstd)]
    method: MethodArg,
}

/// `--method` of `oci delta create`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MethodArg {
    /// A zstd frame with the old file as its dictionary (tar-diff v2).
    Zstd,
    /// Copies from and bytewise differences to the old file (tar-diff v1).
    Bsdiff,
}

/// The arguments of `oci pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// oci:DIR[:REF] or oci-archive:FILE[:REF]. REF picks the manifest by
    /// its ref.name annotation or sha256: digest.
    source: String,
    /// The tag to give the image; defaults to SOURCE as given.
    name: Option<String>,
    /// The platform to pull from a multi-platform index, os/arch[/variant].
    #[arg(long)]
    platform: Option<String>,
    /// The most layers imported at once (0: one per CPU).
    #[arg(long, value_name = "N")]
    jobs: Option<u64>,
}

/// Run an `oci` command.
pub async fn run(
    client: &mut Client,
    out: Output,
    command: OciCommand,
) -> anyhow::Result<ExitCode> {
    match command {
        OciCommand::Pull(args) => pull(client, out, args).await,
        OciCommand::Images => images(client, out).await,
        OciCommand::Inspect { image } => inspect(client, out, &image).await,
        OciCommand::Tag { image, tag } => {
            client.tag(&image, &tag).await?;
            out.show(&EmptyReply {}, |_| println!("Tagged {image} as {tag}"))?;
            Ok(ExitCode::SUCCESS)
        }
        OciCommand::Untag { tag } => {
            client.untag(&tag).await?;
            out.show(&EmptyReply {}, |_| println!("Untagged {tag}"))?;
            Ok(ExitCode::SUCCESS)
        }
        OciCommand::Rm { image } => {
            let reply = client.remove(&image).await?;
            out.show(&reply, |r| {
                for tag in &r.untagged {
                    println!("Untagged {tag}");
                }
            })?;
            Ok(ExitCode::SUCCESS)
        }
        OciCommand::ComputeId { image } => {
            let reply = client.compute_id(&image).await?;
            out.show(&reply, |r| println!("{}", r.image_id))?;
            Ok(ExitCode::SUCCESS)
        }
        OciCommand::Mount {
            image,
            dir,
            allow_setuid,
            allow_devices,
        } => {
            let params = MountParams {
                image,
                allow_setuid: allow_setuid.then_some(true),
                allow_devices: allow_devices.then_some(true),
            };
            mount(client, out, &params, &dir).await
        }
        OciCommand::Delta {
            command: DeltaCommand::Create(args),
        } => create_delta(client, out, args).await,
    }
}

/// Where `oci pull` reads from, as parsed from SOURCE.
#[derive(Debug, PartialEq, Eq)]
struct Source {
    transport: &'static str,
    path: PathBuf,
    reference: Option<String>,
}

impl Source {
    /// `oci:DIR[:REF]` or `oci-archive:FILE[:REF]`; the part after the
    /// transport splits at its first ':', so a REF may itself hold colons
    /// (`sha256:...`) but a path may not.
    fn parse(source: &str) -> anyhow::Result<Self> {
        let usage = "use oci:DIR[:REF] or oci-archive:FILE[:REF]";
        let (transport, rest) = source
            .split_once(':')
            .with_context(|| format!("{source:?} names no transport: {usage}"))?;
        let transport = match transport {
            "oci" => TRANSPORT_DIRECTORY,
            "oci-archive" => TRANSPORT_ARCHIVE,
            other => bail!("unknown transport {other:?} in {source:?}: {usage}"),
        };
        let (path, reference) = match rest.split_once(':') {
            Some((path, reference)) => (path, Some(reference)),
            None => (rest, None),
        };
        if path.is_empty() {
            bail!("{source:?} names no path: {usage}");
        }
        Ok(Source {
            transport,
            path: PathBuf::from(path),
            reference: reference.filter(|r| !r.is_empty()).map(str::to_owned),
        })
    }

    /// Open the source with this user's own permissions; the daemon reads
    /// only through the fd.
    fn open(&self) -> anyhow::Result<OwnedFd> {
        let mut flags = OFlags::RDONLY | OFlags::CLOEXEC;
        if self.transport == TRANSPORT_DIRECTORY {
            flags |= OFlags::DIRECTORY;
        }
        rustix::fs::open(&self.path, flags, Mode::empty())
            .with_context(|| format!("cannot open {}", self.path.display()))
    }
}

/// `cfsctl oci pull`.
async fn pull(client: &mut Client, out: Output, args: PullArgs) -> anyhow::Result<ExitCode> {
    let source = Source::parse(&args.source)?;
    let fd = source.open()?;
    let params = PullParams {
        transport: source.transport.to_owned(),
        reference: source.reference,
        // Like composefs-rs's cfsctl: the image is named as it was pulled.
        tag: Some(args.name.unwrap_or(args.source)),
        platform: args.platform,
        jobs: args.jobs,
    };
    let mut progress = Progress::new(out);
    let result = follow(client, &params, fd, &mut progress).await;
    progress.finish();
    let result = result?;
    if out.json {
        let reply = PullReply {
            progress: None,
            result: Some(result),
        };
        println!("{}", serde_json::to_string(&reply)?);
    } else {
        print_pull(&result);
    }
    Ok(ExitCode::SUCCESS)
}

/// Make the call and show its progress until the result arrives.
async fn follow(
    client: &mut Client,
    params: &PullParams,
    fd: OwnedFd,
    progress: &mut Progress,
) -> anyhow::Result<PullResult> {
    let mut replies = client.pull(params, fd).await?;
    let mut result = None;
    while let Some(reply) = replies.next::<PullReply, OciError>().await {
        let (reply, _) = reply?;
        if let Some(event) = &reply.progress {
            progress.show(event)?;
        }
        result = reply.result.or(result);
    }
    result.context("cfsd ended the pull without a result")
}

fn print_pull(r: &PullResult) {
    println!("Tag:       {}", r.tag);
    println!("Manifest:  {}", r.manifest_digest);
    println!("Config:    {}", r.config_digest);
    println!("Image ID:  {}", r.image_id);
    println!(
        "Layers:    {}/{} already present",
        r.layers_present, r.layers
    );
    println!(
        "Objects:   {} new ({}), {} already present",
        r.objects_new,
        bytes(r.bytes_new),
        r.objects_present
    );
    if r.already_present {
        println!("The image was already in the repository; only its tag was set.");
    }
}

/// `cfsctl oci delta create`: this process creates the file with the
/// caller's permissions; the daemon writes through the fd.
async fn create_delta(
    client: &mut Client,
    out: Output,
    args: CreateArgs,
) -> anyhow::Result<ExitCode> {
    let dest = Source::parse(&args.dest)?;
    if dest.transport != TRANSPORT_ARCHIVE {
        bail!(
            "{:?}: a delta is written as oci-archive:FILE[:REF]",
            args.dest
        );
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&dest.path)
        .with_context(|| format!("cannot create {}", dest.path.display()))?;
    let params = CreateDeltaParams {
        source: args.source,
        target: args.target,
        jobs: args.jobs,
        method: Some(match args.method {
            MethodArg::Zstd => DeltaMethod::Zstd,
            MethodArg::Bsdiff => DeltaMethod::Bsdiff,
        }),
        reference: dest.reference.clone(),
    };
    let reply = match client.create_delta(&params, file.into()).await {
        Ok(reply) => reply,
        Err(e) => {
            // Half a delta is no use to anyone.
            let _ = std::fs::remove_file(&dest.path);
            return Err(e.into());
        }
    };
    out.show(&reply, |r| print_delta(r, &dest.path))?;
    Ok(ExitCode::SUCCESS)
}

fn print_delta(r: &CreateDeltaReply, path: &Path) {
    println!("Delta:     {}", r.manifest_digest);
    println!("Source:    {}", r.source_digest);
    println!("Target:    {}", r.target_digest);
    println!("Written:   {} to {}", bytes(r.delta_bytes), path.display());
    println!("Layers:    {}/{} changed", r.layers_changed, r.layers);
    for layer in &r.changed {
        let short: String = layer.layer.chars().take(19).collect();
        println!(
            "  {short}  {:<8}  {} -> {}  ({} copied, {} diffed, {} added)",
            layer.method,
            bytes(layer.tar_size),
            bytes(layer.delta_size),
            layer.files_copied,
            layer.files_diffed,
            layer.files_added
        );
    }
}

/// `cfsctl oci images`.
async fn images(client: &mut Client, out: Output) -> anyhow::Result<ExitCode> {
    let reply = client.list_images().await?;
    out.show(&reply, |r| print_table(&r.images))?;
    Ok(ExitCode::SUCCESS)
}

fn print_table(images: &[Image]) {
    let header = ["NAME", "OS/ARCH", "LAYERS", "IMAGE ID", "MANIFEST"].map(str::to_owned);
    let rows: Vec<[String; 5]> = images
        .iter()
        .map(|i| {
            [
                i.name.clone(),
                format!("{}/{}", i.os, i.architecture),
                i.layers.to_string(),
                i.image_id
                    .as_deref()
                    .map_or("-".to_owned(), |id| id.chars().take(16).collect()),
                i.manifest_digest.clone(),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        println!("{}", table_line(row, &widths));
    }
}

/// Cells padded to their column's width, two spaces apart; the last is
/// not padded, so lines carry no trailing blanks.
fn table_line(row: &[String; 5], widths: &[usize; 5]) -> String {
    let mut line = String::new();
    for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
        if i + 1 == row.len() {
            line.push_str(cell);
        } else {
            line.push_str(&format!("{cell:<width$}  "));
        }
    }
    line
}

/// `cfsctl oci inspect`.
async fn inspect(client: &mut Client, out: Output, image: &str) -> anyhow::Result<ExitCode> {
    let reply = client.inspect(image).await?;
    out.show(&reply, print_inspect)?;
    Ok(ExitCode::SUCCESS)
}

fn print_inspect(r: &InspectReply) {
    let text = |doc: &Value, key: &str| doc[key].as_str().unwrap_or("?").to_owned();
    println!("Manifest:  {}", r.manifest_digest);
    println!("Config:    {}", r.config_digest);
    println!(
        "Image ID:  {}",
        r.image_id.as_deref().unwrap_or("(no EROFS image built)")
    );
    println!("Tags:      {}", r.tags.join(", "));
    println!(
        "Platform:  {}/{}",
        text(&r.config, "os"),
        text(&r.config, "architecture")
    );
    if let Some(created) = r.config["created"].as_str() {
        println!("Created:   {created}");
    }
    let layers = r.manifest["layers"].as_array().map_or(0, Vec::len);
    println!("Layers:    {layers}");
}

/// `cfsctl oci mount`: the daemon mounts, this process attaches the
/// mount in its own mount namespace.
async fn mount(
    client: &mut Client,
    out: Output,
    params: &MountParams,
    dir: &Path,
) -> anyhow::Result<ExitCode> {
    let image = &params.image;
    let mount = client.mount(params).await?;
    move_mount(
        mount.as_fd(),
        "",
        CWD,
        dir,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .with_context(|| format!("cannot attach the mount of {image} at {}", dir.display()))?;
    out.show(&EmptyReply {}, |_| {
        println!("Mounted {image} at {}", dir.display())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_split_at_the_first_colon_after_the_transport() {
        let s = Source::parse("oci-archive:/tmp/a.tar:sha256:abcd").unwrap();
        assert_eq!(
            s,
            Source {
                transport: TRANSPORT_ARCHIVE,
                path: "/tmp/a.tar".into(),
                reference: Some("sha256:abcd".into()),
            }
        );
        let s = Source::parse("oci:layout").unwrap();
        assert_eq!(s.transport, TRANSPORT_DIRECTORY);
        assert_eq!(s.path, PathBuf::from("layout"));
        assert_eq!(s.reference, None);
        for bad in ["docker://x", "oci:", "layout", "oci-archive::ref"] {
            assert!(Source::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn tables_have_no_trailing_blanks() {
        let row = [
            "a".to_owned(),
            "bb".into(),
            "c".into(),
            "d".into(),
            "e".into(),
        ];
        assert_eq!(table_line(&row, &[3, 3, 1, 1, 9]), "a    bb   c  d  e");
    }
}
