//! `init`, `info`, `fsck` and `gc`.

use std::process::ExitCode;

use cfsd_varlink::{
    Client,
    repository::{FsckParams, GcParams, InitParams, RepositoryInfo, Usage},
};

use crate::render::{Output, bytes};

/// `cfsctl init`.
pub async fn init(client: &mut Client, out: Output, algorithm: String) -> anyhow::Result<ExitCode> {
    let params = InitParams {
        algorithm: Some(algorithm),
    };
    let reply = client.init(&params).await?;
    out.show(&reply, |r| {
        let verb = if r.created {
            "Created"
        } else {
            "Already initialised:"
        };
        println!("{verb} {}", r.info.path);
        print_info(&r.info);
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `cfsctl info`.
pub async fn info(client: &mut Client, out: Output) -> anyhow::Result<ExitCode> {
    let reply = client.info().await?;
    out.show(&reply, |r| print_info(&r.info))?;
    Ok(ExitCode::SUCCESS)
}

/// `cfsctl fsck`: exits 1 when problems are found.
pub async fn fsck(
    client: &mut Client,
    out: Output,
    metadata_only: bool,
) -> anyhow::Result<ExitCode> {
    let params = FsckParams {
        metadata_only: Some(metadata_only),
    };
    let reply = client.fsck(&params).await?;
    out.show(&reply, |r| {
        println!(
            "Objects: {} checked, {} corrupted",
            r.objects_checked, r.objects_corrupted
        );
        println!(
            "Streams: {} checked, {} corrupted",
            r.streams_checked, r.streams_corrupted
        );
        println!(
            "Images:  {} checked, {} corrupted",
            r.images_checked, r.images_corrupted
        );
        println!(
            "Broken links: {}, missing objects: {}",
            r.broken_links, r.missing_objects
        );
        for p in &r.problems {
            println!("  {}: {}", p.kind, p.detail);
        }
        println!(
            "{}",
            if r.ok {
                "fsck: ok"
            } else {
                "fsck: PROBLEMS FOUND"
            }
        );
    })?;
    Ok(if reply.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `cfsctl gc`.
pub async fn gc(client: &mut Client, out: Output, dry_run: bool) -> anyhow::Result<ExitCode> {
    let params = GcParams {
        dry_run: Some(dry_run),
    };
    let reply = client.gc(&params).await?;
    out.show(&reply, |r| {
        let verb = if r.dry_run { "Would remove" } else { "Removed" };
        println!(
            "{verb} {} objects ({}), {} image and {} stream references",
            r.objects_removed,
            bytes(r.bytes_freed),
            r.images_pruned,
            r.streams_pruned
        );
    })?;
    Ok(ExitCode::SUCCESS)
}

fn print_info(info: &RepositoryInfo) {
    let usage = |u: &Usage| format!("{} ({})", u.count, bytes(u.bytes));
    println!("Repository: {}", info.path);
    println!("Algorithm:  {}", info.algorithm);
    match (&info.verity.enforced, &info.verity.reason) {
        (true, _) => println!("fs-verity:  enforced"),
        (false, reason) => println!(
            "fs-verity:  NOT ENFORCED, the repository is insecure: {}",
            reason.as_deref().unwrap_or("reason unknown")
        ),
    }
    println!("Objects:    {}", usage(&info.objects));
    println!("Streams:    {}", usage(&info.streams));
    println!("Images:     {}", usage(&info.images));
    for holder in &info.gc_holders {
        println!("GC held by: {holder}");
    }
}
