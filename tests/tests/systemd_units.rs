//! The systemd units: `systemd-analyze verify` accepts them, the service's
//! exposure (`systemd-analyze security --offline=yes`) stays at or below
//! the level docs/systemd.md records, and the capability bounding set the
//! unit grants is enough for cfsd to pull and mount an image.
//!
//! This machine has no systemd as PID 1, so the unit itself cannot run
//! here; the capability test runs cfsd under `setpriv` with exactly the
//! unit's `CapabilityBoundingSet=` and `NoNewPrivileges=`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use cfsd_tests::{
    Daemon, bin,
    oci::{Compression, Layout, Written, small_image},
    peer::{NOBODY, open_path_to, reply_with_fd},
    skip, stderr, stdout,
};
use serde_json::json;

/// The highest exposure allowed, in tenths as `--threshold` takes it:
/// the hardened unit scores 3.1 (2.9 before CAP_SETUID and CAP_SETGID,
/// which reading a peer's tree as that peer needs), the one before the
/// hardening 5.0.
const MAX_EXPOSURE: u32 = 31;

fn units() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd")
}

fn analyze(args: &[&str]) -> Output {
    Command::new("systemd-analyze")
        .args(args)
        .output()
        .expect("running systemd-analyze (Debian package systemd; scripts/setup-deps installs it)")
}

/// The units as installed, but starting the cfsd this test suite built:
/// verify checks that ExecStart= names an executable.
fn installable_units(dir: &Path) -> [PathBuf; 2] {
    ["cfsd.socket", "cfsd.service"].map(|name| {
        let text = std::fs::read_to_string(units().join(name)).unwrap();
        let text = text.replace("/usr/bin/cfsd ", &format!("{} ", bin("cfsd").display()));
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    })
}

#[test]
fn units_verify_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let [socket, service] = installable_units(dir.path());
    let out = analyze(&[
        "verify",
        socket.to_str().unwrap(),
        service.to_str().unwrap(),
    ]);
    assert!(
        out.status.success() && stderr(&out).trim().is_empty(),
        "systemd-analyze verify: {}{}",
        stdout(&out),
        stderr(&out)
    );
}

#[test]
fn service_exposure_stays_at_the_documented_level() {
    let service = units().join("cfsd.service");
    let threshold = format!("--threshold={MAX_EXPOSURE}");
    let out = analyze(&[
        "security",
        "--offline=yes",
        &threshold,
        service.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "cfsd.service is more exposed than {MAX_EXPOSURE}/10:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
    let doc = std::fs::read_to_string(units().join("../docs/systemd.md")).unwrap();
    let overall = stdout(&out)
        .lines()
        .find(|line| line.contains("Overall exposure level"))
        .map(str::to_owned)
        .expect("an overall exposure line");
    assert!(
        doc.contains(overall.trim()),
        "docs/systemd.md does not record `{overall}`"
    );
}

/// The unit's CapabilityBoundingSet=, as setpriv's `--bounding-set`.
fn bounding_set() -> String {
    let text = std::fs::read_to_string(units().join("cfsd.service")).unwrap();
    let caps = text
        .lines()
        .find_map(|line| line.strip_prefix("CapabilityBoundingSet="))
        .expect("cfsd.service sets CapabilityBoundingSet=");
    let mut set = vec!["-all".to_owned()];
    set.extend(
        caps.split_whitespace()
            .map(|cap| format!("+{}", cap.trim_start_matches("CAP_").to_lowercase())),
    );
    set.join(",")
}

#[test]
fn the_units_capabilities_pull_mount_and_collect() {
    let bounding = bounding_set();
    assert!(bounding.contains("+sys_admin"), "{bounding}");
    let wrapper = [
        "setpriv",
        "--bounding-set",
        &bounding,
        "--inh-caps=-all",
        "--no-new-privs",
    ];
    let daemon = Daemon::start_under(&wrapper, &[]);
    let caps = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
    assert!(
        caps.lines().any(|l| l == "CapBnd:\t00000000002800c4"),
        "cfsd does not run with CAP_SYS_ADMIN, CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE, CAP_SETUID and CAP_SETGID only:\n{caps}"
    );
    let ok = |args: &[&str]| {
        let out = daemon.cfsctl(args);
        assert!(out.status.success(), "cfsctl {args:?}: {}", stderr(&out));
        out
    };
    ok(&["init"]);
    let (layout, _) = Layout::single(&small_image(Compression::Gzip, "hardened\n"), None);
    let written = Written::new(&layout);
    ok(&["oci", "pull", &written.archive(None), "small"]);
    let mnt = tempfile::tempdir().unwrap();
    let mountpoint = mnt.path().to_str().unwrap();
    let mounted = daemon.cfsctl(&["oci", "mount", "small", mountpoint]);
    if !mounted.status.success() && stderr(&mounted).contains("not implemented") {
        return skip(&format!(
            "the kernel cannot mount images: {}",
            stderr(&mounted)
        ));
    }
    assert!(mounted.status.success(), "oci mount: {}", stderr(&mounted));
    let content = std::fs::read_to_string(mnt.path().join("usr/share/content"));
    ok(&["oci", "umount", mountpoint]);
    assert_eq!(content.unwrap(), "hardened\n");
    ok(&["oci", "untag", "small"]);
    ok(&["gc"]);
    let fsck = ok(&["fsck"]);
    assert!(fsck.status.success(), "{}", stdout(&fsck));
}

/// The unit's capabilities also let cfsd read a tree that a peer hands
/// over with that peer's own credentials (a thread takes its uid, gid and
/// groups, which needs CAP_SETUID and CAP_SETGID): without them, no one
/// but root could make a plain image from the system daemon.
#[test]
fn under_the_units_capabilities_an_admin_makes_an_image_of_its_own_tree() {
    const ADMINS: u32 = 4242;
    let bounding = bounding_set();
    let wrapper = [
        "setpriv",
        "--bounding-set",
        &bounding,
        "--inh-caps=-all",
        "--no-new-privs",
    ];
    let daemon = Daemon::start_under(&wrapper, &["--allow-group", &ADMINS.to_string()]);
    assert!(daemon.cfsctl(&["init"]).status.success());
    // The socket as cfsd.socket's SocketGroup= would give it.
    let group = Some(rustix::fs::Gid::from_raw(ADMINS));
    rustix::fs::chown(daemon.socket(), None, group).unwrap();
    let mode = |path: &Path, mode| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    mode(&daemon.socket(), 0o660);
    mode(daemon.dir(), 0o711);
    let tree = tempfile::tempdir().unwrap();
    open_path_to(tree.path());
    mode(tree.path(), 0o755);
    std::fs::create_dir(tree.path().join("usr")).unwrap();
    std::fs::write(tree.path().join("usr/mine"), vec![7u8; 4000]).unwrap();
    let create =
        json!({"method": "io.cfsd.Repository.CreateImage", "parameters": {"name": "mine"}});
    let path = tree.path().to_str().unwrap();
    let made = reply_with_fd(&daemon, NOBODY, &[ADMINS], path, &create);
    assert!(made["parameters"]["imageId"].is_string(), "{made}");
    let out = daemon.cfsctl(&["image-objects", "mine"]);
    assert_eq!(stdout(&out).lines().count(), 1, "{}", stdout(&out));
}
