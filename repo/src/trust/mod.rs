//! Trust: whether a registry image may be admitted, by the containers
//! signature policy.
//!
//! What an image's scope requires is settled before any connection
//! (`Gate::new`): a `reject` scope refuses at once, and a scope of
//! `insecureAcceptAnything` only needs no check. Signature requirements
//! are checked once the manifest is fetched and its digest known, and
//! before any layer is (`Gate::admit`): each must be met by one of the
//! image's signatures, whose payload names that digest and an identity
//! the requirement's `signedIdentity` admits for the name pulled. The
//! signatures that met them are kept with the image (`Accepted`).

mod gpg;
mod identity;
mod lookaside;
mod payload;
pub mod policy;
mod sigstore;
mod stored;

use std::{path::Path, sync::Arc};

pub use policy::{DockerIdentity, Policy};
use policy::{Requirement, Signed};
pub(crate) use stored::{Accepted, prune as prune_stored};

use crate::{Error, oci::digest::Digest, registry::remote::Remote};

/// Why one signature was not accepted.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// It is not made by any key the scope trusts, or does not verify.
    Untrusted(String),
    /// It is not a signature of the expected form at all.
    Malformed(String),
    /// It could not be checked (a tool that does not run, a key that
    /// does not parse): nothing was learnt about the signature.
    Broken(Error),
}

/// The two kinds of signature requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `signedBy`: GPG simple signing, from a lookaside store.
    SignedBy,
    /// `sigstoreSigned`: attached to the image in its registry.
    SigstoreSigned,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::SignedBy => "signedBy",
            Kind::SigstoreSigned => "sigstoreSigned",
        }
    }

    fn payload_type(self) -> &'static str {
        match self {
            Kind::SignedBy => payload::SIMPLE_SIGNING,
            Kind::SigstoreSigned => sigstore::PAYLOAD_TYPE,
        }
    }
}

/// The signatures found for one manifest, of either kind.
enum Found {
    Simple(Vec<Vec<u8>>),
    Attached(Vec<crate::registry::attachments::Attachment>),
}

impl Found {
    fn is_empty(&self) -> bool {
        match self {
            Found::Simple(list) => list.is_empty(),
            Found::Attached(list) => list.is_empty(),
        }
    }

    /// Add signature `n` to `accepted`, once.
    fn keep(&self, n: usize, accepted: &mut Accepted) {
        match self {
            Found::Simple(list) if !accepted.simple.contains(&list[n]) => {
                accepted.simple.push(list[n].clone())
            }
            Found::Attached(list)
                if !accepted
                    .sigstore
                    .iter()
                    .any(|a| a.signature == list[n].signature) =>
            {
                accepted.sigstore.push(list[n].clone())
            }
            _ => {}
        }
    }

    /// Each signature's verified payload, or why it was refused.
    fn payloads(&self, keys: &[Vec<u8>], scope: &str) -> Vec<Result<Vec<u8>, Refusal>> {
        match self {
            Found::Simple(list) => list.iter().map(|s| gpg::verify(keys, s)).collect(),
            Found::Attached(list) => list
                .iter()
                .map(|a| sigstore::verify(keys, &a.payload, &a.signature, scope))
                .collect(),
        }
    }
}

/// The checks a registry image must pass once its manifest is known.
#[derive(Debug)]
pub(crate) struct Gate {
    /// The deciding scope, as errors name it.
    scope: String,
    /// The scope's signature requirements; each must be met.
    required: Vec<(Kind, Signed)>,
    /// The name the image is pulled by.
    pulled: identity::Name,
    stores: lookaside::Stores,
}

impl Gate {
    /// What `policy` requires of `identity`, with its signature stores
    /// from the registries.d directory `registries_d`: `None` when
    /// nothing is to be checked. A `reject` scope is refused here.
    pub(crate) fn new(
        policy: &Policy,
        identity: &DockerIdentity,
        registries_d: &Path,
    ) -> Result<Option<Self>, Error> {
        let scope = policy.scope_for(identity);
        let mut required = Vec::new();
        for requirement in scope.requirements {
            match requirement {
                Requirement::AcceptAnything => {}
                Requirement::Reject => return Err(Error::PolicyRejected { scope: scope.name }),
                Requirement::SignedBy(signed) => required.push((Kind::SignedBy, signed)),
                Requirement::SigstoreSigned(signed) => {
                    required.push((Kind::SigstoreSigned, signed))
                }
            }
        }
        if required.is_empty() {
            return Ok(None);
        }
        Ok(Some(Gate {
            scope: scope.name,
            required,
            pulled: identity::Name::of(identity),
            stores: lookaside::Stores::of(registries_d, identity)?,
        }))
    }

