//! Showing replies to people, or as JSON to programs.

use serde::Serialize;

/// How to print replies.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// Print the reply as JSON instead of text for people.
    pub json: bool,
}

impl Output {
    /// Print `reply` as JSON when asked to, else run `human`.
    pub fn show<T: Serialize>(&self, reply: &T, human: impl FnOnce(&T)) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(reply)?);
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
