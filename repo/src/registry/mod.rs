//! `docker://` sources: images in OCI registries, reached by the daemon
//! itself over HTTPS with the `oci-client` crate.
//!
//! Everything that decides whether and how to connect is settled before
//! the first connection: the reference, the signature policy, TLS
//! settings (system CAs plus `certs.d`, or insecure when asked for or
//! marked so in `registries.conf`) and the credentials.

pub(crate) mod attachments;
mod auth;
pub(crate) mod blob;
mod delta_push;
mod http;
mod multipart;
mod push;
pub(crate) mod ranges;
mod referrers;
pub(crate) mod remote;
mod settings;

use std::io::Read;

use oci_client::{Reference, client::Certificate, secrets::RegistryAuth};

pub use delta_push::DeltaPushReport;
pub use push::{PushCompression, PushReport};
pub use ranges::{RangeCounts, Span};
pub use settings::RegistrySettings;

use crate::{
    Error,
    oci::digest::Digest,
    trust::{DockerIdentity, Gate, Policy},
};

/// A registry pull or push as a caller asks for it.
#[derive(Debug, Default)]
pub struct RegistryRequest {
    /// `HOST[:PORT]/NAME[:TAG|@sha256:DIGEST]`, without `docker://`.
    pub reference: String,
    /// `Some(false)`: allow plain HTTP and unverified TLS; `Some(true)`:
    /// verify even if `registries.conf` marks the registry insecure;
    /// `None`: as `registries.conf` says.
    pub tls_verify: Option<bool>,
    /// The caller's auth file, opened by the caller; the admin's
    /// (`RegistrySettings::authfile`) when `None`.
    pub authfile: Option<std::fs::File>,
}

/// A registry image the policy admits, with everything needed to
/// connect; nothing has been sent to the registry yet.
pub struct Registry {
    image: Reference,
    auth: RegistryAuth,
    insecure: bool,
    certificates: Vec<Certificate>,
    /// The signatures the policy requires, checked once the manifest is
    /// known; `None` for a push, or when the policy requires none.
    gate: Option<Gate>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials.
        f.debug_struct("Registry")
            .field("image", &self.image.whole())
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// Check `request` against the policy and settings. Reads local files
    /// only: the policy, registries.d, registries.conf, certs.d and the
    /// auth file.
    pub fn new(settings: &RegistrySettings, request: RegistryRequest) -> Result<Self, Error> {
        let image = parse_reference(&request.reference)?;
        let identity = DockerIdentity {
            registry: image.registry().to_owned(),
            repository: image.repository().to_owned(),
            tag: image.tag().map(str::to_owned),
            digest: image.digest().map(str::to_owned),
        };
        let gate = Gate::new(
            &Policy::load(&settings.policy)?,
            &identity,
            &settings.registries_d,
        )?;
        let mut registry = Self::with_settings(settings, image, request)?;
        registry.gate = gate;
        Ok(registry)
    }

    /// A registry image to push to, `HOST[:PORT]/NAME[:TAG]` (`latest`
    /// when no tag is given). The signature policy has no say: it decides
    /// what may be pulled. Reads local files only, as [`Registry::new`].
    pub fn destination(
        settings: &RegistrySettings,
        request: RegistryRequest,
    ) -> Result<Self, Error> {
        let image = parse_reference(&request.reference)?;
        if image.digest().is_some() {
            return Err(Error::InvalidReference {
                reference: request.reference,
                reason: "a push names a tag to set, not a digest".to_owned(),
            });
        }
        Self::with_settings(settings, image, request)
    }

