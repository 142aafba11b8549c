//! `oci export`, an image into an archive file cfsctl opens; `oci dump`
//! and `oci layer`, repository content on stdout through the pipe the
//! daemon hands over.

use std::{fs::File, io::IsTerminal, os::fd::OwnedFd, process::ExitCode};

use cfsd_varlink::{
    Client,
    oci::{DumpParams, ExportLayerParams, ExportParams, ExportReply, LayerFormat, OciError},
};

use crate::render::Output;

/// `cfsctl oci export IMAGE oci-archive:FILE[:REF]`.
pub async fn archive(
    client: &mut Client,
    out: Output,
    image: String,
    dest: String,
    compression: crate::push::CompressionArg,
) -> anyhow::Result<ExitCode> {
    let usage = "an image is exported as oci-archive:FILE[:REF], e.g. oci-archive:image.tar";
    let (dest, file) = crate::oci::archive_output(&dest, usage)?;
    let params = ExportParams {
        image,
        compression: Some(compression.wire()),
        reference: dest.reference.clone(),
    };
    let watched = file.try_clone()?;
    let name = dest.path.display().to_string();
    let call = client.export_image(&params, file.into());
    let reply = match crate::writing::while_writing(out, &watched, &name, call).await {
        Ok(reply) => reply,
        Err(e) => {
            // Half an archive is no use to anyone.
            let _ = std::fs::remove_file(&dest.path);
            return Err(e.into());
        }
    };
    out.show(&reply, |r| {
        println!("Manifest: {}", r.manifest_digest);
        println!("Config:   {}", r.config_digest);
        println!("Written:  {} to {name}", crate::render::bytes(r.bytes));
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `cfsctl oci dump IMAGE`.
pub async fn dump(client: &mut Client, image: String) -> anyhow::Result<ExitCode> {
    let params = DumpParams { image };
    let (pipe, mut replies) = client.export("Dump", &params).await?;
    let copied = tokio::task::spawn_blocking(move || to_stdout(pipe));
    let last = replies.next::<ExportReply, OciError>().await;
    finish(copied.await?, last)
}

/// `cfsctl oci layer DIFF_ID [--dumpfile]`.
pub async fn layer(
    client: &mut Client,
    diff_id: String,
    dumpfile: bool,
) -> anyhow::Result<ExitCode> {
    if !dumpfile && std::io::stdout().is_terminal() {
        anyhow::bail!("not writing a tar to a terminal; redirect stdout to a file or a pipe");
    }
    let params = ExportLayerParams {
        diff_id,
        format: Some(match dumpfile {
            true => LayerFormat::Dumpfile,
            false => LayerFormat::Tar,
        }),
    };
    let (pipe, mut replies) = client.export("ExportLayer", &params).await?;
    let copied = tokio::task::spawn_blocking(move || to_stdout(pipe));
    let last = replies.next::<ExportReply, OciError>().await;
    finish(copied.await?, last)
}

/// Copy the pipe to stdout until the daemon closes its end.
fn to_stdout(pipe: OwnedFd) -> std::io::Result<u64> {
    let mut pipe = File::from(pipe);
    std::io::copy(&mut pipe, &mut std::io::stdout().lock())
}

/// The daemon's verdict decides: bytes it did not vouch for are not a
/// success, however many arrived.
fn finish(
    copied: std::io::Result<u64>,
    last: Option<cfsd_varlink::client::CallResult<(ExportReply, Vec<OwnedFd>), OciError>>,
) -> anyhow::Result<ExitCode> {
    let (reply, _) = match last {
        Some(result) => result?,
        None => anyhow::bail!("the daemon sent no last reply"),
    };
    let copied = copied.map_err(|e| anyhow::anyhow!("writing stdout: {e}"))?;
    if reply.bytes != Some(copied) {
        anyhow::bail!(
            "the daemon wrote {:?} bytes but {copied} arrived",
            reply.bytes
        );
    }
    Ok(ExitCode::SUCCESS)
}
