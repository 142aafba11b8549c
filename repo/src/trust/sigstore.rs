//! Sigstore signatures made with a key pair (no Fulcio, no Rekor),
//! checked with OpenSSL: the signature is over the payload bytes
//! themselves, ECDSA or RSA PKCS#1 v1.5 with SHA-256, or Ed25519, as
//! cosign and the containers tools make them.

use base64::Engine;
use openssl::{
    hash::MessageDigest,
    pkey::{Id, PKey, Public},
    sign::Verifier,
};

use super::Refusal;
use crate::Error;

/// The `critical.type` of a sigstore payload.
pub(crate) const PAYLOAD_TYPE: &str = "cosign container image signature";

/// Verify `signature` (base64) of `payload` against the PEM public keys
/// `keys`; `scope` names the policy scope in errors. The payload is
/// returned when a key verifies it.
pub(crate) fn verify(
    keys: &[Vec<u8>],
    payload: &[u8],
    signature: &str,
    scope: &str,
) -> Result<Vec<u8>, Refusal> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .map_err(|e| Refusal::Malformed(format!("the signature is not base64: {e}")))?;
    for key in keys {
        let key = public_key(key, scope).map_err(Refusal::Broken)?;
        if verifies(&key, payload, &raw) {
            return Ok(payload.to_vec());
        }
    }
    Err(Refusal::Untrusted(
        "it does not verify with any public key the scope trusts".to_owned(),
    ))
}

/// A trusted key, which must be a PEM public key.
fn public_key(pem: &[u8], scope: &str) -> Result<PKey<Public>, Error> {
    PKey::public_key_from_pem(pem).map_err(|e| Error::InvalidPolicy {
        path: scope.to_owned(),
        reason: format!("a sigstoreSigned key is not a PEM public key: {e}"),
    })
}

fn verifies(key: &PKey<Public>, payload: &[u8], signature: &[u8]) -> bool {
    let verifier = match key.id() {
        Id::ED25519 => Verifier::new_without_digest(key),
        _ => Verifier::new(MessageDigest::sha256(), key),
    };
    verifier
        .and_then(|mut v| v.verify_oneshot(signature, payload))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use openssl::{ec, nid::Nid, pkey::Private, sign::Signer};

    use super::*;

    fn key() -> PKey<Private> {
        let group = ec::EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        PKey::from_ec_key(ec::EcKey::generate(&group).unwrap()).unwrap()
    }

    #[test]
    fn only_a_signature_by_a_trusted_key_over_the_very_payload_verifies() {
        let (signer, stranger) = (key(), key());
        let payload = b"{\"critical\":{}}";
        let mut signing = Signer::new(MessageDigest::sha256(), &signer).unwrap();
        let signature = signing.sign_oneshot_to_vec(payload).unwrap();
        let signature = base64::engine::general_purpose::STANDARD.encode(signature);
        let pem = |k: &PKey<Private>| k.public_key_to_pem().unwrap();
        let trusted = [pem(&stranger), pem(&signer)];
        assert_eq!(verify(&trusted, payload, &signature, "s").unwrap(), payload);
        assert!(matches!(
            verify(&[pem(&stranger)], payload, &signature, "s"),
            Err(Refusal::Untrusted(_))
        ));
        assert!(matches!(
            verify(&trusted, b"{\"critical\":1}", &signature, "s"),
            Err(Refusal::Untrusted(_))
        ));
        assert!(matches!(
            verify(&trusted, payload, "%%", "s"),
            Err(Refusal::Malformed(_))
        ));
        assert!(matches!(
            verify(&[b"not a key".to_vec()], payload, &signature, "s"),
            Err(Refusal::Broken(Error::InvalidPolicy { .. }))
        ));
    }
}
