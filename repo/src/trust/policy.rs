//! The containers signature policy (`containers-policy.json(5)`): which
//! requirements decide for a registry image, found by its most specific
//! docker scope, each parsed strictly so that a typo never weakens a
//! check.

use std::{collections::HashMap, path::PathBuf};

use base64::Engine;
use serde::{Deserialize, de::DeserializeOwned};

use super::identity::SignedIdentity;
use crate::Error;

/// One requirement of a scope; all of a scope's must admit an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Requirement {
    /// Admit anything.
    AcceptAnything,
    /// Admit nothing.
    Reject,
    /// A simple-signing signature by one of these GPG keys.
    SignedBy(Signed),
    /// A sigstore signature by this public key.
    SigstoreSigned(Signed),
}

/// A requirement for a signature: the keys it may be made with, and the
/// names it may claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Signed {
    /// The trusted keys.
    pub keys: Keys,
    /// The image names a signature may claim.
    pub identity: SignedIdentity,
}

/// Where the trusted keys of a requirement are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Keys {
    /// Key files (`keyPath`, `keyPaths`), read when a signature is checked.
    Files(Vec<PathBuf>),
    /// Key bytes given in the policy (`keyData`).
    Data(Vec<u8>),
}

impl Keys {
    /// The key material, each file's in turn; `scope` names the scope in
    /// errors.
    pub(crate) fn read(&self, scope: &str) -> Result<Vec<Vec<u8>>, Error> {
        match self {
            Keys::Data(bytes) => Ok(vec![bytes.clone()]),
            Keys::Files(paths) => paths
                .iter()
                .map(|path| {
                    std::fs::read(path).map_err(|e| Error::InvalidPolicy {
                        path: path.display().to_string(),
                        reason: format!("a key of scope {scope} cannot be read: {e}"),
                    })
                })
                .collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    default: Vec<serde_json::Value>,
    #[serde(default)]
    transports: HashMap<String, HashMap<String, Vec<serde_json::Value>>>,
}

/// `insecureAcceptAnything` and `reject` take no field but `type`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBare {
    #[serde(rename = "type")]
    _kind: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSignedBy {
    #[serde(rename = "type")]
    _kind: String,
    key_type: String,
    key_path: Option<PathBuf>,
    key_paths: Option<Vec<PathBuf>>,
    key_data: Option<String>,
    signed_identity: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSigstoreSigned {
    #[serde(rename = "type")]
    _kind: String,
    key_path: Option<PathBuf>,
    key_paths: Option<Vec<PathBuf>>,
    key_data: Option<String>,
    // Known to the format, not supported here: named in the refusal.
    fulcio: Option<serde_json::Value>,
    rekor_public_key_path: Option<serde_json::Value>,
    rekor_public_key_paths: Option<serde_json::Value>,
    rekor_public_key_data: Option<serde_json::Value>,
    pki: Option<serde_json::Value>,
    signed_identity: Option<serde_json::Value>,
}

/// A parsed signature policy.
#[derive(Debug, Clone)]
pub struct Policy {
    default: Vec<Requirement>,
    /// The `docker` transport's scopes, by scope text.
    docker: HashMap<String, Vec<Requirement>>,
    /// The `oci` and `oci-archive` transports' scopes, by transport and
    /// scope text.
    local: HashMap<String, HashMap<String, Vec<Requirement>>>,
    /// The file it was read from, for errors.
    path: String,
}

/// The transports of a layout the client hands over open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalTransport {
    /// An `oci:` layout directory.
    Directory,
    /// An `oci-archive:` tar.
    Archive,
}

impl LocalTransport {
    /// The transport's name in a policy.
    pub fn name(self) -> &'static str {
        match self {
            LocalTransport::Directory => "oci",
            LocalTransport::Archive => "oci-archive",
        }
    }
}

/// An image named in a registry, as the policy sees it.
#[derive(Debug, Clone)]
pub struct DockerIdentity {
    /// `HOST[:PORT]`.
    pub registry: String,
    /// The repository path below the registry, e.g. `library/debian`.
    pub repository: String,
    /// The tag, when the reference has one.
    pub tag: Option<String>,
    /// The digest, when the reference has one.
    pub digest: Option<String>,
}

/// The scope that decides for an image, and its requirements.
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    /// How errors name it: `default` or `docker "SCOPE"`.
    pub name: String,
    /// Every one must admit the image.
    pub requirements: Vec<Requirement>,
}

