//! Stamp the build's version: the crate version, plus what `git describe`
//! says of the checkout when the source is one. A build from a release
//! tarball, or on a machine without git, gets the crate version alone.
//! The date of the commit goes on the man pages.

use std::{path::PathBuf, process::Command};

fn main() {
    let version = env!("CARGO_PKG_VERSION");
    let stamped = match describe() {
        Some(describe) => format!("{version} ({describe})"),
        None => version.to_owned(),
    };
    println!("cargo:rustc-env=CFSD_BUILD_VERSION={stamped}");
    // The commit's own date, not the build's, so that rebuilding the same
    // commit writes the same man pages.
    let date = git(&["log", "-1", "--format=%cs"]).unwrap_or_default();
    println!("cargo:rustc-env=CFSD_BUILD_DATE={date}");
    watch_checkout();
}

/// `git describe` of the checkout: the nearest tag, the commits since, and
/// always the abbreviated commit hash, with `-dirty` when files differ from
/// it.
fn describe() -> Option<String> {
    let describe = git(&[
        "describe",
        "--tags",
        "--long",
        "--always",
        "--dirty",
        "--abbrev=12",
    ])?;
    (!describe.is_empty()).then_some(describe)
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8(out.stdout).ok()?.trim().to_owned())
}

/// Run again when HEAD moves, a ref or tag changes, or the index does
/// (staging or committing is what flips `-dirty`). An edit that is never
/// staged does not rerun this script, so `-dirty` may lag behind it.
fn watch_checkout() {
    let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) else {
        return;
    };
    let git_dir = PathBuf::from(git_dir);
    for watched in ["HEAD", "index"] {
        println!("cargo:rerun-if-changed={}", git_dir.join(watched).display());
    }
    if let Some(common) = git(&["rev-parse", "--git-common-dir"]) {
        let common = git_dir.join(common);
        for watched in ["refs", "packed-refs"] {
            println!("cargo:rerun-if-changed={}", common.join(watched).display());
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
