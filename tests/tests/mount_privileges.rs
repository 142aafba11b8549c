//! A mounted image gives nobody anything through setuid files or device
//! nodes: Mount is `nosuid,nodev` unless root asks for `allowSetuid` or
//! `allowDevices`, which an admin-group member and the daemon's own
//! non-root user are refused. The image holds a setuid-root copy of `id`
//! and a 0666 node of the host's `/dev/zero` (1:5); nobody runs and opens
//! them through `setpriv`, from the mount root attached.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use cfsd_tests::{
    Daemon, bin,
    oci::{Compression, Entry, Image, Layer, Layout, Written},
    ocictl::pull,
    peer::{NOBODY, as_nobody, open_as_nobody, raw_calls_as, raw_calls_at, start_as_nobody},
    stderr, stdout,
};
use serde_json::{Value, json};

/// A group nobody is given on top, for `--allow-group`.
const ADMINS: u32 = 4242;

/// Unmounts its directory when dropped, also when a test fails.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

/// An image with a setuid-root `id` and a world-writable `/dev/zero`.
fn hostile_image() -> Written {
    let id = std::fs::read("/usr/bin/id").expect("/usr/bin/id");
    let image = Image::new(vec![Layer::new(
        Compression::Gzip,
        vec![
            Entry::dir("usr").mode(0o755),
            Entry::dir("usr/bin").mode(0o755),
            Entry::file("usr/bin/id", id).mode(0o4755).owner(0, 0),
            Entry::dir("dev").mode(0o755),
            Entry::char_device("dev/zero", 1, 5).mode(0o666).owner(0, 0),
        ],
    )]);
    Written::new(&Layout::single(&image, None).0)
}

/// A daemon nobody may reach, holding the hostile image as `img`.
fn daemon_with_image(args: &[&str]) -> (Daemon, Written) {
    let daemon = Daemon::start_for_nobody(args);
    assert!(daemon.cfsctl(&["init"]).status.success());
    let image = hostile_image();
    pull(&daemon, &[&image.archive(None), "img"]);
    (daemon, image)
}

/// Mount `img` at DIR/`name` as root through cfsctl, with `flags`.
fn mount(daemon: &Daemon, name: &str, flags: &[&str]) -> Mounted {
    let dir = daemon.dir().join(name);
    std::fs::create_dir(&dir).unwrap();
    let mut args = vec!["oci", "mount"];
    args.extend_from_slice(flags);
    args.extend(["img", dir.to_str().unwrap()]);
    let out = daemon.cfsctl(&args);
    assert!(
        out.status.success(),
        "oci mount {flags:?}: {}",
        stderr(&out)
    );
    Mounted(dir)
}

/// The per-mount options of the mount at `dir`, from our mount table.
fn mount_options(dir: &Path) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let point = dir.to_str().unwrap();
    let line = table
        .lines()
        .rfind(|line| line.split(' ').nth(4) == Some(point))
        .unwrap_or_else(|| panic!("{point} is not in /proc/self/mountinfo"));
    let options = line.split(' ').nth(5).unwrap();
    options.split(',').map(str::to_owned).collect()
}

/// The effective uid nobody gets running the image's setuid `id`.
fn euid_of_setuid_id(root: &Path) -> String {
    let id = root.join("usr/bin/id");
    let out = as_nobody(&[], id.to_str().unwrap())
        .arg("-u")
        .output()
        .expect("running id");
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().to_owned()
}

/// What each mount honours, seen from the mount table and from nobody.
struct Seen {
    nosuid: bool,
    nodev: bool,
    euid: String,
    device: String,
}

fn seen(root: &Path) -> Seen {
    let options = mount_options(root);
    assert!(options.contains(&"ro".to_owned()), "{options:?}");
    // The image really carries what the mount must neutralise.
    let id = std::fs::metadata(root.join("usr/bin/id")).unwrap();
    assert_eq!((id.mode() & 0o7777, id.uid()), (0o4755, 0));
    let zero = std::fs::metadata(root.join("dev/zero")).unwrap();
    assert_eq!(
        (zero.mode() & 0o777, zero.rdev()),
        (0o666, libc_makedev(1, 5))
    );
    Seen {
        nosuid: options.contains(&"nosuid".to_owned()),
        nodev: options.contains(&"nodev".to_owned()),
        euid: euid_of_setuid_id(root),
        device: open_as_nobody(&root.join("dev/zero")),
    }
}

/// `makedev(major, minor)` as glibc encodes it, for small numbers.
fn libc_makedev(major: u64, minor: u64) -> u64 {
    (major << 8) | minor
}

