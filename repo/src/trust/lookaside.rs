//! Where simple signatures are kept: the lookaside stores that
//! `registries.d` (containers-registries.d(5)) names per docker scope.
//! A store holds `REPOSITORY@sha256=HEX/signature-N`, N counting from 1
//! until the first one that is missing; it is read over `file://`,
//! `http://` or `https://`.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use tokio::runtime::Handle;

use super::policy::{DockerIdentity, candidate_scopes};
use crate::{Error, oci::digest::Digest};

/// Where the containers tools keep signatures when registries.d names no
/// store, for root: the daemon reads the same place.
const BUILTIN_STORE: &str = "file:///var/lib/containers/sigstore";
/// The most signatures read for one image; a store that serves more is
/// refused rather than followed without end.
const MAX_SIGNATURES: usize = 64;
/// The largest signature read.
const MAX_SIGNATURE: usize = 4 << 20;
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Default, Deserialize)]
struct RawFile {
    #[serde(rename = "default-docker")]
    default_docker: Option<Namespace>,
    #[serde(default)]
    docker: HashMap<String, Namespace>,
}

/// One scope's settings; the `*-staging` stores are for writing only,
/// and `sigstore` is the old name of `lookaside`.
#[derive(Debug, Default, Clone, Deserialize)]
struct Namespace {
    lookaside: Option<String>,
    #[serde(rename = "lookaside-staging")]
    _lookaside_staging: Option<String>,
    sigstore: Option<String>,
    #[serde(rename = "sigstore-staging")]
    _sigstore_staging: Option<String>,
    #[serde(rename = "use-sigstore-attachments")]
    use_sigstore_attachments: Option<bool>,
}

impl Namespace {
    fn reading(&self) -> Option<&str> {
        self.lookaside.as_deref().or(self.sigstore.as_deref())
    }
}

/// What registries.d says of one image.
#[derive(Debug, Clone)]
pub(crate) struct Stores {
    /// The lookaside store's directory for the image's repository.
    lookaside: url::Url,
    /// Whether sigstore signatures are attached to the image in its
    /// registry (`use-sigstore-attachments`; false unless a scope says).
    pub sigstore_attachments: bool,
}

impl Stores {
    /// Read every `*.yaml` of `dir` (none when it is missing) and settle
    /// the stores of `identity`: its most specific docker scope that
    /// names one, else `default-docker`.
    pub(crate) fn of(dir: &Path, identity: &DockerIdentity) -> Result<Self, Error> {
        let (default, docker) = read_dir(dir)?;
        let scopes: Vec<&Namespace> = candidate_scopes(identity)
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| docker.get(s))
            .chain(default.as_ref())
            .collect();
        let top = scopes
            .iter()
            .find_map(|ns| ns.reading())
            .unwrap_or(BUILTIN_STORE);
        let attachments = scopes.iter().find_map(|ns| ns.use_sigstore_attachments);
        let invalid = |reason: String| Error::InvalidRegistryConfig {
            what: dir.display().to_string(),
            reason,
        };
        let mut lookaside = url::Url::parse(top)
            .map_err(|e| invalid(format!("lookaside {top:?} is not a URL: {e}")))?;
        if !matches!(lookaside.scheme(), "file" | "http" | "https") {
            return Err(invalid(format!(
                "lookaside {top:?}: only file://, http:// and https:// stores are read"
            )));
        }
        let path = format!(
            "{}/{}",
            lookaside.path().trim_end_matches('/'),
            identity.repository
        );
        lookaside.set_path(&path);
        Ok(Stores {
            lookaside,
            sigstore_attachments: attachments.unwrap_or(false),
        })
    }

    /// The signatures the lookaside store holds for the manifest
    /// `digest`, in order. Blocks; `handle` runs HTTP requests.
    pub(crate) fn signatures(
        &self,
        digest: &Digest,
        handle: &Handle,
    ) -> Result<Vec<Vec<u8>>, Error> {
        let mut found = Vec::new();
        let client = (self.lookaside.scheme() != "file")
            .then(http_client)
            .transpose()?;
        for n in 1..=MAX_SIGNATURES + 1 {
            let mut url = self.lookaside.clone();
            url.set_path(&format!(
                "{}@sha256={}/signature-{n}",
                url.path(),
                digest.hex()
            ));
            let got = match &client {
                None => read_file(&url)?,
                Some(client) => handle.block_on(get(client, &url))?,
            };
            let Some(signature) = got else {
                return Ok(found);
            };
            if n > MAX_SIGNATURES {
                break;
            }
            found.push(signature);
        }
        Err(Error::InvalidSource {
            reason: format!(
                "the lookaside store {} holds more than {MAX_SIGNATURES} signatures for {digest}",
                self.lookaside
            ),
        })
    }
}

