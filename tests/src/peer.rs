//! Acting as another local user, so that the daemon judges the peer by
//! real socket credentials: commands run as another uid through
//! `setpriv`, raw varlink calls made from such a process, and calls that
//! hand the daemon fds the peer opened with its own rights, as a hostile
//! peer would. Replies come back as raw JSON, typed error names included.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{Daemon, bin, stderr, stdout};

/// The unprivileged user and group the peers run as.
pub const NOBODY: u32 = 65534;

/// `setpriv` running `program` as nobody, with `groups` as its
/// supplementary groups (none when empty).
pub fn as_nobody(groups: &[u32], program: &str) -> Command {
    as_uid(NOBODY, groups, program)
}

/// `setpriv` running `program` as `uid` (group nobody, so that it may
/// reach a socket made for nobody), with `groups` as its supplementary
/// groups.
pub fn as_uid(uid: u32, groups: &[u32], program: &str) -> Command {
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={NOBODY}"));
    if groups.is_empty() {
        command.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        command.arg(format!("--groups={}", list.join(",")));
    }
    command.arg(program);
    command
}

/// Opens `argv[2]` as the peer (a directory for transport `oci`), sends
/// `argv[3]` as a call with that fd over the socket `argv[1]`, and
/// prints the final reply. With argv[2] `-`, no fd is sent. Started as
/// root with argv[4] `UID:GID[,GROUP...]`, it opens the path first and
/// then becomes that peer, as one that got the fd elsewhere. With
/// `CFSD_TEST_PAUSE` set it prints `opened` and waits for a line on its
/// stdin before it connects; with `CFSD_TEST_HOLD`, it keeps the
/// connection after the reply until its stdin closes.
const CALL_WITH_FD: &str = r#"
import json, os, socket, sys
path, call = sys.argv[2], json.loads(sys.argv[3])
fds = []
if path != "-":
    flags = os.O_RDONLY | (os.O_DIRECTORY if call["parameters"].get("transport") == "oci" else 0)
    fds = [os.open(path, flags)]
if len(sys.argv) > 4:
    uid, groups = sys.argv[4].split(":")
    groups = [int(g) for g in groups.split(",")]
    os.setgroups(groups[1:])
    os.setgid(groups[0])
    os.setuid(int(uid))
if os.environ.get("CFSD_TEST_PAUSE"):
    print("opened", flush=True)
    sys.stdin.readline()
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
socket.send_fds(s, [json.dumps(call).encode() + b"\0"], fds)
buf = b""
while True:
    while b"\0" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            sys.exit("the daemon closed the connection")
        buf += chunk
    reply, buf = buf.split(b"\0", 1)
    if not json.loads(reply).get("continues"):
        print(reply.decode(), flush=True)
        break
if os.environ.get("CFSD_TEST_HOLD"):
    sys.stdin.read()
"#;

/// The command that makes `call` as `uid` with the fd of `path` (see
/// [`CALL_WITH_FD`]); spawn it or wait for its output.
pub fn call_with_fd(
    daemon: &Daemon,
    uid: u32,
    groups: &[u32],
    path: &str,
    call: &Value,
) -> Command {
    // The system interpreter: a per-user one is out of nobody's reach.
    let mut command = as_uid(uid, groups, "/usr/bin/python3");
    command
        .arg("-c")
        .arg(CALL_WITH_FD)
        .arg(daemon.socket())
        .arg(path)
        .arg(call.to_string());
    command
}

/// Make `call` as `uid` with the fd of `path`, and return its reply.
pub fn reply_with_fd(daemon: &Daemon, uid: u32, groups: &[u32], path: &str, call: &Value) -> Value {
    let out = call_with_fd(daemon, uid, groups, path, call)
        .output()
        .expect("running python3 under setpriv");
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    serde_json::from_str(stdout(&out).trim()).unwrap()
}

/// A `Pull` call of `transport` tagged `tag`.
pub fn pull_call(transport: &str, tag: &str) -> Value {
    serde_json::json!({"method": "io.cfsd.Oci.Pull",
        "parameters": {"transport": transport, "tag": tag}})
}

/// [`spawn_call_with_fd`], but the fd is opened as root before the
/// process becomes `uid` (group nobody, plus `groups`) and connects;
/// with `pause`, it waits for a line on its stdin before connecting.
pub fn spawn_call_with_root_fd(
    daemon: &Daemon,
    (uid, groups): (u32, &[u32]),
    path: &str,
    call: &Value,
    pause: bool,
) -> Child {
    root_python(daemon, (uid, groups), path, call)
        .envs(pause.then_some(("CFSD_TEST_PAUSE", "1")))
        .spawn()
        .expect("spawning python3")
}

/// A client of `uid` that makes `call` (no fd) and keeps its connection
/// after the reply until its stdin is closed.
pub fn spawn_holding_call(daemon: &Daemon, uid: u32, call: &Value) -> Child {
    root_python(daemon, (uid, &[]), "-", call)
        .env("CFSD_TEST_HOLD", "1")
        .spawn()
        .expect("spawning python3")
}

