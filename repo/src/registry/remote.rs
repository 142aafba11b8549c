//! One image in a registry, connected: the client, the document the
//! reference named, fetching further documents, and what the registry's
//! failures mean. Requests that fail for a reason that may pass (a 5xx or
//! 429 answer, a lost connection) are retried with backoff a bounded
//! number of times.

use std::{future::Future, sync::Arc, time::Duration};

use oci_client::{
    Client, Reference,
    client::{ClientConfig, ClientProtocol},
    errors::{OciDistributionError, OciErrorCode},
    manifest::{
        IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
        OCI_IMAGE_MEDIA_TYPE,
    },
    secrets::RegistryAuth,
};
use tokio::{runtime::Handle, sync::watch};

use super::Registry;
use crate::{Error, oci::digest::Digest};

/// How many times one request is tried before its failure stands.
const ATTEMPTS: u32 = 5;
/// The wait before the first retry; it doubles after each.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// How long a connection may stay silent before it counts as lost.
pub(super) const READ_TIMEOUT: Duration = Duration::from_secs(30);
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The manifest media types asked for.
const MANIFEST_TYPES: &[&str] = &[
    OCI_IMAGE_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

/// A registry image being pulled.
pub(crate) struct Remote {
    pub(super) client: Client,
    pub(super) image: Reference,
    /// `HOST[:PORT]`, for messages.
    pub(super) host: String,
    /// The runtime the requests run on; the pipeline reads blobs from
    /// blocking threads, which wait on it.
    pub(crate) handle: Handle,
    /// The document the reference named, verified against its digest.
    top: (Digest, Vec<u8>),
    /// Closed when the pull lets go of this source: blob readers still
    /// waiting on the network stop then, not at the read timeout.
    pub(super) stopped: watch::Receiver<()>,
    /// For the requests the client cannot make (multi-range blob GETs).
    pub(super) http: super::http::Http,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("image", &self.image.whole())
            .finish_non_exhaustive()
    }
}

impl Remote {
    /// Connect to the registry and fetch the document `registry` names;
    /// dropping the sender returned stops the blob readers.
    /// Blocks; call it on a blocking thread of a tokio runtime.
    pub(crate) fn connect(registry: Registry) -> Result<(Self, watch::Sender<()>), Error> {
        let handle = Handle::try_current().map_err(|e| {
            Error::internal("reaching a registry", format!("no async runtime: {e}"))
        })?;
        let (mut remote, stop) = Self::unconnected(&registry, handle)?;
        let first = remote.manifest(&registry.image, &registry.auth);
        let top = match first {
            // An insecure registry may speak plain HTTP only.
            Err(Error::RegistryTls { .. } | Error::RegistryUnreachable { .. })
                if registry.insecure =>
            {
                remote.client = client(&registry, ClientProtocol::Http)?;
                remote.http.use_plain_http();
                remote.manifest(&registry.image, &registry.auth)?
            }
            other => other?,
        };
        if let Some(pinned) = registry.image.digest() {
            let pinned = Digest::parse(pinned, "the reference's digest")?;
            pinned.verify(&top.0, format!("digest of manifest {pinned}"))?;
        }
        remote.top = top;
        Ok((remote, stop))
    }

    /// The image `registry` names, not yet asked for anything: a push
    /// has no document to fetch first. Dropping the sender returned stops
    /// the requests waiting in [`Remote::until_stopped`].
    pub(super) fn unconnected(
        registry: &Registry,
        handle: Handle,
    ) -> Result<(Self, watch::Sender<()>), Error> {
        let (stop, stopped) = watch::channel(());
        let remote = Remote {
            client: client(registry, ClientProtocol::Https)?,
            image: registry.image.clone(),
            host: registry.image.registry().to_owned(),
            handle,
            top: (Digest::of(b""), Vec::new()),
            stopped,
            http: super::http::Http::new(registry)?,
        };
        Ok((remote, stop))
    }

