//! A third-party client: the reference Python varlink implementation
//! (`pip install varlink`) drives a real cfsd through
//! `tests/python/test_varlink_client.py`. Its parsing of the interface
//! description cfsd serves is itself a check of the IDL.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use cfsd_tests::{Daemon, stderr, stdout};

/// The Python interpreter, overridable with `$PYTHON`.
fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Fail, never skip, when the Python client is not installed.
fn require_python_varlink() {
    let python = python();
    let out = Command::new(&python)
        .args(["-c", "import varlink"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} ({e}); the Python client test needs it"));
    assert!(
        out.status.success(),
        "the Python `varlink` module is not importable by {python}: install it with \
         `pip install varlink` (CI does)\n{}",
        stderr(&out)
    );
}

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn script() -> PathBuf {
    manifest_dir().join("python/test_varlink_client.py")
}

fn repository_idl() -> PathBuf {
    manifest_dir().join("../interfaces/io.cfsd.Repository.varlink")
}

#[test]
fn python_reference_client_drives_cfsd() {
    require_python_varlink();
    let daemon = Daemon::start(&[]);
    let out = Command::new(python())
        .arg(script())
        .arg(daemon.address())
        .arg(repository_idl())
        .arg(daemon.repo())
        .output()
        .expect("running the Python client");
    println!("{}", stdout(&out));
    eprintln!("{}", stderr(&out));
    assert!(
        out.status.success(),
        "the Python varlink client failed ({}):\n{}{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("all checks passed"),
        "the Python client stopped early:\n{}",
        stdout(&out)
    );
}
