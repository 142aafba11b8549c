//! GC and the kernel's mount tables (issue #19, item 7): mount points
//! whose names are not UTF-8, in the daemon's namespace and in others,
//! and tables far larger than any real one. GC must succeed, keep every
//! image a mount serves in any namespace, and read the tables in bounded
//! memory. Needs root (mounts and `unshare -m`).

use std::{
    ffi::OsStr,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use cfsd_tests::{
    Daemon, bin,
    oci::{Compression, Layout, Written, small_image},
    ocictl::{json, pull, succeeds},
    status_kib, stderr,
};

/// Unmounts its directory when dropped, also when a test fails.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

/// A process kept alive in a mount namespace of its own; killed (and its
/// namespace with it) when dropped.
struct Namespace(Child);

impl Namespace {
    /// Run `script` (sh, with `args` as `$1`...) in a new private mount
    /// namespace, after `enter` (`nsenter` arguments, to start from
    /// another namespace). The script must create `$READY` once set up and
    /// then `exec sleep`.
    fn start(enter: &[&str], script: &str, args: &[&OsStr], ready: &Path) -> Self {
        let mut command = match enter {
            [] => Command::new("unshare"),
            _ => {
                let mut c = Command::new("nsenter");
                c.args(enter).arg("unshare");
                c
            }
        };
        command
            .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
            .args(args)
            .env("READY", ready)
            .stdin(Stdio::null());
        let mut namespace = Namespace(command.spawn().expect("unshare"));
        let deadline = Instant::now() + Duration::from_secs(120);
        while !ready.exists() {
            if let Some(status) = namespace.0.try_wait().unwrap() {
                panic!("the namespace's script failed: {status}");
            }
            assert!(Instant::now() < deadline, "the namespace never got ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        namespace
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A directory `parent/<name>` named by raw bytes.
fn dir(parent: &Path, name: &[u8]) -> PathBuf {
    let path = parent.join(OsStr::from_bytes(name));
    std::fs::create_dir_all(&path).unwrap();
    path
}

/// A daemon holding one image tagged `img`; its `images/<id>` file.
fn daemon_with_image() -> (Daemon, PathBuf) {
    let daemon = Daemon::start_initialised(&[]);
    let (layout, _) = Layout::single(&small_image(Compression::Gzip, "mounted"), None);
    pull(&daemon, &[&Written::new(&layout).oci(None), "img"]);
    let id = json(&daemon, &["oci", "inspect", "img"])["imageId"]
        .as_str()
        .unwrap()
        .to_owned();
    let image = daemon.repo().join("images").join(id);
    assert!(image.exists());
    (daemon, image)
}

/// Mount the image `img` at `mountpoint` inside the mount namespace of
/// `pid`, with cfsctl run there.
fn mount_in(daemon: &Daemon, pid: u32, mountpoint: &Path) {
    let out = Command::new("nsenter")
        .arg(format!("--target={pid}"))
        .arg("-m")
        .arg(bin("cfsctl"))
        .arg("--address")
        .arg(daemon.address())
        .args(["oci", "mount", "img"])
        .arg(mountpoint)
        .output()
        .unwrap();
    assert!(out.status.success(), "mount: {}", stderr(&out));
}

/// A collecting GC, which must succeed.
fn gc(daemon: &Daemon) {
    let report = json(daemon, &["gc"]);
    eprintln!("gc: {report}");
}

#[test]
fn gc_reads_mount_points_that_are_not_utf8_and_keeps_what_they_serve() {
    let (daemon, image) = daemon_with_image();
    let scratch = tempfile::tempdir().unwrap();
    let source = dir(scratch.path(), b"source");

    // In the daemon's own namespace: before, every GC failed here.
    let here = dir(scratch.path(), b"here-\xff\xfe");
    rustix::mount::mount_bind(&source, &here).unwrap();
    let _here = Mounted(here);
    succeeds(&daemon, &["gc", "--dry-run"]);

    // In another namespace, which also mounts the image.
    let there = dir(scratch.path(), b"there-\x80 \\ \xc3");
    let mountpoint = dir(scratch.path(), b"mnt");
    let ready = scratch.path().join("ready");
    let namespace = Namespace::start(
        &[],
        "mount --bind \"$1\" \"$2\" && : > \"$READY\" && exec sleep 1000",
        &[source.as_os_str(), there.as_os_str()],
        &ready,
    );
    let pid = namespace.pid().to_string();
    mount_in(&daemon, namespace.pid(), &mountpoint);
    let table = std::fs::read(format!("/proc/{pid}/mountinfo")).unwrap();
    assert!(
        table.windows(9).any(|w| w == b"\x80\\040\\134"),
        "the namespace's table has no escaped non-UTF-8 name"
    );

    // No tag names the image now: only the mount in the other namespace
    // keeps it. Before, that namespace's table failed to read as UTF-8
    // and was skipped, and GC removed the mounted image.
    succeeds(&daemon, &["oci", "untag", "img"]);
    gc(&daemon);
    assert!(image.exists(), "GC removed an image mounted in a namespace");
    drop(namespace);
    gc(&daemon);
    assert!(!image.exists(), "the image outlived its mount's namespace");
}

/// 5,000 bind mounts at 4,000-byte paths, in four namespaces: 160 MB of
/// mount tables, which before every GC read into memory at once. Now GC
/// streams them, stops at its budget (64 MiB), and then keeps every image
/// as if it were mounted, among them the one mounted in the last
/// namespace, which it never reached; the daemon's peak memory hardly
/// moves. Once the namespaces are gone, GC collects the image.
#[test]
fn gc_streams_mount_tables_in_bounded_memory() {
    let (daemon, image) = daemon_with_image();
    let scratch = tempfile::tempdir().unwrap();
    let mut long = scratch.path().to_owned();
    while long.as_os_str().len() < 3_900 {
        long = dir(&long, &[b'd'; 200]);
    }
    let ready = |n: usize| scratch.path().join(format!("ready{n}"));
    let first = Namespace::start(
        &[],
        "cd \"$1\" && i=0 && while [ $i -lt 5000 ]; do mount --bind . . || exit 1; \
         i=$((i+1)); done && : > \"$READY\" && exec sleep 1000",
        &[long.as_os_str()],
        &ready(0),
    );
    let target = format!("--target={}", first.pid());
    let copies: Vec<Namespace> = (1..4)
        .map(|n| {
            let enter = [target.as_str(), "-m"];
            Namespace::start(&enter, ": > \"$READY\" && exec sleep 1000", &[], &ready(n))
        })
        .collect();
    let last = copies.last().unwrap().pid();
    let mountpoint = dir(scratch.path(), b"mnt");
    mount_in(&daemon, last, &mountpoint);
    let reading = Instant::now();
    let table = std::fs::read(format!("/proc/{last}/mountinfo")).unwrap();
    let lines = table.split(|&b| b == b'\n').count();
    eprintln!(
        "the last namespace's table: {} bytes, {lines} lines, read in {:?}",
        table.len(),
        reading.elapsed()
    );
    assert!(lines > 5_000 && table.len() > 32 << 20, "{lines} lines");
    drop(table);

    succeeds(&daemon, &["oci", "untag", "img"]);
    let before = status_kib(daemon.pid(), "VmHWM");
    let started = Instant::now();
    succeeds(&daemon, &["gc", "--dry-run"]);
    eprintln!("a dry-run GC took {:?}", started.elapsed());
    gc(&daemon);
    let grown = status_kib(daemon.pid(), "VmHWM").saturating_sub(before);
    eprintln!("peak memory grew by {grown} KiB");
    assert!(grown < 16 << 10, "GC's peak memory grew by {grown} KiB");
    assert!(image.exists(), "GC removed an image mounted in a namespace");
    drop(copies);
    drop(first);
    gc(&daemon);
    assert!(!image.exists(), "the image outlived its mount's namespace");
}