/// [`CALL_WITH_FD`] started as root, to become `uid` itself.
fn root_python(daemon: &Daemon, (uid, groups): (u32, &[u32]), path: &str, call: &Value) -> Command {
    let mut ids = vec![NOBODY.to_string()];
    ids.extend(groups.iter().map(u32::to_string));
    let mut command = Command::new("/usr/bin/python3");
    command
        .arg("-c")
        .arg(CALL_WITH_FD)
        .arg(daemon.socket())
        .arg(path)
        .arg(call.to_string())
        .arg(format!("{uid}:{}", ids.join(",")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// [`call_with_fd`], spawned with its output piped.
pub fn spawn_call_with_fd(
    daemon: &Daemon,
    uid: u32,
    groups: &[u32],
    path: &str,
    call: &Value,
) -> Child {
    call_with_fd(daemon, uid, groups, path, call)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning python3 under setpriv")
}

/// The threads of process `pid` that are inside system call `nr` now
/// (from `/proc/PID/task/*/syscall`): 437 is openat2, 17 pread64, 0 read
/// on x86-64.
pub fn threads_in_syscall(pid: u32, nr: &[u64]) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter(|task| {
            std::fs::read_to_string(task.path().join("syscall"))
                .ok()
                .and_then(|s| s.split(' ').next()?.trim().parse::<u64>().ok())
                .is_some_and(|n| nr.contains(&n))
        })
        .count()
}

/// The number of threads of process `pid`.
pub fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// Make `dir` and every directory above it up to `/` searchable by all,
/// so that a peer running as nobody can reach what a test wrote there.
pub fn open_path_to(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for d in dir.ancestors() {
        let Ok(md) = std::fs::metadata(d) else {
            continue;
        };
        let mode = md.permissions().mode();
        if mode & 0o011 != 0o011 {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o011)).unwrap();
        }
    }
}

/// Make raw calls as nobody, with `groups`, over ONE connection to
/// `daemon`, and return every reply.
pub fn raw_calls_as(daemon: &Daemon, groups: &[u32], calls: &[Value]) -> Vec<Value> {
    raw_calls_at(&daemon.socket(), groups, calls)
}

/// [`raw_calls_as`] to the socket at `socket`.
pub fn raw_calls_at(socket: &std::path::Path, groups: &[u32], calls: &[Value]) -> Vec<Value> {
    let script = r#"
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
buf = b""
for call in sys.argv[2:]:
    s.sendall(call.encode() + b"\0")
    while b"\0" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            sys.exit("the daemon closed the connection")
        buf += chunk
    reply, buf = buf.split(b"\0", 1)
    print(reply.decode(), flush=True)
"#;
    // The system interpreter: a per-user one (pyenv under /root) is out
    // of nobody's reach, and only the standard library is needed.
    let out = as_nobody(groups, "/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .arg(socket)
        .args(calls.iter().map(Value::to_string))
        .output()
        .expect("running python3 under setpriv");
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    stdout(&out)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// What opening `path` for reading as nobody gives: `"ok"` and the first
/// bytes read, or the errno's name (`"EACCES"`).
pub fn open_as_nobody(path: &std::path::Path) -> String {
    let script = r#"
import errno, os, sys
try:
    fd = os.open(sys.argv[1], os.O_RDONLY)
    print("ok", os.read(fd, 4).hex())
except OSError as e:
    print(errno.errorcode[e.errno])
"#;
    let out = as_nobody(&[], "/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .arg(path)
        .output()
        .expect("running python3 under setpriv");
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().to_owned()
}

/// A cfsd run as nobody, killed when dropped.
#[derive(Debug)]
pub struct NobodysDaemon {
    child: Child,
    /// Its socket.
    pub socket: PathBuf,
}

impl Drop for NobodysDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start cfsd as nobody in a directory of nobody's under `scratch`, on
/// a repository that does not exist yet.
pub fn start_as_nobody(scratch: &Path) -> (PathBuf, NobodysDaemon) {
    std::fs::set_permissions(scratch, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = scratch.join("nobody");
    std::fs::create_dir(&dir).unwrap();
    let owner = Some(rustix::fs::Uid::from_raw(NOBODY));
    rustix::fs::chown(&dir, owner, None).unwrap();
    let cfsd = dir.join("cfsd");
    std::fs::copy(bin("cfsd"), &cfsd).unwrap();
    let socket = dir.join("cfsd.sock");
    let child = as_nobody(&[], cfsd.to_str().unwrap())
        .arg("--repo")
        .arg(dir.join("repo"))
        .arg("--address")
        .arg(format!("unix:{}", socket.display()))
        .spawn()
        .expect("starting cfsd as nobody");
    let mut daemon = NobodysDaemon { child, socket };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !daemon.socket.exists() {
        assert!(Instant::now() < deadline, "cfsd did not listen");
        assert!(daemon.child.try_wait().unwrap().is_none(), "cfsd exited");
        std::thread::sleep(Duration::from_millis(20));
    }
    (dir, daemon)
}

/// The reply `child` (a call made by [`spawn_call_with_fd`] or the like)
/// prints, which must come within `limit`: a daemon that waited on a
/// FIFO or a stalled FUSE read would never answer. Kills the child and
/// fails past the limit.
pub fn reply_within(child: Child, limit: std::time::Duration) -> Value {
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output());
    let deadline = std::time::Instant::now() + limit;
    while !waiter.is_finished() {
        if std::time::Instant::now() > deadline {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            panic!("no reply within {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = waiter.join().unwrap().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{e}: {text}{}", String::from_utf8_lossy(&out.stderr)))
}
