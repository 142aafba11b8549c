//! A client hanging up on a call that reads a large file, and how long
//! the daemon goes on with it afterwards.

use std::{
    path::Path,
    process::Child,
    time::{Duration, Instant},
};

use crate::{Daemon, wait_for};

/// Kill `client` once the daemon has `file` open, and assert that the
/// daemon closes it within a quarter of `whole`, the time the work
/// takes when nobody hangs up (`what` names that work).
pub fn assert_stops_soon_after_hang_up(
    daemon: &Daemon,
    mut client: Child,
    file: &Path,
    whole: Duration,
    what: &str,
) {
    wait_for("the daemon to open the large file", whole * 2, || {
        daemon.has_open(file)
    });
    let since = Instant::now();
    client.kill().unwrap();
    client.wait().unwrap();
    wait_for("the daemon to close it", whole * 2, || {
        !daemon.has_open(file)
    });
    let stopped = since.elapsed();
    eprintln!("whole {what} {whole:?}; stopped {stopped:?} after the hang-up");
    assert!(
        stopped < whole / 4,
        "the work went on for {stopped:?} after the hang-up; all of {what} takes {whole:?}"
    );
}
