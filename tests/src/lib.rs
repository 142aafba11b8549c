//! Helpers for the integration tests: start real `cfsd` processes, run the
//! real `cfsctl`, and speak raw varlink to check the wire itself.

pub mod chunked;
pub mod crash;
pub mod delta;
pub mod fuse;
pub mod fuse_peer;
pub mod hangup;
pub mod loop_fs;
pub mod mounted;
pub mod oci;
pub mod oci_delta_fixture;
pub mod ocictl;
pub mod peer;
pub mod pipe_client;
pub mod plain_tree;
pub mod referrers;
pub mod registry;
pub mod registry_delta_fixture;
pub mod repo_files;
pub mod signing;
pub mod stall;
pub mod stalled;
pub mod upstream;

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use cfsd_varlink::{Address, Client};
use serde_json::Value;
use tempfile::TempDir;

/// A binary of this workspace, built next to the test executables.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps")
        .join(name);
    assert!(
        path.exists(),
        "{} is not built: run the tests with `cargo nextest run --workspace`",
        path.display()
    );
    path
}

/// Whether every one of `tools` is on PATH.
pub fn installed(tools: &[&str]) -> bool {
    tools.iter().all(|tool| {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Give up on a test whose precondition this machine lacks (a kernel
/// that refuses mounts, say). Skipping is a failure unless
/// `CFSD_TEST_ALLOW_SKIP=1` is set, so that a machine without erofs cannot
/// pass the tests that need it by quietly returning early: nextest hides
/// what passing tests print.
pub fn skip(reason: &str) {
    let allowed = std::env::var_os("CFSD_TEST_ALLOW_SKIP").is_some_and(|v| v == "1");
    assert!(
        allowed,
        "this test cannot run here: {reason} (set CFSD_TEST_ALLOW_SKIP=1 to let it skip)"
    );
    eprintln!("SKIPPED (CFSD_TEST_ALLOW_SKIP=1): {reason}");
}

/// Whether the filesystem holding `dir` can seal a file with fs-verity,
/// as Debian's `fsverity enable` finds: the oracle for what a repository
/// created there must report, independent of cfsd's own probe.
pub fn filesystem_has_verity(dir: &Path) -> bool {
    let file = tempfile::NamedTempFile::new_in(dir).expect("a file to probe fs-verity with");
    std::fs::write(file.path(), b"probe").unwrap();
    let out = Command::new("fsverity")
        .arg("enable")
        .arg(file.path())
        .output()
        .expect("running fsverity (Debian package fsverity; scripts/setup-deps installs it)");
    out.status.success()
}

/// Attach at `dir` a mount that `io.cfsd.Oci.Mount` handed out detached,
/// as cfsctl does in its own mount namespace.
pub fn attach_mount(detached: &std::os::fd::OwnedFd, dir: &Path) {
    use std::os::fd::AsFd;
    rustix::mount::move_mount(
        detached.as_fd(),
        "",
        rustix::fs::CWD,
        dir,
        rustix::mount::MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .expect("attaching the handed-out mount");
}

/// A running `cfsd` serving a fresh repository directory on its own
/// socket. It is killed when dropped.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    dir: TempDir,
    args: Vec<String>,
    /// A program cfsd runs under, with its arguments (e.g. strace).
    wrapper: Vec<String>,
}

impl Daemon {
    /// Start cfsd on a socket in a new temporary directory, with `args`
    /// added to its command line. The repository is not initialised.
    pub fn start(args: &[&str]) -> Self {
        Self::start_under(&[], args)
    }

    /// Start cfsd as [`Daemon::start`] does, but as an argument of the
    /// program `wrapper` (its first item; the rest are its arguments).
    pub fn start_under(wrapper: &[&str], args: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cfsd-test")
            .tempdir()
            .unwrap();
        let owned = |list: &[&str]| list.iter().map(|a| (*a).to_owned()).collect();
        let mut daemon = Daemon {
            child: None,
            dir,
            args: owned(args),
            wrapper: owned(wrapper),
        };
        daemon.spawn();
        daemon
    }

    fn spawn(&mut self) {
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(bin("cfsd"));
                command
            }
            None => Command::new(bin("cfsd")),
        };
        let child = command
            .arg("--repo")
            .arg(self.repo())
            .arg("--address")
            .arg(self.address())
            .args(&self.args)
            .env("CFSD_LOG", "debug")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawning cfsd");
        self.child = Some(child);
        self.wait_for_socket();
    }

    /// SIGKILL the daemon, wait for it, and start a new one on the same
    /// repository and socket with the same arguments: what a crash and a
    /// restart leave.
    pub fn kill_and_restart(&mut self) {
        self.kill();
        self.restart();
    }

    /// SIGKILL the daemon and wait for it to die.
    pub fn kill(&mut self) {
        let status = self.stop_with(rustix::process::Signal::KILL, Duration::from_secs(20));
        assert!(!status.success(), "cfsd survived SIGKILL: {status}");
    }

    /// Start a new daemon on the same repository and socket, after
    /// [`Daemon::kill`].
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// Start cfsd and initialise its repository through `cfsctl init`.
    pub fn start_initialised(args: &[&str]) -> Self {
        let daemon = Self::start(args);
        let out = daemon.cfsctl(&["init"]);
        assert!(out.status.success(), "init failed: {}", stderr(&out));
        daemon
    }

    /// Start cfsd on a socket that the group `nogroup` (65534) may
    /// connect to, for clients run as nobody, with `args` added.
    pub fn start_for_nobody(args: &[&str]) -> Self {
        let mut all = vec!["--socket-group", "65534"];
        all.extend_from_slice(args);
        let daemon = Self::start(&all);
        // Let nobody reach the socket inside the test's private directory.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(daemon.dir(), std::fs::Permissions::from_mode(0o711)).unwrap();
        daemon
    }

    /// The scratch directory holding the socket and the repository.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The repository directory.
    pub fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    /// The socket path.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("cfsd.sock")
    }

    /// The socket as a varlink address.
    pub fn address(&self) -> String {
        format!("unix:{}", self.socket().display())
    }

    /// A typed client connected to this daemon.
    pub async fn client(&self) -> Client {
        Client::connect(&Address::Unix(self.socket()))
            .await
            .expect("connecting")
    }

    /// A raw varlink connection to this daemon.
    pub fn raw(&self) -> RawConnection {
        RawConnection::connect(&self.socket())
    }

    /// Run `cfsctl --address <this daemon> ARGS`.
    pub fn cfsctl(&self, args: &[&str]) -> Output {
        Command::new(bin("cfsctl"))
            .arg("--address")
            .arg(self.address())
            .args(args)
            .output()
            .expect("running cfsctl")
    }

    /// The daemon process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Whether the daemon holds `file` open now.
    pub fn has_open(&self, file: &Path) -> bool {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{}/fd", self.pid())) else {
            return false;
        };
        fds.flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == file))
    }

    /// Send `signal` and wait for the daemon to exit, at most `timeout`.
    pub fn stop_with(&mut self, signal: rustix::process::Signal, timeout: Duration) -> ExitStatus {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).unwrap();
        rustix::process::kill_process(pid, signal).expect("signalling cfsd");
        self.wait(timeout).expect("cfsd did not exit in time")
    }

    /// Wait at most `timeout` for the daemon to exit by itself.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn wait_for_socket(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if UnixStream::connect(self.socket()).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("cfsd exited before listening: {status}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("cfsd did not create {}", self.socket().display());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A field of `/proc/PID/status` (`VmHWM`, `VmRSS`, ...), in KiB.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Run cfsctl with `args` and nothing else.
