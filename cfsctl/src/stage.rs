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
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    // Howard Hinnant's civil-from-days, for the proleptic Gregorian calendar.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_are_utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::utc(1_709_210_096), "2024-02-29 12:34:56 UTC");
    }
}
