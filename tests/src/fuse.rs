//! A tiny FUSE filesystem served from the test process over `/dev/fuse`,
//! for files whose reads never return: what a hostile peer serving its
//! own FUSE mount can hand the daemon.
//!
//! It speaks just enough of the kernel's protocol (`linux/fuse.h`, 7.31)
//! for one flat directory of read-only files: INIT, LOOKUP, GETATTR,
//! OPEN, READ, STATFS, OPENDIR, READDIR, and the release calls. Other
//! requests are answered ENOSYS, which the kernel takes as "not
//! supported". A file made with [`FuseFile::stalling`] is never answered
//! a READ: the reading thread waits until the filesystem is dropped,
//! which aborts the connection and fails every waiting read.
//!
//! Mounting needs root, as every test here has.

use std::{
    fs::File,
    io::{Read, Write},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use rustix::{
    event::{PollFd, PollFlags, poll},
    mount::{MountFlags, UnmountFlags, mount, unmount},
};

pub(crate) const LOOKUP: u32 = 1;
pub(crate) const FORGET: u32 = 2;
pub(crate) const GETATTR: u32 = 3;
pub(crate) const OPEN: u32 = 14;
pub(crate) const READ: u32 = 15;
pub(crate) const STATFS: u32 = 17;
pub(crate) const RELEASE: u32 = 18;
pub(crate) const FLUSH: u32 = 25;
pub(crate) const INIT: u32 = 26;
pub(crate) const OPENDIR: u32 = 27;
pub(crate) const READDIR: u32 = 28;
pub(crate) const RELEASEDIR: u32 = 29;
pub(crate) const ACCESS: u32 = 34;
pub(crate) const INTERRUPT: u32 = 36;
pub(crate) const BATCH_FORGET: u32 = 42;

const ENOENT: i32 = 2;
const EIO: i32 = 5;
const ENOSYS: i32 = 38;

/// One file of the filesystem's only directory.
#[derive(Debug, Clone)]
pub struct FuseFile {
    name: String,
    data: Vec<u8>,
    stalls: bool,
}

impl FuseFile {
    /// A file whose reads are answered with `data`.
    pub fn new(name: &str, data: impl Into<Vec<u8>>) -> Self {
        FuseFile {
            name: name.to_owned(),
            data: data.into(),
            stalls: false,
        }
    }

    /// A file of `len` bytes whose reads are never answered.
    pub fn stalling(name: &str, len: usize) -> Self {
        FuseFile {
            name: name.to_owned(),
            data: vec![0; len],
            stalls: true,
        }
    }
}

/// What the server was asked, for tests that check what the daemon did.
#[derive(Debug, Default)]
pub struct Asked {
    /// READ requests, answered or not.
    pub reads: AtomicU64,
    /// STATFS requests.
    pub statfs: AtomicU64,
    /// Whether the server has stopped taking requests.
    pub frozen: AtomicBool,
}

/// A mounted FUSE filesystem and the thread serving it. Dropping it
/// aborts the connection and unmounts it.
#[derive(Debug)]
pub struct Fuse {
    mountpoint: PathBuf,
    stop: Arc<AtomicBool>,
    release: Arc<AtomicBool>,
    frozen: Arc<AtomicBool>,
    server: Option<JoinHandle<()>>,
    /// What the server was asked.
    pub asked: Arc<Asked>,
}

impl Fuse {
    /// Mount `files` at `mountpoint` (an existing empty directory), open
    /// to every user (`allow_other`).
    pub fn mount(mountpoint: &Path, files: Vec<FuseFile>) -> Self {
        let device = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .expect("opening /dev/fuse");
        let options = std::ffi::CString::new(format!(
            "fd={},rootmode=40000,user_id=0,group_id=0,allow_other",
            device.as_raw_fd()
        ))
        .unwrap();
        mount(
            "cfsdtest",
            mountpoint,
            "fuse.cfsdtest",
            MountFlags::NOSUID | MountFlags::NODEV,
            Some(options.as_c_str()),
        )
        .expect("mounting the test FUSE filesystem");
        let stop = Arc::new(AtomicBool::new(false));
        let release = Arc::new(AtomicBool::new(false));
        let frozen = Arc::new(AtomicBool::new(false));
        let asked = Arc::new(Asked::default());
        let server = Server {
            device,
            files,
            stop: stop.clone(),
            release: release.clone(),
            frozen: frozen.clone(),
            asked: asked.clone(),
            stalled: Mutex::default(),
        };
        Fuse {
            mountpoint: mountpoint.to_owned(),
            stop,
            release,
            frozen,
            server: Some(std::thread::spawn(move || server.run())),
            asked,
        }
    }

    /// Fail every READ left waiting so far with EIO; later ones wait
    /// again.
    pub fn release_stalled(&self) {
        self.release.store(true, Ordering::Relaxed);
    }

    /// Take no more requests: every later one stays queued in the
    /// kernel, where (unlike one the server has taken) a fatal signal
    /// can still end the wait.
    /// Returns once the server has stopped taking them.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
        while !self.asked.frozen.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// READ requests answered or waiting.
    pub fn reads(&self) -> u64 {
        self.asked.reads.load(Ordering::Relaxed)
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }
}

impl Drop for Fuse {
    fn drop(&mut self) {
        // The server closes /dev/fuse on its way out, which fails every
        // read still waiting; then the mount can go.
        self.stop.store(true, Ordering::Relaxed);
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
        let _ = unmount(&self.mountpoint, UnmountFlags::DETACH);
    }
}

struct Server {
    device: File,
    files: Vec<FuseFile>,
    stop: Arc<AtomicBool>,
    release: Arc<AtomicBool>,
    frozen: Arc<AtomicBool>,
    asked: Arc<Asked>,
    /// READ requests deliberately left unanswered.
    stalled: Mutex<Vec<u64>>,
}

/// A request's header (`fuse_in_header`) and body.
struct Request<'a> {
    opcode: u32,
    unique: u64,
    nodeid: u64,
    body: &'a [u8],
}

