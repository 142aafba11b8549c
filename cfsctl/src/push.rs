//! `oci push` and `oci delta create ... docker://`: send an image of the
//! repository, or a delta between two, to a registry. The daemon
//! does the network I/O; cfsctl opens only the caller's auth file and
//! passes it along, as for `oci pull docker://`.

use std::{os::fd::OwnedFd, path::PathBuf, process::ExitCode};

use cfsd_varlink::{
    Client,
    oci::{DeltaLayer, PushCompression, PushDeltaParams, PushDeltaReply, PushParams, PushReply},
};
use clap::{Args, ValueEnum};

use crate::{
    failure::Local,
    render::{Output, bytes},
};

/// The arguments of `oci push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The image to push: a tag or sha256:<hex> manifest digest.
    image: String,
    /// docker://HOST[:PORT]/NAME[:TAG]: where to push it (TAG defaults to
    /// latest).
    dest: String,
    /// How the layers are compressed (skopeo's --dest-compress-format).
    #[arg(long, value_enum, default_value_t = CompressionArg::Gzip)]
    compression: CompressionArg,
    /// false allows plain HTTP and unverified TLS; true verifies even a
    /// registry registries.conf marks insecure.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    tls_verify: Option<bool>,
    /// The containers auth.json to use, instead of $REGISTRY_AUTH_FILE or
    /// the usual containers and Docker places.
    #[arg(long, value_name = "PATH")]
    authfile: Option<PathBuf>,
}

/// `--compression` of `oci push`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressionArg {
    /// gzip, which every client reads.
    Gzip,
    /// zstd: smaller and faster to decompress.
    Zstd,
    /// zstd:chunked: zstd cut at the files, with a table of contents, so
    /// that a puller fetches only the files it lacks.
    #[value(name = "zstd:chunked")]
    ZstdChunked,
}

impl CompressionArg {
    /// The wire's compression.
    pub fn wire(self) -> PushCompression {
        match self {
            CompressionArg::Gzip => PushCompression::Gzip,
            CompressionArg::Zstd => PushCompression::Zstd,
            CompressionArg::ZstdChunked => PushCompression::ZstdChunked,
        }
    }
}

/// The registry reference of a `docker://` destination, without the
/// prefix.
pub fn registry_destination(dest: &str) -> Result<&str, Local> {
    dest.strip_prefix("docker://")
        .ok_or_else(|| Local::InvalidSource {
            argument: dest.to_owned(),
            reason: "a push goes to docker://HOST[:PORT]/NAME[:TAG]".to_owned(),
        })
}

/// `cfsctl oci push`.
pub async fn push(client: &mut Client, out: Output, args: PushArgs) -> anyhow::Result<ExitCode> {
    let reference = registry_destination(&args.dest)?.to_owned();
    let authfile = crate::authfile::open(args.authfile.as_deref())?;
    let params = PushParams {
        image: args.image,
        reference,
        compression: Some(args.compression.wire()),
        tls_verify: args.tls_verify,
    };
    let reply = client.push(&params, authfile).await?;
    out.show(&reply, print_push)?;
    Ok(ExitCode::SUCCESS)
}

fn print_push(r: &PushReply) {
    println!("Pushed:    {}", r.reference);
    println!("Manifest:  {}", r.manifest_digest);
    println!("Config:    {}", r.config_digest);
    let skipped = r.layers - r.layers_uploaded.min(r.layers);
    println!(
        "Uploaded:  {}/{} layers, {} in all; {skipped} the registry had already",
        r.layers_uploaded,
        r.layers,
        bytes(r.bytes_uploaded)
    );
}

/// `cfsctl oci delta create SOURCE TARGET docker://...`.
pub async fn push_delta(
    client: &mut Client,
    out: Output,
    params: &PushDeltaParams,
    authfile: Option<OwnedFd>,
) -> anyhow::Result<ExitCode> {
    let reply = client.push_delta(params, authfile).await?;
    out.show(&reply, print_push_delta)?;
    Ok(ExitCode::SUCCESS)
}

fn print_push_delta(r: &PushDeltaReply) {
    println!("Delta:     {}", r.manifest_digest);
    println!("Source:    {}", r.source_digest);
    println!("Target:    {}", r.target_digest);
    println!(
        "Pushed:    {} ({} of {} uploaded)",
        r.reference,
        bytes(r.bytes_uploaded),
        bytes(r.delta_bytes)
    );
    println!("Referrers: listed under tag {}", r.referrers_tag);
    if !r.subject_in_registry {
        println!(
            "Note:      the registry holds no manifest {} in this repository: clients find \
             the delta from the target's tag only once it is pushed with its original blobs",
            r.target_digest
        );
    }
    println!("Layers:    {}/{} changed", r.layers_changed, r.layers);
    print_layers(&r.changed);
}

/// One line per layer a delta carries.
pub fn print_layers(changed: &[DeltaLayer]) {
    for layer in changed {
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
