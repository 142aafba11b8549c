//! `oci pull` (its SOURCE in `source.rs`), `push` (in `push.rs`), `images`,
//! `inspect`, `tag`, `untag`, `rm`, `compute-id`, `make-bootable`, `karg`,
//! `mount` and `delta create`.

use std::{
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context;
use cfsd_varlink::{
    Client,
    oci::{
        AppliedDelta, CreateDeltaParams, CreateDeltaReply, DeltaMethod, EmptyReply, IdmapParams,
        Image, InspectReply, MountParams, OciError, PullParams, PullReply, PullResult,
        PushDeltaParams, TRANSPORT_ARCHIVE, TRANSPORT_REGISTRY,
    },
};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;

pub(crate) use crate::source::Source;
use crate::{
    failure::Local,
    mount,
    progress::Progress,
    render::{Output, bytes},
    writing,
};

/// The OCI image commands.
#[derive(Debug, Subcommand)]
pub enum OciCommand {
    /// Import an image from an OCI layout directory or archive.
    Pull(PullArgs),
    /// Copy an image, with its layers and objects, from another composefs
    /// repository, which is only read.
    Copy(crate::copy::CopyArgs),
    /// Push an image to a registry: its layers rebuilt and compressed,
    /// its config as stored.
    Push(crate::push::PushArgs),
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
        /// The id of the image's bootable variant: /boot and /sysroot
        /// emptied, files relabelled from the image's SELinux policy.
        #[arg(long)]
        bootable: bool,
    },
    /// Build an image's bootable variant and keep it beside the plain one
    /// (GC keeps it while the image is tagged); print its image id.
    MakeBootable {
        /// A tag, or sha256:<hex> of the image's manifest.
        image: String,
    },
    /// Print the kernel argument that boots an image's bootable variant
    /// (composefs=<hex>, or composefs.digest=v1-... in a repository of
    /// EROFS format 1).
    Karg {
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
        /// Mount the image's bootable variant (made and kept first if it
        /// is not yet).
        #[arg(long)]
        bootable: bool,
        /// Make the mount idmapped: CONTAINER:HOST:LENGTH uid ranges
        /// (repeat it, or separate ranges with commas). Only root may ask.
        #[arg(long, value_delimiter = ',', requires = "gidmap")]
        uidmap: Vec<String>,
        /// The gid ranges of an idmapped mount, as --uidmap.
        #[arg(long, value_delimiter = ',', requires = "uidmap")]
        gidmap: Vec<String>,
        /// Mount it over FUSE with your own rights (fusermount3), for
        /// users who may not mount kernel images; the daemon serves it,
        /// and cfsctl stays until it is unmounted (fusermount3 -u DIR,
        /// or Ctrl-C here).
        #[arg(long, conflicts_with_all = ["allow_setuid", "allow_devices", "bootable", "uidmap", "gidmap"])]
        fuse: bool,
    },
    /// Make NEWTAG an ID-mapped variant of an image: its files' owners
    /// shifted, its files shared with it, no layer read.
    Idmap {
        /// A tag, or sha256:<hex> of the image's manifest.
        image: String,
        /// The variant's tag.
        tag: String,
        /// CONTAINER:HOST:LENGTH uid ranges (repeat it, or separate
        /// ranges with commas).
        #[arg(long, value_delimiter = ',', required = true)]
        uidmap: Vec<String>,
        /// The gid ranges, as --uidmap.
        #[arg(long, value_delimiter = ',', required = true)]
        gidmap: Vec<String>,
    },
    /// Detach the image mounted at a directory (what umount DIR does, for
    /// composefs mounts only).
    Umount {
        /// Where it is attached.
        dir: PathBuf,
    },
    /// Write an image as an OCI archive, its layers compressed again, for
    /// skopeo, podman or another repository to import.
    Export {
        /// A tag, or sha256:<hex> of the image's manifest.
        image: String,
        /// oci-archive:FILE[:REF]: the archive to write (created or
        /// replaced, with your own permissions); REF names the image in
        /// its index.
        dest: String,
        /// How the layers are compressed.
        #[arg(long, value_enum, default_value_t = crate::push::CompressionArg::Gzip)]
        compression: crate::push::CompressionArg,
    },
    /// Write an image's composefs dumpfile (composefs-dump(5)) to stdout,
    /// as upstream's `cfsctl oci dump` does.
    Dump {
        /// A tag, or sha256:<hex> of the image's manifest.
        image: String,
    },
    /// Write a stored layer to stdout: its tar, checked against its
    /// diff_id, or with --dumpfile the composefs dumpfile of its entries.
    Layer {
        /// The layer's diff_id, sha256:<hex>.
        diff_id: String,
        /// Write the layer's composefs dumpfile instead of its tar.
        #[arg(long)]
        dumpfile: bool,
    },
    /// Make oci-delta artifacts between images of the repository.
    Delta {
        #[command(subcommand)]
        command: DeltaCommand,
    },
    /// List the stages `oci pull --stage` left, to commit or abort.
    Staged,
    /// Publish a stage as TAG, with one atomic tag change.
    Commit {
        /// The stage id `oci pull --stage` printed.
        stage: String,
        /// The tag to give the image.
        tag: String,
    },
    /// Drop a stage; `cfsctl gc` then frees what only it held.
    Abort {
        /// The stage id.
        stage: String,
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
    /// with your own permissions); REF names the delta in its index. Or
    /// docker://HOST[:PORT]/NAME[:TAG]: push it there, and list it in
    /// the referrers index of TARGET's manifest.
    dest: String,
    /// The most layers encoded at once (0: one per CPU).
    #[arg(long, value_name = "N")]
    jobs: Option<u64>,
    /// How a changed file is encoded.
    #[arg(long, value_enum, default_value_t = MethodArg::Zstd)]
    method: MethodArg,
    /// For docker://: false allows plain HTTP and unverified TLS; true
    /// verifies even a registry registries.conf marks insecure.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    tls_verify: Option<bool>,
    /// For docker://: the containers auth.json to use, instead of
    /// $REGISTRY_AUTH_FILE or the usual containers and Docker places.
    #[arg(long, value_name = "PATH")]
    authfile: Option<PathBuf>,
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
    /// oci:DIR[:REF], oci-archive:FILE[:REF] or
    /// docker://HOST[:PORT]/NAME[:TAG|@sha256:DIGEST]. REF picks the
    /// manifest by its ref.name annotation or sha256: digest.
    source: String,
    /// The tag to give the image; defaults to SOURCE as given.
    name: Option<String>,
    /// The platform to pull from a multi-platform index, os/arch[/variant].
    #[arg(long)]
    platform: Option<String>,
    /// The most layers imported at once (0: one per CPU).
    #[arg(long, value_name = "N")]
    jobs: Option<u64>,
    /// For docker://: false allows plain HTTP and unverified TLS; true
    /// verifies even a registry registries.conf marks insecure.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    tls_verify: Option<bool>,
    /// For docker://: the containers auth.json to use, instead of
    /// $REGISTRY_AUTH_FILE or the usual containers and Docker places.
    #[arg(long, value_name = "PATH")]
    authfile: Option<PathBuf>,
    /// For docker://: do not look for an oci-delta of the image in the
    /// registry; pull its layers.
    #[arg(long)]
    no_delta: bool,
    /// For docker://: pull zstd:chunked layers whole, even where the
    /// repository holds some of their files already.
    #[arg(long)]
    no_partial: bool,
    /// sha256:<hex>: refuse any image but this one. The manifest, or an
    /// index leading to it, must have this digest; a delta's target must.
    #[arg(long, value_name = "DIGEST")]
    digest: Option<String>,
    /// Import and verify the image but set no tag: print a stage id for
    /// `oci commit STAGE TAG` (or `oci abort STAGE`).
    #[arg(long, conflicts_with = "name")]
    stage: bool,
    /// For a delta: another composefs repository where its source image
    /// may be; it is opened with your permissions and only read.
    #[arg(long, value_name = "DIR")]
    source_repo: Option<PathBuf>,
}

/// Run an `oci` command.
pub async fn run(
    client: &mut Client,
    out: Output,
    command: OciCommand,
) -> anyhow::Result<ExitCode> {
    match command {
        OciCommand::Pull(args) => pull(client, out, args).await,
        OciCommand::Copy(args) => crate::copy::copy(client, out, args).await,
        OciCommand::Push(args) => crate::push::push(client, out, args).await,
        OciCommand::Images => images(client, out).await,
        OciCommand::Dump { image } => crate::export::dump(client, image).await,
        OciCommand::Export {
            image,
            dest,
            compression,
        } => crate::export::archive(client, out, image, dest, compression).await,
        OciCommand::Layer { diff_id, dumpfile } => {
            crate::export::layer(client, diff_id, dumpfile).await
        }
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
        OciCommand::ComputeId { image, bootable } => {
            let reply = if bootable {
                client.compute_bootable_id(&image).await?
            } else {
                client.compute_id(&image).await?
            };
            out.show(&reply, |r| println!("{}", r.image_id))?;
            Ok(ExitCode::SUCCESS)
        }
        OciCommand::MakeBootable { image } => {
            let reply = client.make_bootable(&image).await?;
            out.show(&reply, |r| println!("{}", r.image_id))?;
            Ok(ExitCode::SUCCESS)
        }
        OciCommand::Karg { image } => {
            let reply = client.kernel_argument(&image).await?;
            out.show(&reply, |r| println!("{}", r.argument))?;
            Ok(ExitCode::SUCCESS)
        }
        // clap lets none of the kernel mount's options come with --fuse.
        OciCommand::Mount {
            image,
            dir,
            fuse: true,
            ..
        } => crate::fuse::mount_fuse(client, out, image, &dir).await,
        OciCommand::Mount {
            image,
            dir,
            allow_setuid,
            allow_devices,
            bootable,
            uidmap,
            gidmap,
            fuse: false,
        } => {
            let params = MountParams {
                image,
                allow_setuid: allow_setuid.then_some(true),
                allow_devices: allow_devices.then_some(true),
                bootable: bootable.then_some(true),
                uidmap: (!uidmap.is_empty()).then_some(uidmap),
                gidmap: (!gidmap.is_empty()).then_some(gidmap),
            };
            mount::mount(client, out, &params, &dir).await
        }
        OciCommand::Idmap {
            image,
            tag,
            uidmap,
            gidmap,
        } => {
            let params = IdmapParams {
                image,
                tag,
                uidmap,
                gidmap,
            };
            let reply = client.idmap(&params).await?;
            out.show(&reply, |r| {
                println!("Tagged {} as {}", r.manifest_digest, params.tag);
                println!("Image id {}", r.image_id);
            })?;
            Ok(ExitCode::SUCCESS)
        }
        OciCommand::Umount { dir } => mount::umount(out, &dir),
        OciCommand::Delta {
            command: DeltaCommand::Create(args),
        } => create_delta(client, out, args).await,
        OciCommand::Staged => crate::stage::list(client, out).await,
        OciCommand::Commit { stage, tag } => crate::stage::commit(client, out, &stage, &tag).await,
        OciCommand::Abort { stage } => crate::stage::abort(client, out, &stage).await,
    }
}

/// `cfsctl oci pull`.
async fn pull(client: &mut Client, out: Output, args: PullArgs) -> anyhow::Result<ExitCode> {
    let (transport, reference, mut fds) = match args.source.strip_prefix("docker://") {
        // The daemon reaches the registry; cfsctl hands over only the
        // caller's credentials.
        Some(image) => {
            let auth = crate::authfile::open(args.authfile.as_deref())?;
            (
                TRANSPORT_REGISTRY,
                Some(image.to_owned()),
                auth.into_iter().collect(),
            )
        }
        None => {
            let source = Source::parse(&args.source)?;
            let fd = source.open(&args.source)?;
            (source.transport, source.reference, vec![fd])
        }
    };
    let params = PullParams {
        transport: transport.to_owned(),
        reference,
        // Like composefs-rs's cfsctl: the image is named as it was pulled;
        // a stage is named when it is committed.
        tag: (!args.stage).then(|| args.name.unwrap_or(args.source)),
        platform: args.platform,
        jobs: args.jobs,
        tls_verify: args.tls_verify,
        no_delta: args.no_delta.then_some(true),
        digest: args.digest,
        stage: args.stage.then_some(true),
        source_repo: args.source_repo.is_some().then_some(true),
        no_partial: args.no_partial.then_some(true),
    };
    // The daemon takes it as the call's last fd.
    if let Some(dir) = &args.source_repo {
        fds.push(crate::copy::open_repository(dir)?);
    }
    let mut progress = Progress::new(out);
    let result = follow(client, &params, fds, &mut progress).await;
    progress.finish();
    let result = result?;
    if out.json {
        print_json(result)?;
    } else {
        let source = match &result.delta {
            Some(delta) => Some(delta_source(client, delta).await),
            None => None,
        };
        print_pull(&result, source.as_deref());
    }
    Ok(ExitCode::SUCCESS)
}

/// The image a delta was applied against, for people: its manifest
/// digest and tags, as far as the delta and the repository tell.
async fn delta_source(client: &mut Client, delta: &AppliedDelta) -> String {
    let images = client
        .list_images()
        .await
        .map(|r| r.images)
        .unwrap_or_default();
    let same = |i: &&Image| match &delta.source_manifest {
        Some(m) => i.manifest_digest == *m,
        None => i.config_digest == delta.source_config,
    };
    let tags: Vec<&str> = images
        .iter()
        .filter(same)
        .map(|i| i.name.as_str())
        .collect();
    let manifest = delta
        .source_manifest
        .clone()
        .or_else(|| images.iter().find(same).map(|i| i.manifest_digest.clone()));
    let image = manifest.unwrap_or_else(|| format!("with config {}", delta.source_config));
    match tags[..] {
        [] => image,
        _ => format!("{image} ({})", tags.join(", ")),
    }
}

/// Make the call and show its progress until the result arrives.
async fn follow(
    client: &mut Client,
    params: &PullParams,
    fds: Vec<OwnedFd>,
    progress: &mut Progress,
) -> anyhow::Result<PullResult> {
    let replies = client.pull_with(params, fds).await?;
    follow_replies(replies, progress).await
}

/// Print a pull's (or copy's) `result` as its one JSON reply.
pub(crate) fn print_json(result: PullResult) -> anyhow::Result<()> {
    let reply = PullReply {
        progress: None,
        result: Some(result),
    };
    println!("{}", serde_json::to_string(&reply)?);
    Ok(())
}

/// Show the progress `replies` bring, and return their result.
pub(crate) async fn follow_replies(
    mut replies: cfsd_varlink::client::Replies<'_>,
    progress: &mut Progress,
) -> anyhow::Result<PullResult> {
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

pub(crate) fn print_pull(r: &PullResult, delta_source: Option<&str>) {
    match &r.stage {
        Some(stage) => {
            println!("Stage:     {stage} (commit it with `cfsctl oci commit {stage} TAG`)")
        }
        None => println!("Tag:       {}", r.tag),
    }
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
    if let (Some(delta), Some(source)) = (&r.delta, delta_source) {
        println!("Delta:     {} applied", delta.manifest_digest);
        println!("  against: {source}");
    }
    if let Some(found) = &r.delta_discovery {
        let verdict = if found.used { "used" } else { "not used" };
        println!("Delta discovery: {verdict}: {}", found.reason);
    }
    if let Some(partial) = &r.partial_pull {
        print_partial(partial);
    }
    if r.shared_import {
        println!(
            "An identical pull was importing the image; this one waited for it and only set its tag."
        );
    } else if r.already_present {
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
    let method = match args.method {
        MethodArg::Zstd => DeltaMethod::Zstd,
        MethodArg::Bsdiff => DeltaMethod::Bsdiff,
    };
    if let Some(reference) = args.dest.strip_prefix("docker://") {
        let params = PushDeltaParams {
            source: args.source,
            target: args.target,
            reference: reference.to_owned(),
            jobs: args.jobs,
            method: Some(method),
            tls_verify: args.tls_verify,
        };
        let authfile = crate::authfile::open(args.authfile.as_deref())?;
        return crate::push::push_delta(client, out, &params, authfile).await;
    }
    let usage = "a delta is written as oci-archive:FILE[:REF], e.g. oci-archive:delta.tar, \
                 or pushed to docker://HOST[:PORT]/NAME[:TAG]";
    let (dest, file) = archive_output(&args.dest, usage)?;
    let params = CreateDeltaParams {
        source: args.source,
        target: args.target,
        jobs: args.jobs,
        method: Some(method),
        reference: dest.reference.clone(),
    };
    let watched = file.try_clone().map_err(|e| Local::OpenFailed {
        path: dest.path.display().to_string(),
        reason: e.to_string(),
    })?;
    let name = dest.path.display().to_string();
    let call = client.create_delta(&params, file.into());
    let reply = match writing::while_writing(out, &watched, &name, call).await {
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

/// The `oci-archive:FILE[:REF]` that `dest` names, and FILE created or
/// truncated with the caller's own permissions, for the daemon to write.
pub(crate) fn archive_output(dest: &str, usage: &str) -> anyhow::Result<(Source, std::fs::File)> {
    let parsed = Source::parse_as(dest, usage)?;
    if parsed.transport != TRANSPORT_ARCHIVE {
        return Err(Local::InvalidSource {
            argument: dest.to_owned(),
            reason: usage.to_owned(),
        }
        .into());
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&parsed.path)
        .map_err(|e| Local::OpenFailed {
            path: parsed.path.display().to_string(),
            reason: e.to_string(),
        })?;
    Ok((parsed, file))
}

fn print_delta(r: &CreateDeltaReply, path: &Path) {
    println!("Delta:     {}", r.manifest_digest);
    println!("Source:    {}", r.source_digest);
    println!("Target:    {}", r.target_digest);
    println!("Written:   {} to {}", bytes(r.delta_bytes), path.display());
    println!("Layers:    {}/{} changed", r.layers_changed, r.layers);
    crate::push::print_layers(&r.changed);
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
    if let Some(bootable) = &r.bootable_image_id {
        println!("Bootable:  {bootable}");
    }
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

/// The summary line of a pull's zstd:chunked layers.
fn print_partial(partial: &cfsd_varlink::oci::PartialPull) {
    if partial.layers == 0 {
        println!("Partial pull: not used: {}", partial.reason);
        return;
    }
    println!(
        "Partial pull: {} layer(s), {} files and {} chunks reused, {} received in {} requests{}",
        partial.layers,
        partial.files_reused,
        partial.chunks_reused,
        bytes(partial.bytes_received),
        partial.requests,
        if partial.single_ranges {
            " (one range at a time: the registry refused multi-range requests)"
        } else {
            ""
        }
    );
    if !partial.reason.is_empty() {
        println!("  in full: {}", partial.reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