    /// Admit the image whose manifest has `digest` only if every
    /// requirement is met by one of its signatures: simple signatures
    /// from the lookaside store, and sigstore ones attached in `remote`'s
    /// repository when registries.d says they are. For a delta (`delta`),
    /// `digest` is its target's, and the target counts as pulled by that
    /// digest from the delta's repository: the delta's own tag names the
    /// delta, not the image. Blocks on reading the signatures.
    pub(crate) fn admit(
        &self,
        digest: &Digest,
        delta: bool,
        remote: &Arc<Remote>,
    ) -> Result<Accepted, Error> {
        let pulled = match delta {
            true => self.pulled.by_digest(digest.to_string()),
            false => self.pulled.clone(),
        };
        let (mut simple, mut attached) = (None, None);
        let mut accepted = Accepted::default();
        for (kind, requirement) in &self.required {
            let found = match kind {
                Kind::SignedBy => simple.get_or_insert(Found::Simple(
                    self.stores.signatures(digest, &remote.handle)?,
                )),
                Kind::SigstoreSigned => {
                    let list = match self.stores.sigstore_attachments {
                        true => remote.attachments(digest)?,
                        false => Vec::new(),
                    };
                    attached.get_or_insert(Found::Attached(list))
                }
            };
            let which = self.met(*kind, requirement, &pulled, digest, found)?;
            found.keep(which, &mut accepted);
        }
        Ok(accepted)
    }

    /// One requirement is met by one signature, whose place in `found`
    /// is returned. Otherwise the refusal
    /// is that of the signature which came furthest, as it says most:
    /// a valid signature for another image says more than a foreign one.
    fn met(
        &self,
        kind: Kind,
        requirement: &Signed,
        pulled: &identity::Name,
        digest: &Digest,
        found: &Found,
    ) -> Result<usize, Error> {
        if found.is_empty() {
            return Err(Error::SignatureMissing {
                scope: self.scope.clone(),
                requirement: kind.name().to_owned(),
                image: format!("{pulled} ({digest})"),
            });
        }
        let keys = requirement.keys.read(&self.scope)?;
        let mut furthest: Option<(u8, Error)> = None;
        for (n, verified) in found.payloads(&keys, &self.scope).into_iter().enumerate() {
            match self.check(kind, requirement, pulled, digest, verified) {
                Ok(()) => return Ok(n),
                Err((rank, e)) if furthest.as_ref().is_none_or(|(r, _)| rank > *r) => {
                    furthest = Some((rank, e));
                }
                Err(_) => {}
            }
        }
        Err(furthest.expect("there was a signature").1)
    }

    /// Check one signature, given what verifying it gave; `Err` ranks
    /// how far it came.
    fn check(
        &self,
        kind: Kind,
        requirement: &Signed,
        pulled: &identity::Name,
        digest: &Digest,
        verified: Result<Vec<u8>, Refusal>,
    ) -> Result<(), (u8, Error)> {
        let invalid = |reason: String| {
            let scope = self.scope.clone();
            (0, Error::SignatureInvalid { scope, reason })
        };
        let bytes = verified.map_err(|refusal| match refusal {
            Refusal::Malformed(reason) => invalid(reason),
            Refusal::Untrusted(reason) => (
                1,
                Error::SignatureUntrusted {
                    scope: self.scope.clone(),
                    requirement: kind.name().to_owned(),
                    reason,
                },
            ),
            // The machine's or the policy's fault, not the signature's:
            // it wins, since no signature could be checked.
            Refusal::Broken(e) => (u8::MAX, e),
        })?;
        let claim = payload::parse(&bytes, kind.payload_type()).map_err(invalid)?;
        if claim.digest != digest.to_string() {
            return Err((
                2,
                Error::SignatureDigestMismatch {
                    scope: self.scope.clone(),
                    signed: claim.digest,
                    manifest: digest.to_string(),
                },
            ));
        }
        let signed = identity::Name::parse(&claim.reference).map_err(invalid)?;
        if !requirement.identity.admits(pulled, &signed) {
            return Err((
                3,
                Error::SignatureIdentityMismatch {
                    scope: self.scope.clone(),
                    signed: claim.reference,
                    expected: requirement.identity.describe(pulled),
                },
            ));
        }
        Ok(())
    }
}
