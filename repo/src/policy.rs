//! The containers signature policy (`containers-policy.json(5)`): which
//! images a pull may admit, decided for a registry image by its most
//! specific scope before any layer is fetched.
//!
//! Signatures are not verified yet, so a scope that requires them refuses
//! the pull rather than admitting the image unchecked.

use std::collections::HashMap;

use serde::Deserialize;

use crate::Error;

/// One requirement of a scope, as the policy states it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    /// Admit anything.
    AcceptAnything,
    /// Admit nothing.
    Reject,
    /// A signature check of this `type` (`signedBy`, `sigstoreSigned`).
    Signature(String),
}

#[derive(Debug, Deserialize)]
struct RawRequirement {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Deserialize)]
struct RawPolicy {
    default: Vec<RawRequirement>,
    #[serde(default)]
    transports: HashMap<String, HashMap<String, Vec<RawRequirement>>>,
}

/// A parsed signature policy.
#[derive(Debug, Clone)]
pub struct Policy {
    default: Vec<Requirement>,
    /// The `docker` transport's scopes, by scope text.
    docker: HashMap<String, Vec<Requirement>>,
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

impl Policy {
    /// Parse a policy document; `path` names it in errors.
    pub fn parse(bytes: &[u8], path: &str) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidPolicy {
            path: path.to_owned(),
            reason,
        };
        let raw: RawPolicy = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        let default = requirements(raw.default, "default").map_err(&invalid)?;
        let mut docker = HashMap::new();
        for (transport, scopes) in raw.transports {
            for (scope, list) in scopes {
                let where_ = format!("transports.{transport}.{scope:?}");
                let list = requirements(list, &where_).map_err(&invalid)?;
                if transport == "docker" {
                    docker.insert(scope, list);
                }
            }
        }
        Ok(Policy { default, docker })
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

    /// Whether an image of `identity` may be pulled unsigned: every
    /// requirement of its most specific scope must admit it.
    pub fn admit(&self, identity: &DockerIdentity) -> Result<(), Error> {
        let (scope, list) = self.scope_for(identity);
        for requirement in list {
            match requirement {
                Requirement::AcceptAnything => {}
                Requirement::Reject => {
                    return Err(Error::PolicyRejected {
                        scope: scope.clone(),
                    });
                }
                Requirement::Signature(kind) => {
                    return Err(Error::SignatureRequired {
                        scope: scope.clone(),
                        requirement: kind.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The scope that decides for `identity`, and its requirements: the
    /// reference with its tag or digest, the repository, each enclosing
    /// namespace, the registry, wildcard domains, the transport's ""
    /// scope, then the policy default.
    fn scope_for(&self, identity: &DockerIdentity) -> (String, &[Requirement]) {
        for scope in candidate_scopes(identity) {
            if let Some(list) = self.docker.get(&scope) {
                return (format!("docker {scope:?}"), list);
            }
        }
        ("default".to_owned(), &self.default)
    }
}

fn candidate_scopes(identity: &DockerIdentity) -> Vec<String> {
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

fn requirements(raw: Vec<RawRequirement>, scope: &str) -> Result<Vec<Requirement>, String> {
    if raw.is_empty() {
        return Err(format!("{scope} lists no requirement"));
    }
    raw.into_iter()
        .map(|r| match r.kind.as_str() {
            "insecureAcceptAnything" => Ok(Requirement::AcceptAnything),
            "reject" => Ok(Requirement::Reject),
            "signedBy" | "sigstoreSigned" => Ok(Requirement::Signature(r.kind)),
            other => Err(format!("{scope}: unknown requirement type {other:?}")),
        })
        .collect()
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
                "*.example.org": [{"type": "sigstoreSigned", "keyPath": "/k"}]
            },
            "oci": {"": [{"type": "insecureAcceptAnything"}]}
        }
    }"#;

    #[test]
    fn the_most_specific_scope_decides() {
        let policy = Policy::parse(POLICY.as_bytes(), "p").unwrap();
        policy.admit(&image("app", "v1")).unwrap();
        policy.admit(&image("signed/open", "v1")).unwrap();
        match policy.admit(&image("signed/open", "v2")) {
            Err(Error::SignatureRequired { scope, requirement }) => {
                assert_eq!(scope, r#"docker "reg.example.com:5000/signed""#);
                assert_eq!(requirement, "signedBy");
            }
            other => panic!("{other:?}"),
        }
        let elsewhere = DockerIdentity {
            registry: "other:1".into(),
            ..image("app", "v1")
        };
        assert!(matches!(
            policy.admit(&elsewhere),
            Err(Error::PolicyRejected { scope }) if scope == "default"
        ));
        let wildcard = DockerIdentity {
            registry: "a.b.example.org".into(),
            ..image("app", "v1")
        };
        assert!(matches!(
            policy.admit(&wildcard),
            Err(Error::SignatureRequired { requirement, .. }) if requirement == "sigstoreSigned"
        ));
    }

    #[test]
    fn a_policy_that_does_not_parse_is_refused() {
        for bad in [
            "{",
            r#"{"transports": {}}"#,
            r#"{"default": []}"#,
            r#"{"default": [{"type": "trustMe"}]}"#,
            r#"{"default": [{"type": "reject"}], "transports": {"docker": {"x": [{"type": "nope"}]}}}"#,
        ] {
            assert!(
                matches!(
                    Policy::parse(bad.as_bytes(), "p"),
                    Err(Error::InvalidPolicy { .. })
                ),
                "{bad}"
            );
        }
    }
}
