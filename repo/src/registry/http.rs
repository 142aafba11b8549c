//! Blob requests that the registry client cannot make: a GET with a
//! multi-range `Range` header, whose `206 multipart/byteranges` answer is
//! ours to parse. They are sent by an HTTP client built with exactly the
//! TLS settings of the registry client (the system CAs, the `certs.d`
//! CAs, verification off only where the pull or `registries.conf` says
//! so), to the same scheme and host, with the credentials the registry
//! client's own token flow hands out.

use std::sync::Mutex;

use oci_client::{RegistryOperation, errors::OciDistributionError, secrets::RegistryAuth};
use reqwest::{
    StatusCode,
    header::{AUTHORIZATION, HeaderValue, RANGE},
};

use super::{
    Registry,
    remote::{CONNECT_TIMEOUT, READ_TIMEOUT, Remote},
};
use crate::Error;

/// The HTTP side of a connected image.
pub(crate) struct Http {
    client: reqwest::Client,
    /// `https`, or `http` where an insecure registry speaks only that.
    scheme: Mutex<&'static str>,
    auth: RegistryAuth,
    /// The `Authorization` value to send (`None`: none), once known.
    authorization: Mutex<Option<Option<HeaderValue>>>,
}

impl Http {
    /// A client for `registry`, with its TLS settings.
    pub(super) fn new(registry: &Registry) -> Result<Self, Error> {
        let invalid = |e: &dyn std::fmt::Display| Error::InvalidRegistryConfig {
            what: format!("the TLS settings for {}", registry.image.registry()),
            reason: e.to_string(),
        };
        let certificates = registry
            .certificates
            .iter()
            .map(reqwest::Certificate::try_from)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(&e))?;
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(registry.insecure)
            .danger_accept_invalid_hostnames(registry.insecure)
            .tls_certs_merge(certificates)
            .read_timeout(READ_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| invalid(&e))?;
        Ok(Http {
            client,
            scheme: Mutex::new("https"),
            auth: registry.auth.clone(),
            authorization: Mutex::new(None),
        })
    }

    /// The registry speaks plain HTTP only (it is marked insecure).
    pub(super) fn use_plain_http(&self) {
        if let Ok(mut scheme) = self.scheme.lock() {
            *scheme = "http";
        }
    }

    fn scheme(&self) -> &'static str {
        self.scheme.lock().map_or("https", |s| *s)
    }

    fn cached(&self) -> Option<Option<HeaderValue>> {
        self.authorization.lock().ok()?.clone()
    }

    fn remember(&self, value: Option<Option<HeaderValue>>) {
        if let Ok(mut cached) = self.authorization.lock() {
            *cached = value;
        }
    }
}

impl Remote {
    /// GET the blob `digest` with `Range: bytes=<ranges>`. The answer is
    /// returned for 200, 206, 400 and 416, which the caller tells apart;
    /// any other status is the client's error for it, so that retries and
    /// typed errors are those of every other request.
    pub(super) async fn get_ranges(
        &self,
        digest: &str,
        ranges: &str,
    ) -> Result<reqwest::Response, OciDistributionError> {
        let mut fresh = false;
        loop {
            let authorization = self.authorization(fresh).await?;
            let mut request = self
                .http
                .client
                .get(self.blob_url(digest))
                .header(RANGE, format!("bytes={ranges}"));
            if let Some(value) = authorization {
                request = request.header(AUTHORIZATION, value);
            }
            let response = request.send().await?;
            let status = response.status();
            match status {
                StatusCode::OK
                | StatusCode::PARTIAL_CONTENT
                | StatusCode::BAD_REQUEST
                | StatusCode::RANGE_NOT_SATISFIABLE => return Ok(response),
                // A token that expired since it was fetched: once more.
                StatusCode::UNAUTHORIZED if !fresh => fresh = true,
                _ => {
                    let url = response.url().to_string();
                    let message = response.text().await.unwrap_or_default();
                    return Err(OciDistributionError::ServerError {
                        code: status.as_u16(),
                        url,
                        message,
                    });
                }
            }
        }
    }

    /// The blob URL, as the registry client forms it.
    fn blob_url(&self, digest: &str) -> String {
        let registry = self.image.resolve_registry();
        let ns = self
            .image
            .namespace()
            .map(|ns| format!("?ns={ns}"))
            .unwrap_or_default();
        format!(
            "{}://{registry}/v2/{}/blobs/{digest}{ns}",
            self.http.scheme(),
            self.image.repository()
        )
    }

    /// What to send as `Authorization`: the bearer token of the registry
    /// client's token flow, or the Basic credentials where the registry
    /// asks for no token. With `fresh`, a new token is fetched.
    async fn authorization(
        &self,
        fresh: bool,
    ) -> Result<Option<HeaderValue>, OciDistributionError> {
        if !fresh && let Some(known) = self.http.cached() {
            return Ok(known);
        }
        let token = self
            .client
            .auth(&self.image, &self.http.auth, RegistryOperation::Pull)
            .await?;
        let value = match (token, &self.http.auth) {
            (Some(token), _) => Some(format!("Bearer {token}")),
            (None, RegistryAuth::Basic(user, password)) => {
                use base64::Engine;
                let pair = format!("{user}:{password}");
                let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
                Some(format!("Basic {encoded}"))
            }
            (None, _) => None,
        };
        let value = value
            .map(|v| HeaderValue::from_str(&v))
            .transpose()
            .map_err(|e| OciDistributionError::GenericError(Some(e.to_string())))?
            .map(|mut v| {
                v.set_sensitive(true);
                v
            });
        self.http.remember(Some(value.clone()));
        Ok(value)
    }
}
