//! Acting as another local user: commands run as nobody through
//! `setpriv`, and raw varlink calls made from such a process, so that the
//! daemon judges the peer by real socket credentials.

use std::process::Command;

use serde_json::Value;

use crate::{Daemon, stderr, stdout};

/// The unprivileged user and group the peers run as.
pub const NOBODY: u32 = 65534;

/// `setpriv` running `program` as nobody, with `groups` as its
/// supplementary groups (none when empty).
pub fn as_nobody(groups: &[u32], program: &str) -> Command {
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--reuid={NOBODY}"))
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
