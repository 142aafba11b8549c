//! Pushing an image of the repository to a registry.
//!
//! The repository keeps no layer blobs, only split streams, so each layer
//! tar is rebuilt from its stream (its diff_id checked) and compressed
//! again, gzip, zstd or zstd:chunked. The config is uploaded byte for byte, so the
//! pushed image has the same config digest, and with it the same diff_ids
//! and composefs image id; the manifest is new, an OCI image manifest
//! naming the new layer blobs.
//!
//! **Two passes, no scratch file.** oci-client can stream an upload
//! (`push_blob_stream`: one PUT whose body is produced as it is sent), but
//! a blob the registry already has is only skipped when its digest is
//! known before the upload starts, and the digest of a compressed layer
//! is only known once it has been compressed. So each layer is first
//! rebuilt and compressed into a hash, which checks the diff_id too;
//! then, for the layers the registry lacks, rebuilt and compressed again
//! straight into the upload. Compression is deterministic for the same
//! input, and the registry refuses a body that does not match the digest
//! announced. The cost is a second compression of every layer that is
//! uploaded (none for a re-push); the alternative, compressing once into
//! an `O_TMPFILE`, would cost disk the size of the largest compressed
//! layer and its write and read back. Memory stays at a few buffers.
//! zstd:chunked takes the same two passes: its writer
//! ([`crate::chunked::ChunkedWriter`]) cuts frames where the tar says, so
//! its bytes, TOC and annotations are the same both times; the cost is
//! its rolling checksum over every byte twice. One pass into a scratch
//! file per layer would not keep "every layer checked before anything is
//! uploaded" without holding the whole compressed image on disk at once.
//!
//! **Order.** All layers are hashed before anything is uploaded, so a
//! layer whose stream no longer rebuilds its diff_id stops the push
//! before a byte is sent. Layers, then the config, then the manifest:
//! the tag appears only once every blob it names is in the registry.

use std::{
    io::{self, Write},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use composefs::{fsverity::FsVerityHashValue, repository::Repository as Store};
use oci_client::{Reference, errors::OciDistributionError, secrets::RegistryAuth};
use tokio::sync::{mpsc, watch};

use super::{Registry, remote::Remote};
use crate::{
    Error, Repository,
    delta::create::image::Side,
    oci::{
        digest::Digest,
        document::{Compression, OCI_MANIFEST},
        export::verified_layer_tar,
        recompress::{Compressor, Recompressed, compressed_layer, image_manifest},
    },
    repository::with_store,
};

/// How pushed layers are compressed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PushCompression {
    /// gzip (`application/vnd.oci.image.layer.v1.tar+gzip`), which every
    /// client reads.
    #[default]
    Gzip,
    /// zstd (`application/vnd.oci.image.layer.v1.tar+zstd`).
    Zstd,
    /// zstd:chunked, current variant: zstd whose frames are cut at the
    /// files, with a TOC and tar-split, and their annotations on the
    /// layer descriptor, for partial pulls.
    ZstdChunked,
}

impl PushCompression {
    /// The layer media type of this compression.
    pub(crate) fn media_type(self) -> &'static str {
        match self {
            PushCompression::Gzip => Compression::Gzip,
            PushCompression::Zstd | PushCompression::ZstdChunked => Compression::Zstd,
        }
        .oci_layer()
    }
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushReport {
    /// `HOST[:PORT]/NAME:TAG` pushed to.
    pub reference: String,
    /// The digest of the manifest pushed.
    pub manifest_digest: String,
    /// The digest of the config, the same as in the repository.
    pub config_digest: String,
    /// Layers of the image.
    pub layers: u64,
    /// Layers uploaded; the others the registry had already.
    pub layers_uploaded: u64,
    /// Bytes of the blobs uploaded (layers and config).
    pub bytes_uploaded: u64,
}

impl Repository {
    /// Push the image `image` (a tag or `sha256:` manifest digest) to
    /// `registry`, its layers compressed as `compression`. Reads the
    /// repository only. Blocks; call it on a blocking thread of a tokio
    /// runtime. Once `cancelled` is set the push stops, before its
    /// manifest: a request in flight is dropped within 100 ms, a layer
    /// being compressed within a buffer's worth.
    pub fn push(
        &self,
        image: &str,
        registry: Registry,
        compression: PushCompression,
        cancelled: Arc<AtomicBool>,
    ) -> Result<PushReport, Error> {
        with_store!(self.store(), s => {
            let side = Side::open(s, image)?;
            let destination = Destination::connect(registry, cancelled)?;
            destination.push_image(s, &side, compression)
        })
    }
}

