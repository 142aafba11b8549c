//! A GC SIGKILLed in the middle of its removals is finished by the
//! restarted daemon before it serves anything, so a pull never reuses
//! what it had half removed. The machinery is `cfsd_tests::crash`.

use std::time::Duration;

use cfsd_tests::{
    crash::{Fixtures, GC_MARKER, daemon_with_base, gc_call},
    ocictl::{pull, succeeds},
};

/// composefs's GC (which cfsd's `Gc` runs) unlinks unreferenced objects
/// first and prunes the stream and image names that point at them only
/// afterwards, so a GC killed in between leaves names whose objects are
/// gone. cfsd marks a running collection on disk and finishes an
/// interrupted one when it next opens the repository, before any call is
/// served: a pull of the same image right after the restart must neither
/// trust such a name nor leave anything for fsck to find.
#[test]
fn a_killed_gc_is_finished_before_a_pull_can_reuse_its_leftovers() {
    let fixtures = Fixtures::new();
    let kind = &fixtures.kinds[1];
    let mut daemon = daemon_with_base(&fixtures);
    let marker = daemon.repo().join(GC_MARKER);
    let mut interrupted = 0;
    for step in 0..40u32 {
        pull(&daemon, &[&kind.source, kind.tag]);
        succeeds(&daemon, &["oci", "rm", kind.tag]);
        let mut connection = daemon.raw();
        connection.send_bytes(gc_call().to_string().as_bytes());
        std::thread::sleep(Duration::from_micros(500 * u64::from(step)));
        daemon.kill();
        let inside = marker.exists();
        // The restarted daemon finishes an interrupted collection before
        // it serves anything.
        daemon.restart();
        assert!(!marker.exists(), "the interrupted GC was not finished");
        if !inside {
            continue;
        }
        interrupted += 1;
        let pulled = pull(&daemon, &[&kind.source, kind.tag]);
        let fsck = daemon.cfsctl(&["--json", "fsck"]);
        assert!(
            fsck.status.success(),
            "after a GC killed at step {step}, pulling {} again ({}) left: {}",
            kind.tag,
            pulled.result,
            cfsd_tests::stdout(&fsck)
        );
        if interrupted >= 3 {
            break;
        }
    }
    assert!(interrupted > 0, "no kill landed inside a GC");
}
