//! How a layer is cut into what is fetched and what is read from the
//! repository: the pieces of its data frames, in blob order.

use composefs::{fsverity::FsVerityHashValue, repository::Repository as Store};

use crate::{
    chunked::{self, Toc, TocFile},
    content::{ChunkHints, ContentIndex, StoredChunk},
    oci::digest::Digest,
    registry::Span,
};

/// One piece of a layer's data frames, in blob order.
#[derive(Debug)]
pub(super) enum Piece<H> {
    /// Fetched frames between files: tar headers and padding.
    Frames(Span),
    /// A file the repository lacks, made of `parts`, which must add up to
    /// `size` bytes of sha256 `sha256`.
    File {
        parts: Vec<Part<H>>,
        name: String,
        size: u64,
        sha256: [u8; 32],
    },
    /// A file the repository holds, read from its object.
    Object { id: H, name: String, size: u64 },
}

/// Where one stretch of a file the repository lacks comes from.
#[derive(Debug)]
pub(super) enum Part<H> {
    /// Fetched frames.
    Fetched(Span),
    /// A chunk the repository holds as part of another file, whose bytes
    /// were checked against the chunk's digest when planning.
    Stored(StoredChunk<H>),
    /// A chunk the TOC says is this many zero bytes.
    Zeros(u64),
}

/// How one layer is pulled in part.
#[derive(Debug)]
pub(super) struct Plan<H> {
    pub(super) pieces: Vec<Piece<H>>,
    /// The spans fetched, in order.
    pub(super) spans: Vec<Span>,
    /// Their bytes.
    pub(super) fetched: u64,
    /// The blob's size.
    pub(super) blob_size: u64,
    /// Files read whole from objects.
    pub(super) files_reused: u64,
    /// Chunks read from objects or known to be zeros.
    pub(super) chunks_reused: u64,
}

/// Cut the data frames of `toc` (ending at `data_end` of a blob of
/// `blob_size` bytes) into pieces, taking from `repo` what `index` says
/// it holds.
pub(super) fn cut<H: FsVerityHashValue>(
    repo: &Store<H>,
    toc: &Toc,
    data_end: u64,
    blob_size: u64,
    index: &ContentIndex<H>,
) -> Result<Plan<H>, chunked::TocFault> {
    let mut pieces = Vec::new();
    let (mut at, mut files_reused, mut chunks_reused) = (0, 0, 0);
    for file in toc.files() {
        let entry = file.entry;
        if entry.size == 0 {
            continue;
        }
        let sha256 = sha256_of(entry.digest.as_deref(), &entry.name)?;
        if at < entry.offset {
            pieces.push(Piece::Frames(Span {
                start: at,
                end: entry.offset,
            }));
        }
        let (name, size) = (chunked::shown(&entry.name), entry.size);
        pieces.push(match index.find(&sha256) {
            Some(id) => {
                files_reused += 1;
                Piece::Object { id, name, size }
            }
            None => {
                let parts = parts_of(repo, &file, index);
                chunks_reused += parts
                    .iter()
                    .filter(|p| !matches!(p, Part::Fetched(_)))
                    .count() as u64;
                Piece::File {
                    parts,
                    name,
                    size,
                    sha256,
                }
            }
        });
        at = entry.end_offset;
    }
    if at < data_end {
        pieces.push(Piece::Frames(Span {
            start: at,
            end: data_end,
        }));
    }
    let spans = fetched_spans(&pieces);
    Ok(Plan {
        fetched: spans.iter().map(|s| s.end - s.start).sum(),
        spans,
        pieces,
        blob_size,
        files_reused,
        chunks_reused,
    })
}

/// The spans `pieces` fetch, in order.
fn fetched_spans<H>(pieces: &[Piece<H>]) -> Vec<Span> {
    let mut spans = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Frames(span) => spans.push(*span),
            Piece::File { parts, .. } => spans.extend(parts.iter().filter_map(|p| match p {
                Part::Fetched(span) => Some(*span),
                _ => None,
            })),
            Piece::Object { .. } => {}
        }
    }
    spans
}

/// Where the stretches of `file`, which the repository lacks, come from:
/// each chunk the index knows, and whose stored bytes have the chunk's
/// digest, from its object; zero chunks from nothing; the rest fetched.
/// A file without chunks is fetched whole.
fn parts_of<H: FsVerityHashValue>(
    repo: &Store<H>,
    file: &TocFile<'_>,
    index: &ContentIndex<H>,
) -> Vec<Part<H>> {
    let frames = file.frames();
    let whole = Span {
        start: file.entry.offset,
        end: file.entry.end_offset,
    };
    if frames.len() < 2 {
        return vec![Part::Fetched(whole)];
    }
    let mut parts: Vec<Part<H>> = Vec::with_capacity(frames.len());
    for frame in frames {
        let size = frame.file.end - frame.file.start;
        if frame.zeros {
            parts.push(Part::Zeros(size));
            continue;
        }
        let digest = frame
            .digest
            .as_deref()
            .and_then(|d| Digest::parse(d, "a chunk").ok());
        let stored = digest
            .and_then(|d| Some((index.find_chunk(&d.bytes())?, d)))
            .filter(|(c, d)| c.size == size && chunk_holds(repo, c, d));
        parts.push(match stored {
            Some((chunk, _)) => Part::Stored(chunk),
            None => Part::Fetched(Span {
                start: frame.blob.start,
                end: frame.blob.end,
            }),
        });
    }
    parts
}

/// Whether the stored bytes `chunk` names have the digest `digest`. An
/// index file is a hint, whose chunk records a TOC wrote: one that lies,
/// or an object that cannot be read, means fetching the chunk instead.
fn chunk_holds<H: FsVerityHashValue>(
    repo: &Store<H>,
    chunk: &StoredChunk<H>,
    digest: &Digest,
) -> bool {
    match crate::content::hash_stretch(repo, &chunk.object, chunk.offset, chunk.size) {
        Ok(actual) if actual == digest.bytes() => true,
        Ok(_) => {
            tracing::warn!("a stored chunk does not hold {digest}: fetching it");
            false
        }
        Err(e) => {
            tracing::warn!("a stored chunk of {digest} cannot be read ({e}): fetching it");
            false
        }
    }
}

/// How the files of `toc` are cut into chunks, for the content index:
/// every file of two chunks or more, and its chunks of data that have a
/// digest. Zero chunks need no record.
pub(super) fn hints_of(toc: &Toc) -> ChunkHints {
    let mut hints = ChunkHints::new();
    for file in toc.files() {
        let frames = file.frames();
        if frames.len() < 2 {
            continue;
        }
        let Ok(sha256) = sha256_of(file.entry.digest.as_deref(), &file.entry.name) else {
            continue;
        };
        let chunks: Vec<_> = frames
            .iter()
            .filter(|f| !f.zeros)
            .filter_map(|f| {
                let digest = Digest::parse(f.digest.as_deref()?, "a chunk").ok()?;
                Some((digest.bytes(), f.file.start, f.file.end - f.file.start))
            })
            .collect();
        if !chunks.is_empty() {
            hints.insert(sha256, chunks);
        }
    }
    hints
}

/// The 32 bytes of a TOC entry's `sha256:<hex>` digest.
fn sha256_of(digest: Option<&str>, name: &str) -> Result<[u8; 32], chunked::TocFault> {
    digest
        .and_then(|d| Digest::parse(d, "a TOC entry").ok())
        .map(|d| d.bytes())
        .ok_or_else(|| chunked::TocFault::Entry {
            name: chunked::shown(name),
            reason: "a regular file with content has no sha256 digest".to_owned(),
        })
}
