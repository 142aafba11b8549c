//! A FUSE passthrough of a directory, served from the test process, whose
//! data writes can be held: a disk that stops answering writes, on which
//! a test puts a repository to see what the daemon still answers.
//!
//! Every request is carried out on the backing directory as the test
//! process (root). Once [`StallFs::hold_writes`] is called, each WRITE is
//! kept unanswered (its caller waits in the kernel, as on a stuck disk)
//! until [`StallFs::release`]; every other request is still answered, so
//! only the threads that write wait. It speaks protocol 7.31 of
//! `linux/fuse.h` plus `FUSE_TMPFILE`, which the repository's `O_TMPFILE`
//! objects need; extended attributes, locks and ioctls are answered
//! ENOSYS, which the kernel takes as "not supported".

use std::{
    collections::HashMap,
    ffi::CStr,
    fs::File,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::FileExt,
    },
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use rustix::{
    fs::{AtFlags, Mode, OFlags, RenameFlags, Stat, Timespec, Timestamps, UTIME_NOW, UTIME_OMIT},
    io::Errno,
    mount::{MountFlags, UnmountFlags, mount, unmount},
};

use crate::fuse::{
    ACCESS, BATCH_FORGET, FLUSH, FORGET, GETATTR, INIT, INTERRUPT, LOOKUP, Next, OPEN, OPENDIR,
    READ, READDIR, RELEASE, RELEASEDIR, STATFS, next_request, send_reply,
};

const SETATTR: u32 = 4;
const READLINK: u32 = 5;
const SYMLINK: u32 = 6;
const MKNOD: u32 = 8;
const MKDIR: u32 = 9;
const UNLINK: u32 = 10;
const RMDIR: u32 = 11;
const RENAME: u32 = 12;
const LINK: u32 = 13;
const WRITE: u32 = 16;
const FSYNC: u32 = 20;
const FSYNCDIR: u32 = 30;
const CREATE: u32 = 35;
const DESTROY: u32 = 38;
const FALLOCATE: u32 = 43;
const RENAME2: u32 = 45;
const SYNCFS: u32 = 50;
const TMPFILE: u32 = 51;

/// The root's node id, fixed by the protocol.
const ROOT: u64 = 1;

/// What the test can see and steer, shared with the serving thread.
#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    holding: AtomicBool,
    release: AtomicBool,
    /// WRITE requests held now.
    held: AtomicU64,
    /// WRITE requests answered so far.
    written: AtomicU64,
}

/// A mounted passthrough filesystem and the thread serving it. Dropping
/// it answers every held write, stops the server and unmounts it.
#[derive(Debug)]
pub struct StallFs {
    mountpoint: PathBuf,
    shared: Arc<Shared>,
    server: Option<JoinHandle<()>>,
}