/// A registry repository being pushed to.
pub(super) struct Destination {
    pub(super) remote: Remote,
    pub(super) auth: RegistryAuth,
    /// The tag the manifest is pushed as.
    pub(super) tag: String,
    pub(super) cancelled: Arc<AtomicBool>,
    /// The remote's stop signal, which only pull's blob readers wait on;
    /// a push is stopped through `cancelled` instead.
    _stop: watch::Sender<()>,
}

impl Destination {
    /// The client for `registry`; nothing is sent yet.
    pub(super) fn connect(registry: Registry, cancelled: Arc<AtomicBool>) -> Result<Self, Error> {
        let handle = tokio::runtime::Handle::try_current().map_err(|e| {
            Error::internal("reaching a registry", format!("no async runtime: {e}"))
        })?;
        let (remote, stop) = Remote::unconnected(&registry, handle)?;
        let tag = registry.image.tag().unwrap_or("latest").to_owned();
        let mut destination = Destination {
            remote,
            auth: registry.auth.clone(),
            tag,
            cancelled,
            _stop: stop,
        };
        destination.first_contact(&registry)?;
        Ok(destination)
    }

    /// Ask the registry whether it has the empty blob: this first request
    /// settles TLS (or plain HTTP for an insecure registry) and whether
    /// the credentials are good, before any layer is rebuilt.
    fn first_contact(&mut self, registry: &Registry) -> Result<(), Error> {
        let probe = Digest::of(b"");
        match self.has_blob(&probe) {
            Err(Error::RegistryTls { .. } | Error::RegistryUnreachable { .. })
                if registry.insecure =>
            {
                self.remote.client =
                    super::remote::client(registry, oci_client::client::ClientProtocol::Http)?;
                self.has_blob(&probe).map(drop)
            }
            other => other.map(drop),
        }
    }

    /// A reference to `tag` in the destination's repository.
    pub(super) fn tagged(&self, tag: &str) -> Reference {
        Reference::with_tag(
            self.remote.image.registry().to_owned(),
            self.remote.image.repository().to_owned(),
            tag.to_owned(),
        )
    }

    /// Whether the registry's repository has the blob `digest`.
    pub(super) fn has_blob(&self, digest: &Digest) -> Result<bool, Error> {
        let remote = &self.remote;
        let (host, auth) = (remote.image.registry(), &self.auth);
        let digest = digest.to_string();
        let what = format!("blob {digest}");
        self.until_cancelled(async {
            remote.client.store_auth_if_needed(host, auth).await;
            remote
                .retrying(&what, || remote.client.blob_exists(&remote.image, &digest))
                .await
        })?
    }

    /// Upload `bytes` as the blob `digest`, unless the registry has it;
    /// the bytes sent.
    pub(super) fn put_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<u64, Error> {
        self.go_on()?;
        if self.has_blob(digest)? {
            return Ok(0);
        }
        let remote = &self.remote;
        let (what, digest, body) = (
            format!("uploading blob {digest}"),
            digest.to_string(),
            Bytes::copy_from_slice(bytes),
        );
        self.until_cancelled(remote.retrying(&what, || {
            remote
                .client
                .push_blob(&remote.image, body.clone(), &digest)
        }))??;
        Ok(bytes.len() as u64)
    }

    /// Put `body` (of media type `media_type`) as the manifest `tag`.
    pub(super) fn put_manifest(
        &self,
        tag: &str,
        body: Vec<u8>,
        media_type: &str,
    ) -> Result<Digest, Error> {
        self.go_on()?;
        let remote = &self.remote;
        let (image, digest) = (self.tagged(tag), Digest::of(&body));
        let (what, body) = (format!("the manifest {}", image.whole()), Bytes::from(body));
        let content_type = media_type
            .parse()
            .map_err(|_| Error::internal("pushing a manifest", media_type.to_owned()))?;
        self.until_cancelled(remote.retrying(&what, || {
            remote
                .client
                .push_manifest_raw(&image, body.clone(), Clone::clone(&content_type))
        }))??;
        Ok(digest)
    }

