//! The layer tar of a partial pull, made from the fetched frames and
//! the stored objects, each file counted, and each one not read whole
//! from an object hashed, against the TOC as it passes.

use std::{
    fs::File,
    io::{self, Read, Seek, Write},
};

use composefs::{fsverity::FsVerityHashValue, repository::Repository as Store};
use openssl::sha::Sha256;

use super::plan::{Part, Piece, Plan};
use crate::{
    Error, chunked,
    content::StoredChunk,
    oci::{document::Compression, layer, manifest::LayerPlan, split::Pipe},
    registry::Span,
};

/// Write the tar of `layer` from the fetched `bytes` and stored objects.
pub(super) fn rebuild<H: FsVerityHashValue>(
    repo: &Store<H>,
    layer: &LayerPlan,
    plan: &Plan<H>,
    bytes: &mut dyn Read,
    out: &mut Pipe<H>,
) -> Result<(), Error> {
    for piece in &plan.pieces {
        let out = &mut *out;
        match piece {
            Piece::Frames(span) => {
                let mut sink = Checked::new(out, None);
                inflate(layer, span, bytes, &mut sink)?;
            }
            Piece::File {
                parts,
                name,
                size,
                sha256,
            } => {
                let mut checked = Checked::new(out, Some(*sha256));
                for part in parts {
                    match part {
                        Part::Fetched(span) => inflate(layer, span, bytes, &mut checked)?,
                        Part::Stored(chunk) => copy_chunk(repo, layer, chunk, &mut checked)?,
                        Part::Zeros(size) => zeros(layer, *size, &mut checked)?,
                    }
                }
                checked.verify(layer, name, *size, "fetched")?;
            }
            Piece::Object { id, name, size } => {
                let object = repo
                    .open_object(id)
                    .map_err(|e| Error::storage("reading a stored file for a partial pull", e))?;
                out.object_follows(id.clone(), *size);
                // The index says the object has the TOC's digest; the
                // diff_id, which hashes every byte anyway, proves it, so
                // only its size is checked here.
                let mut checked = Checked::new(out, None);
                copy(layer, File::from(object), &mut checked)?;
                checked.verify(layer, name, *size, "stored")?;
            }
        }
    }
    Ok(())
}

/// Decompress the next `span` of fetched frames from `bytes` into `out`.
fn inflate<H>(
    layer: &LayerPlan,
    span: &Span,
    bytes: &mut dyn Read,
    out: &mut Checked<'_, H>,
) -> Result<(), Error> {
    let mut frames = bytes.take(span.end - span.start);
    let damaged = |e: io::Error| layer::damaged(&layer.blob, e);
    layer::decompress_into(Compression::Zstd, &mut frames, out, layer, damaged)?;
    // A stretch must be whole frames: what is left is not.
    let left = io::copy(&mut frames, &mut io::sink()).map_err(damaged)?;
    if left > 0 {
        return Err(Error::InvalidLayer {
            layer: layer.blob.to_string(),
            reason: format!(
                "bytes {}..{} are not whole zstd frames",
                span.start, span.end
            ),
        });
    }
    Ok(())
}

/// Copy the stored bytes `chunk` names into `out`.
fn copy_chunk<H: FsVerityHashValue>(
    repo: &Store<H>,
    layer: &LayerPlan,
    chunk: &StoredChunk<H>,
    out: &mut Checked<'_, H>,
) -> Result<(), Error> {
    const READING: &str = "reading a stored chunk for a partial pull";
    let object = repo.open_object(&chunk.object);
    let mut object = File::from(object.map_err(|e| Error::storage(READING, e))?);
    object
        .seek(io::SeekFrom::Start(chunk.offset))
        .map_err(|e| Error::storage(READING, e))?;
    let mut bytes = object.take(chunk.size);
    let failed = |e: io::Error| Error::storage(READING, e);
    layer::decompress_into(Compression::None, &mut bytes, out, layer, failed)
}

/// Write `size` zero bytes into `out`.
fn zeros<H>(layer: &LayerPlan, size: u64, out: &mut Checked<'_, H>) -> Result<(), Error> {
    let mut zeros = io::repeat(0).take(size);
    let never = |e: io::Error| Error::storage("making zeros", e);
    layer::decompress_into(Compression::None, &mut zeros, out, layer, never)
}

/// Copy the stored object `from` into `out`.
fn copy<H>(layer: &LayerPlan, mut from: File, out: &mut Checked<'_, H>) -> Result<(), Error> {
    let damaged = |e| Error::storage("reading a stored file for a partial pull", e);
    layer::decompress_into(Compression::None, &mut from, out, layer, damaged)
}

impl<H> Write for Checked<'_, H> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.out.write_all(bytes)?;
        if let Some((hasher, _)) = &mut self.hasher {
            hasher.update(bytes);
        }
        self.count += bytes.len() as u64;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The pipe, counting and hashing a file's bytes on their way.
struct Checked<'p, H> {
    out: &'p mut Pipe<H>,
    hasher: Option<(Sha256, [u8; 32])>,
    count: u64,
}

impl<'p, H> Checked<'p, H> {
    fn new(out: &'p mut Pipe<H>, sha256: Option<[u8; 32]>) -> Self {
        Checked {
            out,
            hasher: sha256.map(|d| (Sha256::new(), d)),
            count: 0,
        }
    }

    /// Fail unless the bytes were `size` and had the expected digest.
    fn verify(self, layer: &LayerPlan, name: &str, size: u64, how: &str) -> Result<(), Error> {
        let what = |of: &str| {
            format!(
                "{of} of {name} ({how}) in layer {}, as its zstd:chunked TOC records it",
                layer.blob
            )
        };
        let Some((hasher, expected)) = self.hasher else {
            if self.count == size {
                return Ok(());
            }
            return Err(Error::DigestMismatch {
                what: what("size"),
                expected: format!("{size} bytes"),
                actual: format!("{} bytes", self.count),
            });
        };
        let actual = hasher.finish();
        if self.count == size && actual == expected {
            return Ok(());
        }
        Err(Error::DigestMismatch {
            what: what("content"),
            expected: format!("{size} bytes of {}", chunked::hex_digest(expected)),
            actual: format!("{} bytes of {}", self.count, chunked::hex_digest(actual)),
        })
    }
}