impl Server {
    fn run(mut self) {
        let mut buf = vec![0u8; 1 << 20];
        while !self.stop.load(Ordering::Relaxed) {
            if self.release.swap(false, Ordering::Relaxed) {
                let stalled = std::mem::take(&mut *self.stalled.lock().unwrap());
                for unique in stalled {
                    self.reply(unique, Err(EIO));
                }
            }
            if self.frozen.load(Ordering::SeqCst) {
                self.asked.frozen.store(true, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            let n = match next_request(&mut self.device, &mut buf, Duration::from_millis(50)) {
                Next::Request(n) => n,
                Next::Idle => continue,
                Next::Gone => return,
            };
            let word = |at: usize| u32::from_le_bytes(buf[at..at + 4].try_into().unwrap());
            let long = |at: usize| u64::from_le_bytes(buf[at..at + 8].try_into().unwrap());
            let request = Request {
                opcode: word(4),
                unique: long(8),
                nodeid: long(16),
                body: &buf[40..n],
            };
            let (opcode, unique) = (request.opcode, request.unique);
            match self.answer(&request) {
                Some(reply) => self.reply(unique, reply),
                None if opcode == READ => self.stalled.lock().unwrap().push(unique),
                None => {}
            }
        }
    }

    /// The reply to `request`: an error number or a body; `None` for no
    /// reply at all.
    fn answer(&self, request: &Request) -> Option<Result<Vec<u8>, i32>> {
        Some(match request.opcode {
            INIT => Ok(init_out(request.body)),
            LOOKUP => {
                let name = request.body.split(|&b| b == 0).next().unwrap_or(&[]);
                match self.files.iter().position(|f| f.name.as_bytes() == name) {
                    Some(i) if request.nodeid == 1 => Ok(entry_out(self.attr(i as u64 + 2))),
                    _ => Err(ENOENT),
                }
            }
            GETATTR => Ok(attr_out(self.attr(request.nodeid))),
            // FOPEN_DIRECT_IO for files that stall: every read is a
            // request of its own, not a wait on another's page.
            OPEN => {
                let file = self.files.get(request.nodeid.checked_sub(2)? as usize)?;
                let mut out = vec![0; 16];
                out[8] = u8::from(file.stalls);
                Ok(out)
            }
            OPENDIR => Ok(vec![0; 16]),
            READ => {
                self.asked.reads.fetch_add(1, Ordering::Relaxed);
                let file = self.files.get(request.nodeid.checked_sub(2)? as usize)?;
                if file.stalls {
                    return None;
                }
                let offset = u64::from_le_bytes(request.body[8..16].try_into().unwrap()) as usize;
                let size = u32::from_le_bytes(request.body[16..20].try_into().unwrap()) as usize;
                let start = offset.min(file.data.len());
                let end = (start + size).min(file.data.len());
                Ok(file.data[start..end].to_vec())
            }
            STATFS => {
                self.asked.statfs.fetch_add(1, Ordering::Relaxed);
                Ok(statfs_out())
            }
            READDIR => Ok(Vec::new()),
            RELEASE | RELEASEDIR | FLUSH | ACCESS => Ok(Vec::new()),
            FORGET | BATCH_FORGET | INTERRUPT => return None,
            _ => Err(ENOSYS),
        })
    }

    /// The attributes of node `id`: 1 is the directory, 2.. the files.
    fn attr(&self, id: u64) -> Attr {
        match id.checked_sub(2).and_then(|i| self.files.get(i as usize)) {
            Some(file) => Attr {
                ino: id,
                size: file.data.len() as u64,
                mode: 0o100644,
            },
            None => Attr {
                ino: 1,
                size: 0,
                mode: 0o40755,
            },
        }
    }

    fn reply(&mut self, unique: u64, reply: Result<Vec<u8>, i32>) {
        send_reply(&mut self.device, unique, reply);
    }
}

/// What waiting for the kernel's next request gave.
pub(crate) enum Next {
    /// A request of this many bytes (at least its header) is in the
    /// buffer.
    Request(usize),
    /// Nothing within the wait.
    Idle,
    /// The connection has gone (unmounted or aborted).
    Gone,
}

/// Read the next request from `device` into `buf`, waiting at most
/// `wait`, so that the caller can look at its flags between requests.
pub(crate) fn next_request(device: &mut File, buf: &mut [u8], wait: Duration) -> Next {
    let mut fds = [PollFd::new(&*device, PollFlags::IN)];
    let timeout = rustix::event::Timespec::try_from(wait).unwrap();
    match poll(&mut fds, Some(&timeout)) {
        Ok(0) | Err(rustix::io::Errno::INTR) => return Next::Idle,
        Ok(_) => {}
        Err(_) => return Next::Gone,
    }
    match device.read(buf) {
        Ok(n) if n >= 40 => Next::Request(n),
        Ok(_) => Next::Idle,
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Next::Idle,
        // ENODEV: unmounted.
        Err(_) => Next::Gone,
    }
}

/// Answer request `unique` with a body or an errno.
pub(crate) fn send_reply(device: &mut File, unique: u64, reply: Result<Vec<u8>, i32>) {
    let (error, body) = match reply {
        Ok(body) => (0, body),
        Err(errno) => (-errno, Vec::new()),
    };
    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(&(16 + body.len() as u32).to_le_bytes());
    out.extend_from_slice(&error.to_le_bytes());
    out.extend_from_slice(&unique.to_le_bytes());
    out.extend_from_slice(&body);
    // A request interrupted meanwhile is answered ENOENT by the kernel;
    // nothing to do about it here.
    let _ = device.write_all(&out);
}

/// The fields of `fuse_attr` this filesystem sets.
struct Attr {
    ino: u64,
    size: u64,
    mode: u32,
}

/// `fuse_attr`, 88 bytes.
fn attr_bytes(attr: &Attr) -> Vec<u8> {
    let mut out = Vec::with_capacity(88);
    for value in [attr.ino, attr.size, attr.size.div_ceil(512), 0, 0, 0] {
        out.extend_from_slice(&value.to_le_bytes());
    }
    // atimensec, mtimensec, ctimensec, mode, nlink, uid, gid, rdev,
    // blksize, flags.
    for value in [0, 0, 0, attr.mode, 1, 0, 0, 0, 4096, 0u32] {
        out.extend_from_slice(&value.to_le_bytes());
    }
    out
}

/// `fuse_entry_out`: the node, valid for an hour, and its attributes.
fn entry_out(attr: Attr) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    for value in [attr.ino, 0, 3600, 3600] {
        out.extend_from_slice(&value.to_le_bytes());
    }
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&attr_bytes(&attr));
    out
}