    /// Wait for `work` on the runtime, unless the caller stops wanting the
    /// push first: a request waiting on a silent registry is dropped then,
    /// closing its connection, rather than at the read timeout.
    pub(super) fn until_cancelled<T>(
        &self,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, Error> {
        let cancelled = &self.cancelled;
        self.remote.handle.block_on(async {
            tokio::select! {
                done = work => Ok(done),
                () = async {
                    while !cancelled.load(Ordering::Relaxed) {
                        tokio::time::sleep(CANCEL_POLL).await;
                    }
                } => Err(cancelled_error()),
            }
        })
    }

    /// An error once the caller no longer wants the push.
    pub(super) fn go_on(&self) -> Result<(), Error> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(cancelled_error());
        }
        Ok(())
    }
}

fn cancelled_error() -> Error {
    Error::internal("pushing", "cancelled: the caller went away".to_owned())
}

impl Destination {
    /// Hash every layer, upload what the registry lacks, the config, and
    /// then the manifest under the tag.
    fn push_image<H: FsVerityHashValue>(
        &self,
        store: &Arc<Store<H>>,
        side: &Side,
        compression: PushCompression,
    ) -> Result<PushReport, Error> {
        let mut layers = Vec::with_capacity(side.layers.len());
        for (original, _, diff_id) in &side.layers {
            self.go_on()?;
            layers.push(compressed_layer(store, diff_id, original, compression)?);
        }
        let (mut uploaded, mut bytes) = (0, 0);
        for layer in &layers {
            self.go_on()?;
            if !self.has_blob(&layer.digest)? {
                self.upload_layer(store, layer, compression)?;
                uploaded += 1;
                bytes += layer.size;
            }
        }
        bytes += self.put_blob(&side.config_digest, &side.config)?;
        let manifest = image_manifest(side, &layers, compression);
        let manifest_digest = self.put_manifest(&self.tag, manifest, OCI_MANIFEST)?;
        Ok(PushReport {
            reference: self.tagged(&self.tag).whole(),
            manifest_digest: manifest_digest.to_string(),
            config_digest: side.config_digest.to_string(),
            layers: layers.len() as u64,
            layers_uploaded: uploaded,
            bytes_uploaded: bytes,
        })
    }

    /// Rebuild and compress `layer` again, straight into the upload.
    fn upload_layer<H: FsVerityHashValue>(
        &self,
        store: &Arc<Store<H>>,
        layer: &Recompressed,
        compression: PushCompression,
    ) -> Result<(), Error> {
        let (store, pushed) = (store.clone(), layer.clone());
        let write = move |out: &mut dyn Write| {
            let storage = |e: io::Error| Error::storage("compressing a layer", e);
            let encoder = Compressor::new(compression, out).map_err(storage)?;
            let (diff_id, original) = (&pushed.diff_id, &pushed.original);
            let encoder = verified_layer_tar(&store, diff_id, original, encoder)?;
            encoder.finish().map(drop).map_err(storage)
        };
        let what = format!("uploading layer {}", layer.digest);
        self.upload_streamed(&layer.digest, layer.size, &what, Arc::new(write))
    }

    /// Upload the blob `digest` of `size` bytes that `write` produces, as
    /// one streamed PUT, `write` running on a thread of its own; a failed
    /// attempt that may pass is tried again from the start, as a stream
    /// cannot be rewound.
    pub(super) fn upload_streamed<F>(
        &self,
        digest: &Digest,
        size: u64,
        what: &str,
        write: Arc<F>,
    ) -> Result<(), Error>
    where
        F: Fn(&mut dyn Write) -> Result<(), Error> + Send + Sync + 'static,
    {
        let remote = &self.remote;
        // The producer's own failure (the disk, or a cancel), which the
        // upload sees only as a body that broke off.
        let failed: Arc<Mutex<Option<Error>>> = Arc::default();
        let digest = digest.to_string();
        let result = self.until_cancelled(remote.retrying(what, || {
            let stopped = self.cancelled.load(Ordering::Relaxed)
                || failed.lock().unwrap_or_else(|e| e.into_inner()).is_some();
            let body = (!stopped).then(|| {
                let producer = Producer {
                    write: write.clone(),
                    cancelled: self.cancelled.clone(),
                    failed: failed.clone(),
                };
                producer.start()
            });
            let digest = digest.clone();
            async move {
                match body {
                    Some(body) => {
                        remote
                            .client
                            .push_blob_stream(&remote.image, body, &digest, Some(size))
                            .await
                    }
                    // Not worth trying again: nothing the registry did.
                    None => Err(OciDistributionError::GenericError(None)),
                }
            }
        }));
        let own = failed.lock().unwrap_or_else(|e| e.into_inner()).take();
        match (own, result) {
            (Some(e), _) => Err(e),
            (None, Ok(done)) => done.map(drop),
            (None, Err(e)) => Err(e),
        }
    }
}