impl Policy {
    /// Parse a policy document; `path` names it in errors.
    pub fn parse(bytes: &[u8], path: &str) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidPolicy {
            path: path.to_owned(),
            reason,
        };
        let mut document = serde_json::Deserializer::from_slice(bytes);
        let raw: RawPolicy = serde_path_to_error::deserialize(&mut document)
            .map_err(|e| invalid(format!("at {}: {}", e.path(), e.inner())))?;
        let default = requirements(raw.default, "default").map_err(&invalid)?;
        let (mut docker, mut local) = (HashMap::new(), HashMap::new());
        for (transport, scopes) in raw.transports {
            for (scope, list) in scopes {
                let place = format!("transports.{transport}.{scope:?}");
                let list = requirements(list, &place).map_err(&invalid)?;
                match transport.as_str() {
                    "docker" => drop(docker.insert(scope, list)),
                    "oci" | "oci-archive" => drop(
                        local
                            .entry(transport.clone())
                            .or_insert_with(HashMap::new)
                            .insert(scope, list),
                    ),
                    _ => {}
                }
            }
        }
        Ok(Policy {
            default,
            docker,
            local,
            path: path.to_owned(),
        })
    }

    /// Read the policy file at `path`: a missing or unreadable one is an
    /// invalid policy, as for the containers tools, never "accept all".
    pub fn load(path: &std::path::Path) -> Result<Self, Error> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| Error::InvalidPolicy {
            path: shown.clone(),
            reason: format!("cannot read it: {e}"),
        })?;
        Policy::parse(&bytes, &shown)
    }

    /// The scope that decides for `identity`: the reference with its tag
    /// or digest, the repository, each enclosing namespace, the registry,
    /// wildcard domains, the transport's "" scope, then the default.
    pub(crate) fn scope_for(&self, identity: &DockerIdentity) -> Scope {
        for scope in candidate_scopes(identity) {
            if let Some(list) = self.docker.get(&scope) {
                return Scope {
                    name: format!("docker {scope:?}"),
                    requirements: list.clone(),
                };
            }
        }
        Scope {
            name: "default".to_owned(),
            requirements: self.default.clone(),
        }
    }
}

impl Policy {
    /// The scope that decides for a local source of `transport`: the
    /// transport's `""` scope, else the default. Its other scopes are
    /// paths, and the daemon is handed the source open, never its path:
    /// a policy that has any is refused rather than matched against a
    /// weaker scope than the admin meant.
    pub(crate) fn scope_for_local(&self, transport: LocalTransport) -> Result<Scope, Error> {
        let name = transport.name();
        let scopes = self.local.get(name);
        if let Some(path) = scopes.and_then(|s| s.keys().find(|k| !k.is_empty())) {
            return Err(Error::InvalidPolicy {
                path: self.path.clone(),
                reason: format!(
                    "transports.{name}.{path:?}: cfsd is handed {name} sources open, \
                     not by path, so it cannot match path scopes; use the \
                     transport's \"\" scope"
                ),
            });
        }
        Ok(match scopes.and_then(|s| s.get("")) {
            Some(list) => Scope {
                name: format!("{name} \"\""),
                requirements: list.clone(),
            },
            None => Scope {
                name: "default".to_owned(),
                requirements: self.default.clone(),
            },
        })
    }
}

/// The docker scopes that may decide for `identity`, most specific first;
/// registries.d looks its namespaces up the same way.
pub(crate) fn candidate_scopes(identity: &DockerIdentity) -> Vec<String> {
    let repo = format!("{}/{}", identity.registry, identity.repository);
    let mut scopes = Vec::new();
    if let Some(digest) = &identity.digest {
        scopes.push(format!("{repo}@{digest}"));
    } else if let Some(tag) = &identity.tag {
        scopes.push(format!("{repo}:{tag}"));
    }
    let mut path = repo.as_str();
    scopes.push(path.to_owned());
    while let Some((parent, _)) = path.rsplit_once('/') {
        scopes.push(parent.to_owned());
        path = parent;
    }
    // `*.example.com` matches any subdomain of example.com.
    let host = identity.registry.split(':').next().unwrap_or_default();
    let mut domain = host;
    while let Some((_, rest)) = domain.split_once('.') {
        scopes.push(format!("*.{rest}"));
        domain = rest;
    }
    scopes.push(String::new());
    scopes
}

fn requirements(raw: Vec<serde_json::Value>, scope: &str) -> Result<Vec<Requirement>, String> {
    if raw.is_empty() {
        return Err(format!("{scope} lists no requirement"));
    }
    raw.into_iter()
        .enumerate()
        .map(|(i, value)| requirement(value, &format!("{scope}[{i}]")))
        .collect()
}

