//! Trust: whether an image may be admitted, by the containers signature
//! policy.
//!
//! What an image's scope requires is settled before any connection, or
//! before a local source is read (`Gate::new`, `Gate::local`): a
//! `reject` scope refuses at once, and a scope of
//! `insecureAcceptAnything` only needs no check. Signature requirements
//! are checked once the manifest is fetched and its digest known, and
//! before any layer is (`Gate::admit`, `Gate::admit_local`): each must
//! be met by one of the image's signatures, whose payload names that
//! digest and an identity the requirement's `signedIdentity` admits for
//! the name pulled (a local image has none). The signatures that met
//! them are kept with the image (`Accepted`), and travel with a delta
//! of it (`carried`).

pub(crate) mod carried;
mod gpg;
mod identity;
mod lookaside;
mod payload;
pub mod policy;
mod sigstore;
mod stored;

use std::{path::Path, sync::Arc};

pub use policy::LocalTransport;
pub use policy::{DockerIdentity, Policy};
use policy::{Requirement, Signed};
pub(crate) use stored::{Accepted, load as load_stored, prune as prune_stored};

use crate::{
    Error,
    oci::digest::Digest,
    registry::{attachments::Attachment, remote::Remote},
};

/// An image with no signatures anywhere.
struct NoSignatures;

impl SignatureSource for NoSignatures {
    fn simple(&self, _: &Digest) -> Result<Vec<Vec<u8>>, Error> {
        Ok(Vec::new())
    }

    fn sigstore(&self, _: &Digest) -> Result<Vec<Attachment>, Error> {
        Ok(Vec::new())
    }
}

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
    Attached(Vec<Attachment>),
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

/// Where the image being admitted comes from, and so which name it is
/// pulled by and where its signatures are.
#[derive(Debug)]
enum Origin {
    /// A registry: pulled by a docker reference, with the stores
    /// registries.d names for it.
    Registry {
        pulled: identity::Name,
        stores: lookaside::Stores,
    },
    /// An `oci:` or `oci-archive:` layout: it has no docker reference,
    /// and its signatures travel in it (`carried`).
    Local,
}

/// The signatures an image has, of either kind, however they are found.
pub(crate) trait SignatureSource {
    /// The simple signatures of the manifest `digest`.
    fn simple(&self, digest: &Digest) -> Result<Vec<Vec<u8>>, Error>;
    /// The sigstore signatures of the manifest `digest`.
    fn sigstore(&self, digest: &Digest) -> Result<Vec<Attachment>, Error>;
}

/// A registry image's signatures: lookaside stores, and attachments
/// beside it when registries.d says they are there.
struct InRegistry<'a> {
    stores: &'a lookaside::Stores,
    remote: &'a Arc<Remote>,
}

impl SignatureSource for InRegistry<'_> {
    fn simple(&self, digest: &Digest) -> Result<Vec<Vec<u8>>, Error> {
        let mut found = self.stores.signatures(digest, &self.remote.handle)?;
        // A delta pushed by cfsd carries simple signatures in the same
        // attachment; a store's are tried first.
        if self.stores.sigstore_attachments {
            found.extend(self.remote.attachments(digest)?.simple);
        }
        Ok(found)
    }

    fn sigstore(&self, digest: &Digest) -> Result<Vec<Attachment>, Error> {
        match self.stores.sigstore_attachments {
            true => Ok(self.remote.attachments(digest)?.sigstore),
            false => Ok(Vec::new()),
        }
    }
}

/// The checks an image must pass once its manifest is known.
#[derive(Debug)]
pub(crate) struct Gate {
    /// The deciding scope, as errors name it.
    scope: String,
    /// The scope's signature requirements; each must be met.
    required: Vec<(Kind, Signed)>,
    origin: Origin,
}

