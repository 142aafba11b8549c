//! Showing replies to people, or as JSON to programs.

use serde::Serialize;

/// How to print replies.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// Print the reply as one JSON line instead of text for people.
    pub json: bool,
    /// Where progress goes.
    pub progress: ProgressMode,
}

/// `--progress`: where a long call's progress goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// On stderr: bars on a terminal, plain lines elsewhere.
    Auto,
    /// Nowhere.
    None,
    /// `{"progress": {...}}` lines on stdout, before the result.
    Json,
}

impl Output {
    /// Print `reply` as one JSON line when asked to, else run `human`.
    pub fn show<T: Serialize>(&self, reply: &T, human: impl FnOnce(&T)) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string(reply)?);
        } else {
            human(reply);
        }
        Ok(())
    }
}

/// A byte count for people: `0 B`, `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::bytes;

    #[test]
    fn byte_counts() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
