//! Copying what an image needs out of a secondary repository.
//!
//! A layer is rebuilt as its tar from the source's layer stream and goes
//! through the same pipeline as a pulled one: split again, its diff_id
//! checked, its stream named only then. So a copy's result is exactly a
//! pull's of the same image, whatever algorithm either repository uses.
//! Each object the stream refers to is checked against its fs-verity
//! digest as it is copied:
//!
//! - same algorithm: the object is cloned into this repository (FICLONE
//!   where both share a filesystem that can, `copy_file_range` or plain
//!   reads elsewhere), measured there, and the tar's bytes are then read
//!   from the clone, so an object file changed during the copy cannot
//!   make the stream refer to other bytes than the tar had;
//! - another algorithm: its bytes are hashed with the source's algorithm
//!   on their way into the splitter, which stores them under this
//!   repository's.

use std::{
    fs::File,
    io::{self, Read, Write},
    os::fd::AsFd,
    sync::Arc,
};

use composefs::{
    fsverity::{FsVerityHashValue, FsVerityHasher},
    repository::Repository as Store,
    splitstream::{SplitStreamData, SplitStreamReader},
};

use super::{SecondaryRepository, with_source_hash};
use crate::{
    Error,
    oci::{
        digest::Digest,
        layer::pipe_error,
        manifest::LayerPlan,
        pipeline::{Blob, LayerSource},
        split::Pipe,
    },
};

/// Why reading a stream stopped.
pub(crate) enum StreamError {
    /// The source repository is at fault, or its disk.
    Source(Error),
    /// The output failed.
    Output(io::Error),
    /// The stream's format is broken.
    Format(String),
}

impl StreamError {
    /// As the error of reading the stream `name`.
    pub(crate) fn into_error(self, name: &str) -> Error {
        match self {
            StreamError::Source(e) => e,
            StreamError::Output(e) => Error::storage("copying from the source repository", e),
            StreamError::Format(reason) => Error::SourceRepository {
                reason: format!("its stream {name} is damaged: {reason}"),
            },
        }
    }
}

/// Walk `stream`, handing each inline span and object to `visit`.
fn walk<S: FsVerityHashValue>(
    stream: &mut SplitStreamReader<S>,
    mut visit: impl FnMut(SplitStreamData<S>) -> Result<(), StreamError>,
) -> Result<(), StreamError> {
    let mut failed = None;
    let walked = stream.for_each_chunk(|chunk| {
        visit(chunk).map_err(|e| {
            failed = Some(e);
            anyhow::anyhow!("stopped")
        })
    });
    match (failed, walked) {
        (Some(e), _) => Err(e),
        (None, Err(e)) => Err(StreamError::Format(format!("{e:#}"))),
        (None, Ok(())) => Ok(()),
    }
}

/// The content of `stream`, its objects checked, into `out`; at most
/// `limit` bytes.
pub(crate) fn read_stream<S: FsVerityHashValue>(
    repo: &SecondaryRepository,
    stream: &mut SplitStreamReader<S>,
    out: &mut Vec<u8>,
    limit: u64,
) -> Result<(), StreamError> {
    walk(stream, |chunk| {
        match chunk {
            SplitStreamData::Inline(bytes) => out.extend_from_slice(&bytes),
            SplitStreamData::External(id) => {
                let file = repo.open_object(&id).map_err(StreamError::Source)?;
                let mut limited = file.take(limit + 1 - out.len() as u64);
                let mut checked = Checked::<S, _>::new(&mut *out);
                io::copy(&mut limited, &mut checked).map_err(read_failed)?;
                checked.verify(&id)?;
            }
        }
        if out.len() as u64 > limit {
            return Err(StreamError::Format(format!(
                "it is larger than {limit} bytes"
            )));
        }
        Ok(())
    })
}

fn read_failed(e: io::Error) -> StreamError {
    StreamError::Source(Error::storage("reading the source repository", e))
}

/// A writer that hashes what passes, as fs-verity with `S` would.
struct Checked<S: FsVerityHashValue, W> {
    out: W,
    hasher: FsVerityHasher<S>,
}

impl<S: FsVerityHashValue, W: Write> Checked<S, W> {
    fn new(out: W) -> Self {
        Checked {
            out,
            hasher: FsVerityHasher::new(),
        }
    }

    /// Whether what passed is the object `id`.
    fn verify(mut self, id: &S) -> Result<(), StreamError> {
        let actual = self.hasher.digest();
        if &actual == id {
            return Ok(());
        }
        Err(StreamError::Source(mismatch(id, &actual)))
    }
}

fn mismatch<S: FsVerityHashValue>(id: &S, actual: &impl FsVerityHashValue) -> Error {
    Error::DigestMismatch {
        what: format!("object {} of the source repository", id.to_hex()),
        expected: id.to_hex(),
        actual: actual.to_hex(),
    }
}

impl<S: FsVerityHashValue, W: Write> Write for Checked<S, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.write_all(&buf[..n])?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The layers of an image in a secondary repository, as the pipeline
/// brings them into `repo`.
pub(crate) struct CopyLayers<H: FsVerityHashValue> {
    /// Where they come from.
    pub source: Arc<SecondaryRepository>,
    /// Where they go: objects are cloned into it before the splitter
    /// refers to them.
    pub repo: Arc<Store<H>>,
}

