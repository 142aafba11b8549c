//! Showing a pull's per-layer progress: bars on a terminal, sparse plain
//! lines in a log, or one JSON object per event.

use std::{
    collections::HashMap,
    io::{IsTerminal, Write},
};

use cfsd_varlink::oci::{LayerProgress, PullReply};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::render::{Output, ProgressMode, bytes};

/// Stages after which a layer needs no more work.
const FINAL_STAGES: [&str; 2] = ["present", "done"];

/// Where progress events go.
#[derive(Debug)]
pub enum Progress {
    /// Nothing shown.
    Hidden,
    /// `{"progress": {...}}` lines on stdout, for programs.
    Json,
    /// One bar per layer, redrawn in place.
    Bars(Bars),
    /// A line per stage change and per tenth of a layer.
    Lines(Lines),
}

impl Progress {
    /// The view `out` asks for. Unless JSON lines are asked for, progress
    /// goes to stderr, so stdout carries only the result: bars when stderr
    /// is a terminal, plain lines when it is a log.
    pub fn new(out: Output) -> Self {
        match out.progress {
            ProgressMode::None => Progress::Hidden,
            ProgressMode::Json => Progress::Json,
            ProgressMode::Auto if std::io::stderr().is_terminal() => {
                Progress::Bars(Bars::default())
            }
            ProgressMode::Auto => Progress::Lines(Lines::default()),
        }
    }

    /// Show one event.
    pub fn show(&mut self, event: &LayerProgress) -> anyhow::Result<()> {
        match self {
            Progress::Hidden => {}
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

/// One bar per layer, on stderr, away from the result.
#[derive(Debug)]
pub struct Bars {
    all: MultiProgress,
    layers: HashMap<String, ProgressBar>,
}

impl Default for Bars {
    fn default() -> Self {
        Bars {
            all: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
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

/// The bar's width: with the widest other parts (a 20-column digest, a
/// 9-column stage, `1023.98 MiB/1023.98 MiB`), a line takes 79 columns.
const BAR: usize = 22;

fn style() -> ProgressStyle {
    let template = format!("{{prefix}} {{msg:>9}} [{{bar:{BAR}}}] {{bytes}}/{{total_bytes}}");
    ProgressStyle::with_template(&template)
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
        let mut stderr = std::io::stderr().lock();
        writeln!(
            stderr,
            "{} {} {}/{}",
            short(&event.layer),
            event.stage,
            bytes(event.done),
            bytes(event.total)
        )?;
        // A log reader sees each line as it happens, not at exit.
        stderr.flush()?;
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

    /// A terminal 200 columns wide that keeps what is written to it.
    #[derive(Debug, Default, Clone)]
    struct Screen(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl indicatif::TermLike for Screen {
        fn width(&self) -> u16 {
            200
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.0.lock().unwrap().push(s.to_owned());
            Ok(())
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.write_line(s)
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_bar_line_fits_80_columns() {
        let screen = Screen::default();
        let target = ProgressDrawTarget::term_like(Box::new(screen.clone()));
        // The widest byte counts: just under 1024 of a unit.
        let total = 1023 * 1024 * 1024 + 1000 * 1024;
        let bar = ProgressBar::with_draw_target(Some(total), target);
        bar.set_style(style());
        bar.set_prefix(short(&format!("sha256:{}", "a".repeat(64))));
        bar.set_message("importing");
        bar.set_position(total - 1);
        bar.abandon();
        let lines = screen.0.lock().unwrap().clone();
        // Lines of blanks only clear the screen.
        let widest = lines
            .iter()
            .map(|l| l.trim_end().chars().count())
            .max()
            .unwrap_or(0);
        assert!(widest > 60, "nothing drawn: {lines:?}");
        assert!(widest <= 80, "{widest} columns: {lines:?}");
    }

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