    /// TLS and credentials for `image`, as the settings and the request say.
    fn with_settings(
        settings: &RegistrySettings,
        image: Reference,
        request: RegistryRequest,
    ) -> Result<Self, Error> {
        let host = image.registry().to_owned();
        let repository = image.repository().to_owned();
        let insecure = match request.tls_verify {
            Some(verify) => !verify,
            None => settings.insecure(&host, &repository)?,
        };
        let certificates = settings.certificates(&host)?;
        let credentials = match (request.authfile, &settings.authfile) {
            (Some(file), _) => Some(auth::Credentials::read(file, "the auth file passed")?),
            (None, Some(path)) => {
                let file = std::fs::File::open(path).map_err(|e| Error::InvalidRegistryConfig {
                    what: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                Some(auth::Credentials::read(file, &path.display().to_string())?)
            }
            (None, None) => None,
        };
        let auth = match credentials {
            Some(c) => c.for_image(&host, &repository)?,
            None => RegistryAuth::Anonymous,
        };
        Ok(Registry {
            image,
            auth,
            insecure,
            certificates,
            gate: None,
        })
    }

    /// `HOST[:PORT]`.
    pub fn host(&self) -> &str {
        self.image.registry()
    }
}

/// A reference in the containers `docker://` syntax, without the prefix.
fn parse_reference(text: &str) -> Result<Reference, Error> {
    let invalid = |reason: String| Error::InvalidReference {
        reference: text.to_owned(),
        reason,
    };
    if text.starts_with("//") || text.contains("://") {
        return Err(invalid("give it without a scheme or leading //".to_owned()));
    }
    let image: Reference = text.parse().map_err(|e| invalid(format!("{e}")))?;
    if let Some(digest) = image.digest() {
        crate::oci::digest::Digest::parse(digest, "the reference's digest")
            .map_err(|e| invalid(e.to_string()))?;
    }
    Ok(image)
}

/// A typed failure carried through `io::Read`, which the pipeline's
/// readers pass on untouched.
#[derive(Debug)]
pub(crate) struct Failure(pub(crate) Error);

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Failure {}

/// The registry failure an `io::Error` from a blob stream carries, or
/// the error as storage trouble.
pub(crate) fn failure(e: std::io::Error) -> Error {
    match registry_failure(e) {
        Ok(e) => e,
        Err(e) => Error::RegistryUnreachable {
            registry: String::new(),
            reason: e.to_string(),
        },
    }
}

/// Whether `e` is a registry's failure (auth, TLS, connection, status),
/// as opposed to something wrong with what it sent.
pub(crate) fn is_registry_error(e: &Error) -> bool {
    matches!(
        e,
        Error::RegistryAuth { .. }
            | Error::RegistryTls { .. }
            | Error::RegistryUnreachable { .. }
            | Error::RegistryStatus { .. }
    )
}

/// The typed error an `io::Error` from a blob stream carries, if it does.
pub(crate) fn registry_failure(e: std::io::Error) -> Result<Error, std::io::Error> {
    if e.get_ref().is_some_and(|inner| inner.is::<Failure>()) {
        let inner = e.into_inner().expect("checked above");
        return Ok(inner.downcast::<Failure>().expect("checked above").0);
    }
    Err(e)
}

/// A registry source as the pipeline holds it. The pipeline's layer
/// producers and a delta's layers share it, and blocking threads may
/// hold it after the pull is gone; so what stops its blob readers is not
/// its drop but the [`Stop`] the pull takes from it (see
/// [`Connected::take_stop`]), which goes with the pull's future.
#[derive(Debug)]
pub(crate) struct Connected {
    /// The connected image.
    pub(crate) remote: std::sync::Arc<remote::Remote>,
    /// Until the pull takes it: dropped with the source then.
    stop: std::sync::Mutex<Option<Stop>>,
    /// What the policy requires of the image's manifest.
    gate: Option<Gate>,
}

/// Dropping it stops every blob reader of its source at once: those
/// waiting on the network return a cancellation, and their connections
/// close.
#[derive(Debug)]
pub(crate) struct Stop {
    _sender: tokio::sync::watch::Sender<()>,
}

impl Connected {
    /// Connect to `registry` and fetch the document it names. Blocks.
    pub(crate) fn open(mut registry: Registry) -> Result<Self, Error> {
        let gate = registry.gate.take();
        let (remote, stop) = remote::Remote::connect(registry)?;
        Ok(Connected {
            remote: std::sync::Arc::new(remote),
            stop: std::sync::Mutex::new(Some(Stop { _sender: stop })),
            gate,
        })
    }

    /// Admit the manifest `digest` (the image's, or with `delta` a
    /// delta's target's) as the policy requires, before any layer is
    /// fetched; the signatures that met it, if it asked for any. Blocks.
    pub(crate) fn admit(
        &self,
        digest: &Digest,
        delta: bool,
    ) -> Result<Option<crate::trust::Accepted>, Error> {
        match &self.gate {
            Some(gate) => gate.admit(digest, delta, &self.remote).map(Some),
            None => Ok(None),
        }
    }

    /// The pull's means to stop this source's readers, once.
    pub(crate) fn take_stop(&self) -> Option<Stop> {
        self.stop.lock().map_or(None, |mut stop| stop.take())
    }

    /// A reader of the layer blob `digest`, for the pipeline.
    pub(crate) fn layer(
        &self,
        digest: &crate::oci::digest::Digest,
        size: u64,
    ) -> Box<dyn Read + Send> {
        Box::new(blob::BlobStream::new(self.remote.clone(), digest, size))
    }
}

/// The spans `spans` (sorted, apart) of the blob `digest` of `size` bytes
/// in the repository of the image `registry` names, read as a partial
/// pull reads them: joined in order, and what fetching them took. Blocks;
/// call it on a blocking thread of a tokio runtime.
pub fn read_blob_ranges(
    registry: Registry,
    digest: &str,
    size: u64,
    spans: Vec<Span>,
) -> Result<(Vec<u8>, std::sync::Arc<RangeCounts>), Error> {
    let digest = Digest::parse(digest, "the blob's digest")?;
    let connected = Connected::open(registry)?;
    let counts = std::sync::Arc::<RangeCounts>::default();
    let remote = connected.remote.clone();
    let mut reader = ranges::RangeReader::new(remote, &digest, size, spans, counts.clone())?;
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).map_err(failure)?;
    Ok((bytes, counts))
}

/// The span `span` of the blob `digest`, read with one range request as
/// a partial pull first looks at a blob; `None` when the registry ignores
/// ranges and sends the whole blob, which is not read then. Blocks, as
/// [`read_blob_ranges`].
pub fn read_blob_span(
    registry: Registry,
    digest: &str,
    size: u64,
    span: Span,
) -> Result<(Option<Vec<u8>>, std::sync::Arc<RangeCounts>), Error> {
    let digest = Digest::parse(digest, "the blob's digest")?;
    let connected = Connected::open(registry)?;
    let counts = std::sync::Arc::<RangeCounts>::default();
    let bytes = ranges::read_span(&connected.remote, &digest, size, span, &counts)?;
    Ok((bytes, counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_the_docker_transport_syntax() {
        let image = parse_reference("127.0.0.1:5000/team/app:v1").unwrap();
        assert_eq!(image.registry(), "127.0.0.1:5000");
        assert_eq!(image.repository(), "team/app");
        assert_eq!(image.tag(), Some("v1"));
        let digest = format!("sha256:{}", "a".repeat(64));
        let pinned = parse_reference(&format!("localhost:1/app@{digest}")).unwrap();
        assert_eq!(pinned.digest(), Some(digest.as_str()));
        for bad in [
            "//127.0.0.1/app",
            "docker://h/app",
            "h:1/App",
            "h:1/app@sha256:abc",
        ] {
            assert!(
                matches!(parse_reference(bad), Err(Error::InvalidReference { .. })),
                "{bad}"
            );
        }
    }
}
