//! What the FUSE-mount tests need of a peer: a tree walked with a given
//! uid's rights (a FUSE mount without `allow_other` answers only its
//! owner), raw `MountFuse` calls on a `/dev/fuse` the peer mounted with
//! `fusermount3`, and the daemon's fds, threads and child processes.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, ChildStdout, Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::{Daemon, peer::as_uid, stderr, stdout, wait_for};

/// Walks `argv[1]` and prints one JSON object: every path under it
/// (relative, "." for the root) with its kind, mode, owner, link count,
/// mtime, sorted entries, symlink target, xattrs, and the sha256 of a
/// regular file's bytes, or the errno name of what could not be read.
const WALK: &str = r#"
import errno, hashlib, json, os, stat, sys
root = sys.argv[1]
out = {}
def err(e):
    return "error:" + errno.errorcode.get(e.errno, str(e.errno))
def visit(rel):
    path = os.path.join(root, rel) if rel != "." else root
    st = os.lstat(path)
    m = st.st_mode
    e = {"mode": oct(stat.S_IMODE(m)), "uid": st.st_uid, "gid": st.st_gid,
         "nlink": st.st_nlink, "mtime": st.st_mtime_ns, "rdev": st.st_rdev,
         "ino": st.st_ino}
    try:
        names = os.listxattr(path, follow_symlinks=False)
        e["xattrs"] = {n: os.getxattr(path, n, follow_symlinks=False).hex() for n in sorted(names)}
    except OSError as x:
        e["xattrs"] = err(x)
    if stat.S_ISDIR(m):
        e["kind"] = "dir"
        try:
            names = sorted(os.listdir(path))
            e["entries"] = names
        except OSError as x:
            e["entries"] = err(x)
            names = []
        out[rel] = e
        for n in names:
            visit(n if rel == "." else rel + "/" + n)
        return
    if stat.S_ISREG(m):
        e["kind"] = "file"
        e["size"] = st.st_size
        try:
            with open(path, "rb") as f:
                e["sha256"] = hashlib.sha256(f.read()).hexdigest()
        except OSError as x:
            e["sha256"] = err(x)
    elif stat.S_ISLNK(m):
        e["kind"] = "symlink"
        e["target"] = os.readlink(path)
    else:
        e["kind"] = "special:" + oct(stat.S_IFMT(m))
    out[rel] = e
visit(".")
print(json.dumps(out))
"#;

/// Every path of the tree at `root` as `uid` (with `groups` and group
/// nobody; root as itself) sees it: see
/// [`WALK`]. Inode numbers are replaced by the hard-link group each
/// belongs to (the other paths of its inode), which is what two mounts
/// can share.
pub fn walk_as(uid: u32, groups: &[u32], root: &Path) -> BTreeMap<String, Value> {
    // A FUSE mount answers only its mounter's uid and gid: root walks as
    // itself.
    let mut python = match uid {
        0 => Command::new("/usr/bin/python3"),
        _ => as_uid(uid, groups, "/usr/bin/python3"),
    };
    let out = python
        .arg("-c")
        .arg(WALK)
        .arg(root)
        .output()
        .expect("running python3 under setpriv");
    assert!(
        out.status.success(),
        "walking {}: {}",
        root.display(),
        stderr(&out)
    );
    let mut tree: BTreeMap<String, Value> = serde_json::from_str(&stdout(&out)).unwrap();
    let mut by_inode: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (path, entry) in &tree {
        if entry["kind"] == "file" {
            by_inode
                .entry(entry["ino"].as_u64().unwrap())
                .or_default()
                .push(path.clone());
        }
    }
    for entry in tree.values_mut() {
        let ino = entry["ino"].as_u64().unwrap();
        let group = by_inode.get(&ino).cloned().unwrap_or_default();
        let entry = entry.as_object_mut().unwrap();
        entry.remove("ino");
        entry.insert("links".into(), serde_json::json!(group));
    }
    tree
}

/// Mounts an empty FUSE filesystem at `argv[2]` with fusermount3 (as the
/// uid it runs as), receives its /dev/fuse over `_FUSE_COMMFD`, and
/// calls `MountFuse` of image `argv[3]` with it on the socket `argv[1]`,
/// closing its own copy. With `argv[4]` `hangup` it hangs up right after
/// the call is sent; with `serve` it prints each reply as a line and
/// keeps the connection until its stdin closes. With `argv[2]` `-` it
/// passes `/dev/fuse` opened but never mounted.
const MOUNT_FUSE: &str = r#"
import json, os, socket, subprocess, sys
sock, mnt, image, mode = sys.argv[1:5]
if mnt == "-":
    fd = os.open("/dev/fuse", os.O_RDWR)
