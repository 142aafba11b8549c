//! Progress of a call that writes a file cfsctl handed over (`oci delta
//! create`): the daemon sends no progress, but the file's growth shows
//! how far it has come.

use std::{fs::File, io::IsTerminal, time::Duration};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::render::{Output, ProgressMode, bytes};

/// How often the file's size is looked at.
const TICK: Duration = Duration::from_millis(200);

/// Plain lines (for logs) come at most this often.
const LINE_EVERY: Duration = Duration::from_secs(2);

/// Run `work` and show, as `out` asks, how many bytes `file` (called
/// `name` for people) has grown to meanwhile, and once more at the end.
pub async fn while_writing<T>(
    out: Output,
    file: &File,
    name: &str,
    work: impl Future<Output = T>,
) -> T {
    let mut view = View::new(out, name);
    let mut ticks = tokio::time::interval(TICK);
    tokio::pin!(work);
    let result = loop {
        tokio::select! {
            result = &mut work => break result,
            _ = ticks.tick() => view.show(size(file), false),
        }
    };
    view.show(size(file), true);
    view.finish();
    result
}

fn size(file: &File) -> u64 {
    file.metadata().map_or(0, |m| m.len())
}

/// Where the sizes go.
enum View {
    Hidden,
    /// `{"progress": {"written": N}}` lines on stdout.
    Json(Option<u64>),
    /// A spinner with the byte count, on a terminal's stderr.
    Spinner(ProgressBar),
    /// A line now and then on stderr: the last size and when it was shown.
    Lines(String, Option<(u64, std::time::Instant)>),
}

impl View {
    fn new(out: Output, name: &str) -> Self {
        match out.progress {
            ProgressMode::None => View::Hidden,
            ProgressMode::Json => View::Json(None),
            ProgressMode::Auto if std::io::stderr().is_terminal() => {
                let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
                let style =
                    ProgressStyle::with_template("{spinner} writing {prefix}: {bytes} ({elapsed})")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner());
                bar.set_style(style);
                bar.set_prefix(name.to_owned());
                View::Spinner(bar)
            }
            ProgressMode::Auto => View::Lines(name.to_owned(), None),
        }
    }

    /// Show `written`; `last` is the final size, always shown.
    fn show(&mut self, written: u64, last: bool) {
        match self {
            View::Hidden => {}
            View::Json(shown) => {
                if last || *shown != Some(written) {
                    println!("{}", json!({"progress": {"written": written}}));
                    *shown = Some(written);
                }
            }
            View::Spinner(bar) => bar.set_position(written),
            View::Lines(name, shown) => {
                let due = match shown {
                    None => true,
                    Some((size, at)) => *size != written && at.elapsed() >= LINE_EVERY,
                };
                if last || due {
                    eprintln!("writing {name}: {}", bytes(written));
                    *shown = Some((written, std::time::Instant::now()));
                }
            }
        }
    }

    fn finish(self) {
        if let View::Spinner(bar) = self {
            bar.abandon();
        }
    }
}
