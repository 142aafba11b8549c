//! Splitting one layer's tar into a composefs split stream, with the work
//! spread over threads: the producer decompresses into a [`Pipe`], one
//! thread parses the tar, and a small pool ([`objects`]) hashes and writes
//! the file objects while parsing goes on.
//!
//! The split decisions are composefs-oci's (a regular file above
//! [`INLINE_CONTENT_MAX_V0`] bytes becomes an object, everything else stays
//! inline), so the images built from these streams have upstream's ids.
//! What differs is how objects are written: the fs-verity digest is
//! computed from the bytes in memory, an object already present is never
//! written again, and a new one is written once and never read back.

mod large;
mod limits;
mod objects;
mod pipe;
#[cfg(test)]
pub(crate) mod tests;

use std::{
    collections::{HashMap, HashSet},
    io::{self, Write},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::Receiver,
    },
};

use composefs::{
    INLINE_CONTENT_MAX_V0,
    fsverity::FsVerityHashValue,
    repository::{ObjectStoreMethod, Repository as Store},
};
use composefs_oci::LAYER_CONTENT_TYPE;
use tar_core::{
    HEADER_SIZE,
    parse::{ParseEvent, ParsedEntry, Parser},
};

pub use self::limits::LayerLimits;
use self::{
    large::{LargeFile, Written},
    limits::{ENTRY_COST, Kept, check_size},
    objects::{BUFFERED_BYTES, Objects, Ticket},
    pipe::{CHUNK_BYTES, Claims},
};
pub(crate) use self::{
    limits::{Exceeded, PullTally},
    pipe::{Chunk, Pipe, pipe},
};
use super::{
    digest::{Digest, HashingWriter},
    entry_rules::EntryRules,
};
pub(crate) use crate::content::Contents;

/// Why a split failed.
#[derive(Debug)]
pub(crate) enum SplitError {
    /// The tar itself is malformed or truncated. `diff_id` is the digest of
    /// all of it, read to the end: a tar that is not the one the image
    /// names is reported as that, rather than as malformed.
    Tar {
        /// What is wrong with it.
        reason: String,
        /// The digest of the whole tar.
        diff_id: Digest,
    },
    /// Reading or writing the repository failed.
    Storage(anyhow::Error),
    /// The import was cancelled.
    Cancelled,
    /// The layer is larger than its [`LayerLimits`] allow. Nothing more of
    /// it is read.
    Limit(Exceeded),
}

/// Tells a running split to stop at the next entry, or at the next chunk
/// of a large entry's data; or a content-index check at its next entry.
#[derive(Clone, Default)]
pub(crate) struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// Stop the split.
    pub(crate) fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// A guard that stops the split when it is dropped.
    pub(crate) fn on_drop(&self) -> CancelOnDrop {
        CancelOnDrop(self.clone())
    }

    /// Whether the work was told to stop.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Cancels its split when dropped.