else:
    ours, theirs = socket.socketpair()
    env = dict(os.environ, _FUSE_COMMFD=str(theirs.fileno()))
    subprocess.run(["fusermount3", "-o", "ro,nosuid,nodev,default_permissions,fsname=cfsd,subtype=composefs", "--", mnt],
                   env=env, pass_fds=[theirs.fileno()], check=True)
    theirs.close()
    _, fds, _, _ = socket.recv_fds(ours, 1, 1)
    fd = fds[0]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sock)
call = {"method": "io.cfsd.Oci.MountFuse", "parameters": {"image": image}, "more": True}
socket.send_fds(s, [json.dumps(call).encode() + b"\0"], [fd])
os.close(fd)
if mode == "hangup":
    s.close()
    print("hung up", flush=True)
    sys.exit(0)
buf = b""
while True:
    while b"\0" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            print("closed", flush=True)
            sys.stdin.read()
            sys.exit(0)
        buf += chunk
    reply, buf = buf.split(b"\0", 1)
    print(reply.decode(), flush=True)
    if not json.loads(reply).get("continues"):
        break
sys.stdin.read()
"#;

/// A peer's raw `MountFuse` call (see [`MOUNT_FUSE`]), running.
pub struct FusePeer {
    /// The peer's process.
    pub child: Child,
    replies: BufReader<ChildStdout>,
}

impl FusePeer {
    /// Start the call as `uid` with `groups` (root as itself): mount at
    /// `mnt` (or `-`) and
    /// call with `image`, in `mode` `serve` or `hangup`.
    pub fn start(
        daemon: &Daemon,
        uid: u32,
        groups: &[u32],
        mnt: &str,
        image: &str,
        mode: &str,
    ) -> Self {
        // Root as itself: its mount answers only its own uid and gid.
        let mut python = match uid {
            0 => Command::new("/usr/bin/python3"),
            _ => as_uid(uid, groups, "/usr/bin/python3"),
        };
        let mut child = python
            .arg("-c")
            .arg(MOUNT_FUSE)
            .arg(daemon.socket())
            .arg(mnt)
            .arg(image)
            .arg(mode)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("running python3 under setpriv");
        let replies = BufReader::new(child.stdout.take().unwrap());
        FusePeer { child, replies }
    }

    /// The next line the peer printed: a reply as JSON, or `hung up` or
    /// `closed` as a string.
    pub fn said(&mut self) -> Value {
        let mut line = String::new();
        self.replies.read_line(&mut line).unwrap();
        let line = line.trim();
        serde_json::from_str(line).unwrap_or_else(|_| Value::String(line.to_owned()))
    }
}

impl Drop for FusePeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a daemon holds: open fds, threads, and child processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// Entries of `/proc/PID/fd`.
    pub fds: usize,
    /// Entries of `/proc/PID/task`.
    pub threads: usize,
    /// Its children, as each thread's `children` lists them.
    pub children: usize,
}

/// What the daemon `pid` holds now.
pub fn held(pid: u32) -> Held {
    let count = |dir: String| std::fs::read_dir(dir).map_or(0, |d| d.count());
    Held {
        fds: count(format!("/proc/{pid}/fd")),
        threads: count(format!("/proc/{pid}/task")),
        children: children(pid).len(),
    }
}

/// The children of process `pid`, whichever of its threads started them.
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Wait until the daemon `pid` holds no child and at most `baseline`'s
/// fds and threads (tokio's idle blocking threads take 10 s to go),
/// failing past `limit`.
pub fn wait_released(pid: u32, baseline: Held, limit: Duration) {
    wait_for("the daemon to release the FUSE mount", limit, || {
        let now = held(pid);
        now.children == 0 && now.fds <= baseline.fds && now.threads <= baseline.threads
    });
}

/// The type and source of what is mounted at `dir` now, from this
/// process's mount table, or None.
pub fn mounted_at(dir: &Path) -> Option<(String, String)> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.to_str().unwrap();
    table.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let point = left.split(' ').nth(4)?;
        let mut right = right.split(' ');
        let (kind, source) = (right.next()?, right.next()?);
        (point == dir).then(|| (kind.to_owned(), source.to_owned()))
    })
}

/// `fusermount3 -u -z DIR`, ignoring a mount that is not there.
pub fn fuse_unmount(dir: &Path) {
    let _ = Command::new("fusermount3")
        .args(["-u", "-z", "--"])
        .arg(dir)
        .stderr(Stdio::null())
        .status();
}
