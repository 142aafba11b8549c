//! Clients of the methods that write output: one of those that hand back
//! a pipe (`Dump`, `ExportLayer`) which reads all of it, stalls, or hangs
//! up, and one of those that write into a file the caller passes
//! (`Export`, `CreateDelta`). What a careless or hostile reader does to
//! the daemon's writing end.

use std::{
    path::Path,
    process::{Child, Output, Stdio},
};

use serde_json::Value;

use crate::{Daemon, peer::as_nobody};

/// Makes the call `argv[2]` (with "more") and takes the pipe of its first
/// reply; then, as `argv[4]` says, reads all of it (`read-all`), reads
/// `argv[3]` bytes and then nothing more (`stall`), or reads them and
/// closes everything (`hang-up`); prints the last reply, if it waited for
/// one.
const PIPE_CLIENT: &str = r#"
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
# A daemon that never answers fails the test rather than hanging it.
s.settimeout(60)
s.sendall(sys.argv[2].encode() + b"\0")
msg, fds, _, _ = socket.recv_fds(s, 65536, 1)
assert msg.endswith(b"\0") and json.loads(msg[:-1]).get("continues"), msg
pipe = fds[0]
if sys.argv[4] == "read-all":
    while os.read(pipe, 1 << 16):
        pass
else:
    os.read(pipe, int(sys.argv[3]))
if sys.argv[4] == "hang-up":
    os.close(pipe)
    s.close()
    sys.exit(0)
"#;

/// Waits on the connection `s` for the last reply and prints it.
const LAST_REPLY: &str = r#"
buf = b""
while not buf.endswith(b"\0"):
    chunk = s.recv(65536)
    if not chunk:
        sys.exit("closed without a last reply")
    buf += chunk
print(buf[:-1].decode())
"#;

/// Opens `argv[2]` for writing and sends the call `argv[3]` with that fd.
const FILE_CLIENT: &str = r#"
import json, os, socket, sys
fd = os.open(sys.argv[2], os.O_WRONLY)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
socket.send_fds(s, [sys.argv[3].encode() + b"\0"], [fd])
os.close(fd)
"#;

/// [`PIPE_CLIENT`] making `call` as nobody with `groups`: it reads `read`
/// bytes and then does `how` (`read-all`, `stall` or `hang-up`).
pub fn pipe_client(
    daemon: &Daemon,
    groups: &[u32],
    call: &Value,
    read: usize,
    how: &str,
) -> Output {
    as_nobody(groups, "/usr/bin/python3")
        .args(["-c", &format!("{PIPE_CLIENT}{LAST_REPLY}")])
        .arg(daemon.socket())
        .arg(call.to_string())
        .args([&read.to_string(), how])
        .stdin(Stdio::null())
        .output()
        .expect("running python3")
}

/// [`FILE_CLIENT`] making `call` as nobody with `groups`, with `output`
/// opened for writing; it prints the last reply.
pub fn spawn_file_client(daemon: &Daemon, groups: &[u32], output: &Path, call: &Value) -> Child {
    as_nobody(groups, "/usr/bin/python3")
        .args(["-c", &format!("{FILE_CLIENT}{LAST_REPLY}")])
        .arg(daemon.socket())
        .arg(output)
        .arg(call.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning python3")
}
