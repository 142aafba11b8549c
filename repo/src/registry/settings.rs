//! What the machine says about registries, read by the daemon from files
//! the administrator owns: `registries.conf` (which registries are
//! insecure), the `certs.d` CA directories, the signature policy, and an
//! optional admin auth file.

use std::path::{Path, PathBuf};

use oci_client::client::{Certificate, CertificateEncoding};
use serde::Deserialize;

use crate::Error;

/// Where the daemon finds its registry configuration.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// The containers-certs.d base: `DIR/HOST[:PORT]/*.crt` are CAs
    /// trusted for that registry, beside the system store.
    pub certs_dir: PathBuf,
    /// The containers `registries.conf`; `[[registry]] insecure = true`
    /// allows plain HTTP and unverified TLS for that registry.
    pub registries_conf: PathBuf,
    /// The containers signature policy.
    pub policy: PathBuf,
    /// The admin's auth file, used when the caller passes none.
    pub authfile: Option<PathBuf>,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            certs_dir: "/etc/containers/certs.d".into(),
            registries_conf: "/etc/containers/registries.conf".into(),
            policy: "/etc/containers/policy.json".into(),
            authfile: None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct RegistriesConf {
    #[serde(default)]
    registry: Vec<RegistryEntry>,
    /// The v1 format's `[registries.insecure] registries = [...]`.
    #[serde(default)]
    registries: Option<V1Registries>,
}

#[derive(Debug, Deserialize)]
struct RegistryEntry {
    #[serde(default)]
    location: String,
    prefix: Option<String>,
    #[serde(default)]
    insecure: bool,
}

#[derive(Debug, Default, Deserialize)]
struct V1Registries {
    #[serde(default)]
    insecure: Option<V1List>,
}

#[derive(Debug, Default, Deserialize)]
struct V1List {
    #[serde(default)]
    registries: Vec<String>,
}

impl RegistrySettings {
    /// Whether `registries.conf` marks the image `host/repository` as on
    /// an insecure registry. A missing file marks nothing; one that does
    /// not parse is an error, since it may be what allows a registry.
    pub(crate) fn insecure(&self, host: &str, repository: &str) -> Result<bool, Error> {
        let text = match std::fs::read_to_string(&self.registries_conf) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(invalid(&self.registries_conf, e.to_string())),
        };
        let conf: RegistriesConf =
            toml::from_str(&text).map_err(|e| invalid(&self.registries_conf, e.to_string()))?;
        let image = format!("{host}/{repository}");
        // The longest matching prefix decides, as for the containers tools.
        let best = conf
            .registry
            .iter()
            .filter_map(|entry| {
                let prefix = entry.prefix.as_deref().unwrap_or(&entry.location);
                prefix_matches(prefix, &image).then_some((prefix.len(), entry.insecure))
            })
            .max_by_key(|(len, _)| *len);
        if let Some((_, insecure)) = best {
            return Ok(insecure);
        }
        let v1 = conf.registries.and_then(|r| r.insecure).unwrap_or_default();
        Ok(v1.registries.iter().any(|r| r == host))
    }

    /// The CA certificates `certs.d` holds for `host` (`HOST[:PORT]`).
    pub(crate) fn certificates(&self, host: &str) -> Result<Vec<Certificate>, Error> {
        let dir = self.certs_dir.join(host);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(invalid(&dir, e.to_string())),
        };
        let mut certificates = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| invalid(&dir, e.to_string()))?.path();
            // `*.cert`/`*.key` pairs are client certificates, not CAs.
            if path.extension().is_some_and(|x| x == "crt") {
                let data = std::fs::read(&path).map_err(|e| invalid(&path, e.to_string()))?;
                certificates.push(Certificate {
                    encoding: CertificateEncoding::Pem,
                    data,
                });
            }
        }
        Ok(certificates)
    }
}

/// Whether a registries.conf prefix covers `image` (`host/repository`):
/// equal, or a prefix ending at a path separator.
fn prefix_matches(prefix: &str, image: &str) -> bool {
    if let Some(domain) = prefix.strip_prefix("*.") {
        let host = image.split('/').next().unwrap_or_default();
        return host.ends_with(&format!(".{domain}"));
    }
    image == prefix
        || image
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn invalid(path: &Path, reason: String) -> Error {
    Error::InvalidRegistryConfig {
        what: path.display().to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(conf: &str) -> (tempfile::TempDir, RegistrySettings) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registries.conf");
        std::fs::write(&path, conf).unwrap();
        let settings = RegistrySettings {
            registries_conf: path,
            certs_dir: dir.path().join("certs.d"),
            ..RegistrySettings::default()
        };
        (dir, settings)
    }

    #[test]
    fn the_longest_prefix_decides_whether_a_registry_is_insecure() {
        let (_dir, s) = settings(
            r#"
            unqualified-search-registries = ["docker.io"]
            [[registry]]
            location = "127.0.0.1:5000"
            insecure = true
            [[registry]]
            location = "127.0.0.1:5000/safe"
            [[registry]]
            prefix = "*.example.com"
            location = "mirror"
            insecure = true
            "#,
        );
        assert!(s.insecure("127.0.0.1:5000", "app").unwrap());
        assert!(!s.insecure("127.0.0.1:5000", "safe/app").unwrap());
        assert!(!s.insecure("127.0.0.1:5001", "app").unwrap());
        assert!(!s.insecure("127.0.0.1:50000", "app").unwrap());
        assert!(s.insecure("a.example.com", "x").unwrap());
        let (_dir, broken) = settings("[[registry]\n");
        assert!(matches!(
            broken.insecure("h", "r"),
            Err(Error::InvalidRegistryConfig { .. })
        ));
    }

    #[test]
    fn only_crt_files_of_the_registry_are_trusted() {
        let (dir, s) = settings("");
        let host = dir.path().join("certs.d/127.0.0.1:5000");
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("ca.crt"), "PEM").unwrap();
        std::fs::write(host.join("client.cert"), "x").unwrap();
        std::fs::write(host.join("client.key"), "x").unwrap();
        assert_eq!(s.certificates("127.0.0.1:5000").unwrap().len(), 1);
        assert!(s.certificates("127.0.0.1:5001").unwrap().is_empty());
    }
}
