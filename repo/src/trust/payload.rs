//! The signed claim itself: a simple-signing payload
//! (containers-signature(5)), parsed strictly. A signature says which
//! manifest digest it is for and which image name it vouches for; both
//! are checked by the caller against the image being pulled.

use serde::Deserialize;

/// The `critical.type` of a GPG simple signature.
pub(crate) const SIMPLE_SIGNING: &str = "atomic container signature";

/// What a verified signature claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claim {
    /// `critical.image.docker-manifest-digest`.
    pub digest: String,
    /// `critical.identity.docker-reference`.
    pub reference: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    critical: Critical,
    // Free-form (creator, timestamp); not part of what is vouched for.
    #[serde(default)]
    optional: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Critical {
    #[serde(rename = "type")]
    kind: String,
    image: Image,
    identity: Identity,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    digest: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Identity {
    #[serde(rename = "docker-reference")]
    reference: String,
}

/// Parse `bytes` as a payload of type `kind`: every field known, none
/// missing, the type exact. `Err` says what is wrong.
pub(crate) fn parse(bytes: &[u8], kind: &str) -> Result<Claim, String> {
    let payload: Payload = serde_json::from_slice(bytes)
        .map_err(|e| format!("the signed payload is not a simple-signing document: {e}"))?;
    let _ = payload.optional;
    if payload.critical.kind != kind {
        return Err(format!(
            "the signed payload is of type {:?}, not {kind:?}",
            payload.critical.kind
        ));
    }
    Ok(Claim {
        digest: payload.critical.image.digest,
        reference: payload.critical.identity.reference,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_parses_only_in_its_exact_form() {
        let good = br#"{"critical":{"identity":{"docker-reference":"h:1/app:v1"},
            "image":{"docker-manifest-digest":"sha256:ab"},"type":"atomic container signature"},
            "optional":{"creator":"skopeo","timestamp":1}}"#;
        assert_eq!(
            parse(good, SIMPLE_SIGNING).unwrap(),
            Claim {
                digest: "sha256:ab".into(),
                reference: "h:1/app:v1".into()
            }
        );
        let text = std::str::from_utf8(good).unwrap();
        for bad in [
            text.replace(
                "atomic container signature",
                "cosign container image signature",
            ),
            text.replace(r#""optional""#, r#""extra""#),
            text.replace(r#""docker-reference""#, r#""docker-ref""#),
            text.replace(r#"{"docker-manifest-digest":"sha256:ab"}"#, "{}"),
            text.replace(r#""type":"atomic"#, r#""more":1,"type":"atomic"#),
            "not json".to_owned(),
        ] {
            assert!(parse(bad.as_bytes(), SIMPLE_SIGNING).is_err(), "{bad}");
        }
    }
}