#[test]
fn a_default_mount_gives_nobody_neither_setuid_root_nor_the_hosts_device() {
    let (daemon, _image) = daemon_with_image(&[]);
    let plain = mount(&daemon, "plain", &[]);
    let s = seen(&plain.0);
    assert_eq!(s.euid, NOBODY.to_string(), "setuid-root id ran as root");
    assert_eq!(s.device, "EACCES", "the image's device node opened");
    assert!(s.nosuid && s.nodev, "mount options lack nosuid or nodev");
}

#[test]
fn root_may_allow_setuid_and_devices_each_on_its_own() {
    let (daemon, _image) = daemon_with_image(&[]);

    let setuid = mount(&daemon, "setuid", &["--allow-setuid"]);
    let s = seen(&setuid.0);
    assert!(!s.nosuid && s.nodev);
    assert_eq!(s.euid, "0", "allowSetuid honours the setuid bit");
    assert_eq!(s.device, "EACCES");

    let devices = mount(&daemon, "devices", &["--allow-devices"]);
    let s = seen(&devices.0);
    assert!(s.nosuid && !s.nodev);
    assert_eq!(s.euid, NOBODY.to_string());
    assert_eq!(s.device, "ok 00000000", "allowDevices opens /dev/zero");

    let both = mount(&daemon, "both", &["--allow-setuid", "--allow-devices"]);
    let s = seen(&both.0);
    assert!(!s.nosuid && !s.nodev);
    assert_eq!((s.euid.as_str(), s.device.as_str()), ("0", "ok 00000000"));
}

fn mount_call(option: Option<&str>) -> Value {
    let mut parameters = json!({"image": "img"});
    if let Some(option) = option {
        parameters[option] = json!(true);
    }
    json!({"method": "io.cfsd.Oci.Mount", "parameters": parameters})
}

#[test]
fn the_admin_group_may_not_ask_for_setuid_or_devices() {
    let admins = ADMINS.to_string();
    let (daemon, _image) = daemon_with_image(&["--allow-group", &admins]);
    let calls = [
        mount_call(Some("allowSetuid")),
        mount_call(Some("allowDevices")),
        // Set false, nothing beyond a plain mount is asked for.
        json!({"method": "io.cfsd.Oci.Mount",
               "parameters": {"image": "img", "allowSetuid": false}}),
    ];
    for reply in raw_calls_as(&daemon, &[ADMINS], &calls) {
        assert_eq!(
            reply,
            json!({"error": "io.cfsd.Oci.PermissionDenied",
                   "parameters": {"method": "io.cfsd.Oci.Mount", "uid": NOBODY}})
        );
    }
    // Root's own call still mounts: the refusals changed nothing.
    let _plain = mount(&daemon, "plain", &[]);
}

#[test]
fn the_daemons_own_user_may_mount_but_not_ask_for_setuid_or_devices() {
    let scratch = tempfile::tempdir().unwrap();
    let (_dir, daemon) = start_as_nobody(scratch.path());

    let calls = [
        mount_call(Some("allowSetuid")),
        mount_call(Some("allowDevices")),
        mount_call(None),
    ];
    let replies = raw_calls_at(&daemon.socket, &[], &calls);
    for (reply, option) in replies.iter().zip(["allowSetuid", "allowDevices"]) {
        assert_eq!(
            *reply,
            json!({"error": "io.cfsd.Oci.PermissionDenied",
                   "parameters": {"method": "io.cfsd.Oci.Mount", "uid": NOBODY,
                                  "option": option}})
        );
    }
    // A plain Mount passes the access table and only then finds there is
    // no repository to mount from.
    assert_eq!(
        replies[2]["error"], "io.cfsd.Oci.NotInitialized",
        "{}",
        replies[2]
    );
}

#[test]
fn cfsctl_says_who_may_ask_for_setuid() {
    let scratch = tempfile::tempdir().unwrap();
    let (dir, daemon) = start_as_nobody(scratch.path());
    let cfsctl = dir.join("cfsctl");
    std::fs::copy(bin("cfsctl"), &cfsctl).unwrap();
    let out = as_nobody(&[], cfsctl.to_str().unwrap())
        .arg("--address")
        .arg(format!("unix:{}", daemon.socket.display()))
        .args(["oci", "mount", "--allow-setuid", "img"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("uid 65534 may not set allowSetuid in io.cfsd.Oci.Mount, which needs root"),
        "{err}"
    );
}
