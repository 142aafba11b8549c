//! What the machine says about registries, read by the daemon from files
//! the administrator owns: `registries.conf` (which registries are
//! insecure), the `certs.d` CA directories, the signature policy and
//! `registries.d`, and an optional admin auth file.

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
    /// The containers `registries.conf`, with the drop-ins beside it in
    /// `registries.conf.d/`; `[[registry]] insecure = true` allows plain
    /// HTTP and unverified TLS for that registry.
    pub registries_conf: PathBuf,
    /// The containers signature policy.
    pub policy: PathBuf,
    /// The containers-registries.d directory: where the signatures of
    /// images are kept (lookaside stores, sigstore attachments).
    pub registries_d: PathBuf,
    /// The admin's auth file, used when the caller passes none.
    pub authfile: Option<PathBuf>,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            certs_dir: "/etc/containers/certs.d".into(),
            registries_conf: "/etc/containers/registries.conf".into(),
            policy: "/etc/containers/policy.json".into(),
            registries_d: "/etc/containers/registries.d".into(),
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
        let conf = self.registries()?;
        let image = format!("{host}/{repository}");
        // The longest matching prefix decides, as for the containers tools.
        let best = conf
            .registry
            .iter()
            .filter_map(|entry| {
                let prefix = entry.prefix();
                prefix_matches(prefix, &image).then_some((prefix.len(), entry.insecure))
            })
            .max_by_key(|(len, _)| *len);
        if let Some((_, insecure)) = best {
            return Ok(insecure);
        }
        let v1 = conf.registries.and_then(|r| r.insecure).unwrap_or_default();
        Ok(v1.registries.iter().any(|r| r == host))
    }

    /// `registries.conf` with the drop-ins of `registries.conf.d/` applied
    /// in the order of their names, as containers-registries.conf.d(5)
    /// says: a drop-in's `[[registry]]` replaces the one with the same
    /// prefix and adds the others.
    fn registries(&self) -> Result<RegistriesConf, Error> {
        let mut conf = read_conf(&self.registries_conf)?.unwrap_or_default();
        let mut dir = self.registries_conf.clone().into_os_string();
        dir.push(".d");
        let dir = PathBuf::from(dir);
        let mut dropins = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid(&dir, e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(invalid(&dir, e.to_string())),
        };
        dropins.retain(|p| p.extension().is_some_and(|x| x == "conf"));
        dropins.sort();
        for path in dropins {
            let Some(dropin) = read_conf(&path)? else {
                continue;
            };
            for entry in dropin.registry {
                conf.registry.retain(|e| e.prefix() != entry.prefix());
                conf.registry.push(entry);
            }
            if let Some(list) = dropin.registries.and_then(|r| r.insecure) {
                let v1 = conf.registries.get_or_insert_with(V1Registries::default);
                let insecure = v1.insecure.get_or_insert_with(V1List::default);
                insecure.registries.extend(list.registries);
            }
        }
        Ok(conf)
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
            // `*.cert`/`*.key` pairs are client certificates, which the
            // registry client cannot present: connecting without the one
            // the administrator set up would fail later and less clearly.
            if path.extension().is_some_and(|x| x == "cert" || x == "key") {
                return Err(invalid(
                    &path,
                    "client certificates (*.cert, *.key) are not supported; \
                     only CA certificates (*.crt) are"
                        .to_owned(),
                ));
            }
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

/// One registries.conf file, or `None` if there is none at `path`.
fn read_conf(path: &Path) -> Result<Option<RegistriesConf>, Error> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(invalid(path, e.to_string())),
    };
    toml::from_str(&text)
        .map(Some)
        .map_err(|e| invalid(path, e.to_string()))
}

impl RegistryEntry {
    /// The images the entry is about: `prefix`, or `location` without one.
    fn prefix(&self) -> &str {
        self.prefix.as_deref().unwrap_or(&self.location)
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
    fn the_crt_files_of_the_registry_are_trusted_and_client_certificates_refused() {
        let (dir, s) = settings("");
        let host = dir.path().join("certs.d/127.0.0.1:5000");
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("ca.crt"), "PEM").unwrap();
        std::fs::write(host.join("README"), "x").unwrap();
        assert_eq!(s.certificates("127.0.0.1:5000").unwrap().len(), 1);
        assert!(s.certificates("127.0.0.1:5001").unwrap().is_empty());
        std::fs::write(host.join("client.cert"), "x").unwrap();
        match s.certificates("127.0.0.1:5000") {
            Err(Error::InvalidRegistryConfig { what, reason }) => {
                assert!(what.ends_with("client.cert"), "{what}");
                assert!(reason.contains("client certificates"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn drop_ins_apply_in_name_order_replacing_entries_with_the_same_prefix() {
        let (dir, s) = settings(
            r#"
            [[registry]]
            location = "127.0.0.1:5000"
            insecure = true
            [[registry]]
            location = "127.0.0.1:6000"
            "#,
        );
        let dropins = dir.path().join("registries.conf.d");
        std::fs::create_dir(&dropins).unwrap();
        let write = |name: &str, text: &str| std::fs::write(dropins.join(name), text).unwrap();
        // Applied after 10-..., so its entry for :5000 stands.
        write(
            "20-secure.conf",
            "[[registry]]\nlocation = \"127.0.0.1:5000\"\ninsecure = false\n",
        );
        write(
            "10-both.conf",
            "[[registry]]\nlocation = \"127.0.0.1:5000\"\ninsecure = true\n\
             [[registry]]\nlocation = \"127.0.0.1:7000\"\ninsecure = true\n",
        );
        // Not a .conf file: ignored.
        write(
            "30-ignored.conf.bak",
            "[[registry]]\nlocation = \"127.0.0.1:6000\"\ninsecure = true\n",
        );
        assert!(!s.insecure("127.0.0.1:5000", "app").unwrap());
        assert!(s.insecure("127.0.0.1:7000", "app").unwrap());
        assert!(!s.insecure("127.0.0.1:6000", "app").unwrap());
        write("40-broken.conf", "[[registry]\n");
        match s.insecure("127.0.0.1:5000", "app") {
            Err(Error::InvalidRegistryConfig { what, .. }) => {
                assert!(what.ends_with("40-broken.conf"), "{what}")
            }
            other => panic!("{other:?}"),
        }
    }
}