/// One requirement object; `place` says where it is in the policy.
fn requirement(value: serde_json::Value, place: &str) -> Result<Requirement, String> {
    let kind = value.get("type").and_then(serde_json::Value::as_str);
    match kind {
        Some("insecureAcceptAnything") => {
            fields::<RawBare>(value, place)?;
            Ok(Requirement::AcceptAnything)
        }
        Some("reject") => {
            fields::<RawBare>(value, place)?;
            Ok(Requirement::Reject)
        }
        Some("signedBy") => signed_by(fields(value, place)?, place).map(Requirement::SignedBy),
        Some("sigstoreSigned") => {
            sigstore_signed(fields(value, place)?, place).map(Requirement::SigstoreSigned)
        }
        Some(other) => Err(format!("{place}: unknown requirement type {other:?}")),
        None => Err(format!("{place}: a requirement needs a \"type\" string")),
    }
}

/// The fields of a requirement, none unknown.
fn fields<T: DeserializeOwned>(value: serde_json::Value, place: &str) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| match e.path().to_string() {
        path if path == "." => format!("{place}: {}", e.inner()),
        path => format!("{place}.{path}: {}", e.inner()),
    })
}

fn signed_by(raw: RawSignedBy, place: &str) -> Result<Signed, String> {
    if raw.key_type != "GPGKeys" {
        return Err(format!(
            "{place}.keyType: {:?} is not supported; only \"GPGKeys\" is",
            raw.key_type
        ));
    }
    Ok(Signed {
        keys: keys(raw.key_path, raw.key_paths, raw.key_data, place)?,
        identity: signed_identity(raw.signed_identity, place)?,
    })
}

fn sigstore_signed(raw: RawSigstoreSigned, place: &str) -> Result<Signed, String> {
    let unsupported = [
        ("fulcio", raw.fulcio.is_some()),
        ("rekorPublicKeyPath", raw.rekor_public_key_path.is_some()),
        ("rekorPublicKeyPaths", raw.rekor_public_key_paths.is_some()),
        ("rekorPublicKeyData", raw.rekor_public_key_data.is_some()),
        ("pki", raw.pki.is_some()),
    ];
    if let Some((field, _)) = unsupported.iter().find(|(_, given)| *given) {
        return Err(format!(
            "{place}.{field}: not supported; cfsd checks sigstore signatures against \
             public keys only (keyPath, keyPaths, keyData)"
        ));
    }
    Ok(Signed {
        keys: keys(raw.key_path, raw.key_paths, raw.key_data, place)?,
        identity: signed_identity(raw.signed_identity, place)?,
    })
}

/// Exactly one of `keyPath`, `keyPaths` and `keyData` (base64).
fn keys(
    path: Option<PathBuf>,
    paths: Option<Vec<PathBuf>>,
    data: Option<String>,
    place: &str,
) -> Result<Keys, String> {
    match (path, paths, data) {
        (Some(path), None, None) => Ok(Keys::Files(vec![path])),
        (None, Some(paths), None) if !paths.is_empty() => Ok(Keys::Files(paths)),
        (None, None, Some(data)) => base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map(Keys::Data)
            .map_err(|e| format!("{place}.keyData: not base64: {e}")),
        _ => Err(format!(
            "{place}: give exactly one of keyPath, keyPaths (not empty) and keyData"
        )),
    }
}