impl StallFs {
    /// Mount a passthrough of `backing` at `mountpoint` (both existing
    /// directories), open to every user.
    pub fn mount(backing: &Path, mountpoint: &Path) -> Self {
        let device = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .expect("opening /dev/fuse");
        let root = rustix::fs::open(backing, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
            .expect("opening the backing directory");
        let options = std::ffi::CString::new(format!(
            "fd={},rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions",
            device.as_raw_fd()
        ))
        .unwrap();
        mount(
            "cfsdstall",
            mountpoint,
            "fuse.cfsdstall",
            MountFlags::NOSUID | MountFlags::NODEV,
            Some(options.as_c_str()),
        )
        .expect("mounting the passthrough filesystem");
        let shared = Arc::new(Shared::default());
        let mut server = Server {
            device,
            shared: shared.clone(),
            nodes: HashMap::new(),
            by_inode: HashMap::new(),
            files: HashMap::new(),
            dirs: HashMap::new(),
            next: ROOT + 1,
            held: Vec::new(),
        };
        server.nodes.insert(
            ROOT,
            Node {
                fd: root,
                lookups: 1,
            },
        );
        StallFs {
            mountpoint: mountpoint.to_owned(),
            shared,
            server: Some(std::thread::spawn(move || server.run())),
        }
    }

    /// Hold every WRITE from now on, until [`StallFs::release`].
    pub fn hold_writes(&self) {
        self.shared.holding.store(true, Ordering::SeqCst);
    }

    /// Carry out and answer the held writes, and hold no more.
    pub fn release(&self) {
        self.shared.holding.store(false, Ordering::SeqCst);
        self.shared.release.store(true, Ordering::SeqCst);
    }

    /// WRITE requests held now.
    pub fn held(&self) -> u64 {
        self.shared.held.load(Ordering::SeqCst)
    }

    /// WRITE requests answered so far.
    pub fn written(&self) -> u64 {
        self.shared.written.load(Ordering::SeqCst)
    }

    /// Wait until some write is held; panics after `timeout`, naming
    /// `what` was expected to write.
    pub fn wait_for_held_write(&self, timeout: Duration, what: &str) {
        let start = Instant::now();
        while self.held() == 0 {
            assert!(
                start.elapsed() < timeout,
                "{what} wrote nothing within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }
}

impl Drop for StallFs {
    fn drop(&mut self) {
        self.release();
        // Unmount first (lazily, since the daemon may still hold files),
        // then stop: a server that stopped first would fail every call
        // still reaching the mount.
        let _ = unmount(&self.mountpoint, UnmountFlags::DETACH);
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
    }
}

/// A file or directory the kernel knows by node id.
struct Node {
    /// An `O_PATH` descriptor of it (for an `O_TMPFILE`, the file itself).
    fd: OwnedFd,
    /// LOOKUPs not yet forgotten.
    lookups: u64,
}

/// A WRITE kept unanswered.
struct HeldWrite {
    unique: u64,
    fh: u64,
    offset: u64,
    data: Vec<u8>,
}

struct Server {
    device: File,
    shared: Arc<Shared>,
    nodes: HashMap<u64, Node>,
    /// Node ids by (device, inode), so that hard links share a node.
    by_inode: HashMap<(u64, u64), u64>,
    files: HashMap<u64, File>,
    /// Each open directory's entries, read when it was opened.
    dirs: HashMap<u64, Vec<DirEntry>>,
    /// The next node id or file handle.
    next: u64,
    held: Vec<HeldWrite>,
}

struct DirEntry {
    ino: u64,
    kind: u32,
    name: Vec<u8>,
}

/// A request's header (`fuse_in_header`) and body.
struct Request<'a> {
    opcode: u32,
    unique: u64,
    nodeid: u64,
    body: &'a [u8],
}

/// A reply: its body, an errno, or no reply at all.
enum Reply {
    Body(Vec<u8>),
    Error(Errno),
    None,
}

impl From<Result<Vec<u8>, Errno>> for Reply {
    fn from(result: Result<Vec<u8>, Errno>) -> Self {
        match result {
            Ok(body) => Reply::Body(body),
            Err(errno) => Reply::Error(errno),
        }
    }
}

fn u32_at(body: &[u8], at: usize) -> u32 {
    body.get(at..at + 4)
        .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap()))
}

fn u64_at(body: &[u8], at: usize) -> u64 {
    body.get(at..at + 8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()))
}

/// The NUL-terminated names in `bytes`, in order.
fn names(bytes: &[u8]) -> Vec<&CStr> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Ok(name) = CStr::from_bytes_until_nul(rest) {
        rest = &rest[name.to_bytes_with_nul().len()..];
        out.push(name);
    }
    out
}

impl Server {
    fn run(mut self) {
        let mut buf = vec![0u8; (1 << 20) + 4096];
        while !self.shared.stop.load(Ordering::SeqCst) {
            if self.shared.release.swap(false, Ordering::SeqCst) {
                self.answer_held();
            }
            let n = match next_request(&mut self.device, &mut buf, Duration::from_millis(20)) {
                Next::Request(n) => n,
                Next::Idle => continue,
                Next::Gone => return,
            };
            let request = Request {
                opcode: u32_at(&buf, 4),
                unique: u64_at(&buf, 8),
                nodeid: u64_at(&buf, 16),
                body: &buf[40..n],
            };
            let unique = request.unique;
            match self.answer(&request) {
                Reply::Body(body) => self.reply(unique, Ok(body)),
                Reply::Error(errno) => self.reply(unique, Err(errno)),
                Reply::None => {}
            }
        }
        self.answer_held();
    }

    fn answer_held(&mut self) {
        for write in std::mem::take(&mut self.held) {
            let done = self.write(write.fh, write.offset, &write.data);
            self.shared.held.fetch_sub(1, Ordering::SeqCst);
            self.reply(write.unique, done);
        }
    }

