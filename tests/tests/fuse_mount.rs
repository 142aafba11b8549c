//! `cfsctl oci mount --fuse` and `io.cfsd.Oci.MountFuse`: the peer mounts
//! an empty FUSE filesystem with its own rights (fusermount3) and the
//! daemon serves the image on its `/dev/fuse`. The files are those of the
//! kernel mount of the same image; the mount ends, and the daemon lets go
//! of everything, when the peer unmounts, dies or hangs up.

use std::{
    io::{BufRead, BufReader},
    os::{fd::OwnedFd, unix::fs::PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use cfsd_tests::{
    Daemon, bin,
    fuse_peer::{FusePeer, children, fuse_unmount, held, mounted_at, wait_released, walk_as},
    mounted::mount,
    oci::{
        Compression, Entry, Image, Layer, Layout, Written, cap_net_raw, everything_image, noise,
    },
    ocictl::{self, object_count},
    peer::NOBODY,
    stderr, wait_for,
};
use cfsd_varlink::{
    CallError,
    oci::{MountFuseParams, OciError},
};
use serde_json::json;

/// The admin group (`--allow-group`) the admin peer is given.
const ADMINS: u32 = 4242;

/// How long the daemon may take to let go of a mount that ended: tokio's
/// idle blocking threads linger 10 s.
const RELEASE: Duration = Duration::from_secs(30);

/// A daemon that nobody may reach, with admin group [`ADMINS`] (and any
/// `extra` arguments), holding the everything image as `everything`.
fn daemon_with_image(extra: &[&str]) -> Daemon {
    let admins = ADMINS.to_string();
    let mut args = vec!["--allow-group", admins.as_str()];
    args.extend_from_slice(extra);
    let daemon = Daemon::start_for_nobody(&args);
    assert!(daemon.cfsctl(&["init"]).status.success());
    let (layout, _) = Layout::single(&everything_image(), None);
    let written = Written::new(&layout);
    ocictl::pull(&daemon, &[&written.archive(None), "everything"]);
    let written = Written::new(&Layout::single(&shared_image(), None).0);
    ocictl::pull(&daemon, &[&written.archive(None), "shared"]);
    daemon
}

/// An image whose tree others may enter, with files they may and may not
/// read: the everything image's root is 0751.
fn shared_image() -> Image {
    Image::new(vec![Layer::new(
        Compression::Gzip,
        vec![
            Entry::dir("usr").mode(0o755),
            Entry::dir("usr/bin").mode(0o755),
            Entry::dir("usr/share").mode(0o755),
            Entry::file("usr/share/big", noise(7, 300_000)).mode(0o644),
            Entry::hardlink("usr/share/big-link", "usr/share/big"),
            Entry::file("usr/share/readme", "for everyone\n").mode(0o644),
            Entry::file("usr/share/empty", "").mode(0o644),
            Entry::symlink("usr/share/link", "readme"),
            Entry::file("usr/bin/ping", noise(8, 5000))
                .mode(0o755)
                .xattr("security.capability", &cap_net_raw()),
            Entry::dir("etc").mode(0o755),
            Entry::file("etc/secret", "only root\n").mode(0o600),
            Entry::file("etc/nobodys", noise(9, 1000))
                .mode(0o600)
                .owner(65534, 65534),
            Entry::dir("etc/private").mode(0o700),
            Entry::file("etc/private/key", noise(10, 100)).mode(0o644),
        ],
    )])
}

/// A directory under the daemon's that `uid` owns, to mount on.
fn mountpoint(daemon: &Daemon, name: &str, uid: u32) -> PathBuf {
    let dir = daemon.dir().join(name);
    std::fs::create_dir(&dir).unwrap();
    rustix::fs::chown(
        &dir,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(NOBODY)),
    )
    .unwrap();
    dir
}

/// `cfsctl oci mount --fuse IMAGE DIR` as `uid` (0: root itself),
/// running; returns once it says the mount is served.
fn fuse_mount(daemon: &Daemon, image: &str, uid: u32, groups: &[u32], dir: &Path) -> Foreground {
    let mut child = cfsctl_as(daemon, uid, groups)
        .args(["oci", "mount", "--fuse", image])
        .arg(dir)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = String::new();
    let mut lines = BufReader::new(child.stderr.take().unwrap());
    lines.read_line(&mut said).unwrap();
    assert!(
        said.starts_with(&format!("Serving {image} (image ")),
        "{said}"
    );
    // Keep reading what it says, so that it never blocks on a full pipe.
    let rest = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut lines, &mut rest);
        rest
    });
    Foreground { child, rest }
}

