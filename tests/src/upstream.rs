//! Running upstream `cfsctl` 0.9.4 (the `composefs-ctl` crate's binary)
//! against a repository, to check that it reads what cfsd wrote.
//!
//! The binary is found at `$CFSD_UPSTREAM_CFSCTL`, else
//! `/opt/upstream-cfsctl/bin/cfsctl`, where `scripts/setup-deps` installs
//! it (`cargo install --locked composefs-ctl --version 0.9.4`).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use crate::{stderr, stdout};

/// Where upstream `cfsctl` is; panics with how to install it if it is not.
pub fn upstream() -> PathBuf {
    let path = std::env::var_os("CFSD_UPSTREAM_CFSCTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/upstream-cfsctl/bin/cfsctl"));
    assert!(
        path.is_file(),
        "upstream cfsctl 0.9.4 is not at {}: run scripts/setup-deps, or \
         `cargo install --locked composefs-ctl --version 0.9.4 --root /opt/upstream-cfsctl`",
        path.display()
    );
    path
}

/// Run upstream `cfsctl --repo REPO ARGS`, demand success, and return
/// what it printed.
pub fn theirs(repo: &Path, args: &[&str]) -> String {
    let out: Output = Command::new(upstream())
        .arg("--repo")
        .arg(repo)
        .args(args)
        .output()
        .expect("running upstream cfsctl");
    assert!(
        out.status.success(),
        "upstream cfsctl {args:?} failed:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}