/// `fuse_attr_out`: attributes valid for an hour.
fn attr_out(attr: Attr) -> Vec<u8> {
    let mut out = Vec::with_capacity(104);
    out.extend_from_slice(&3600u64.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&attr_bytes(&attr));
    out
}

/// `fuse_init_out` (64 bytes) for protocol 7.31, no optional features.
pub(crate) fn init_out(init_in: &[u8]) -> Vec<u8> {
    let max_readahead = init_in.get(8..12).unwrap_or(&[0; 4]);
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&7u32.to_le_bytes());
    out.extend_from_slice(&31u32.to_le_bytes());
    out.extend_from_slice(max_readahead);
    out.extend_from_slice(&0u32.to_le_bytes()); // flags
    out.extend_from_slice(&16u16.to_le_bytes()); // max_background
    out.extend_from_slice(&12u16.to_le_bytes()); // congestion_threshold
    out.extend_from_slice(&65536u32.to_le_bytes()); // max_write
    out.extend_from_slice(&1u32.to_le_bytes()); // time_gran
    out.resize(64, 0);
    out
}

/// `fuse_kstatfs`, 80 bytes.
fn statfs_out() -> Vec<u8> {
    let mut out = Vec::with_capacity(80);
    for value in [1024u64, 0, 0, 16, 0] {
        out.extend_from_slice(&value.to_le_bytes());
    }
    for value in [4096u32, 255, 4096] {
        out.extend_from_slice(&value.to_le_bytes());
    }
    out.resize(80, 0);
    out
}
