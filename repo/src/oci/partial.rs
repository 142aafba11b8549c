//! Partial pulls: a zstd:chunked layer of a registry image, brought in
//! from only the frames the repository lacks.
//!
//! For each such layer, `prepare` reads the TOC with one range request
//! (where the manifest's annotations say it is, checked against their
//! checksum) and looks up each regular file's sha256 in the content
//! index. The blob's data frames, from byte 0 to the metadata, are then
//! cut into pieces in blob order: the payload frames of files the
//! repository holds are left out, and everything else (the frames of
//! the other files, and the frames between files, which hold the tar
//! headers and padding) is fetched with multi-range requests.
//!
//! The layer tar is the concatenation of what every frame decompresses
//! to, exactly what a full pull decompresses: the fetched stretches are
//! decompressed, and each left-out file's content is read from its object
//! in their place. Each file, fetched or read, is checked against the
//! TOC's digest as it passes, a mismatch being a typed error, and the
//! whole tar against the diff_id by the pipeline before anything is
//! named. The legacy variant carries no tar-split and this reading needs
//! none, so both variants are read the same way.
//!
//! A layer is pulled in full (its blob digest verified as ever) when it
//! is not zstd:chunked, the repository holds none of its files, or the
//! registry answers the TOC's range request with the whole blob.

use std::{
    collections::HashMap,
    fs::File,
    io::{self, Read, Write},
    sync::{Arc, Mutex},
};

use composefs::{fsverity::FsVerityHashValue, repository::Repository as Store};
use openssl::sha::Sha256;

use super::{
    digest::Digest,
    document::{self, Compression, ManifestDoc},
    layer,
    manifest::LayerPlan,
    pipeline::{Blob, BlobCheck, LayerSource},
    source::Layout,
    split::Pipe,
};
use crate::{
    Error,
    chunked::{self, Limits, Toc},
    content::ContentIndex,
    registry::{RangeCounts, Span, ranges},
};

/// A layer is pulled in part only if that fetches at most this share of
/// its blob (in percent): otherwise one verified stream is as cheap.
const WORTH_IT_PERCENT: u64 = 90;

/// One piece of a layer's data frames, in blob order.
#[derive(Debug)]
enum Piece<H> {
    /// Fetched frames between files: tar headers and padding.
    Frames(Span),
    /// A fetched file's frames, which must decompress to `size` bytes of
    /// sha256 `sha256`.
    File {
        span: Span,
        name: String,
        size: u64,
        sha256: [u8; 32],
    },
    /// A file the repository holds, read from its object.
    Object {
        id: H,
        name: String,
        size: u64,
        sha256: [u8; 32],
    },
}

/// How one layer is pulled in part.
#[derive(Debug)]
struct Plan<H> {
    pieces: Vec<Piece<H>>,
    /// The spans fetched, in order.
    spans: Vec<Span>,
    /// Their bytes.
    fetched: u64,
    /// The blob's size.
    blob_size: u64,
}

/// What the partial pulls of one image did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartialPull {
    /// Layers pulled in part.
    pub layers: u64,
    /// Files of those layers read from objects instead of fetched.
    pub files_reused: u64,
    /// Blob bytes fetched for them (without the TOCs).
    pub bytes_fetched: u64,
    /// Body bytes received for them, TOCs included.
    pub bytes_received: u64,
    /// Requests sent for them.
    pub requests: u64,
    /// Whether the registry refused multi-range requests.
    pub single_ranges: bool,
    /// Why layers were pulled in full, if any was.
    pub reason: String,
}

/// A registry layout whose zstd:chunked layers are pulled in part.
pub(crate) struct PartialLayers<H: FsVerityHashValue> {
    layout: Arc<Layout>,
    /// Each layer blob's annotations, from the manifest.
    annotations: HashMap<Digest, HashMap<String, String>>,
    repo: Mutex<Option<Arc<Store<H>>>>,
    plans: Mutex<HashMap<Digest, Arc<Plan<H>>>>,
    counts: Arc<RangeCounts>,
    report: Mutex<PartialPull>,
}

impl<H: FsVerityHashValue> PartialLayers<H> {
    /// Layers of `layout` (a registry), whose manifest is `manifest`.
    pub(crate) fn new(layout: Arc<Layout>, manifest: &[u8]) -> Self {
        PartialLayers {
            layout,
            annotations: layer_annotations(manifest),
            repo: Mutex::new(None),
            plans: Mutex::new(HashMap::new()),
            counts: Arc::default(),
            report: Mutex::new(PartialPull::default()),
        }
    }

