//! Where the daemon's log goes, and in which shape.
//!
//! Under systemd, stderr is the journal's stream and `$JOURNAL_STREAM`
//! names it (`device:inode`). Then events go to journald natively, each
//! field a journal field (`PEER_UID`, `METHOD`, `IMAGE_ID`, ...) and the
//! level its `PRIORITY`; when the journal socket cannot be reached they go
//! to stderr as `<N>`-prefixed lines, which journald reads as priorities
//! (sd-daemon(3)). Elsewhere stderr gets the usual human format.

use std::{fmt, os::fd::AsFd};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::{
    EnvFilter,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    layer::SubscriberExt,
    registry::LookupSpan,
    util::SubscriberInitExt,
};

/// Set up logging with the level filter `filter` (e.g. `info`).
pub fn install(filter: &str) {
    let filter = || EnvFilter::new(filter);
    if !stderr_is_journal() {
        tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
        return;
    }
    match tracing_journald::layer() {
        Ok(journald) => tracing_subscriber::registry()
            .with(filter())
            .with(
                journald
                    .with_field_prefix(None)
                    .with_priority_mappings(priorities()),
            )
            .init(),
        Err(_) => tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .event_format(Prefixed)
            .init(),
    }
}

/// Whether stderr is the stream `$JOURNAL_STREAM` names: systemd sets
/// the variable for the service, but a child that inherited it with
/// another stderr must not believe it.
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    rustix::fs::fstat(std::io::stderr().as_fd())
        .is_ok_and(|st| st.st_dev == dev && st.st_ino == ino)
}

/// The syslog priority of a level: err, warning, info, debug.
fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// [`priority`] for the native protocol: the crate's own default makes
/// info a notice (5), but both shapes must give the same priorities.
fn priorities() -> tracing_journald::PriorityMappings {
    use tracing_journald::Priority;
    tracing_journald::PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    }
}

/// `<N>message key=value ...`: no timestamp, journald adds its own.
struct Prefixed;

impl<S, N> FormatEvent<S, N> for Prefixed
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
        assert_eq!(priority(&Level::TRACE), 7);
    }
}
