//! The paths that need a real kernel with fs-verity, and real power cuts,
//! run in qemu guests that boot Debian's 6.12 cloud kernel: see
//! `tests/vm/` and `docs/reliability.md`. Each test boots guests with fresh
//! disks and fails, printing the guests' consoles, unless every check
//! inside passed.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use cfsd_tests::{bin, skip, stderr, stdout};

/// Run `tests/vm/SCRIPT ARGS` with this build's binaries; it must pass.
fn harness(script: &str, args: &[&str]) {
    if let Some(missing) = missing_tools() {
        skip(&format!(
            "the VM harness needs {missing} (scripts/setup-deps installs it)"
        ));
        return;
    }
    let top = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let debug = bin("cfsd").parent().unwrap().to_owned();
    let out = Command::new(top.join("tests/vm").join(script))
        .args(args)
        .env("CFSD_VM_BINS", release_bins(top, &debug))
        .env("CFSD_VM_WORK", debug.join("vm"))
        .output()
        .unwrap_or_else(|e| panic!("running tests/vm/{script}: {e}"));
    print!("{}", stdout(&out));
    assert!(
        out.status.success(),
        "tests/vm/{script} {args:?} failed:\n{}",
        stderr(&out)
    );
}

/// The directory of the release `cfsd` and `cfsctl`, built now unless
/// they are current: the guests run what a machine would install, not
/// the debug build the other tests use.
fn release_bins(top: &Path, debug: &Path) -> PathBuf {
    let built = Command::new(env!("CARGO"))
        .current_dir(top)
        .args(["build", "--release", "-p", "cfsd", "-p", "cfsctl"])
        .status()
        .expect("running cargo build --release");
    assert!(built.success(), "cargo build --release failed");
    debug.parent().unwrap().join("release")
}

fn missing_tools() -> Option<&'static str> {
    let have = |tool: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    [
        "qemu-system-x86_64",
        "busybox",
        "cpio",
        "depmod",
        "mkfs.btrfs",
        "mkfs.xfs",
        "filefrag",
        "jq",
    ]
    .into_iter()
    .find(|tool| !have(tool))
}

/// Power cuts on FS: two in the test run, `CFSD_VM_CUTS` in the long run.
fn power_cuts(fs: &str) {
    let cuts = std::env::var("CFSD_VM_CUTS").unwrap_or_else(|_| "2".to_owned());
    harness("powercut", &[fs, &cuts]);
}

#[test]
fn verity_is_enforced_end_to_end_on_ext4() {
    harness("run", &["verity", "ext4"]);
}

#[test]
fn verity_is_enforced_end_to_end_on_btrfs() {
    harness("run", &["verity", "btrfs"]);
}

#[test]
fn tampering_is_answered_by_errors_never_by_wrong_bytes() {
    harness("run", &["tamper", "ext4"]);
}

#[test]
fn power_cuts_on_ext4_lose_nothing_answered() {
    power_cuts("ext4");
}

#[test]
fn power_cuts_on_xfs_lose_nothing_answered() {
    power_cuts("xfs");
}