    /// What the partial pulls did; `None` when no layer was pulled so.
    pub(crate) fn report(&self) -> Option<PartialPull> {
        let mut report = self.report.lock().ok()?.clone();
        if report.layers == 0 {
            return None;
        }
        report.bytes_received = self.counts.received();
        report.requests = self.counts.requests();
        report.single_ranges = self.counts.single_ranges();
        Some(report)
    }

    /// How to pull `layer` in part, or why not.
    fn plan_layer(
        &self,
        layer: &LayerPlan,
        index: &ContentIndex<H>,
    ) -> Result<Result<Plan<H>, String>, Error> {
        let name = layer.blob.to_string();
        let Some(remote) = self.layout.remote() else {
            return Ok(Err("the source is not a registry".to_owned()));
        };
        let annotations = self.annotations.get(&layer.blob);
        let get = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
        let found = chunked::Layout::from_annotations(get).map_err(|f| f.in_layer(&name))?;
        let (Some(chunked), Compression::Zstd) = (found, layer.compression) else {
            return Ok(Err(format!("layer {name} is not zstd:chunked")));
        };
        chunked.check(layer.size).map_err(|f| f.in_layer(&name))?;
        let limits = Limits::default();
        if chunked.toc.length > limits.toc {
            let fault = chunked::TocFault::TooLarge {
                what: "TOC",
                limit: limits.toc,
            };
            return Err(fault.in_layer(&name));
        }
        let span = Span {
            start: chunked.toc.offset,
            end: chunked.toc.offset + chunked.toc.length,
        };
        let Some(frame) = ranges::read_span(remote, &layer.blob, layer.size, span, &self.counts)?
        else {
            return Ok(Err(format!(
                "the registry ignores range requests for layer {name}"
            )));
        };
        let toc =
            Toc::decode(&frame, &chunked, layer.size, &limits).map_err(|f| f.in_layer(&name))?;
        let plan =
            cut(&toc, chunked.data_end(), layer.size, index).map_err(|f| f.in_layer(&name))?;
        if plan
            .pieces
            .iter()
            .all(|p| !matches!(p, Piece::Object { .. }))
        {
            return Ok(Err(format!(
                "the repository holds none of the files of layer {name}"
            )));
        }
        if plan.fetched * 100 > layer.size * WORTH_IT_PERCENT {
            return Ok(Err(format!(
                "the repository holds too little of layer {name}"
            )));
        }
        Ok(Ok(plan))
    }

    fn plan_of(&self, digest: &Digest) -> Option<Arc<Plan<H>>> {
        self.plans.lock().ok()?.get(digest).cloned()
    }
}

/// Cut the data frames of `toc` (ending at `data_end` of a blob of
/// `blob_size` bytes) into pieces.
fn cut<H: FsVerityHashValue>(
    toc: &Toc,
    data_end: u64,
    blob_size: u64,
    index: &ContentIndex<H>,
) -> Result<Plan<H>, chunked::TocFault> {
    let mut pieces = Vec::new();
    let mut at = 0;
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
        let name = chunked::shown(&entry.name);
        let span = Span {
            start: entry.offset,
            end: entry.end_offset,
        };
        pieces.push(match index.find(&sha256) {
            Some(id) => Piece::Object {
                id,
                name,
                size: entry.size,
                sha256,
            },
            None => Piece::File {
                span,
                name,
                size: entry.size,
                sha256,
            },
        });
        at = entry.end_offset;
    }
    if at < data_end {
        pieces.push(Piece::Frames(Span {
            start: at,
            end: data_end,
        }));
    }
    let spans: Vec<Span> = pieces
        .iter()
        .filter_map(|p| match p {
            Piece::Frames(span) | Piece::File { span, .. } => Some(*span),
            Piece::Object { .. } => None,
        })
        .collect();
    let fetched = spans.iter().map(|s| s.end - s.start).sum();
    Ok(Plan {
        pieces,
        spans,
        fetched,
        blob_size,
    })
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

/// Each layer blob's annotations in `manifest`, which the pull has
/// verified and parsed already: one that does not parse gives none, and
/// its layers are pulled in full.
fn layer_annotations(manifest: &[u8]) -> HashMap<Digest, HashMap<String, String>> {
    let Ok(parsed) = document::parse::<ManifestDoc>(manifest, "the manifest") else {
        return HashMap::new();
    };
    parsed
        .layers()
        .iter()
        .filter_map(|d| {
            Some((
                Digest::parse(&d.digest, "a layer").ok()?,
                d.annotations.clone(),
            ))
        })
        .collect()
}