/// A `cfsctl oci mount --fuse` serving its mount.
struct Foreground {
    child: Child,
    rest: std::thread::JoinHandle<String>,
}

impl Foreground {
    /// Wait at most 30 s for cfsctl to exit; its status and what it said
    /// after its first line.
    fn exits(mut self) -> (std::process::ExitStatus, String) {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.rest.join().unwrap());
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "cfsctl did not exit"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }
}

/// cfsctl as `uid`, a copy nobody may run, reaching `daemon`.
fn cfsctl_as(daemon: &Daemon, uid: u32, groups: &[u32]) -> Command {
    let cfsctl = daemon.dir().join("cfsctl");
    if !cfsctl.exists() {
        std::fs::copy(bin("cfsctl"), &cfsctl).unwrap();
        std::fs::set_permissions(&cfsctl, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut command = if uid == 0 {
        Command::new(&cfsctl)
    } else {
        cfsd_tests::peer::as_uid(uid, groups, cfsctl.to_str().unwrap())
    };
    command.arg("--address").arg(daemon.address());
    command
}

/// Unmounts its FUSE mount when dropped, also when a test fails.
struct FuseMounted(PathBuf);

impl Drop for FuseMounted {
    fn drop(&mut self) {
        fuse_unmount(&self.0);
    }
}

#[test]
fn a_root_fuse_mount_shows_exactly_the_files_of_the_kernel_mount() {
    let daemon = daemon_with_image(&[]);
    let kernel_dir = daemon.dir().join("kernel");
    let Some(_kernel) = mount(&daemon, "everything", &kernel_dir) else {
        return;
    };
    let baseline = held(daemon.pid());
    let dir = mountpoint(&daemon, "fuse", 0);
    let _mounted = FuseMounted(dir.clone());
    let cfsctl = fuse_mount(&daemon, "everything", 0, &[], &dir);
    assert_eq!(
        mounted_at(&dir),
        Some(("fuse.composefs".to_owned(), "cfsd".to_owned()))
    );
    // cfsctl kept no copy of the /dev/fuse: the daemon's is the last.
    assert_eq!(fuse_devices(cfsctl.child.id()), 0);
    let fuse = walk_as(0, &[], &dir);
    let kernel = walk_as(0, &[], &kernel_dir);
    assert!(kernel.len() > 20, "{}", kernel.len());
    assert_eq!(
        fuse.keys().collect::<Vec<_>>(),
        kernel.keys().collect::<Vec<_>>()
    );
    let differing: Vec<_> = kernel
        .iter()
        .filter(|(path, want)| fuse[*path] != **want)
        .map(|(path, want)| format!("{path}:\n  fuse:   {}\n  kernel: {want}", fuse[path]))
        .collect();
    assert!(differing.is_empty(), "{}", differing.join("\n"));
    // The content is really there, capabilities and all.
    assert_eq!(
        std::fs::read(dir.join("etc/shared")).unwrap(),
        b"layer 1's own shared\n"
    );
    assert_ne!(kernel["usr/bin/ping"]["xattrs"], json!({}));
    // Read-only.
    let err = std::fs::write(dir.join("etc/new"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc_erofs()));

    // The peer unmounts: cfsctl says so and exits, and the daemon keeps
    // nothing of the mount.
    fuse_unmount(&dir);
    let (status, said) = cfsctl.exits();
    assert!(status.success(), "{said}");
    assert_eq!(said, format!("Unmounted {}\n", dir.display()));
    assert_eq!(mounted_at(&dir), None);
    wait_released(daemon.pid(), baseline, RELEASE);
}

fn libc_erofs() -> i32 {
    rustix::io::Errno::ROFS.raw_os_error()
}

#[test]
fn an_admin_mounts_over_fuse_with_its_own_rights_and_sees_what_it_may() {
    let daemon = daemon_with_image(&[]);
    let kernel_dir = daemon.dir().join("kernel");
    let Some(_kernel) = mount(&daemon, "shared", &kernel_dir) else {
        return;
    };
    let baseline = held(daemon.pid());
    let dir = mountpoint(&daemon, "fuse", NOBODY);
    let _mounted = FuseMounted(dir.clone());
    let cfsctl = fuse_mount(&daemon, "shared", NOBODY, &[ADMINS], &dir);
    // Mounted by the peer, as the peer: a user FUSE mount of uid 65534.
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = table
        .lines()
        .find(|l| l.contains(&format!(" {} ", dir.display())))
        .unwrap();
    assert!(line.contains("user_id=65534"), "{line}");
    assert!(line.contains(" ro,") || line.contains(" ro "), "{line}");
    // What the admin sees there is what it sees of the kernel mount:
    // the same files, and the same ones it may not read.
    let fuse = walk_as(NOBODY, &[ADMINS], &dir);
    let kernel = walk_as(NOBODY, &[ADMINS], &kernel_dir);
    assert_eq!(fuse, kernel);
    // What it may read, it reads; what it may not, it may not.
    assert_eq!(
        std::fs::read(kernel_dir.join("usr/share/readme")).unwrap(),
        b"for everyone\n"
    );
    assert_eq!(
        fuse["usr/share/readme"]["sha256"],
        json!(sha256_hex(b"for everyone\n"))
    );
    assert_eq!(
        fuse["usr/share/big"]["sha256"],
        json!(sha256_hex(&noise(7, 300_000)))
    );
    assert_eq!(fuse["usr/share/empty"]["sha256"], json!(sha256_hex(b"")));
    assert_eq!(fuse["usr/share/link"]["target"], "readme");
    assert_eq!(
        fuse["usr/share/big"]["links"],
        json!(["usr/share/big", "usr/share/big-link"])
    );
    assert_eq!(
        fuse["usr/bin/ping"]["xattrs"]["security.capability"],
        json!(hex(&cap_net_raw()))
    );
    assert_eq!(fuse["etc/secret"]["sha256"], "error:EACCES");
    assert_eq!(
        fuse["etc/nobodys"]["sha256"],
        json!(sha256_hex(&noise(9, 1000)))
    );
    assert_eq!(fuse["etc/private"]["entries"], "error:EACCES");
    // Only its owner may enter a FUSE mount without allow_other.
    let err = std::fs::read_dir(&dir).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(rustix::io::Errno::ACCESS.raw_os_error())
    );

    // Ctrl-C: cfsctl unmounts it itself and exits.
    cfsctl.signal(rustix::process::Signal::INT);
    let (status, said) = cfsctl.exits();
    assert!(status.success(), "{said}");
    assert_eq!(mounted_at(&dir), None);
    wait_released(daemon.pid(), baseline, RELEASE);
}

#[test]
fn an_unprivileged_peer_is_refused_and_left_nothing_mounted() {
    let daemon = daemon_with_image(&[]);
    let dir = mountpoint(&daemon, "fuse", NOBODY);
    let _mounted = FuseMounted(dir.clone());
    let out = cfsctl_as(&daemon, NOBODY, &[])
        .args(["--json", "oci", "mount", "--fuse", "everything"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let error: serde_json::Value = serde_json::from_str(cfsd_tests::stdout(&out).trim()).unwrap();
    assert_eq!(error["error"], "io.cfsd.Oci.PermissionDenied", "{error}");
    assert_eq!(error["parameters"]["method"], "io.cfsd.Oci.MountFuse");
    assert_eq!(error["parameters"]["uid"], NOBODY);
    // cfsctl took its empty mount down again.
    assert_eq!(mounted_at(&dir), None);
    // The same on the wire, with a /dev/fuse really mounted.
    let mut peer = FusePeer::start(
        &daemon,
        NOBODY,
        &[],
        dir.to_str().unwrap(),
        "everything",
        "serve",
    );
    let reply = peer.said();
    assert_eq!(reply["error"], "io.cfsd.Oci.PermissionDenied", "{reply}");
    assert_eq!(held(daemon.pid()).children, 0);
    drop(peer);
    fuse_unmount(&dir);
}

fn sha256_hex(bytes: &[u8]) -> String {
    cfsd_tests::oci::sha256_digest(bytes)
        .trim_start_matches("sha256:")
        .to_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The typed error of `MountFuse` of `everything` with `fd`.
fn refusal_with(daemon: &Daemon, fd: OwnedFd) -> OciError {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut client = daemon.client().await;
        let params = MountFuseParams {
            image: "everything".into(),
        };
        match client.mount_fuse(&params, fd).await {
            Err(CallError::Interface(e)) => e,
            Err(e) => panic!("not an io.cfsd.Oci error: {e}"),
            Ok((reply, _)) => panic!("served: {reply:?}"),
        }
    })
}

#[test]
fn fds_that_are_no_mounted_fuse_device_get_typed_errors_and_the_daemon_serves_on() {
    let daemon = daemon_with_image(&[]);
    let baseline = held(daemon.pid());
    let (pipe, _writer) = rustix::pipe::pipe().unwrap();
    let file = tempfile::tempfile().unwrap();
    let fifo = daemon.dir().join("fifo");
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .unwrap();
    let fifo =
        rustix::fs::open(&fifo, rustix::fs::OFlags::RDWR, rustix::fs::Mode::empty()).unwrap();
    let (socket, _other) = std::os::unix::net::UnixStream::pair().unwrap();
    let open = |path: &str, write: bool| -> OwnedFd {
        std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(path)
            .unwrap()
            .into()
    };
    let not_fuse: [(OwnedFd, &str); 6] = [
        (pipe, "it is a pipe or FIFO"),
        (file.into(), "it is a regular file"),
        (fifo, "it is a pipe or FIFO"),
        (socket.into(), "it is a socket"),
        (
            open("/dev/null", true),
            "it is the character device 1:3, not 10:229",
        ),
        (
            open("/dev/fuse", false),
            "it is not open for reading and writing",
        ),
    ];
    for (fd, expected) in not_fuse {
        match refusal_with(&daemon, fd) {
            OciError::NotFuseDevice { reason } => assert_eq!(reason, expected),
            other => panic!("{expected}: {other:?}"),
        }
    }
    // /dev/fuse itself, never mounted.
    match refusal_with(&daemon, open("/dev/fuse", true)) {
        OciError::FuseNotMounted { reason } => {
            assert_eq!(reason, "it is not mounted, or its mount has ended")
        }
        other => panic!("{other:?}"),
    }
    // No fd at all.
    let reply = daemon.raw().call(json!({
        "method": "io.cfsd.Oci.MountFuse",
        "parameters": {"image": "everything"},
        "more": true,
    }));
    assert_eq!(reply["error"], "io.cfsd.Oci.MissingFd", "{reply}");
    // The daemon serves on, and started no server for any of them.
    ocictl::succeeds(&daemon, &["oci", "images"]);
    assert_eq!(held(daemon.pid()).children, 0);
    wait_released(daemon.pid(), baseline, RELEASE);
}

/// Wait until reading the directory `dir` fails with ENOTCONN: its FUSE
/// connection was aborted.
fn wait_aborted(dir: &Path) {
    wait_for("the FUSE connection to be aborted", RELEASE, || {
        std::fs::read_dir(dir)
            .is_err_and(|e| e.raw_os_error() == Some(rustix::io::Errno::NOTCONN.raw_os_error()))
    });
}

#[test]
fn a_peer_killed_mid_serve_has_its_mount_aborted_and_the_daemon_serves_on() {
    let daemon = daemon_with_image(&[]);
    let baseline = held(daemon.pid());
    let dir = mountpoint(&daemon, "fuse", 0);
    let _mounted = FuseMounted(dir.clone());
    let cfsctl = fuse_mount(&daemon, "shared", 0, &[], &dir);
    assert_eq!(
        std::fs::read(dir.join("usr/share/readme")).unwrap(),
        b"for everyone\n"
    );
    assert_eq!(held(daemon.pid()).children, 1, "one server process");
    cfsctl.signal(rustix::process::Signal::KILL);
    let (status, _) = cfsctl.exits();
    assert!(!status.success());
    wait_aborted(&dir);
    let err = std::fs::read(dir.join("usr/share/readme")).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(rustix::io::Errno::NOTCONN.raw_os_error())
    );
    wait_released(daemon.pid(), baseline, RELEASE);
    ocictl::succeeds(&daemon, &["oci", "images"]);
    // The dead mount is the peer's to take down.
    fuse_unmount(&dir);
    assert_eq!(mounted_at(&dir), None);
}

#[test]
fn a_peer_that_hangs_up_before_its_mount_is_served_leaves_it_aborted() {
    let daemon = daemon_with_image(&[]);
    let baseline = held(daemon.pid());
    let dir = mountpoint(&daemon, "fuse", 0);
    let _mounted = FuseMounted(dir.clone());
    let mut peer = FusePeer::start(
        &daemon,
        0,
        &[],
        dir.to_str().unwrap(),
        "everything",
        "hangup",
    );
    assert_eq!(peer.said(), "hung up");
    assert_eq!(
        mounted_at(&dir),
        Some(("fuse.composefs".to_owned(), "cfsd".to_owned()))
    );
    wait_aborted(&dir);
    wait_released(daemon.pid(), baseline, RELEASE);
    ocictl::succeeds(&daemon, &["oci", "images"]);
}

#[test]
fn gc_keeps_an_image_served_over_fuse_and_collects_it_once_unmounted() {
    let daemon = daemon_with_image(&[]);
    let dir = mountpoint(&daemon, "fuse", 0);
    let _mounted = FuseMounted(dir.clone());
    let cfsctl = fuse_mount(&daemon, "shared", 0, &[], &dir);
    ocictl::succeeds(&daemon, &["oci", "untag", "shared"]);
    // The untagged image's OCI streams go; its EROFS and files stay, and
    // a file never opened before is read from its object now.
    ocictl::succeeds(&daemon, &["gc"]);
    let objects = object_count(&daemon.repo());
    assert_eq!(
        std::fs::read(dir.join("usr/share/big")).unwrap(),
        noise(7, 300_000)
    );
    ocictl::succeeds(&daemon, &["gc"]);
    assert_eq!(
        object_count(&daemon.repo()),
        objects,
        "GC kept the served image"
    );
    fuse_unmount(&dir);
    let (status, said) = cfsctl.exits();
    assert!(status.success(), "{said}");
    ocictl::succeeds(&daemon, &["gc"]);
    assert!(
        object_count(&daemon.repo()) < objects,
        "the image was collected once unmounted"
    );
}

/// `cfsctl --json oci mount --fuse IMAGE DIR` as the admin, which fails:
/// its error line.
fn admin_refusal(daemon: &Daemon, image: &str, dir: &Path) -> serde_json::Value {
    let out = cfsctl_as(daemon, NOBODY, &[ADMINS])
        .args(["--json", "oci", "mount", "--fuse", image])
        .arg(dir)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", stderr(&out));
    serde_json::from_str(cfsd_tests::stdout(&out).trim()).unwrap()
}

#[test]
fn a_missing_image_is_a_typed_error_and_nothing_stays_mounted() {
    let daemon = daemon_with_image(&[]);
    let dir = mountpoint(&daemon, "fuse", NOBODY);
    let _mounted = FuseMounted(dir.clone());
    let error = admin_refusal(&daemon, "nosuch", &dir);
    assert_eq!(error["error"], "io.cfsd.Oci.ImageNotFound", "{error}");
    assert_eq!(error["parameters"]["image"], "nosuch");
    assert_eq!(mounted_at(&dir), None);
    assert_eq!(held(daemon.pid()).children, 0);
}

#[test]
fn fuse_mounts_past_the_limit_get_a_typed_error() {
    let daemon = daemon_with_image(&["--max-fuse-mounts", "1"]);
    let first = mountpoint(&daemon, "first", 0);
    let _first_mounted = FuseMounted(first.clone());
    let cfsctl = fuse_mount(&daemon, "everything", 0, &[], &first);
    let second = mountpoint(&daemon, "second", NOBODY);
    let _second_mounted = FuseMounted(second.clone());
    let error = admin_refusal(&daemon, "shared", &second);
    assert_eq!(error["error"], "io.cfsd.Oci.TooManyFuseMounts", "{error}");
    assert_eq!(error["parameters"]["limit"], 1);
    assert_eq!(mounted_at(&second), None);
    // Once the first is unmounted, its place is free again.
    fuse_unmount(&first);
    let (status, said) = cfsctl.exits();
    assert!(status.success(), "{said}");
    let again = fuse_mount(&daemon, "shared", NOBODY, &[ADMINS], &second);
    fuse_unmount(&second);
    let (status, said) = again.exits();
    assert!(status.success(), "{said}");
}

/// How many fds of process `pid` are `/dev/fuse`.
fn fuse_devices(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.unwrap().path()).ok())
        .filter(|target| target == Path::new("/dev/fuse"))
        .count()
}

