//! The object writers of one split: a few threads that hash file contents
//! and store them as objects while the tar is still being parsed.
//!
//! Small files travel in batches, so that a layer of thousands of files
//! costs hundreds of hand-offs between threads rather than thousands.

use std::{
    fs::File,
    io::Write,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc::{Receiver, SyncSender, channel, sync_channel},
    },
    thread::JoinHandle,
};

use super::large::Written;
use crate::content::Sha256Digest;
use anyhow::Context;
use composefs::{
    fsverity::{
        FsVerityHashValue, compute_verity, enable_verity_maybe_copy, ensure_verity_equal,
        measure_verity,
    },
    repository::{ObjectStoreMethod, Repository as Store},
};
use openssl::sha::sha256;
use rustix::{
    fs::{AtFlags, CWD, Mode, OFlags, linkat, mkdirat, openat, statat},
    io::Errno,
};

/// Threads writing objects.
const WRITERS: usize = 3;

/// A batch is sent once it holds this many bytes or [`BATCH_FILES`] files.
const BATCH_BYTES: usize = 1 << 20;

/// See [`BATCH_BYTES`].
const BATCH_FILES: usize = 64;

/// File contents held in memory, queued or being written, at most.
pub(super) const BUFFERED_BYTES: usize = 64 << 20;

/// Where a stored file's object id will be found: its batch, and its
/// place in the batch.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ticket {
    batch: usize,
    index: usize,
}

/// A stored object: its id, whether it was new, and the sha256 of its
/// content, for the content index.
pub(super) type Stored<H> = (H, ObjectStoreMethod, Sha256Digest);

enum Job<H> {
    /// Contents held in memory.
    Files(Vec<Vec<u8>>),
    /// One large file already written to an anonymous file and hashed.
    Written(Written<H>, u64),
}

/// The writer threads and the batch being filled.
pub(super) struct Objects<H: FsVerityHashValue> {
    repo: Arc<Store<H>>,
    jobs: Option<SyncSender<(usize, Job<H>)>>,
    done: Receiver<Report<H>>,
    threads: Vec<JoinHandle<()>>,
    /// Set when the split is given up: queued jobs are dropped unwritten.
    stopping: Arc<AtomicBool>,
    budget: Arc<Budget>,
    filling: Vec<Vec<u8>>,
    filling_bytes: usize,
    batches: usize,
    results: Vec<Option<Vec<Stored<H>>>>,
}

impl<H: FsVerityHashValue> Objects<H> {
    /// Start the writer threads for `repo`.
    pub(super) fn start(repo: Arc<Store<H>>) -> Self {
        let (jobs, queue) = sync_channel::<(usize, Job<H>)>(WRITERS);
        let queue = Arc::new(Mutex::new(queue));
        let (report, done) = channel();
        let budget = Arc::new(Budget::new(BUFFERED_BYTES));
        let stopping = Arc::new(AtomicBool::new(false));
        let threads = (0..WRITERS)
            .map(|_| {
                let (queue, report) = (queue.clone(), report.clone());
                let (repo, budget) = (repo.clone(), budget.clone());
                let stopping = stopping.clone();
                std::thread::spawn(move || work(&repo, &queue, &report, &budget, &stopping))
            })
            .collect();
        Objects {
            repo,
            jobs: Some(jobs),
            done,
            threads,
            stopping,
            budget,
            filling: Vec::new(),
            filling_bytes: 0,
            batches: 0,
            results: Vec::new(),
        }
    }

    /// The repository the objects go to.
    pub(super) fn repo(&self) -> &Arc<Store<H>> {
        &self.repo
    }

    /// Store `data` as an object, soon.
    pub(super) fn add(&mut self, data: Vec<u8>) -> anyhow::Result<Ticket> {
        // Wait for room before the bytes join a batch, so that what is in
        // memory stays within the budget.
        self.budget.take(data.len());
        self.filling_bytes += data.len();
        self.filling.push(data);
        let ticket = Ticket {
            batch: self.batches,
            index: self.filling.len() - 1,
        };
        if self.filling_bytes >= BATCH_BYTES || self.filling.len() >= BATCH_FILES {
            self.send_filling()?;
        }
        Ok(ticket)
    }

