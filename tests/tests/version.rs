//! The version a build reports: `cfsctl --version`, `cfsd --version` and
//! the daemon's `org.varlink.service.GetInfo` say the same, and name the
//! commit of the checkout they were built from.

use std::{path::Path, process::Command};

use cfsd_tests::{Daemon, bin, stderr, stdout};

fn git(args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
        .output()
        .expect("running git; the tests run from a git checkout");
    assert!(out.status.success(), "git {args:?}: {}", stderr(&out));
    stdout(&out).trim().to_owned()
}

/// What `<program> --version` prints after the program's name.
fn version_of(program: &str) -> String {
    let out = Command::new(bin(program))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let line = stdout(&out);
    let (name, version) = line.trim().split_once(' ').expect("NAME VERSION");
    assert_eq!(name, program);
    version.to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn cfsctl_cfsd_and_get_info_report_the_commit_built() {
    let head = git(&["rev-parse", "--short=12", "HEAD"]);
    let cfsctl = version_of("cfsctl");
    assert!(
        cfsctl.starts_with(concat!(env!("CARGO_PKG_VERSION"), " (")),
        "cfsctl --version: {cfsctl}"
    );
    assert!(
        cfsctl.contains(&head),
        "cfsctl --version ({cfsctl}) does not name HEAD ({head}); rebuild after committing"
    );
    assert_eq!(version_of("cfsd"), cfsctl);

    let daemon = Daemon::start(&[]);
    let mut client = daemon.client().await;
    let info = client.service_info().await.expect("GetInfo");
    assert_eq!(info.version, cfsctl, "GetInfo and cfsctl --version differ");
}