fn signed_identity(raw: Option<serde_json::Value>, place: &str) -> Result<SignedIdentity, String> {
    match raw {
        None => Ok(SignedIdentity::MatchRepoDigestOrExact),
        Some(value) => SignedIdentity::parse(value, &format!("{place}.signedIdentity")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(repository: &str, tag: &str) -> DockerIdentity {
        DockerIdentity {
            registry: "reg.example.com:5000".into(),
            repository: repository.into(),
            tag: Some(tag.into()),
            digest: None,
        }
    }

    const POLICY: &str = r#"{
        "default": [{"type": "reject"}],
        "transports": {
            "docker": {
                "reg.example.com:5000": [{"type": "insecureAcceptAnything"}],
                "reg.example.com:5000/signed": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k"}],
                "reg.example.com:5000/signed/open:v1": [{"type": "insecureAcceptAnything"}],
                "*.example.org": [{"type": "sigstoreSigned", "keyData": "a2V5",
                    "signedIdentity": {"type": "matchRepository"}}]
            },
            "oci": {"": [{"type": "insecureAcceptAnything"}]}
        }
    }"#;

    fn decides(policy: &Policy, identity: &DockerIdentity) -> (String, Vec<Requirement>) {
        let scope = policy.scope_for(identity);
        (scope.name, scope.requirements)
    }

    #[test]
    fn the_most_specific_scope_decides() {
        let policy = Policy::parse(POLICY.as_bytes(), "p").unwrap();
        let (_, open) = decides(&policy, &image("app", "v1"));
        assert_eq!(open, [Requirement::AcceptAnything]);
        let (_, open) = decides(&policy, &image("signed/open", "v1"));
        assert_eq!(open, [Requirement::AcceptAnything]);
        let (scope, signed) = decides(&policy, &image("signed/open", "v2"));
        assert_eq!(scope, r#"docker "reg.example.com:5000/signed""#);
        assert_eq!(
            signed,
            [Requirement::SignedBy(Signed {
                keys: Keys::Files(vec!["/k".into()]),
                identity: SignedIdentity::MatchRepoDigestOrExact,
            })]
        );
        let elsewhere = DockerIdentity {
            registry: "other:1".into(),
            ..image("app", "v1")
        };
        assert_eq!(decides(&policy, &elsewhere).0, "default");
        let wildcard = DockerIdentity {
            registry: "a.b.example.org".into(),
            ..image("app", "v1")
        };
        assert_eq!(
            decides(&policy, &wildcard).1,
            [Requirement::SigstoreSigned(Signed {
                keys: Keys::Data(b"key".to_vec()),
                identity: SignedIdentity::MatchRepository,
            })]
        );
    }

    #[test]
    fn a_policy_that_does_not_parse_is_refused_naming_the_place() {
        let scoped = |requirement: &str| {
            format!(
                r#"{{"default": [{{"type": "reject"}}], "transports": {{"docker": {{"h:1/app": [{requirement}]}}}}}}"#
            )
        };
        for (bad, place) in [
            ("{".to_owned(), ""),
            (r#"{"transports": {}}"#.to_owned(), "default"),
            (r#"{"default": []}"#.to_owned(), "default"),
            (
                r#"{"default": [{"type": "trustMe"}]}"#.to_owned(),
                "default[0]",
            ),
            (
                r#"{"default": [{"type": "reject"}], "extra": 1}"#.to_owned(),
                "extra",
            ),
            (
                r#"{"default": [{"type": "reject", "why": 1}]}"#.to_owned(),
                "default[0]",
            ),
            (
                scoped(r#"{"type": "nope"}"#),
                r#"transports.docker."h:1/app"[0]"#,
            ),
            (
                scoped(r#"{"type": "signedBy", "keyType": "X509", "keyPath": "/k"}"#),
                "keyType",
            ),
            (
                scoped(r#"{"type": "signedBy", "keyType": "GPGKeys"}"#),
                "exactly one",
            ),
            (
                scoped(
                    r#"{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k", "keyData": "eA=="}"#,
                ),
                "exactly one",
            ),
            (
                scoped(
                    r#"{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k", "keyPth": "/k"}"#,
                ),
                "keyPth",
            ),
            (
                scoped(r#"{"type": "signedBy", "keyType": "GPGKeys", "keyData": "%%%"}"#),
                "keyData",
            ),
            (
                scoped(r#"{"type": "sigstoreSigned", "keyPath": "/k", "fulcio": {}}"#),
                "fulcio",
            ),
            (
                scoped(
                    r#"{"type": "sigstoreSigned", "keyPath": "/k", "signedIdentity": {"type": "x"}}"#,
                ),
                "signedIdentity",
            ),
        ] {
            match Policy::parse(bad.as_bytes(), "p") {
                Err(Error::InvalidPolicy { reason, .. }) => {
                    assert!(reason.contains(place), "{bad}: {reason}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_local_source_takes_its_transports_empty_scope_else_the_default() {
        let policy = Policy::parse(
            br#"{"default": [{"type": "reject"}],
                "transports": {"oci": {"": [{"type": "insecureAcceptAnything"}]}}}"#,
            "p.json",
        )
        .unwrap();
        let oci = policy.scope_for_local(LocalTransport::Directory).unwrap();
        assert_eq!(oci.name, "oci \"\"");
        assert_eq!(oci.requirements, [Requirement::AcceptAnything]);
        let archive = policy.scope_for_local(LocalTransport::Archive).unwrap();
        assert_eq!(archive.name, "default");
        assert_eq!(archive.requirements, [Requirement::Reject]);
        // A path scope cannot be matched: refused, never skipped.
        let paths = Policy::parse(
            br#"{"default": [{"type": "insecureAcceptAnything"}],
                "transports": {"oci-archive": {"/srv/updates": [{"type": "reject"}]}}}"#,
            "p.json",
        )
        .unwrap();
        match paths.scope_for_local(LocalTransport::Archive) {
            Err(Error::InvalidPolicy { path, reason }) => {
                assert_eq!(path, "p.json");
                assert!(reason.contains("\"/srv/updates\""), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(paths.scope_for_local(LocalTransport::Directory).is_ok());
    }
}