    /// Store the large file `written`, of `size` bytes, as an object, soon.
    pub(super) fn add_written(&mut self, written: Written<H>, size: u64) -> anyhow::Result<Ticket> {
        self.send_filling()?;
        self.send(Job::Written(written, size))?;
        Ok(Ticket {
            batch: self.batches - 1,
            index: 0,
        })
    }

    fn send_filling(&mut self) -> anyhow::Result<()> {
        if self.filling.is_empty() {
            return Ok(());
        }
        self.filling_bytes = 0;
        let files = std::mem::take(&mut self.filling);
        self.send(Job::Files(files))
    }

    fn send(&mut self, job: Job<H>) -> anyhow::Result<()> {
        // Stop at the first failed write rather than at the end.
        while let Ok(done) = self.done.try_recv() {
            self.record(done)?;
        }
        let jobs = self.jobs.as_ref().expect("sending after finish");
        jobs.send((self.batches, job))
            .map_err(|_| anyhow::anyhow!("the object writers stopped"))?;
        self.batches += 1;
        self.results.push(None);
        Ok(())
    }

    fn record(&mut self, (batch, result): Report<H>) -> anyhow::Result<()> {
        self.results[batch] = Some(result?);
        Ok(())
    }

    /// Wait for every object; gives their ids in the order of the tickets.
    pub(super) fn finish(mut self) -> anyhow::Result<Finished<H>> {
        self.send_filling()?;
        self.jobs = None;
        while self.results.iter().any(Option::is_none) {
            let done = self
                .done
                .recv()
                .map_err(|_| anyhow::anyhow!("an object writer died"))?;
            self.record(done)?;
        }
        for thread in self.threads.drain(..) {
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("an object writer panicked"))?;
        }
        let batches = std::mem::take(&mut self.results);
        Ok(Finished {
            batches: batches.into_iter().map(Option::unwrap_or_default).collect(),
        })
    }
}