impl<H: FsVerityHashValue> LayerSource<H> for PartialLayers<H> {
    fn blob(&self, layer: &LayerPlan) -> Option<Blob> {
        LayerSource::<H>::blob(&*self.layout, layer)
    }

    /// Read the TOC of each zstd:chunked layer and decide how to pull it.
    fn prepare(
        &self,
        repo: &Arc<Store<H>>,
        fetching: &[(LayerPlan, Blob)],
        absent: &[LayerPlan],
    ) -> Result<(), Error> {
        LayerSource::<H>::prepare(&*self.layout, repo, fetching, absent)?;
        if let Ok(mut kept) = self.repo.lock() {
            *kept = Some(repo.clone());
        }
        let chunked = |l: &LayerPlan| l.compression == Compression::Zstd;
        if !fetching.iter().any(|(l, _)| chunked(l)) {
            return Ok(());
        }
        let index = ContentIndex::open(repo)?;
        let mut reasons = Vec::new();
        for (layer, _) in fetching {
            match self.plan_layer(layer, &index)? {
                Ok(plan) => {
                    let mut report = self.report.lock().expect("not poisoned");
                    report.layers += 1;
                    report.bytes_fetched += plan.fetched;
                    report.files_reused += plan
                        .pieces
                        .iter()
                        .filter(|p| matches!(p, Piece::Object { .. }))
                        .count() as u64;
                    drop(report);
                    let mut plans = self.plans.lock().expect("not poisoned");
                    plans.insert(layer.blob.clone(), Arc::new(plan));
                }
                Err(why) => reasons.push(why),
            }
        }
        self.report.lock().expect("not poisoned").reason = reasons.join("; ");
        Ok(())
    }

    fn refine(&self, layer: &LayerPlan, blob: Blob) -> Blob {
        match self.plan_of(&layer.blob) {
            Some(plan) => Blob {
                size: plan.fetched,
                name: format!("frames of layer {}", layer.blob),
                check: BlobCheck::Rebuilt,
                ..blob
            },
            None => blob,
        }
    }

    fn open(&self, blob: &Blob) -> Result<Box<dyn Read + Send>, Error> {
        let (Some(plan), BlobCheck::Rebuilt) = (self.plan_of(&blob.digest), blob.check) else {
            return LayerSource::<H>::open(&*self.layout, blob);
        };
        let remote = self
            .layout
            .remote()
            .expect("planned for a registry")
            .clone();
        let reader = ranges::RangeReader::new(
            remote,
            &blob.digest,
            plan.blob_size,
            plan.spans.clone(),
            self.counts.clone(),
        )?;
        Ok(Box::new(reader))
    }

    fn unpack(
        &self,
        layer: &LayerPlan,
        blob: &Blob,
        bytes: &mut dyn Read,
        out: &mut Pipe<H>,
    ) -> Result<(), Error> {
        let (Some(plan), BlobCheck::Rebuilt) = (self.plan_of(&blob.digest), blob.check) else {
            return LayerSource::<H>::unpack(&*self.layout, layer, blob, bytes, out);
        };
        let repo = self.repo.lock().ok().and_then(|r| r.clone());
        let repo = repo.expect("prepared before unpacking");
        rebuild(&repo, layer, &plan, bytes, out)
    }
}

/// Write the tar of `layer` from the fetched `bytes` and stored objects.
fn rebuild<H: FsVerityHashValue>(
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
                span,
                name,
                size,
                sha256,
            } => {
                let mut checked = Checked::new(out, Some(*sha256));
                inflate(layer, span, bytes, &mut checked)?;
                checked.verify(layer, name, *size, "fetched")?;
            }
            Piece::Object {
                id,
                name,
                size,
                sha256,
            } => {
                let object = repo
                    .open_object(id)
                    .map_err(|e| Error::storage("reading a stored file for a partial pull", e))?;
                out.object_follows(id.clone(), *size);
                let mut checked = Checked::new(out, Some(*sha256));
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
        let Some((hasher, expected)) = self.hasher else {
            return Ok(());
        };
        let actual = hasher.finish();
        if self.count == size && actual == expected {
            return Ok(());
        }
        Err(Error::DigestMismatch {
            what: format!(
                "content of {name} ({how}) in layer {}, as its zstd:chunked TOC records it",
                layer.blob
            ),
            expected: format!("{size} bytes of {}", chunked::hex_digest(expected)),
            actual: format!("{} bytes of {}", self.count, chunked::hex_digest(actual)),
        })
    }
}