    /// An `index.json` naming only the document the reference named, so
    /// that choosing the image is the same as for a layout.
    pub(crate) fn index(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"digest": self.top.0.to_string(), "size": self.top.1.len()}],
        }))
        .expect("a JSON value serialises")
    }

    /// The document `digest`: a manifest or index, or else a blob (a
    /// config). `what` names it; the caller checks size and digest.
    pub(crate) fn document(
        self: &Arc<Self>,
        digest: &Digest,
        size: u64,
        what: &str,
    ) -> Result<Vec<u8>, Error> {
        if *digest == self.top.0 {
            return Ok(self.top.1.clone());
        }
        if !what.starts_with("config") {
            let pinned = self.image.clone_with_digest(digest.to_string());
            match self.manifest(&pinned, &RegistryAuth::Anonymous) {
                Err(Error::RegistryStatus { status: 404, .. }) => {}
                other => return other.map(|(_, bytes)| bytes),
            }
        }
        let mut bytes = Vec::new();
        let mut blob = super::blob::BlobStream::new(self.clone(), digest, size);
        std::io::Read::read_to_end(&mut blob, &mut bytes).map_err(super::failure)?;
        Ok(bytes)
    }

    /// Fetch the manifest `image` names and its digest, computed here.
    pub(super) fn manifest(
        &self,
        image: &Reference,
        auth: &RegistryAuth,
    ) -> Result<(Digest, Vec<u8>), Error> {
        let what = format!("the manifest of {}", image.whole());
        // A document fetched for a pull that is dropped meanwhile (a
        // delta's manifest, during discovery) stops as a blob does.
        let (bytes, _) = self.until_stopped(self.retrying(&what, || {
            self.client.pull_manifest_raw(image, auth, MANIFEST_TYPES)
        }))??;
        Ok((Digest::of(&bytes), bytes.to_vec()))
    }

    /// Wait for `work` on the runtime, unless the pull lets go of this
    /// source first: then the wait ends at once, as a cancelled one.
    pub(super) fn until_stopped<T>(&self, work: impl Future<Output = T>) -> Result<T, Error> {
        let mut stopped = self.stopped.clone();
        self.handle.block_on(async {
            tokio::select! {
                done = work => Ok(done),
                _ = stopped.changed() => Err(Error::storage(
                    "receiving a blob",
                    std::io::Error::new(std::io::ErrorKind::Interrupted, "the pull was cancelled"),
                )),
            }
        })
    }

    /// Run `attempt` until it succeeds, fails for good, or has been
    /// tried [`ATTEMPTS`] times.
    pub(super) async fn retrying<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, OciDistributionError>>,
    {
        let mut backoff = FIRST_BACKOFF;
        let mut tried = 0;
        loop {
            tried += 1;
            match attempt().await.map_err(|e| self.error(e, what)) {
                Err(e) if tried < ATTEMPTS && transient(&e) => {
                    tracing::warn!("{what}: {e}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                done => return done,
            }
        }
    }

    /// What a failure of the client means.
    pub(super) fn error(&self, e: OciDistributionError, what: &str) -> Error {
        let registry = self.host.clone();
        let status = |status: u16, reason: String| Error::RegistryStatus {
            registry: registry.clone(),
            status,
            what: what.to_owned(),
            reason,
        };
        match e {
            OciDistributionError::UnauthorizedError { url } => Error::RegistryAuth {
                registry,
                reason: format!("HTTP 401 for {url}"),
            },
            OciDistributionError::AuthenticationFailure(reason) => {
                Error::RegistryAuth { registry, reason }
            }
            OciDistributionError::ServerError {
                code: 401, message, ..
            } => Error::RegistryAuth {
                registry,
                reason: message,
            },
            OciDistributionError::ServerError { code, message, .. } => status(code, message),
            OciDistributionError::RegistryError { envelope, .. } => {
                let reason = envelope.to_string();
                match envelope.errors.first().map(|e| &e.code) {
                    Some(OciErrorCode::Unauthorized | OciErrorCode::Denied) => {
                        Error::RegistryAuth { registry, reason }
                    }
                    Some(OciErrorCode::Toomanyrequests) => status(429, reason),
                    Some(
                        OciErrorCode::ManifestUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound,
                    ) => status(404, reason),
                    _ => status(400, reason),
                }
            }
            // A status that the client turned into an error of its own
            // (a HEAD has no body to carry a registry error).
            OciDistributionError::RequestError(e) if e.status().is_some() => {
                match e.status().map_or(0, |s| s.as_u16()) {
                    401 => Error::RegistryAuth {
                        registry,
                        reason: format!("HTTP 401 for {what}"),
                    },
                    code => status(code, e.to_string()),
                }
            }
            OciDistributionError::RequestError(e) => connection_error(registry, &e),
            OciDistributionError::IoError(e) => Error::RegistryUnreachable {
                registry,
                reason: e.to_string(),
            },
            other => Error::InvalidSource {
                reason: format!("registry {registry}, {what}: {other}"),
            },
        }
    }
}

/// A client for `registry`'s settings over `protocol`.
pub(super) fn client(registry: &Registry, protocol: ClientProtocol) -> Result<Client, Error> {
    let config = ClientConfig {
        protocol,
        accept_invalid_certificates: registry.insecure,
        accept_invalid_hostnames: registry.insecure,
        extra_root_certificates: registry.certificates.clone(),
        read_timeout: Some(READ_TIMEOUT),
        connect_timeout: Some(CONNECT_TIMEOUT),
        platform_resolver: None,
        // A push streams each blob in one PUT whose length it knows,
        // rather than one PATCH request per 4 MiB chunk.
        use_monolithic_push: true,
        ..ClientConfig::default()
    };
    Client::try_from(config).map_err(|e| Error::InvalidRegistryConfig {
        what: format!("the TLS settings for {}", registry.image.registry()),
        reason: e.to_string(),
    })
}

/// A request that never got an answer: TLS refused, or no connection.
pub(super) fn connection_error(registry: String, e: &(dyn std::error::Error + 'static)) -> Error {
    let reason = chain(e);
    let lower = reason.to_lowercase();
    if lower.contains("certificate")
        || lower.contains("ssl routines")
        || lower.contains("handshake")
    {
        Error::RegistryTls { registry, reason }
    } else {
        Error::RegistryUnreachable { registry, reason }
    }
}

/// An error with all its causes, since the outermost rarely says which.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

/// Whether trying again may help.
pub(super) fn transient(e: &Error) -> bool {
    match e {
        Error::RegistryStatus { status, .. } => *status >= 500 || *status == 429,
        Error::RegistryUnreachable { .. } => true,
        _ => false,
    }
}