pub(crate) struct CancelOnDrop(Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// Split the tar arriving on `rx` into `repo`, and store the split stream.
/// Blocks until every object is written. Returns the stream, what the
/// import stored, the tar's digest (its diff_id), for the caller to
/// check against `expected` before naming the stream, and the stream's
/// file contents, for the content index once it is named. A tar beyond
/// `limits` is refused as soon as that shows, without reading the rest.
/// A tar that misses `expected` only by zero blocks past its end is
/// stored with them (see [`MAX_PAD_BLOCKS`]).
pub(crate) fn split<H: FsVerityHashValue>(
    rx: Receiver<Chunk<H>>,
    repo: Arc<Store<H>>,
    cancel: &Cancel,
    limits: &LayerLimits,
    pulled: PullTally,
    expected: &Digest,
) -> Result<(H, Tally<H>, Digest, Contents<H>), SplitError> {
    let mut splitter = Splitter {
        input: Input::new(rx, limits, pulled, cancel.clone()),
        rules: EntryRules::new(),
        entries: Vec::new(),
        kept: Kept::new(limits),
        objects: Objects::start(repo),
    };
    let outcome = splitter
        .run(cancel)
        .and_then(|()| splitter.restore_padding(expected));
    match outcome {
        Ok(diff_id) => {
            let (stream, stats, contents) =
                store_stream(splitter.objects, splitter.entries).map_err(SplitError::Storage)?;
            Ok((stream, stats, diff_id, contents))
        }
        Err(Fault::Tar(reason)) => match splitter.input.drain() {
            Ok(diff_id) => Err(SplitError::Tar { reason, diff_id }),
            Err(exceeded) => Err(SplitError::Limit(exceeded)),
        },
        Err(Fault::Storage(e)) => Err(SplitError::Storage(e)),
        Err(Fault::Cancelled) => Err(SplitError::Cancelled),
        Err(Fault::Limit(exceeded)) => Err(SplitError::Limit(exceeded)),
    }
}

/// Why the splitter stopped early.
enum Fault {
    Tar(String),
    Storage(anyhow::Error),
    Cancelled,
    Limit(Exceeded),
}

impl From<Exceeded> for Fault {
    fn from(exceeded: Exceeded) -> Self {
        Fault::Limit(exceeded)
    }
}

/// A piece of the split stream: tar bytes kept inline, a file's content
/// stored as an object, or a file's content that the producer claimed is
/// an object the repository holds.
enum Entry<H> {
    Inline(Vec<u8>),
    External(Ticket, u64),
    Reused(H, u64),
}

/// Wait for the objects, then write the split stream that refers to them.
fn store_stream<H: FsVerityHashValue>(
    objects: Objects<H>,
    entries: Vec<Entry<H>>,
) -> anyhow::Result<(H, Tally<H>, Contents<H>)> {
    let repo = objects.repo().clone();
    let stored = objects.finish()?;
    let mut stream = repo.create_stream(LAYER_CONTENT_TYPE)?;
    let mut stats = Tally::default();
    let mut contents = Vec::new();
    let mut reused = HashSet::new();
    for entry in entries {
        match entry {
            Entry::Inline(data) => stream.write_inline(&data),
            Entry::External(ticket, size) => {
                let (id, method, digest) = stored.get(ticket);
                stats.record(id, *method, size);
                contents.push((*digest, id.clone()));
                stream.add_external_size(size);
                stream.write_reference(id.clone())?;
            }
            Entry::Reused(id, size) => {
                stats.record(&id, ObjectStoreMethod::AlreadyPresent, size);
                reused.insert(id.clone());
                stream.add_external_size(size);
                stream.write_reference(id)?;
            }
        }
    }
    // Contents taken whole from stored objects were not hashed on the way
    // in: the index of the stream they came from knows them.
    if !reused.is_empty() {
        let digests = crate::content::digests_of_stored(&repo, &reused)?;
        contents.extend(digests.into_iter().map(|(id, digest)| (digest, id)));
    }
    Ok((stream.done()?, stats, contents))
}

/// The objects an import refers to, each counted once however many files
/// share it: whether this import wrote it, and its size.
#[derive(Debug, Clone)]
pub(crate) struct Tally<H> {
    objects: HashMap<H, (bool, u64)>,
}

impl<H> Default for Tally<H> {
    fn default() -> Self {
        Tally {
            objects: HashMap::new(),
        }
    }
}

impl<H: FsVerityHashValue> Tally<H> {
    /// Count a reference to `id`, stored by `method`. An object that any
    /// reference wrote is new, even if another found it present: that
    /// one came after the write, in this file or a concurrent layer.
    pub(crate) fn record(&mut self, id: &H, method: ObjectStoreMethod, size: u64) {
        let written = !matches!(method, ObjectStoreMethod::AlreadyPresent);
        let entry = self.objects.entry(id.clone()).or_insert((false, size));
        entry.0 |= written;
    }

    /// Add the counts of another import of the same pull.
    pub(crate) fn merge(&mut self, other: Tally<H>) {
        for (id, (written, size)) in other.objects {
            let entry = self.objects.entry(id).or_insert((false, size));
            entry.0 |= written;
        }
    }

    /// Distinct objects written.
    pub(crate) fn objects_new(&self) -> u64 {
        self.objects.values().filter(|(new, _)| *new).count() as u64
    }

    /// Distinct objects that were in the repository before.
    pub(crate) fn objects_present(&self) -> u64 {
        self.objects.values().filter(|(new, _)| !*new).count() as u64
    }

    /// Bytes of the distinct objects written.
    pub(crate) fn bytes_new(&self) -> u64 {
        self.objects
            .values()
            .filter(|(new, _)| *new)
            .map(|(_, size)| size)
            .sum()
    }
}

struct Splitter<H: FsVerityHashValue> {
    input: Input<H>,
    rules: EntryRules,
    entries: Vec<Entry<H>>,
    /// What `entries` and `rules` hold, against the metadata limit.
    kept: Kept,
    objects: Objects<H>,
}

impl<H: FsVerityHashValue> Splitter<H> {
    fn run(&mut self, cancel: &Cancel) -> Result<(), Fault> {
        let mut parser = Parser::with_defaults();
        let mut need = HEADER_SIZE;
        loop {
            if cancel.is_cancelled() {
                return Err(Fault::Cancelled);
            }
            if !self.input.fill(need)? {
                if self.input.available().is_empty() {
                    return Ok(());
                }
                return Err(truncated("a tar header"));
            }
            match parser.parse(self.input.available()) {
                Err(e) => return Err(Fault::Tar(e.to_string())),
                Ok(ParseEvent::NeedData { min_bytes }) => need = min_bytes,
                Ok(ParseEvent::GlobalExtensions { consumed, .. }) => {
                    self.inline(consumed)?;
                    need = HEADER_SIZE;
                }
                Ok(ParseEvent::SparseEntry { .. }) => {
                    return Err(Fault::Tar("sparse tar entries are not supported".into()));
                }
                Ok(ParseEvent::End { consumed }) => {
                    self.inline(consumed)?;
                    return self.trailer();
                }
                // A header that declares more data than the layer may have
                // is refused before any of it is read.
                Ok(ParseEvent::Entry { consumed, entry }) => {
                    let end = self.input.position() + consumed as u64;
                    let size = admit(&mut self.rules, &mut self.kept, &entry)?;
                    check_size(end.saturating_add(padded(entry.size)), self.input.limit)?;
                    let external = entry.entry_type.is_file() && size > INLINE_CONTENT_MAX_V0;
                    self.inline(consumed)?;
                    self.content(size, external)?;
                    need = HEADER_SIZE;
                }
            }
        }
    }

    /// Move `n` bytes of input into the stream inline.
    fn inline(&mut self, n: usize) -> Result<(), Fault> {
        self.kept.keep(n as u64)?;
        push_inline(&mut self.entries, &self.input.available()[..n]);
        self.input.consume(n);
        Ok(())
    }

    /// One entry's content and padding.
    fn content(&mut self, size: usize, external: bool) -> Result<(), Fault> {
        let padded = size.next_multiple_of(512);
        if !external {
            return self.copy_inline(padded);
        }
        let entry = match self.input.claimed(size)? {
            // Its bytes are hashed into the diff_id as they arrive; that is
            // all they are needed for.
            Some(id) => {
                self.input.skip(size)?;
                Entry::Reused(id, size as u64)
            }
            None => Entry::External(self.store(size)?, size as u64),
        };
        self.entries.push(entry);
        self.copy_inline(padded - size)
    }

    /// Hand the next `size` bytes to the object writers.
    fn store(&mut self, size: usize) -> Result<Ticket, Fault> {
        if size > BUFFERED_BYTES {
            let written = self.stream_large(size)?;
            return self
                .objects
                .add_written(written, size as u64)
                .map_err(Fault::Storage);
        }
        let mut data = Vec::with_capacity(size);
        self.input.read_into(size, &mut data)?;
        self.objects.add(data).map_err(Fault::Storage)
    }

    /// A file too large to hold in memory is written to an anonymous file
    /// and hashed, both beside the parsing, as its bytes arrive.
    fn stream_large(&mut self, size: usize) -> Result<Written<H>, Fault> {
        let repo = self.objects.repo();
        let fd = repo.create_object_tmpfile().map_err(Fault::Storage)?;
        let mut file = LargeFile::start(std::fs::File::from(fd), repo.is_insecure());
        self.input.read_into(size, &mut file)?;
        file.finish().map_err(|e| Fault::Storage(e.into()))
    }

    fn copy_inline(&mut self, mut n: usize) -> Result<(), Fault> {
        while n > 0 {
            if !self.input.fill(1)? {
                return Err(truncated("an entry's content"));
            }
            let take = n.min(self.input.available().len());
            self.inline(take)?;
            n -= take;
        }
        Ok(())
    }

    /// The digest of the tar received, or `expected` when the tar and
    /// some zero blocks more are that: those blocks are then stored too,
    /// so that the stream holds exactly the tar `expected` names. Past the
    /// end-of-archive marker they change no entry.
    fn restore_padding(&mut self, expected: &Digest) -> Result<Digest, Fault> {
        let received = self.input.digest.clone().finish();
        if received == *expected || !self.input.received.is_multiple_of(TAR_BLOCK as u64) {
            return Ok(received);
        }
        let block = [0u8; TAR_BLOCK];
        let mut padded = self.input.digest.clone();
        for blocks in 1..=MAX_PAD_BLOCKS {
            padded
                .write_all(&block)
                .map_err(|e| Fault::Storage(e.into()))?;
            if padded.clone().finish() == *expected {
                let zeros = vec![0u8; blocks * TAR_BLOCK];
                self.kept.keep(zeros.len() as u64)?;
                push_inline(&mut self.entries, &zeros);
                return Ok(expected.clone());
            }
        }
        Ok(received)
    }

    /// Whatever follows the end-of-archive blocks (GNU tar pads to its
    /// record size) belongs to the tar too, for its diff_id.
    fn trailer(&mut self) -> Result<(), Fault> {
        while self.input.fill(1)? {
            let n = self.input.available().len();
            self.inline(n)?;
        }
        Ok(())
    }
}

/// A tar block.
const TAR_BLOCK: usize = 512;

/// The most zero blocks a tar may lack past its end-of-archive marker,
/// 1 MiB: far more than any writer pads with (GNU tar and Python's
/// tarfile pad to a record of 20 blocks). containers/storage's legacy
/// zstd:chunked writer (skopeo 1.9's) drops that padding, yet the image
/// keeps the diff_id of the padded tar: our Debian v2 written so lacks 13
/// blocks, in a full pull as in a partial one.
const MAX_PAD_BLOCKS: usize = 2048;

/// Keep `bytes` inline, after the inline bytes before them if any.
fn push_inline<H>(entries: &mut Vec<Entry<H>>, bytes: &[u8]) {
    match entries.last_mut() {
        Some(Entry::Inline(last)) => last.extend_from_slice(bytes),
        _ => entries.push(Entry::Inline(bytes.to_vec())),
    }
}

/// Check an entry against the entry rules and the metadata limit before
/// any of its data is read; its data's size.
fn admit(rules: &mut EntryRules, kept: &mut Kept, entry: &ParsedEntry<'_>) -> Result<usize, Fault> {
    rules.check_entry(entry).map_err(Fault::Tar)?;
    let size = usize::try_from(entry.size)
        .map_err(|_| Fault::Tar(format!("entry size {}", entry.size)))?;
    let link = entry.link_target.as_deref().map_or(0, <[u8]>::len);
    kept.keep((entry.path.len() + link) as u64 + ENTRY_COST)?;
    Ok(size)
}

/// The bytes `size` bytes of entry data take in the tar, saturating.
fn padded(size: u64) -> u64 {
    size.checked_next_multiple_of(512).unwrap_or(u64::MAX)
}

fn truncated(what: &str) -> Fault {
    Fault::Tar(format!("the tar ends in the middle of {what}"))
}

/// The parser's view of the pipe: the unread bytes, refilled chunk by
/// chunk, and the producer's claims about them.
struct Input<H> {
    rx: Receiver<Chunk<H>>,
    buf: Vec<u8>,
    pos: usize,
    claims: Claims<H>,
    /// Hashes the tar as it arrives; the producer's thread is the busier.
    digest: HashingWriter<io::Sink>,
    /// Bytes of tar received so far.
    received: u64,
    /// The most bytes of tar that may be received.
    limit: u64,
    /// What the whole pull has received, and may.
    pulled: PullTally,
    pull_limit: u64,
    /// Checked before each chunk is taken: one file's data may be most
    /// of a layer, and a split stopped only between entries would go on
    /// to its end after its caller has gone.
    cancel: Cancel,
}

impl<H> Input<H> {
    fn new(
        rx: Receiver<Chunk<H>>,
        limits: &LayerLimits,
        pulled: PullTally,
        cancel: Cancel,
    ) -> Self {
        Input {
            rx,
            buf: Vec::with_capacity(2 * CHUNK_BYTES),
            pos: 0,
            claims: Claims::new(),
            digest: HashingWriter::new(io::sink()),
            received: 0,
            limit: limits.max_layer_size,
            pulled,
            pull_limit: limits.max_pull_size,
            cancel,
        }
    }

    /// Where in the tar the unread bytes start.
    fn position(&self) -> u64 {
        self.received - self.available().len() as u64
    }

    /// The next chunk of the tar, hashed and counted, its claims noted;
    /// `None` at its end.
    fn receive(&mut self) -> Result<Option<Vec<u8>>, Exceeded> {
        let Ok(Chunk { bytes, claims }) = self.rx.recv() else {
            return Ok(None);
        };
        self.received += bytes.len() as u64;
        check_size(self.received, self.limit)?;
        self.pulled.add(bytes.len() as u64, self.pull_limit)?;
        self.digest
            .write_all(&bytes)
            .expect("writing to a sink cannot fail");
        let position = self.received - (bytes.len() + self.available().len()) as u64;
        self.claims.receive(claims, position);
        Ok(Some(bytes))
    }

    fn available(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
    }

    /// Make at least `need` bytes available; false if the tar ends first.
    fn fill(&mut self, need: usize) -> Result<bool, Fault> {
        while self.available().len() < need {
            if self.cancel.is_cancelled() {
                return Err(Fault::Cancelled);
            }
            let Some(chunk) = self.receive()? else {
                return Ok(false);
            };
            if self.available().is_empty() {
                // Nothing to keep: the chunk becomes the buffer, uncopied.
                self.buf = chunk;
            } else {
                self.buf.drain(..self.pos);
                self.buf.extend_from_slice(&chunk);
            }
            self.pos = 0;
        }
        Ok(true)
    }

    /// The object the producer claimed the next `size` bytes are, if it
    /// claimed exactly those.
    fn claimed(&mut self, size: usize) -> Result<Option<H>, Fault> {
        // A claim comes with the chunk holding its first byte, or earlier.
        if !self.fill(1)? {
            return Err(truncated("a file's content"));
        }
        Ok(self.claims.take(self.position(), size as u64))
    }

    /// Pass over the next `n` bytes, which were hashed as they arrived.
    fn skip(&mut self, mut n: usize) -> Result<(), Fault> {
        while n > 0 {
            if !self.fill(1)? {
                return Err(truncated("a file's content"));
            }
            let take = n.min(self.available().len());
            self.consume(take);
            n -= take;
        }
        Ok(())
    }

    /// Read the rest of the tar, for its digest, as far as the size limit
    /// lets it go.
    fn drain(mut self) -> Result<Digest, Exceeded> {
        self.buf = Vec::new();
        self.pos = 0;
        while self.receive()?.is_some() {}
        Ok(self.digest.finish())
    }

    /// Copy the next `n` bytes into `out`.
    fn read_into(&mut self, mut n: usize, out: &mut impl Write) -> Result<(), Fault> {
        while n > 0 {
            if !self.fill(1)? {
                return Err(truncated("a file's content"));
            }
            let take = n.min(self.available().len());
            out.write_all(&self.available()[..take])
                .map_err(|e| Fault::Storage(e.into()))?;
            self.consume(take);
            n -= take;
        }
        Ok(())
    }
}
