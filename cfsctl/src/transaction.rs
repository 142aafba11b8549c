//! `cfsctl transaction`: garbage collection held off while a command
//! runs, or until interrupted.

use std::{ffi::OsString, process::ExitCode};

use cfsd_varlink::{Client, repository::RepositoryError};

use crate::render::Output;

/// Hold GC off with `reason`, then run `command` and exit as it does; with
/// no command, hold until interrupted. A hold the daemon drops first (it
/// went away) is a failure: the command was no longer protected.
pub async fn transaction(
    client: &mut Client,
    out: Output,
    reason: Option<String>,
    command: Vec<OsString>,
) -> anyhow::Result<ExitCode> {
    let reason = reason.unwrap_or_else(|| default_reason(&command));
    let (reply, mut replies) = client.hold(&reason).await?;
    out.show(&reply, |r| {
        eprintln!("Garbage collection is held off: {reason}");
        if r.holders.len() > 1 {
            eprintln!("Holding it off now: {}", r.holders.join("; "));
        }
    })?;
    let Some((program, args)) = command.split_first() else {
        // Until SIGINT or SIGTERM, which end cfsctl and with it the hold.
        let ended = replies.next::<serde_json::Value, RepositoryError>().await;
        return Err(lost(ended.and_then(Result::err)));
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", program.to_string_lossy()))?;
    tokio::select! {
        status = child.wait() => {
            let status = status?;
            Ok(match status.code() {
                Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
                // Killed by a signal: as a shell reports it.
                None => ExitCode::from(128 + signal_of(&status)),
            })
        }
        ended = replies.next::<serde_json::Value, RepositoryError>() => {
            Err(lost(ended.and_then(Result::err)))
        }
    }
}

fn default_reason(command: &[OsString]) -> String {
    let text: Vec<String> = command
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut reason = match text.is_empty() {
        true => "cfsctl transaction".to_owned(),
        false => format!("cfsctl transaction: {}", text.join(" ")),
    };
    // The daemon takes one short line of text.
    reason.retain(|c| !c.is_control());
    if reason.len() > 200 {
        let mut end = 197;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push_str("...");
    }
    reason
}

fn signal_of(status: &std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    status.signal().map_or(1, |s| s as u8)
}

/// The hold ended before the command did.
fn lost(error: Option<cfsd_varlink::CallError<RepositoryError>>) -> anyhow::Error {
    match error {
        Some(e) => anyhow::Error::new(e).context("the daemon ended the GC hold"),
        None => anyhow::anyhow!("the daemon ended the GC hold: the connection closed"),
    }
}
