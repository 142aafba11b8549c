//! Partial pulls: a zstd:chunked layer of a registry image, brought in
//! from only the frames the repository lacks.
//!
//! For each such layer, `prepare` reads the TOC with one range request
//! (where the manifest's annotations say it is, checked against their
//! checksum) and looks up each regular file's sha256 in the content
//! index, and each chunk of a file it lacks by the chunk's digest. The
//! blob's data frames, from byte 0 to the metadata, are then cut into
//! pieces in blob order ([`plan`]): the frames of files and chunks the
//! repository holds are left out, and everything else (the frames of
//! the other files and chunks, and the frames between files, which hold
//! the tar headers and padding) is fetched with multi-range requests.
//!
//! The layer tar is the concatenation of what every frame decompresses
//! to, exactly what a full pull decompresses ([`rebuild`]): the fetched
//! stretches are decompressed, and each left-out file or chunk is read
//! from its object in their place. Each file that is not read whole from
//! an object is checked against the TOC's digest as it passes, a
//! mismatch being a typed error, and the whole tar against the diff_id
//! by the pipeline before anything is named. The legacy variant carries
//! no tar-split and this reading needs none, so both variants are read
//! the same way. Every TOC read leaves its chunks, for the content index
//! ([`LayerSource::chunk_hints`]).
//!
//! A layer is pulled in full (its blob digest verified as ever) when it
//! is not zstd:chunked, the repository holds none of its files, or the
//! registry answers the TOC's range request with the whole blob.

use std::{
    collections::HashMap,
    io::Read,
    sync::{Arc, Mutex},
};

use composefs::{fsverity::FsVerityHashValue, repository::Repository as Store};

use self::{
    plan::{Plan, cut, hints_of},
    rebuild::rebuild,
};
use super::{
    digest::Digest,
    document::{self, Compression, ManifestDoc},
    manifest::LayerPlan,
    pipeline::{Blob, BlobCheck, LayerSource},
    source::Layout,
    split::Pipe,
};
use crate::{
    Error,
    chunked::{self, Limits, Toc},
    content::{ChunkHints, ContentIndex},
    registry::{RangeCounts, Span, ranges},
};

mod plan;
mod rebuild;

/// A layer is pulled in part only if that fetches at most this share of
/// its blob (in percent): otherwise one verified stream is as cheap.
const WORTH_IT_PERCENT: u64 = 90;

/// What the partial pulls of one image did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartialPull {
    /// Layers pulled in part.
    pub layers: u64,
    /// Files of those layers read from objects instead of fetched.
    pub files_reused: u64,
    /// Chunks of the other files read from objects (parts of files an
    /// earlier chunked pull stored) or known to be zeros, instead of
    /// fetched.
    pub chunks_reused: u64,
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
    /// How each layer's files are cut into chunks, from its TOC.
    hints: Mutex<HashMap<Digest, Arc<ChunkHints>>>,
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
            hints: Mutex::new(HashMap::new()),
            counts: Arc::default(),
            report: Mutex::new(PartialPull::default()),
        }
    }

    /// What the partial pulls did, and why layers were pulled in full;
    /// `None` when the image had no zstd:chunked layer to fetch.
    pub(crate) fn report(&self) -> Option<PartialPull> {
        let mut report = self.report.lock().ok()?.clone();
        if report.layers == 0 && report.reason.is_empty() {
            return None;
        }
        report.bytes_received = self.counts.received();
        report.requests = self.counts.requests();
        report.single_ranges = self.counts.single_ranges();
        Some(report)
    }

    /// The TOC of `layer` and where its data frames end, or why the
    /// layer cannot be pulled in part.
    fn toc_of(&self, layer: &LayerPlan) -> Result<Result<(Toc, u64), String>, Error> {
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
        Ok(Ok((toc, chunked.data_end())))
    }

    /// How to pull `layer` in part, or why not. Its TOC's chunks are kept
    /// either way, for the content index.
    fn plan_layer(
        &self,
        layer: &LayerPlan,
        repo: &Store<H>,
        index: &ContentIndex<H>,
    ) -> Result<Result<Plan<H>, String>, Error> {
        let name = layer.blob.to_string();
        let (toc, data_end) = match self.toc_of(layer)? {
            Ok(found) => found,
            Err(why) => return Ok(Err(why)),
        };
        let hints = Arc::new(hints_of(&toc));
        if !hints.is_empty() {
            let mut kept = self.hints.lock().expect("not poisoned");
            kept.insert(layer.blob.clone(), hints);
        }
        let plan = cut(repo, &toc, data_end, layer.size, index).map_err(|f| f.in_layer(&name))?;
        if plan.files_reused == 0 && plan.chunks_reused == 0 {
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
            match self.plan_layer(layer, repo, &index)? {
                Ok(plan) => {
                    let mut report = self.report.lock().expect("not poisoned");
                    report.layers += 1;
                    report.bytes_fetched += plan.fetched;
                    report.files_reused += plan.files_reused;
                    report.chunks_reused += plan.chunks_reused;
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

    fn chunk_hints(&self, layer: &LayerPlan) -> Option<Arc<ChunkHints>> {
        self.hints.lock().ok()?.get(&layer.blob).cloned()
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