#[test]
fn a_daemon_that_dies_takes_its_fuse_servers_and_their_mounts_with_it() {
    let mut daemon = daemon_with_image(&[]);
    let dir = mountpoint(&daemon, "fuse", 0);
    let _mounted = FuseMounted(dir.clone());
    let cfsctl = fuse_mount(&daemon, "shared", 0, &[], &dir);
    let servers = children(daemon.pid());
    assert_eq!(servers.len(), 1, "one server process");
    assert_eq!(
        std::fs::read(dir.join("usr/share/readme")).unwrap(),
        b"for everyone\n"
    );
    daemon.kill();
    wait_aborted(&dir);
    let (status, said) = cfsctl.exits();
    assert!(!status.success());
    assert!(said.contains("the daemon stopped serving"), "{said}");
    // No server outlives its daemon.
    for pid in servers {
        wait_for("the server to exit", RELEASE, || {
            !Path::new(&format!("/proc/{pid}")).exists()
        });
    }
}

#[test]
fn upstream_cfsctls_fuse_mount_shows_the_same_files_as_ours() {
    let daemon = daemon_with_image(&[]);
    let ours_dir = mountpoint(&daemon, "ours", 0);
    let _ours_mounted = FuseMounted(ours_dir.clone());
    let cfsctl = fuse_mount(&daemon, "everything", 0, &[], &ours_dir);
    let theirs_dir = mountpoint(&daemon, "theirs", 0);
    let _theirs_mounted = FuseMounted(theirs_dir.clone());
    let mut upstream = Command::new(cfsd_tests::upstream::upstream())
        .arg("--repo")
        .arg(daemon.repo())
        .args([
            "oci",
            "mount",
            "--fuse",
            "yes",
            "--foreground",
            "everything",
        ])
        .arg(&theirs_dir)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    // Upstream puts an overlay over its FUSE mount, or not, by kernel.
    while mounted_at(&theirs_dir).is_none() {
        if let Some(status) = upstream.try_wait().unwrap() {
            let mut said = String::new();
            let _ = std::io::Read::read_to_string(upstream.stderr.as_mut().unwrap(), &mut said);
            panic!("upstream cfsctl exited ({status}) without mounting: {said}");
        }
        assert!(
            start.elapsed() < RELEASE,
            "upstream's FUSE mount: not within {RELEASE:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let theirs = walk_as(0, &[], &theirs_dir);
    let ours = walk_as(0, &[], &ours_dir);
    assert!(ours.len() > 20, "{}", ours.len());
    let differing: Vec<_> = theirs
        .iter()
        .filter(|(path, want)| ours.get(*path) != Some(*want))
        .map(|(path, want)| format!("{path}:\n  ours:   {:?}\n  theirs: {want}", ours.get(path)))
        .collect();
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>()
    );
    // Every file equal but one: upstream 0.9.4 cannot read an empty
    // file (ENOTSUP from its overlay over FUSE; EIO from composefs-fuse
    // alone), which ours, as the kernel mount, shows empty.
    assert_eq!(differing.len(), 1, "{}", differing.join("\n"));
    assert_eq!(theirs["etc/empty"]["sha256"], "error:ENOTSUP");
    assert_eq!(ours["etc/empty"]["sha256"], json!(sha256_hex(b"")));
    fuse_unmount(&theirs_dir);
    let _ = upstream.wait();
    fuse_unmount(&ours_dir);
    let (status, said) = cfsctl.exits();
    assert!(status.success(), "{said}");
}