/// The `default-docker` and `docker` entries of every file, each scope
/// defined once across them.
fn read_dir(dir: &Path) -> Result<(Option<Namespace>, HashMap<String, Namespace>), Error> {
    let invalid = |path: &Path, reason: String| Error::InvalidRegistryConfig {
        what: path.display().to_string(),
        reason,
    };
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(|e| invalid(dir, e.to_string()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(invalid(dir, e.to_string())),
    };
    files.retain(|p| p.extension().is_some_and(|x| x == "yaml"));
    files.sort();
    let (mut default, mut docker) = (None, HashMap::new());
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|e| invalid(&path, e.to_string()))?;
        let file: RawFile = match serde_norway::from_str::<Option<RawFile>>(&text) {
            Ok(file) => file.unwrap_or_default(),
            Err(e) => return Err(invalid(&path, e.to_string())),
        };
        if let Some(ns) = file.default_docker {
            if default.is_some() {
                return Err(invalid(&path, "default-docker is defined twice".to_owned()));
            }
            default = Some(ns);
        }
        for (scope, ns) in file.docker {
            if docker.insert(scope.clone(), ns).is_some() {
                return Err(invalid(
                    &path,
                    format!("docker scope {scope:?} is defined twice"),
                ));
            }
        }
    }
    Ok((default, docker))
}

/// A `file://` signature, or `None` where there is none.
fn read_file(url: &url::Url) -> Result<Option<Vec<u8>>, Error> {
    let path = url
        .to_file_path()
        .map_err(|()| Error::InvalidRegistryConfig {
            what: url.to_string(),
            reason: "not a local path".to_owned(),
        })?;
    match std::fs::metadata(&path) {
        Ok(meta) if meta.len() > MAX_SIGNATURE as u64 => Err(too_large(url)),
        Ok(_) => std::fs::read(&path)
            .map(Some)
            .map_err(|e| Error::storage("reading a signature", e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::storage("reading a signature", e)),
    }
}

fn http_client() -> Result<reqwest::Client, Error> {
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| Error::internal("reading a lookaside store", e.to_string()))
}

/// An `http(s)://` signature, or `None` on 404.
async fn get(client: &reqwest::Client, url: &url::Url) -> Result<Option<Vec<u8>>, Error> {
    let host = url.host_str().unwrap_or_default().to_owned();
    let unreachable = |e: reqwest::Error| Error::RegistryUnreachable {
        registry: host.clone(),
        reason: format!("lookaside store {url}: {e}"),
    };
    let mut response = client.get(url.clone()).send().await.map_err(unreachable)?;
    match response.status().as_u16() {
        404 => return Ok(None),
        200 => {}
        status => {
            return Err(Error::RegistryStatus {
                registry: host.clone(),
                status,
                what: format!("signature {url}"),
                reason: response.status().to_string(),
            });
        }
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_SIGNATURE {
            return Err(too_large(url));
        }
    }
    Ok(Some(body))
}

fn too_large(url: &url::Url) -> Error {
    Error::InvalidSource {
        reason: format!("signature {url} is larger than {MAX_SIGNATURE} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(repository: &str) -> DockerIdentity {
        DockerIdentity {
            registry: "reg:5000".into(),
            repository: repository.into(),
            tag: Some("v1".into()),
            digest: None,
        }
    }

    #[test]
    fn the_most_specific_scope_names_the_store_and_signatures_are_read_until_one_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("a.yaml"),
            "default-docker:\n  lookaside-staging: file:///staging\n  sigstore: file:///old\n",
        )
        .unwrap();
        let store = d.join("store");
        std::fs::write(
            d.join("b.yaml"),
            format!(
                "docker:\n  reg:5000/team:\n    lookaside: file://{}\n    use-sigstore-attachments: true\n",
                store.display()
            ),
        )
        .unwrap();
        std::fs::write(d.join("ignored.yml.bak"), "{{{").unwrap();
        let other = Stores::of(d, &identity("app")).unwrap();
        assert_eq!(other.lookaside.as_str(), "file:///old/app");
        assert!(!other.sigstore_attachments);
        let team = Stores::of(d, &identity("team/app")).unwrap();
        assert!(team.sigstore_attachments);
        let digest = Digest::of(b"manifest");
        let sigs = store.join(format!("team/app@sha256={}", digest.hex()));
        std::fs::create_dir_all(&sigs).unwrap();
        for (n, body) in [(1, "one"), (2, "two"), (4, "unreached")] {
            std::fs::write(sigs.join(format!("signature-{n}")), body).unwrap();
        }
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let found = team.signatures(&digest, runtime.handle()).unwrap();
        assert_eq!(found, [b"one".to_vec(), b"two".to_vec()]);
    }

    #[test]
    fn broken_or_doubled_registries_d_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (file, text, said) in [
            (
                "a.yaml",
                "docker:\n  reg:5000:\n    lookaside: ftp://x\n",
                "ftp",
            ),
            (
                "b.yaml",
                "docker:\n  reg:5000:\n    lookaside: file:///y\n",
                "twice",
            ),
            ("b.yaml", "docker: [", "b.yaml"),
        ] {
            std::fs::write(dir.path().join(file), text).unwrap();
            match Stores::of(dir.path(), &identity("app")) {
                Err(Error::InvalidRegistryConfig { what, reason }) => {
                    assert!(
                        what.contains(said) || reason.contains(said),
                        "{what}: {reason}"
                    )
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }
}
