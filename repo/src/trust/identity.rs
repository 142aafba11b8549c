//! Which image names a signature may claim: the `signedIdentity` of a
//! policy requirement, and docker references compared in their
//! normalised form (`docker.io/library/…`, `:latest` when untagged).

use oci_client::Reference;
use serde::Deserialize;

use super::policy::DockerIdentity;

/// A docker reference, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Name {
    /// `HOST[:PORT]/PATH`.
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl Name {
    /// A reference with a tag, a digest or both; an untagged one means
    /// `:latest`, as for the containers tools.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let parsed: Reference = text
            .parse()
            .map_err(|e| format!("{text:?} is not a docker reference: {e}"))?;
        Ok(Name {
            repository: format!("{}/{}", parsed.registry(), parsed.repository()),
            tag: parsed.tag().map(str::to_owned),
            digest: parsed.digest().map(str::to_owned),
        })
    }

    /// A repository name, with neither tag nor digest.
    fn repository_only(text: &str) -> Result<Self, String> {
        let last = text.rsplit('/').next().unwrap_or_default();
        if text.contains('@') || last.contains(':') {
            return Err(format!(
                "{text:?} must name a repository, without tag or digest"
            ));
        }
        let mut name = Name::parse(text)?;
        name.tag = None;
        Ok(name)
    }

    /// The same repository, by `digest` alone: how a delta's target is
    /// named, since the delta's own tag or digest is not the target's.
    pub(crate) fn by_digest(&self, digest: String) -> Self {
        Name {
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }

    /// The image a pull names.
    pub(crate) fn of(identity: &DockerIdentity) -> Self {
        Name {
            repository: format!("{}/{}", identity.registry, identity.repository),
            tag: identity.tag.clone(),
            digest: identity.digest.clone(),
        }
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// What a signature's claimed identity must be, for an image pulled by a
/// given name (containers-policy.json(5), `signedIdentity`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SignedIdentity {
    /// The same repository when the image is pulled by digest, else the
    /// same repository and tag. The default.
    MatchRepoDigestOrExact,
    /// Exactly the name the image is pulled by.
    MatchExact,
    /// The same repository, any tag or digest.
    MatchRepository,
    /// Exactly this name, whatever the image is pulled by.
    ExactReference(Name),
    /// This repository, whatever the image is pulled by.
    ExactRepository(Name),
    /// As [`SignedIdentity::MatchRepoDigestOrExact`], for the pulled
    /// name with `prefix` replaced by `signed_prefix` where it starts so.
    RemapIdentity {
        /// What the pulled name starts with.
        prefix: String,
        /// What the signature names instead.
        signed_prefix: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawIdentity {
    #[serde(rename = "type")]
    kind: String,
    docker_reference: Option<String>,
    docker_repository: Option<String>,
    prefix: Option<String>,
    signed_prefix: Option<String>,
}

impl SignedIdentity {
    /// Parse a `signedIdentity` object; `place` names it in errors.
    pub(crate) fn parse(value: serde_json::Value, place: &str) -> Result<Self, String> {
        let raw: RawIdentity =
            serde_json::from_value(value).map_err(|e| format!("{place}: {e}"))?;
        let field = |value: Option<String>, name: &str| {
            value.ok_or_else(|| format!("{place}: {:?} needs {name:?}", raw.kind))
        };
        let extra = raw.docker_reference.is_some() as u8
            + raw.docker_repository.is_some() as u8
            + (raw.prefix.is_some() || raw.signed_prefix.is_some()) as u8;
        let identity = match raw.kind.as_str() {
            "matchRepoDigestOrExact" => SignedIdentity::MatchRepoDigestOrExact,
            "matchExact" => SignedIdentity::MatchExact,
            "matchRepository" => SignedIdentity::MatchRepository,
            "exactReference" => {
                let text = field(raw.docker_reference.clone(), "dockerReference")?;
                let last = text.rsplit('/').next().unwrap_or_default();
                if !text.contains('@') && !last.contains(':') {
                    return Err(format!("{place}: {text:?} needs a tag or digest"));
                }
                SignedIdentity::ExactReference(
                    Name::parse(&text).map_err(|e| format!("{place}: {e}"))?,
                )
            }
            "exactRepository" => {
                let text = field(raw.docker_repository.clone(), "dockerRepository")?;
                SignedIdentity::ExactRepository(
                    Name::repository_only(&text).map_err(|e| format!("{place}: {e}"))?,
                )
            }
            "remapIdentity" => SignedIdentity::RemapIdentity {
                prefix: prefix(field(raw.prefix.clone(), "prefix")?, place)?,
                signed_prefix: prefix(field(raw.signed_prefix.clone(), "signedPrefix")?, place)?,
            },
            other => return Err(format!("{place}: unknown signedIdentity type {other:?}")),
        };
        let allowed = match identity {
            SignedIdentity::ExactReference(_)
            | SignedIdentity::ExactRepository(_)
            | SignedIdentity::RemapIdentity { .. } => 1,
            _ => 0,
        };
        if extra != allowed {
            return Err(format!("{place}: fields that {:?} does not take", raw.kind));
        }
        Ok(identity)
    }

    /// Whether a signature claiming `signed` may stand for the image
    /// pulled as `pulled`. An image of a local layout has no docker
    /// reference (`None`): as for the containers tools, only the forms
    /// that name the signed identity outright can admit it.
    pub(crate) fn admits(&self, pulled: Option<&Name>, signed: &Name) -> bool {
        match (self, pulled) {
            (SignedIdentity::ExactReference(name), _) => name == signed,
            (SignedIdentity::ExactRepository(name), _) => name.repository == signed.repository,
            (_, None) => false,
            (SignedIdentity::MatchRepoDigestOrExact, Some(pulled)) => {
                repo_digest_or_exact(pulled, signed)
            }
            (SignedIdentity::MatchExact, Some(pulled)) => {
                (pulled.tag.is_some() || pulled.digest.is_some()) && pulled == signed
            }
            (SignedIdentity::MatchRepository, Some(pulled)) => {
                pulled.repository == signed.repository
            }
            (
                SignedIdentity::RemapIdentity {
                    prefix,
                    signed_prefix,
                },
                Some(pulled),
            ) => {
                let text = pulled.to_string();
                let remapped = match text.strip_prefix(prefix.as_str()) {
                    Some(rest) if at_boundary(rest) => format!("{signed_prefix}{rest}"),
                    _ => text,
                };
                Name::parse(&remapped).is_ok_and(|name| repo_digest_or_exact(&name, signed))
            }
        }
    }

    /// What [`SignedIdentity::admits`] asks, in words, for messages.
    pub(crate) fn describe(&self, pulled: Option<&Name>) -> String {
        let Some(pulled) = pulled else {
            return match self {
                SignedIdentity::ExactReference(name) => name.to_string(),
                SignedIdentity::ExactRepository(name) => format!("repository {name}"),
                _ => "a signedIdentity of exactReference or exactRepository: \
                      a local source has no docker reference to match"
                    .to_owned(),
            };
        };
        match self {
            SignedIdentity::ExactReference(name) => name.to_string(),
            SignedIdentity::ExactRepository(name) => format!("repository {name}"),
            SignedIdentity::MatchRepository => format!("repository {}", pulled.repository),
            SignedIdentity::RemapIdentity {
                prefix,
                signed_prefix,
            } => format!("{pulled} with {prefix} remapped to {signed_prefix}"),
            SignedIdentity::MatchRepoDigestOrExact | SignedIdentity::MatchExact => {
                pulled.to_string()
            }
        }
    }
}

fn repo_digest_or_exact(pulled: &Name, signed: &Name) -> bool {
    if pulled.digest.is_some() {
        return pulled.repository == signed.repository;
    }
    pulled == signed
}

/// A remapIdentity prefix: a registry, namespace or repository, never
/// a tag or digest.
fn prefix(text: String, place: &str) -> Result<String, String> {
    let last = text.rsplit('/').next().unwrap_or_default();
    if text.is_empty() || text.contains('@') || (text.contains('/') && last.contains(':')) {
        return Err(format!(
            "{place}: {text:?} must be a registry, namespace or repository"
        ));
    }
    Ok(text)
}

/// Whether what follows a matched prefix starts a new path element, tag
/// or digest: `example.com/a` is a prefix of `example.com/a/b`, not of
/// `example.com/ab`.
fn at_boundary(rest: &str) -> bool {
    rest.is_empty() || rest.starts_with(['/', ':', '@'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> Name {
        Name::parse(text).unwrap()
    }

    fn identity(json: serde_json::Value) -> SignedIdentity {
        SignedIdentity::parse(json, "here").unwrap()
    }

    const DIGEST: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    #[test]
    fn each_signed_identity_form_admits_what_the_man_page_says() {
        let by_digest = name(&format!("reg:5000/app@{DIGEST}"));
        let tagged = name("reg:5000/app:v1");
        let default = SignedIdentity::MatchRepoDigestOrExact;
        assert!(default.admits(Some(&tagged), &name("reg:5000/app:v1")));
        assert!(!default.admits(Some(&tagged), &name("reg:5000/app:v2")));
        assert!(default.admits(Some(&by_digest), &name("reg:5000/app:v2")));
        assert!(!default.admits(Some(&by_digest), &name("reg:5000/other:v1")));
        assert!(!SignedIdentity::MatchExact.admits(Some(&by_digest), &name("reg:5000/app:v1")));
        assert!(SignedIdentity::MatchExact.admits(Some(&tagged), &name("reg:5000/app:v1")));
        assert!(SignedIdentity::MatchRepository.admits(Some(&tagged), &name("reg:5000/app:v9")));
        let exact = identity(
            serde_json::json!({"type": "exactReference", "dockerReference": "other:1/x:v3"}),
        );
        assert!(exact.admits(Some(&tagged), &name("other:1/x:v3")));
        assert!(!exact.admits(Some(&tagged), &name("reg:5000/app:v1")));
        let repo = identity(
            serde_json::json!({"type": "exactRepository", "dockerRepository": "other:1/x"}),
        );
        assert!(repo.admits(Some(&tagged), &name("other:1/x:anything")));
        let remap = identity(serde_json::json!({
            "type": "remapIdentity", "prefix": "mirror:1/team", "signedPrefix": "origin:2/team"
        }));
        assert!(remap.admits(
            Some(&name("mirror:1/team/app:v1")),
            &name("origin:2/team/app:v1")
        ));
        assert!(!remap.admits(
            Some(&name("mirror:1/teamx/app:v1")),
            &name("origin:2/teamx/app:v1")
        ));
        assert!(!remap.admits(
            Some(&name("mirror:1/team/app:v1")),
            &name("mirror:1/team/app:v1")
        ));
        // Normalised: docker.io/library and :latest are implied.
        assert!(default.admits(
            Some(&name("debian")),
            &name("docker.io/library/debian:latest")
        ));
        // A local source has no docker reference: only the exact forms.
        let signed = name("other:1/x:v3");
        assert!(exact.admits(None, &signed) && repo.admits(None, &signed));
        for matching in [default, SignedIdentity::MatchRepository, remap] {
            assert!(!matching.admits(None, &signed));
        }
    }

    #[test]
    fn malformed_signed_identities_are_refused() {
        for bad in [
            serde_json::json!({"type": "matchAnything"}),
            serde_json::json!({"type": "exactReference"}),
            serde_json::json!({"type": "exactReference", "dockerReference": "reg:1/app"}),
            serde_json::json!({"type": "exactRepository", "dockerRepository": "reg:1/app:v1"}),
            serde_json::json!({"type": "matchExact", "dockerReference": "reg:1/app:v1"}),
            serde_json::json!({"type": "remapIdentity", "prefix": "a"}),
            serde_json::json!({"type": "matchExact", "surprise": 1}),
        ] {
            assert!(SignedIdentity::parse(bad.clone(), "here").is_err(), "{bad}");
        }
    }
}