    fn answer(&mut self, r: &Request) -> Reply {
        match r.opcode {
            INIT => Reply::Body(crate::fuse::init_out(r.body)),
            FORGET => {
                self.forget(r.nodeid, u64_at(r.body, 0));
                Reply::None
            }
            BATCH_FORGET => {
                let count = u32_at(r.body, 0) as usize;
                for i in 0..count {
                    let at = 8 + 16 * i;
                    self.forget(u64_at(r.body, at), u64_at(r.body, at + 8));
                }
                Reply::None
            }
            INTERRUPT => Reply::None,
            WRITE if self.shared.holding.load(Ordering::SeqCst) => {
                self.held.push(HeldWrite {
                    unique: r.unique,
                    fh: u64_at(r.body, 0),
                    offset: u64_at(r.body, 8),
                    data: r.body.get(40..).unwrap_or_default().to_vec(),
                });
                self.shared.held.fetch_add(1, Ordering::SeqCst);
                Reply::None
            }
            WRITE => self
                .write(
                    u64_at(r.body, 0),
                    u64_at(r.body, 8),
                    &r.body[40.min(r.body.len())..],
                )
                .into(),
            DESTROY => {
                self.shared.stop.store(true, Ordering::SeqCst);
                Reply::Body(Vec::new())
            }
            _ => self.carry_out(r).into(),
        }
    }

    /// Every request that is answered at once.
    fn carry_out(&mut self, r: &Request) -> Result<Vec<u8>, Errno> {
        let body = r.body;
        match r.opcode {
            LOOKUP => self.lookup(r.nodeid, first_name(body)?),
            GETATTR => Ok(attr_out(&rustix::fs::fstat(self.fd(r.nodeid)?)?)),
            SETATTR => self.setattr(r.nodeid, body),
            READLINK => {
                let target = rustix::fs::readlinkat(self.fd(r.nodeid)?, "", Vec::new())?;
                Ok(target.into_bytes())
            }
            SYMLINK => match names(body)[..] {
                [name, target, ..] => {
                    rustix::fs::symlinkat(target, self.fd(r.nodeid)?, name)?;
                    self.lookup(r.nodeid, name)
                }
                _ => Err(Errno::INVAL),
            },
            MKNOD => {
                let (mode, rdev) = (u32_at(body, 0), u32_at(body, 4));
                let name = first_name(&body[16.min(body.len())..])?;
                let kind = rustix::fs::FileType::from_raw_mode(mode);
                let perm = Mode::from_raw_mode(mode & 0o7777);
                rustix::fs::mknodat(self.fd(r.nodeid)?, name, kind, perm, rdev.into())?;
                self.lookup(r.nodeid, name)
            }
            MKDIR => {
                let mode = Mode::from_raw_mode(u32_at(body, 0) & 0o7777);
                let name = first_name(&body[8.min(body.len())..])?;
                rustix::fs::mkdirat(self.fd(r.nodeid)?, name, mode)?;
                self.lookup(r.nodeid, name)
            }
            UNLINK | RMDIR => {
                let flags = if r.opcode == RMDIR {
                    AtFlags::REMOVEDIR
                } else {
                    AtFlags::empty()
                };
                rustix::fs::unlinkat(self.fd(r.nodeid)?, first_name(body)?, flags)?;
                Ok(Vec::new())
            }
            RENAME => self.rename(r.nodeid, u64_at(body, 0), 0, &body[8.min(body.len())..]),
            RENAME2 => self.rename(
                r.nodeid,
                u64_at(body, 0),
                u32_at(body, 8),
                &body[16.min(body.len())..],
            ),
            LINK => {
                let name = first_name(&body[8.min(body.len())..])?;
                let old = self.fd(u64_at(body, 0))?;
                rustix::fs::linkat(old, "", self.fd(r.nodeid)?, name, AtFlags::EMPTY_PATH)?;
                self.lookup(r.nodeid, name)
            }
            OPEN => {
                let file = self.reopen(r.nodeid, u32_at(body, 0))?;
                Ok(open_out(self.keep(file)))
            }
            READ => {
                let file = self.files.get(&u64_at(body, 0)).ok_or(Errno::BADF)?;
                let mut data = vec![0; u32_at(body, 16) as usize];
                let n = file.read_at(&mut data, u64_at(body, 8)).map_err(errno)?;
                data.truncate(n);
                Ok(data)
            }
            STATFS => Ok(statfs_out(&rustix::fs::fstatvfs(self.fd(ROOT)?)?)),
            RELEASE => {
                self.files.remove(&u64_at(body, 0));
                Ok(Vec::new())
            }
            FSYNC => {
                let file = self.files.get(&u64_at(body, 0)).ok_or(Errno::BADF)?;
                file.sync_all().map_err(errno)?;
                Ok(Vec::new())
            }
            FLUSH | ACCESS | FSYNCDIR | SYNCFS => Ok(Vec::new()),
            OPENDIR => {
                let entries = self.read_dir(r.nodeid)?;
                let fh = self.handle();
                self.dirs.insert(fh, entries);
                Ok(open_out(fh))
            }
            READDIR => Ok(self.readdir(u64_at(body, 0), u64_at(body, 8), u32_at(body, 16))),
            RELEASEDIR => {
                self.dirs.remove(&u64_at(body, 0));
                Ok(Vec::new())
            }
            CREATE | TMPFILE => self.create(r, body),
            FALLOCATE => {
                let file = self.files.get(&u64_at(body, 0)).ok_or(Errno::BADF)?;
                let mode = rustix::fs::FallocateFlags::from_bits_retain(u32_at(body, 24));
                rustix::fs::fallocate(file, mode, u64_at(body, 8), u64_at(body, 16))?;
                Ok(Vec::new())
            }
            _ => Err(Errno::NOSYS),
        }
    }