/// A split given up (a damaged tar, a client that hung up) waits for its
/// writers here: the thread that drops it still keeps GC off, and no
/// object may be written once it lets go, or GC could run first and the
/// object be left behind, named by nothing.
impl<H: FsVerityHashValue> Drop for Objects<H> {
    fn drop(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        self.stopping.store(true, Ordering::Relaxed);
        self.jobs = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A writer's answer: a batch and its objects, or why they failed.
type Report<H> = (usize, anyhow::Result<Vec<Stored<H>>>);

/// Every object of a split, stored.
pub(super) struct Finished<H> {
    batches: Vec<Vec<Stored<H>>>,
}

impl<H: FsVerityHashValue> Finished<H> {
    /// The object a ticket stands for.
    pub(super) fn get(&self, ticket: Ticket) -> &Stored<H> {
        &self.batches[ticket.batch][ticket.index]
    }
}

/// One writer thread: take jobs until the splitter closes the queue. A
/// failure is reported and the thread goes on, so that queued jobs still
/// give their bytes back to the budget the splitter may be waiting on.
fn work<H: FsVerityHashValue>(
    repo: &Store<H>,
    queue: &Mutex<Receiver<(usize, Job<H>)>>,
    report: &std::sync::mpsc::Sender<Report<H>>,
    budget: &Budget,
    stopping: &AtomicBool,
) {
    loop {
        let next = queue.lock().map(|queue| queue.recv());
        let Ok(Ok((batch, job))) = next else { return };
        if stopping.load(Ordering::Relaxed) {
            if let Job::Files(files) = &job {
                budget.give(files.iter().map(Vec::len).sum());
            }
            continue;
        }
        let result = match job {
            Job::Files(files) => {
                let stored = files.iter().map(|data| store_object(repo, data)).collect();
                budget.give(files.iter().map(Vec::len).sum());
                stored
            }
            Job::Written(written, size) => store_written(repo, written, size).map(|s| vec![s]),
        };
        if report.send((batch, result)).is_err() {
            return;
        }
    }
}

/// Bytes that may be held in memory, shared by the splitter (which takes)
/// and the writers (which give back).
struct Budget {
    free: Mutex<usize>,
    freed: Condvar,
    total: usize,
}

impl Budget {
    fn new(total: usize) -> Self {
        Budget {
            free: Mutex::new(total),
            freed: Condvar::new(),
            total,
        }
    }

    /// Wait until `n` bytes are free (or, for more than the whole budget,
    /// until everything is), then take them.
    fn take(&self, n: usize) {
        let n = n.min(self.total);
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free < n {
            free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= n;
    }

    fn give(&self, n: usize) {
        let n = n.min(self.total);
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        *free = (*free + n).min(self.total);
        self.freed.notify_all();
    }
}

/// Store `data` as an object, unless an object of its digest is already
/// there.
///
/// The digest is computed once, here. Where fs-verity is enforced the
/// kernel computes it again as it enables verity, and that is the check:
/// the object is named only if the kernel's measurement equals ours. An
/// object already there is trusted only if the kernel measures it to its
/// name, never by its size, which a power cut can leave right over zeros.
fn store_object<H: FsVerityHashValue>(repo: &Store<H>, data: &[u8]) -> anyhow::Result<Stored<H>> {
    let id: H = compute_verity(data);
    let digest = sha256(data);
    let objects = repo.objects_dir()?;
    let sealed = !repo.is_insecure();
    let present = if sealed {
        sealed_present(objects, &id)?
    } else {
        present(repo, &id, data.len() as u64)?
    };
    if present {
        return Ok((id, ObjectStoreMethod::AlreadyPresent, digest));
    }
    let method = write_object(objects, &id, data, sealed)?;
    Ok((id, method, digest))
}

/// Store the large file `written`, of `size` bytes, as an object, unless
/// an object of its digest is already there. Where fs-verity is enforced,
/// the digest is the kernel's measurement as it seals the file.
fn store_written<H: FsVerityHashValue>(
    repo: &Store<H>,
    written: Written<H>,
    size: u64,
) -> anyhow::Result<Stored<H>> {
    let objects = repo.objects_dir()?;
    let Written { file, sha256, id } = written;
    let (file, id, present) = match id {
        Some(id) => {
            let present = present(repo, &id, size)?;
            (file, id, present)
        }
        None => {
            let file = seal::<H>(objects, file)?;
            let id: H = measure_verity(&file).context("measuring a new object")?;
            let present = sealed_present(objects, &id)?;
            (file, id, present)
        }
    };
    if present {
        return Ok((id, ObjectStoreMethod::AlreadyPresent, sha256));
    }
    // Written in objects/ itself: its object directory may not exist yet.
    let method = match name_object(&file, objects, &id) {
        Err(Errno::NOENT) => {
            make_dir(objects, &id.to_object_dir())?;
            name_object(&file, objects, &id)
        }
        method => method,
    }?;
    Ok((id, method, sha256))
}

/// Give the complete anonymous `file` its object name `id`.
fn name_object<H: FsVerityHashValue>(
    file: &File,
    objects: &OwnedFd,
    id: &H,
) -> Result<ObjectStoreMethod, Errno> {
    match link(file, objects, &id.to_object_pathname()) {
        Ok(()) => Ok(ObjectStoreMethod::Copied),
        // Another import stored the same content first.
        Err(Errno::EXIST) => Ok(ObjectStoreMethod::AlreadyPresent),
        Err(e) => Err(e),
    }
}

/// Make the object directory `dir`, unless it is there.
fn make_dir(objects: &OwnedFd, dir: &str) -> Result<(), Errno> {
    match mkdirat(objects, dir, Mode::from_raw_mode(0o777)) {
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether the object `id` of an insecure repository, `size` bytes long,
/// is there. Without fs-verity, only fsck's hashing can tell more.
fn present<H: FsVerityHashValue>(repo: &Store<H>, id: &H, size: u64) -> anyhow::Result<bool> {
    match statat(
        repo.objects_dir()?,
        id.to_object_pathname(),
        AtFlags::empty(),
    ) {
        Ok(stat) => Ok(stat.st_size as u64 == size),
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Whether the object `id` is there with fs-verity measuring to `id`.
fn sealed_present<H: FsVerityHashValue>(objects: &OwnedFd, id: &H) -> anyhow::Result<bool> {
    let path = id.to_object_pathname();
    match openat(
        objects,
        &path,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => {
            ensure_verity_equal(&fd, id)
                .with_context(|| format!("the object {path} is not sealed with its digest"))?;
            Ok(true)
        }
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Write a new object: an anonymous file, named only once it is complete
/// and, with `seal`, once fs-verity is enabled on it with the digest `id`.
/// Without fs-verity the file is written once and linked from its
/// writable descriptor.
fn write_object<H: FsVerityHashValue>(
    objects: &OwnedFd,
    id: &H,
    data: &[u8],
    seal: bool,
) -> anyhow::Result<ObjectStoreMethod> {
    let dir = id.to_object_dir();
    let tmpfile = |dir: &str| {
        openat(
            objects,
            dir,
            OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o666),
        )
    };
    let fd = match tmpfile(&dir) {
        Err(Errno::NOENT) => {
            make_dir(objects, &dir)?;
            tmpfile(&dir)?
        }
        fd => fd?,
    };
    let mut file = File::from(fd);
    file.write_all(data)?;
    if seal {
        file = seal_object(objects, file, id)?;
    }
    Ok(name_object(&file, objects, id)?)
}

/// Enable fs-verity on the anonymous `file` and check that the kernel
/// measures it as `id`.
fn seal_object<H: FsVerityHashValue>(
    objects: &OwnedFd,
    file: File,
    id: &H,
) -> anyhow::Result<File> {
    let sealed = seal::<H>(objects, file)?;
    ensure_verity_equal(&sealed, id).context("the kernel measured a new object differently")?;
    Ok(sealed)
}

/// Enable fs-verity on the anonymous `file`. fs-verity refuses a file that
/// is open for writing, so this returns a read-only descriptor of it (or
/// of a copy, if some other descriptor still writes to it).
fn seal<H: FsVerityHashValue>(objects: &OwnedFd, file: File) -> anyhow::Result<File> {
    let by_fd = format!("/proc/self/fd/{}", file.as_raw_fd());
    let read_only = openat(
        CWD,
        by_fd.as_str(),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    drop(file);
    let sealed = enable_verity_maybe_copy::<H>(objects, read_only.as_fd())
        .context("enabling fs-verity on a new object")?
        .unwrap_or(read_only);
    Ok(File::from(sealed))
}

/// Whether linking by descriptor (`AT_EMPTY_PATH`) works here: it needs
/// CAP_DAC_READ_SEARCH, which a system cfsd has and a private one may not.
static LINK_BY_FD: AtomicBool = AtomicBool::new(true);

/// Give the anonymous `file` the name `path` under `dir`: by descriptor
/// where the kernel lets us, which spares a walk through /proc, else
/// through /proc/self/fd.
fn link(file: &File, dir: &OwnedFd, path: &str) -> Result<(), Errno> {
    if LINK_BY_FD.load(Ordering::Relaxed) {
        match linkat(file, "", dir, path, AtFlags::EMPTY_PATH) {
            Err(Errno::NOENT | Errno::PERM) => LINK_BY_FD.store(false, Ordering::Relaxed),
            linked => return linked,
        }
    }
    let by_fd = format!("/proc/self/fd/{}", file.as_raw_fd());
    linkat(CWD, by_fd.as_str(), dir, path, AtFlags::SYMLINK_FOLLOW)
}