/// How often a request in flight checks whether the push is still wanted.
const CANCEL_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// How many compressed chunks may wait for the connection.
const QUEUED_CHUNKS: usize = 4;
/// The size of those chunks.
const CHUNK: usize = 1 << 20;

/// The body of one upload: a thread writing it.
struct Producer<F> {
    write: Arc<F>,
    cancelled: Arc<AtomicBool>,
    failed: Arc<Mutex<Option<Error>>>,
}

type Body = futures_util::stream::BoxStream<'static, Result<Bytes, OciDistributionError>>;

impl<F> Producer<F>
where
    F: Fn(&mut dyn Write) -> Result<(), Error> + Send + Sync + 'static,
{
    /// Start the thread; the stream of what it writes. When the upload
    /// drops the stream, the thread's next write fails and it ends.
    fn start(self) -> Body {
        let (sender, receiver) = mpsc::channel(QUEUED_CHUNKS);
        std::thread::spawn(move || {
            let chunks = Chunks {
                sender: sender.clone(),
                cancelled: self.cancelled.clone(),
            };
            if let Err(e) = self.produce(chunks) {
                // Gone already when the upload failed first: nothing to say.
                let said = sender
                    .blocking_send(Err(OciDistributionError::GenericError(Some(e.to_string()))));
                if said.is_ok() || self.cancelled.load(Ordering::Relaxed) {
                    *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                }
            }
        });
        Box::pin(futures_util::stream::unfold(receiver, |mut r| async move {
            r.recv().await.map(|item| (item, r))
        }))
    }

    fn produce(&self, chunks: Chunks) -> Result<(), Error> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(cancelled_error());
        }
        let mut out = io::BufWriter::with_capacity(CHUNK, chunks);
        (self.write)(&mut out)
            .and_then(|()| {
                out.flush()
                    .map_err(|e| Error::storage("uploading a blob", e))
            })
            .map_err(|e| match self.cancelled.load(Ordering::Relaxed) {
                true => cancelled_error(),
                false => e,
            })
    }
}

/// A writer into the upload's channel.
struct Chunks {
    sender: mpsc::Sender<Result<Bytes, OciDistributionError>>,
    cancelled: Arc<AtomicBool>,
}

impl Write for Chunks {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(io::Error::other("cancelled: the caller went away"));
        }
        self.sender
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn compression_gives_the_same_bytes_however_the_input_is_fed() {
        let input: Vec<u8> = (0..600_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for compression in [PushCompression::Gzip, PushCompression::Zstd] {
            let mut whole = Compressor::new(compression, Vec::new()).unwrap();
            whole.write_all(&input).unwrap();
            let whole = whole.finish().unwrap();
            for piece in [1, 4093, 65536, 200_000] {
                let mut pieces = Compressor::new(compression, Vec::new()).unwrap();
                for chunk in input.chunks(piece) {
                    pieces.write_all(chunk).unwrap();
                    pieces.flush().unwrap();
                }
                let pieces = pieces.finish().unwrap();
                assert!(
                    pieces == whole,
                    "{compression:?} fed {piece} bytes at a time"
                );
            }
            let mut tar = Vec::new();
            match compression {
                PushCompression::Gzip => {
                    flate2::read::GzDecoder::new(&whole[..]).read_to_end(&mut tar)
                }
                // zstd:chunked needs a tar: its writer has tests of its own.
                PushCompression::Zstd | PushCompression::ZstdChunked => {
                    zstd::stream::read::Decoder::new(&whole[..])
                        .unwrap()
                        .read_to_end(&mut tar)
                }
            }
            .unwrap();
            assert!(tar == input, "{compression:?} round trip");
        }
    }
}