    fn fd(&self, node: u64) -> Result<&OwnedFd, Errno> {
        self.nodes.get(&node).map(|n| &n.fd).ok_or(Errno::STALE)
    }

    fn handle(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn keep(&mut self, file: File) -> u64 {
        let fh = self.handle();
        self.files.insert(fh, file);
        fh
    }

    /// The node for `fd` (an `O_PATH` descriptor or an anonymous file),
    /// one lookup more, and its entry.
    fn entry(&mut self, fd: OwnedFd) -> Result<Vec<u8>, Errno> {
        let st = rustix::fs::fstat(&fd)?;
        let key = (st.st_dev, st.st_ino);
        let node = match self.by_inode.get(&key) {
            Some(&node) => node,
            None => {
                let node = self.handle();
                self.by_inode.insert(key, node);
                self.nodes.insert(node, Node { fd, lookups: 0 });
                node
            }
        };
        if let Some(n) = self.nodes.get_mut(&node) {
            n.lookups += 1;
        }
        Ok(entry_out(node, &st))
    }

    fn lookup(&mut self, parent: u64, name: &CStr) -> Result<Vec<u8>, Errno> {
        let fd = rustix::fs::openat(
            self.fd(parent)?,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        self.entry(fd)
    }

    fn forget(&mut self, node: u64, lookups: u64) {
        if node == ROOT {
            return;
        }
        let Some(n) = self.nodes.get_mut(&node) else {
            return;
        };
        n.lookups = n.lookups.saturating_sub(lookups);
        if n.lookups == 0
            && let Some(n) = self.nodes.remove(&node)
            && let Ok(st) = rustix::fs::fstat(&n.fd)
        {
            self.by_inode.remove(&(st.st_dev, st.st_ino));
        }
    }

    /// The node's file, opened anew with `flags` through `/proc`, as the
    /// node's descriptor may be `O_PATH`.
    fn reopen(&self, node: u64, flags: u32) -> Result<File, Errno> {
        let path = format!("/proc/self/fd/{}", self.fd(node)?.as_raw_fd());
        let flags = OFlags::from_bits_retain(flags)
            - (OFlags::CREATE | OFlags::EXCL | OFlags::NOCTTY | OFlags::TRUNC);
        let fd = rustix::fs::open(path.as_str(), flags | OFlags::CLOEXEC, Mode::empty())?;
        Ok(File::from(fd))
    }

    /// CREATE (a named file) or TMPFILE (an anonymous one in the
    /// directory): `fuse_create_in`, then the name.
    fn create(&mut self, r: &Request, body: &[u8]) -> Result<Vec<u8>, Errno> {
        let flags = OFlags::from_bits_retain(u32_at(body, 0)) - OFlags::NOCTTY;
        let mode = Mode::from_raw_mode(u32_at(body, 4) & 0o7777);
        let dir = self.fd(r.nodeid)?;
        let (file, node_fd) = if r.opcode == TMPFILE {
            let flags = (flags & OFlags::RWMODE) | OFlags::TMPFILE | OFlags::CLOEXEC;
            let file = rustix::fs::openat(dir, ".", flags, mode)?;
            let node_fd = rustix::io::fcntl_dupfd_cloexec(&file, 0)?;
            (file, node_fd)
        } else {
            let name = first_name(&body[16.min(body.len())..])?;
            let flags = flags | OFlags::CREATE | OFlags::CLOEXEC;
            let file = rustix::fs::openat(dir, name, flags, mode)?;
            let path = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let node_fd = rustix::fs::openat(dir, name, path, Mode::empty())?;
            (file, node_fd)
        };
        let mut out = self.entry(node_fd)?;
        let fh = self.keep(File::from(file));
        out.extend_from_slice(&open_out(fh));
        Ok(out)
    }

    fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<Vec<u8>, Errno> {
        let file = self.files.get(&fh).ok_or(Errno::BADF)?;
        file.write_all_at(data, offset).map_err(errno)?;
        self.shared.written.fetch_add(1, Ordering::SeqCst);
        let mut out = (data.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(&[0; 4]);
        Ok(out)
    }

    fn rename(&self, dir: u64, new_dir: u64, flags: u32, names_: &[u8]) -> Result<Vec<u8>, Errno> {
        let [old, new, ..] = names(names_)[..] else {
            return Err(Errno::INVAL);
        };
        let flags = RenameFlags::from_bits_retain(flags);
        rustix::fs::renameat_with(self.fd(dir)?, old, self.fd(new_dir)?, new, flags)?;
        Ok(Vec::new())
    }

    /// `fuse_setattr_in`: the fields named in `valid`.
    fn setattr(&mut self, node: u64, body: &[u8]) -> Result<Vec<u8>, Errno> {
        let valid = u32_at(body, 0);
        let fd = self.fd(node)?;
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        if valid & FATTR_MODE != 0 {
            let mode = Mode::from_raw_mode(u32_at(body, 68) & 0o7777);
            rustix::fs::chmod(path.as_str(), mode)?;
        }
        if valid & (FATTR_UID | FATTR_GID) != 0 {
            let id = |bit: u32, at: usize| (valid & bit != 0).then(|| u32_at(body, at));
            let uid = id(FATTR_UID, 76).map(rustix::fs::Uid::from_raw);
            let gid = id(FATTR_GID, 80).map(rustix::fs::Gid::from_raw);
            rustix::fs::chownat(fd, "", uid, gid, AtFlags::EMPTY_PATH)?;
        }
        if valid & FATTR_SIZE != 0 {
            let file = File::from(rustix::fs::open(
                path.as_str(),
                OFlags::WRONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )?);
            file.set_len(u64_at(body, 16)).map_err(errno)?;
        }
        if valid & (FATTR_ATIME | FATTR_MTIME) != 0 {
            let time = |set: u32, now: u32, secs: usize, nsecs: usize| Timespec {
                tv_sec: u64_at(body, secs) as i64,
                tv_nsec: if valid & now != 0 {
                    UTIME_NOW
                } else if valid & set != 0 {
                    u32_at(body, nsecs).into()
                } else {
                    UTIME_OMIT
                },
            };
            let times = Timestamps {
                last_access: time(FATTR_ATIME, FATTR_ATIME_NOW, 32, 56),
                last_modification: time(FATTR_MTIME, FATTR_MTIME_NOW, 40, 60),
            };
            rustix::fs::utimensat(rustix::fs::CWD, path.as_str(), &times, AtFlags::empty())?;
        }
        Ok(attr_out(&rustix::fs::fstat(self.fd(node)?)?))
    }

    fn read_dir(&self, node: u64) -> Result<Vec<DirEntry>, Errno> {
        let fd = rustix::fs::openat(
            self.fd(node)?,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mut entries = Vec::new();
        for entry in rustix::fs::Dir::new(fd)? {
            let entry = entry?;
            entries.push(DirEntry {
                ino: entry.ino(),
                kind: dirent_type(entry.file_type()),
                name: entry.file_name().to_bytes().to_vec(),
            });
        }
        Ok(entries)
    }

    /// `fuse_dirent`s from entry `offset` on, as many as fit in `size`.
    fn readdir(&self, fh: u64, offset: u64, size: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let Some(entries) = self.dirs.get(&fh) else {
            return out;
        };
        for (i, entry) in entries.iter().enumerate().skip(offset as usize) {
            let len = (24 + entry.name.len()).next_multiple_of(8);
            if out.len() + len > size as usize {
                break;
            }
            out.extend_from_slice(&entry.ino.to_le_bytes());
            out.extend_from_slice(&(i as u64 + 1).to_le_bytes());
            out.extend_from_slice(&(entry.name.len() as u32).to_le_bytes());
            out.extend_from_slice(&entry.kind.to_le_bytes());
            out.extend_from_slice(&entry.name);
            out.resize(out.len().next_multiple_of(8), 0);
        }
        out
    }

    fn reply(&mut self, unique: u64, reply: Result<Vec<u8>, Errno>) {
        send_reply(
            &mut self.device,
            unique,
            reply.map_err(|e| e.raw_os_error()),
        );
    }
}

const FATTR_MODE: u32 = 1;
const FATTR_UID: u32 = 2;
const FATTR_GID: u32 = 4;
const FATTR_SIZE: u32 = 8;
const FATTR_ATIME: u32 = 16;
const FATTR_MTIME: u32 = 32;
const FATTR_ATIME_NOW: u32 = 128;
const FATTR_MTIME_NOW: u32 = 256;

fn first_name(body: &[u8]) -> Result<&CStr, Errno> {
    names(body).first().copied().ok_or(Errno::INVAL)
}

fn errno(e: std::io::Error) -> Errno {
    Errno::from_io_error(&e).unwrap_or(Errno::IO)
}

fn dirent_type(kind: rustix::fs::FileType) -> u32 {
    use rustix::fs::FileType as T;
    match kind {
        T::Fifo => 1,
        T::CharacterDevice => 2,
        T::Directory => 4,
        T::BlockDevice => 6,
        T::RegularFile => 8,
        T::Symlink => 10,
        T::Socket => 12,
        _ => 0,
    }
}

/// `fuse_attr`, 88 bytes, of `st`.
fn attr_bytes(st: &Stat) -> Vec<u8> {
    let mut out = Vec::with_capacity(88);
    for value in [
        st.st_ino,
        st.st_size as u64,
        st.st_blocks as u64,
        st.st_atime as u64,
        st.st_mtime as u64,
        st.st_ctime as u64,
    ] {
        out.extend_from_slice(&value.to_le_bytes());
    }
    for value in [
        st.st_atime_nsec as u32,
        st.st_mtime_nsec as u32,
        st.st_ctime_nsec as u32,
        st.st_mode,
        st.st_nlink as u32,
        st.st_uid,
        st.st_gid,
        st.st_rdev as u32,
        st.st_blksize as u32,
        0,
    ] {
        out.extend_from_slice(&value.to_le_bytes());
    }
    out
}

/// `fuse_entry_out` for `node`; nothing is cached, so that what another
/// path changes is seen at once.
fn entry_out(node: u64, st: &Stat) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    for value in [node, 0, 0, 0] {
        out.extend_from_slice(&value.to_le_bytes());
    }
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&attr_bytes(st));
    out
}

/// `fuse_attr_out`, not to be cached.
fn attr_out(st: &Stat) -> Vec<u8> {
    let mut out = vec![0; 16];
    out.extend_from_slice(&attr_bytes(st));
    out
}

/// `fuse_open_out`: the handle, with no flags.
fn open_out(fh: u64) -> Vec<u8> {
    let mut out = fh.to_le_bytes().to_vec();
    out.extend_from_slice(&[0; 8]);
    out
}

/// `fuse_kstatfs` of the backing filesystem.
fn statfs_out(st: &rustix::fs::StatVfs) -> Vec<u8> {
    let mut out = Vec::with_capacity(80);
    for value in [st.f_blocks, st.f_bfree, st.f_bavail, st.f_files, st.f_ffree] {
        out.extend_from_slice(&value.to_le_bytes());
    }
    for value in [st.f_bsize as u32, st.f_namemax as u32, st.f_frsize as u32] {
        out.extend_from_slice(&value.to_le_bytes());
    }
    out.resize(80, 0);
    out
}
