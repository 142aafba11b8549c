//! Layers compressed again from the repository, which keeps no layer
//! blobs: for whatever sends an image on without its original blobs, a
//! push to a registry or an `oci-archive:` export. The same input gives
//! the same bytes, so a layer can be compressed once to learn its digest
//! and size and again into where it goes.

use std::io::{self, Write};

use composefs::{fsverity::FsVerityHashValue, repository::Repository as Store};
use serde_json::{Value, json};

use crate::{
    Error,
    chunked::{ChunkedLayer, ChunkedWriter},
    delta::create::image::Side,
    oci::{
        digest::{Digest, HashingWriter},
        document::{OCI_CONFIG, OCI_MANIFEST},
        export::{Counting, verified_layer_tar},
    },
    registry::PushCompression,
};

/// A layer compressed again: its new blob.
#[derive(Debug, Clone)]
pub(crate) struct Recompressed {
    /// The layer's diff_id.
    pub(crate) diff_id: Digest,
    /// The blob digest in the repository's manifest, for messages.
    pub(crate) original: Digest,
    /// The digest of the new blob.
    pub(crate) digest: Digest,
    /// The size of the new blob.
    pub(crate) size: u64,
    /// The annotations of its descriptor: where a zstd:chunked blob's
    /// metadata is.
    pub(crate) annotations: Vec<(String, String)>,
}

/// The layer `diff_id` (blob `original` in the repository's manifest)
/// compressed as `compression`, its tar rebuilt from the repository and
/// checked: the new blob's digest, size and annotations.
pub(crate) fn compressed_layer<H: FsVerityHashValue>(
    store: &Store<H>,
    diff_id: &Digest,
    original: &Digest,
    compression: PushCompression,
) -> Result<Recompressed, Error> {
    let storage = |e: io::Error| Error::storage("compressing a layer", e);
    let encoder =
        Compressor::new(compression, HashingWriter::new(Counting::default())).map_err(storage)?;
    let encoder = verified_layer_tar(store, diff_id, original, encoder)?;
    let (out, chunked) = encoder.finish_layer().map_err(storage)?;
    let (digest, counted) = out.into_parts();
    Ok(Recompressed {
        diff_id: diff_id.clone(),
        original: original.clone(),
        digest,
        size: counted.0,
        annotations: chunked.map(|c| c.layout.annotations()).unwrap_or_default(),
    })
}

/// The OCI image manifest of `side` with `layers` for its layers.
pub(crate) fn image_manifest(
    side: &Side,
    layers: &[Recompressed],
    compression: PushCompression,
) -> Vec<u8> {
    let layers: Vec<Value> = layers
        .iter()
        .map(|l| {
            let mut layer = json!({
                "mediaType": compression.media_type(),
                "digest": l.digest.to_string(),
                "size": l.size,
            });
            if !l.annotations.is_empty() {
                let annotations: serde_json::Map<String, Value> = (l.annotations.iter())
                    .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                    .collect();
                layer["annotations"] = Value::Object(annotations);
            }
            layer
        })
        .collect();
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": side.config_digest.to_string(),
            "size": side.config.len(),
        },
        "layers": layers,
    });
    // The image's own annotations travel with it.
    let stored: Value = serde_json::from_slice(&side.manifest).unwrap_or_default();
    if let Some(annotations) = stored.get("annotations").filter(|a| a.is_object()) {
        manifest["annotations"] = annotations.clone();
    }
    serde_json::to_vec(&manifest).expect("a JSON value serialises")
}

/// A layer compressor fed in blocks of [`BLOCK`] bytes whatever the
/// writes it is given: zlib-ng's deflate output depends on how its input
/// is split, and the two passes over a layer must give the same bytes
/// even if a read of an object returns fewer bytes one time than the
/// other.
pub(crate) struct Compressor<W: Write> {
    block: Vec<u8>,
    encoder: Encoder<W>,
}

/// The size of the pieces a [`Compressor`] compresses.
const BLOCK: usize = 128 << 10;

impl<W: Write> Compressor<W> {
    pub(crate) fn new(compression: PushCompression, out: W) -> io::Result<Self> {
        Ok(Compressor {
            block: Vec::with_capacity(BLOCK),
            encoder: Encoder::new(compression, out)?,
        })
    }

    /// Compress what is left and end the stream; the writer.
    pub(crate) fn finish(self) -> io::Result<W> {
        self.finish_layer().map(|(out, _)| out)
    }

    /// [`Compressor::finish`], and for zstd:chunked what the blob says
    /// about itself.
    pub(crate) fn finish_layer(mut self) -> io::Result<(W, Option<ChunkedLayer>)> {
        self.encoder.write_all(&self.block)?;
        self.encoder.finish()
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        while !rest.is_empty() {
            let n = rest.len().min(BLOCK - self.block.len());
            self.block.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if self.block.len() == BLOCK {
                self.encoder.write_all(&self.block)?;
                self.block.clear();
            }
        }
        Ok(buf.len())
    }

    /// Only the compressed output is flushed; a partial block waits, as
    /// flushing it would change the bytes.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A layer compressor; its output is the same for the same input given
/// in the same pieces.
enum Encoder<W: Write> {
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Chunked(Box<ChunkedWriter<W>>),
}

impl<W: Write> Encoder<W> {
    fn new(compression: PushCompression, out: W) -> io::Result<Self> {
        Ok(match compression {
            PushCompression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::default(),
            )),
            PushCompression::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(out, 3)?),
            PushCompression::ZstdChunked => Encoder::Chunked(Box::new(ChunkedWriter::new(out)?)),
        })
    }

    fn finish(self) -> io::Result<(W, Option<ChunkedLayer>)> {
        match self {
            Encoder::Gzip(e) => e.finish().map(|out| (out, None)),
            Encoder::Zstd(e) => e.finish().map(|out| (out, None)),
            Encoder::Chunked(e) => e.finish().map(|(out, layer)| (out, Some(layer))),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
            Encoder::Chunked(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
            Encoder::Chunked(e) => e.flush(),
        }
    }
}
