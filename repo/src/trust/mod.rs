//! Trust: whether a registry image may be admitted, by the containers
//! signature policy.
//!
//! What an image's scope requires is settled before any connection
//! ([`Gate::new`]): a `reject` scope refuses at once, and a scope of
//! `insecureAcceptAnything` only needs no check. Signature requirements
//! are checked once the manifest is fetched and its digest known, and
//! before any layer is ([`Gate::admit`]): each must be met by one of the
//! image's signatures, whose payload names that digest and an identity
//! the requirement's `signedIdentity` admits for the name pulled.

mod gpg;
mod identity;
mod lookaside;
mod payload;
pub mod policy;

use std::path::Path;

pub use policy::{DockerIdentity, Policy};
use policy::{Requirement, Signed};
use tokio::runtime::Handle;

use crate::{Error, oci::digest::Digest};

/// The checks a registry image must pass once its manifest is known.
#[derive(Debug)]
pub(crate) struct Gate {
    /// The deciding scope, as errors name it.
    scope: String,
    /// The scope's `signedBy` requirements; each must be met.
    signed_by: Vec<Signed>,
    /// The name the image is pulled by.
    pulled: identity::Name,
    stores: lookaside::Stores,
}

impl Gate {
    /// What `policy` requires of `identity`, with its signature stores
    /// from the registries.d directory `registries_d`: `None` when
    /// nothing is to be checked. A `reject` scope is refused here, and so
    /// is `sigstoreSigned`, which is not verified yet.
    pub(crate) fn new(
        policy: &Policy,
        identity: &DockerIdentity,
        registries_d: &Path,
    ) -> Result<Option<Self>, Error> {
        let scope = policy.scope_for(identity);
        let mut signed_by = Vec::new();
        for requirement in scope.requirements {
            match requirement {
                Requirement::AcceptAnything => {}
                Requirement::Reject => return Err(Error::PolicyRejected { scope: scope.name }),
                Requirement::SigstoreSigned(_) => {
                    return Err(Error::SignatureRequired {
                        scope: scope.name,
                        requirement: requirement.kind().to_owned(),
                    });
                }
                Requirement::SignedBy(signed) => signed_by.push(signed),
            }
        }
        if signed_by.is_empty() {
            return Ok(None);
        }
        Ok(Some(Gate {
            scope: scope.name,
            signed_by,
            pulled: identity::Name::of(identity),
            stores: lookaside::Stores::of(registries_d, identity)?,
        }))
    }

    /// Admit the image whose manifest (or, for a delta, whose target's
    /// manifest) has `digest` only if every requirement is met by one of
    /// its signatures. Blocks on reading the signatures; `handle` runs
    /// the HTTP requests of a lookaside store.
    pub(crate) fn admit(&self, digest: &Digest, handle: &Handle) -> Result<(), Error> {
        let signatures = self.stores.signatures(digest, handle)?;
        for requirement in &self.signed_by {
            self.met(requirement, digest, &signatures)?;
        }
        Ok(())
    }

    /// One requirement is met by one signature. Otherwise the refusal
    /// is that of the signature which came furthest, as it says most:
    /// a valid signature for another image says more than a foreign one.
    fn met(
        &self,
        requirement: &Signed,
        digest: &Digest,
        signatures: &[Vec<u8>],
    ) -> Result<(), Error> {
        if signatures.is_empty() {
            return Err(Error::SignatureMissing {
                scope: self.scope.clone(),
                requirement: "signedBy".to_owned(),
                image: format!("{} ({digest})", self.pulled),
            });
        }
        let keys = requirement.keys.read(&self.scope)?;
        let mut furthest: Option<(u8, Error)> = None;
        for signature in signatures {
            match self.check(requirement, &keys, digest, signature) {
                Ok(()) => return Ok(()),
                Err((rank, e)) if furthest.as_ref().is_none_or(|(r, _)| rank > *r) => {
                    furthest = Some((rank, e));
                }
                Err(_) => {}
            }
        }
        Err(furthest.expect("there was a signature").1)
    }

    /// Check one signature; `Err` ranks how far it came.
    fn check(
        &self,
        requirement: &Signed,
        keys: &[Vec<u8>],
        digest: &Digest,
        signature: &[u8],
    ) -> Result<(), (u8, Error)> {
        let invalid = |reason: String| {
            let scope = self.scope.clone();
            (0, Error::SignatureInvalid { scope, reason })
        };
        let bytes = gpg::verify(keys, signature).map_err(|refusal| match refusal {
            gpg::Refusal::Malformed(reason) => invalid(reason),
            gpg::Refusal::Untrusted(reason) => (
                1,
                Error::SignatureUntrusted {
                    scope: self.scope.clone(),
                    requirement: "signedBy".to_owned(),
                    reason,
                },
            ),
            // The machine's fault, not the signature's: it wins, since
            // no signature could be checked.
            gpg::Refusal::Broken(e) => (u8::MAX, e),
        })?;
        let claim = payload::parse(&bytes, payload::SIMPLE_SIGNING).map_err(invalid)?;
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
        if !requirement.identity.admits(&self.pulled, &signed) {
            return Err((
                3,
                Error::SignatureIdentityMismatch {
                    scope: self.scope.clone(),
                    signed: claim.reference,
                    expected: requirement.identity.describe(&self.pulled),
                },
            ));
        }
        Ok(())
    }
}