/// The signature requirements of `scope`; a `reject` is refused here.
fn signature_requirements(scope: &policy::Scope) -> Result<Vec<(Kind, Signed)>, Error> {
    let mut required = Vec::new();
    for requirement in &scope.requirements {
        match requirement {
            Requirement::AcceptAnything => {}
            Requirement::Reject => {
                return Err(Error::PolicyRejected {
                    scope: scope.name.clone(),
                });
            }
            Requirement::SignedBy(signed) => required.push((Kind::SignedBy, signed.clone())),
            Requirement::SigstoreSigned(signed) => {
                required.push((Kind::SigstoreSigned, signed.clone()))
            }
        }
    }
    Ok(required)
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
        Gate::of(scope, || {
            Ok(Origin::Registry {
                pulled: identity::Name::of(identity),
                stores: lookaside::Stores::of(registries_d, identity)?,
            })
        })
    }

    /// What `policy` requires of a local source of `transport` (`oci` or
    /// `oci-archive`): `None` when nothing is to be checked. A `reject`
    /// scope is refused here, before the source is read.
    pub(crate) fn local(policy: &Policy, transport: LocalTransport) -> Result<Option<Self>, Error> {
        Gate::of(policy.scope_for_local(transport)?, || Ok(Origin::Local))
    }

    /// The gate of `scope`, for an image from `origin` (asked for only
    /// when there is something to check).
    fn of(
        scope: policy::Scope,
        origin: impl FnOnce() -> Result<Origin, Error>,
    ) -> Result<Option<Self>, Error> {
        let required = signature_requirements(&scope)?;
        if required.is_empty() {
            return Ok(None);
        }
        Ok(Some(Gate {
            scope: scope.name,
            required,
            origin: origin()?,
        }))
    }

    /// Admit the registry image whose manifest has `digest` only if every
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
        match &self.origin {
            Origin::Registry { pulled, stores } => {
                let pulled = match delta {
                    true => pulled.by_digest(digest.to_string()),
                    false => pulled.clone(),
                };
                let found = InRegistry { stores, remote };
                self.admit_from(digest, Some(&pulled), &found)
            }
            // A layout's signatures are in the layout (`admit_local`),
            // never in a registry: given one, the gate finds none.
            Origin::Local => self.admit_from(digest, None, &NoSignatures),
        }
    }

    /// Admit the manifest `digest` of a local layout (a delta's target's,
    /// for a delta) by the signatures `found` in it.
    pub(crate) fn admit_local(
        &self,
        digest: &Digest,
        found: &dyn SignatureSource,
    ) -> Result<Accepted, Error> {
        self.admit_from(digest, None, found)
    }

    /// Every requirement met by one signature `found` has, for the image
    /// pulled as `pulled` (`None`: it has no docker reference).
    fn admit_from(
        &self,
        digest: &Digest,
        pulled: Option<&identity::Name>,
        found: &dyn SignatureSource,
    ) -> Result<Accepted, Error> {
        let (mut simple, mut attached) = (None, None);
        let mut accepted = Accepted::default();
        for (kind, requirement) in &self.required {
            let list = match kind {
                Kind::SignedBy => match &mut simple {
                    Some(list) => list,
                    None => simple.insert(Found::Simple(found.simple(digest)?)),
                },
                Kind::SigstoreSigned => match &mut attached {
                    Some(list) => list,
                    None => attached.insert(Found::Attached(found.sigstore(digest)?)),
                },
            };
            let which = self.met(*kind, requirement, pulled, digest, list)?;
            list.keep(which, &mut accepted);
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
        pulled: Option<&identity::Name>,
        digest: &Digest,
        found: &Found,
    ) -> Result<usize, Error> {
        if found.is_empty() {
            return Err(Error::SignatureMissing {
                scope: self.scope.clone(),
                requirement: kind.name().to_owned(),
                image: match pulled {
                    Some(name) => format!("{name} ({digest})"),
                    None => format!("the local source's manifest ({digest})"),
                },
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
        pulled: Option<&identity::Name>,
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