impl<H: FsVerityHashValue> LayerSource<H> for CopyLayers<H> {
    /// No blob: the tar is rebuilt from the layer's stream and checked
    /// against its diff_id alone, so the "blob" read is empty.
    fn blob(&self, layer: &LayerPlan) -> Option<Blob> {
        Some(Blob {
            digest: Digest::of(b""),
            size: layer.size,
            name: format!("layer {} of the source repository", layer.diff_id),
            tar: format!(
                "diff_id of layer {} copied from the source repository",
                layer.blob
            ),
            check: crate::oci::pipeline::BlobCheck::Digest,
        })
    }

    fn prepare(
        &self,
        _repo: &Arc<Store<H>>,
        fetching: &[(LayerPlan, Blob)],
        _absent: &[LayerPlan],
    ) -> Result<(), Error> {
        for (layer, _) in fetching {
            let name = format!("oci-layer-{}", layer.diff_id);
            let present = with_source_hash!(self.source, S => self.source.stream_object::<S>(&name)?.is_some());
            if !present {
                return Err(Error::SourceRepository {
                    reason: format!("it has no stream of layer {}", layer.diff_id),
                });
            }
        }
        Ok(())
    }

    fn open(&self, _blob: &Blob) -> Result<Box<dyn Read + Send>, Error> {
        Ok(Box::new(io::empty()))
    }

    fn unpack(
        &self,
        layer: &LayerPlan,
        _blob: &Blob,
        _bytes: &mut dyn Read,
        out: &mut Pipe<H>,
    ) -> Result<(), Error> {
        let name = format!("oci-layer-{}", layer.diff_id);
        let written = with_source_hash!(self.source, S => self.write_layer::<S>(&name, out));
        written.map_err(|e| match e {
            StreamError::Output(e) => pipe_error(layer, e),
            e => e.into_error(&name),
        })
    }
}

impl<H: FsVerityHashValue> CopyLayers<H> {
    /// Write the tar of the layer stream `name` into `out`.
    fn write_layer<S: FsVerityHashValue>(
        &self,
        name: &str,
        out: &mut Pipe<H>,
    ) -> Result<(), StreamError> {
        let mut stream = self
            .source
            .open_stream::<S>(name)
            .map_err(StreamError::Source)?
            .ok_or_else(|| StreamError::Format("it disappeared".to_owned()))?;
        let same = S::ALGORITHM == H::ALGORITHM;
        walk(&mut stream, |chunk| match chunk {
            SplitStreamData::Inline(bytes) => out.write_all(&bytes).map_err(StreamError::Output),
            SplitStreamData::External(id) if same => self.clone_object(&id, out),
            SplitStreamData::External(id) => {
                let file = self.source.open_object(&id).map_err(StreamError::Source)?;
                let mut checked = Checked::<S, _>::new(&mut *out);
                copy_into(file, &mut checked)?;
                checked.verify(&id)
            }
        })
    }

    /// Bring the object `id` (of this repository's algorithm too) in, by
    /// a clone measured here unless it is here already, then write its
    /// bytes, read from this repository, claimed as that object.
    fn clone_object<S: FsVerityHashValue>(
        &self,
        id: &S,
        out: &mut Pipe<H>,
    ) -> Result<(), StreamError> {
        let ours = H::from_hex(id.to_hex()).map_err(|e| StreamError::Format(e.to_string()))?;
        let stored = match self.repo.open_object(&ours) {
            Ok(fd) => File::from(fd),
            Err(_) => {
                let source = self.source.open_object(id).map_err(StreamError::Source)?;
                self.store_clone(&source, &ours)?
            }
        };
        let size = stored.metadata().map_err(read_failed)?.len();
        out.object_follows(ours, size);
        copy_into(stored, out)
    }

    /// Clone `source` into a new object, which must measure as `id`.
    fn store_clone(&self, source: &File, id: &H) -> Result<File, StreamError> {
        let storing = |e: anyhow::Error| {
            StreamError::Source(Error::storage(
                "storing an object copied from the source repository",
                e,
            ))
        };
        let tmp = File::from(self.repo.create_object_tmpfile().map_err(storing)?);
        let size = source.metadata().map_err(read_failed)?.len();
        clone_file(source, &tmp, size).map_err(|e| storing(e.into()))?;
        let (stored, _) = self
            .repo
            .finalize_object_tmpfile(tmp, size)
            .map_err(storing)?;
        if &stored != id {
            return Err(StreamError::Source(mismatch(id, &stored)));
        }
        let fd = self.repo.open_object(id).map_err(storing)?;
        Ok(File::from(fd))
    }
}

/// All of `file` into `out`.
fn copy_into(mut file: File, out: &mut impl Write) -> Result<(), StreamError> {
    let mut buf = vec![0; 256 << 10];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_failed(e)),
        };
        out.write_all(&buf[..n]).map_err(StreamError::Output)?;
    }
}

/// Make `to` a copy of the `size` bytes of `from`: a reflink where the
/// filesystem shares extents, else `copy_file_range` (which a filesystem
/// may also serve by sharing), else plain reads and writes.
fn clone_file(from: &File, to: &File, size: u64) -> io::Result<()> {
    if rustix::fs::ioctl_ficlone(to.as_fd(), from.as_fd()).is_ok() {
        return Ok(());
    }
    let mut done = 0u64;
    while done < size {
        let (mut off_in, mut off_out) = (done, done);
        let chunk = usize::try_from(size - done)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match rustix::fs::copy_file_range(from, Some(&mut off_in), to, Some(&mut off_out), chunk) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the object shrank",
                ));
            }
            Ok(n) => done += n as u64,
            Err(_) if done == 0 => return plain_copy(from, to),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn plain_copy(from: &File, to: &File) -> io::Result<()> {
    let (mut from, mut to) = (from.try_clone()?, to.try_clone()?);
    io::copy(&mut from, &mut to).map(|_| ())
}
