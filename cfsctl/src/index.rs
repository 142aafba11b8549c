//! `cfsctl index`: build the content index of what was stored before it
//! existed, showing how far it is.

use std::process::ExitCode;

use cfsd_varlink::{
    Client,
    repository::{IndexContentReply, RepositoryError},
};

use crate::render::{Output, ProgressMode};

/// `cfsctl index`.
pub async fn index(client: &mut Client, out: Output) -> anyhow::Result<ExitCode> {
    let mut replies = client.index_content().await?;
    let mut last = None;
    while let Some(reply) = replies.next::<IndexContentReply, RepositoryError>().await {
        let (reply, _) = reply?;
        if let Some(previous) = last.replace(reply) {
            show_progress(out, &previous)?;
        }
    }
    let last = last.ok_or_else(|| anyhow::anyhow!("IndexContent sent no reply"))?;
    out.show(&last, |r| {
        println!(
            "Content index: {} streams and images indexed, {} objects hashed",
            r.total, r.objects_hashed
        );
    })?;
    Ok(ExitCode::SUCCESS)
}

fn show_progress(out: Output, p: &IndexContentReply) -> anyhow::Result<()> {
    match out.progress {
        ProgressMode::None => {}
        ProgressMode::Json => {
            println!("{}", serde_json::json!({ "progress": p }));
        }
        ProgressMode::Auto => eprintln!(
            "indexing: {}/{} streams and images, {} objects hashed",
            p.done, p.total, p.objects_hashed
        ),
    }
    Ok(())
}
