//! Showing a pull's per-layer progress: bars on a terminal, sparse plain
//! lines in a log, or one JSON object per event.

use std::{
    collections::HashMap,
    io::{IsTerminal, Write},
};

use cfsd_varlink::oci::{LayerProgress, PullReply};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::render::{Output, bytes};

/// Stages after which a layer needs no more work.
const FINAL_STAGES: [&str; 2] = ["present", "done"];

/// Where progress events go.
#[derive(Debug)]
pub enum Progress {
    /// `{"progress": {...}}` lines, for programs.
    Json,
    /// One bar per layer, redrawn in place.
    Bars(Bars),
    /// A line per stage change and per tenth of a layer.
    Lines(Lines),
}

impl Progress {
    /// The view `out` asks for, bars only when stdout is a terminal.
    pub fn new(out: Output) -> Self {
        if out.json {
            Progress::Json
        } else if std::io::stdout().is_terminal() {
            Progress::Bars(Bars::default())
        } else {
            Progress::Lines(Lines::default())
        }
    }

    /// Show one event.
    pub fn show(&mut self, event: &LayerProgress) -> anyhow::Result<()> {
        match self {
            Progress::Json => {
                let reply = PullReply {
                    progress: Some(event.clone()),
                    result: None,
                };
                println!("{}", serde_json::to_string(&reply)?);
            }
            Progress::Bars(bars) => bars.show(event),
            Progress::Lines(lines) => lines.show(event)?,
        }
        Ok(())
    }

    /// Stop drawing, leaving the bars as they last were.
    pub fn finish(self) {
        if let Progress::Bars(bars) = self {
            bars.finish();
        }
    }
}

/// One bar per layer, on stdout like the rest of the command's output.
#[derive(Debug)]
pub struct Bars {
    all: MultiProgress,
    layers: HashMap<String, ProgressBar>,
}

impl Default for Bars {
    fn default() -> Self {
        Bars {
            all: MultiProgress::with_draw_target(ProgressDrawTarget::stdout()),
            layers: HashMap::new(),
        }
    }
}

impl Bars {
    fn show(&mut self, event: &LayerProgress) {
        let bar = self.layers.entry(event.layer.clone()).or_insert_with(|| {
            let bar = self.all.add(ProgressBar::new(event.total));
            bar.set_style(style());
            bar.set_prefix(short(&event.layer));
            bar
        });
        bar.set_length(event.total);
        bar.set_message(event.stage.clone());
        if FINAL_STAGES.contains(&event.stage.as_str()) {
            bar.set_position(event.total);
            bar.finish();
        } else {
            bar.set_position(event.done);
        }
    }

    fn finish(self) {
        for bar in self.layers.values() {
            bar.abandon();
        }
    }
}

fn style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix} {msg:>9} [{bar:30}] {bytes}/{total_bytes}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// Plain lines for logs: `sha256:0123456789ab… importing 1.2 MiB/3.4 MiB`,
/// at each stage change and each further tenth of a layer.
#[derive(Debug, Default)]
pub struct Lines {
    /// Per layer: the stage and tenth last printed.
    shown: HashMap<String, (String, u64)>,
}

impl Lines {
    fn show(&mut self, event: &LayerProgress) -> anyhow::Result<()> {
        let tenth = tenths(event.done, event.total);
        let due = match self.shown.get(&event.layer) {
            Some((stage, shown)) => *stage != event.stage || tenth > *shown,
            None => true,
        };
        if !due {
            return Ok(());
        }
        self.shown
            .insert(event.layer.clone(), (event.stage.clone(), tenth));
        let mut stdout = std::io::stdout().lock();
        writeln!(
            stdout,
            "{} {} {}/{}",
            short(&event.layer),
            event.stage,
            bytes(event.done),
            bytes(event.total)
        )?;
        // A log reader sees each line as it happens, not at exit.
        stdout.flush()?;
        Ok(())
    }
}

/// How many whole tenths of `total` are `done`.
fn tenths(done: u64, total: u64) -> u64 {
    match total {
        0 => 10,
        _ => (u128::from(done.min(total)) * 10 / u128::from(total)) as u64,
    }
}

/// A digest cut to twelve hex digits: `sha256:0123456789ab…`.
pub fn short(digest: &str) -> String {
    match digest.split_once(':') {
        Some((algorithm, hex)) if hex.len() > 12 => {
            format!("{algorithm}:{}…", hex.get(..12).unwrap_or(hex))
        }
        _ => digest.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_shortened() {
        assert_eq!(short("sha256:0123456789abcdef0123"), "sha256:0123456789ab…");
        assert_eq!(short("sha256:0123"), "sha256:0123");
        assert_eq!(short("odd"), "odd");
    }

    #[test]
    fn lines_come_per_tenth_and_stage() {
        let mut lines = Lines::default();
        let mut printed = 0;
        for (stage, done) in [
            ("importing", 0),
            ("importing", 5),
            ("importing", 10),
            ("importing", 15),
            ("importing", 100),
            ("done", 100),
        ] {
            let before = lines.shown.clone();
            lines
                .show(&LayerProgress {
                    layer: "sha256:ab".into(),
                    stage: stage.into(),
                    done,
                    total: 100,
                })
                .unwrap();
            printed += usize::from(before != lines.shown);
        }
        // 0, 10, 100 and the stage change; 5 and 15 are within a tenth.
        assert_eq!(printed, 4);
        assert_eq!(tenths(1, 0), 10);
    }
}
