//! The paths that need a real kernel with fs-verity, run in a qemu guest
//! that boots Debian's 6.12 cloud kernel: see `tests/vm/` and
//! `docs/reliability.md`. Each test boots one guest with a fresh disk and
//! fails, printing the guest's console, unless every check inside passed.

use std::{path::Path, process::Command};

use cfsd_tests::{bin, skip, stderr, stdout};

/// Run `tests/vm/run SCENARIO FS` with this build's binaries.
fn vm(scenario: &str, fs: &str) {
    if let Some(missing) = missing_tools() {
        skip(&format!(
            "the VM harness needs {missing} (scripts/setup-deps installs it)"
        ));
        return;
    }
    let top = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let bins = bin("cfsd").parent().unwrap().to_owned();
    let out = Command::new(top.join("tests/vm/run"))
        .args([scenario, fs])
        .env("CFSD_VM_BINS", &bins)
        .env("CFSD_VM_WORK", bins.join("vm"))
        .output()
        .expect("running tests/vm/run");
    print!("{}", stdout(&out));
    assert!(
        out.status.success(),
        "{scenario} on {fs} failed in the guest:\n{}",
        stderr(&out)
    );
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
        "filefrag",
        "jq",
    ]
    .into_iter()
    .find(|tool| !have(tool))
}

#[test]
fn verity_is_enforced_end_to_end_on_ext4() {
    vm("verity", "ext4");
}

#[test]
fn verity_is_enforced_end_to_end_on_btrfs() {
    vm("verity", "btrfs");
}

#[test]
fn tampering_is_answered_by_errors_never_by_wrong_bytes() {
    vm("tamper", "ext4");
}