pub fn cfsctl(args: &[&str]) -> Output {
    Command::new(bin("cfsctl"))
        .args(args)
        .output()
        .expect("running cfsctl")
}

/// A command's standard output as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A command's standard error as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A varlink connection that sends and reads raw messages, for checking
/// what the daemon does with exactly these bytes.
#[derive(Debug)]
pub struct RawConnection {
    reader: BufReader<UnixStream>,
}

impl RawConnection {
    /// Connect to the socket at `path`.
    pub fn connect(path: &Path) -> Self {
        Self::from_stream(UnixStream::connect(path).expect("connecting"))
    }

    /// Use an already connected socket.
    pub fn from_stream(stream: UnixStream) -> Self {
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        RawConnection {
            reader: BufReader::new(stream),
        }
    }

    /// Send `bytes` followed by the NUL that ends a message.
    pub fn send_bytes(&mut self, bytes: &[u8]) {
        let stream = self.reader.get_mut();
        stream.write_all(bytes).unwrap();
        stream.write_all(b"\0").unwrap();
    }

    /// Send `bytes` and the ending NUL as a message the daemon may refuse,
    /// and hang up on, before it has all of it: a closed pipe is expected.
    pub fn send_refusable(&mut self, bytes: &[u8]) {
        let mut message = bytes.to_vec();
        message.push(0);
        match self.reader.get_mut().write_all(&message) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            Err(e) => panic!("sending a message failed: {e}"),
        }
    }

    /// Read one message; `None` when the daemon closed the connection.
    pub fn receive(&mut self) -> Option<Value> {
        let mut message = Vec::new();
        let n = self.reader.read_until(0, &mut message).ok()?;
        if n == 0 || message.last() != Some(&0) {
            return None;
        }
        message.pop();
        Some(serde_json::from_slice(&message).expect("the daemon sent invalid JSON"))
    }

    /// Whether a reply has arrived that was not read yet, without waiting.
    pub fn has_reply_waiting(&mut self) -> bool {
        if !self.reader.buffer().is_empty() {
            return true;
        }
        let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
        let mut byte = [0u8; 1];
        matches!(rustix::net::recv(self.reader.get_ref(), &mut byte, flags), Ok((_, n)) if n > 0)
    }

    /// Send `call` and read its one reply.
    pub fn call(&mut self, call: Value) -> Value {
        self.send_bytes(call.to_string().as_bytes());
        self.receive()
            .expect("connection closed instead of a reply")
    }
}

/// The regular members of the tar at `path`, by name, with their bytes
/// (directories left out).
pub fn tar_members(path: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    use std::io::Read;
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    let mut out = std::collections::BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        if !name.ends_with('/') {
            out.insert(name, bytes);
        }
    }
    out
}

/// Wait until `done`, polling, and return how long that took; fail
/// naming `what` if it takes `limit` or more.
pub fn wait_for(what: &str, limit: Duration, done: impl Fn() -> bool) -> Duration {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}
