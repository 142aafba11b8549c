//! `oci staged`, `oci commit` and `oci abort`: the stages that
//! `oci pull --stage` leaves, listed, published and dropped.

use std::process::ExitCode;

use cfsd_varlink::{
    Client,
    oci::{EmptyReply, Stage},
};

use crate::render::{Output, bytes};

/// `cfsctl oci staged`.
pub async fn list(client: &mut Client, out: Output) -> anyhow::Result<ExitCode> {
    let reply = client.list_stages().await?;
    out.show(&reply, |r| print_stages(&r.stages))?;
    Ok(ExitCode::SUCCESS)
}

/// `cfsctl oci commit STAGE TAG`.
pub async fn commit(
    client: &mut Client,
    out: Output,
    stage: &str,
    tag: &str,
) -> anyhow::Result<ExitCode> {
    let reply = client.commit(stage, tag).await?;
    out.show(&reply, |r| {
        println!("Committed stage {stage} as {}", r.tag);
        println!("Manifest:  {}", r.manifest_digest);
        println!("Image ID:  {}", r.image_id);
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `cfsctl oci abort STAGE`.
pub async fn abort(client: &mut Client, out: Output, stage: &str) -> anyhow::Result<ExitCode> {
    client.abort(stage).await?;
    out.show(&EmptyReply {}, |_| {
        println!("Aborted stage {stage}; `cfsctl gc` frees what only it held")
    })?;
    Ok(ExitCode::SUCCESS)
}

fn print_stages(stages: &[Stage]) {
    if stages.is_empty() {
        println!("No stages.");
        return;
    }
    for s in stages {
        println!("Stage:     {} ({})", s.id, s.state);
        println!("Manifest:  {}", s.manifest_digest);
        println!("Config:    {}", s.config_digest);
        if let Some(id) = &s.image_id {
            println!("Image ID:  {id}");
        }
        println!(
            "Size:      {} of blobs, {} new objects",
            bytes(s.size),
            bytes(s.bytes_new)
        );
        println!("Created:   {}", utc(s.created));
    }
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(seconds: u64) -> String {
    let time = i64::try_from(seconds)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
    time.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_are_utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::utc(1_709_210_096), "2024-02-29 12:34:56 UTC");
    }
}
