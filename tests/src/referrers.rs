//! The OCI referrers tag schema, written by hand for the delta discovery
//! tests: an image index of the artifacts that refer to a manifest, put
//! under the tag `sha256-<hex>` of that manifest's digest. Debian's
//! docker-registry has no referrers API and skopeo does not write the
//! tag, so the tests do what a delta publisher would.

use std::process::Command;

use serde_json::json;

use crate::registry::{PASSWORD, Registry, USER};

/// One artifact listed in a referrers index.
#[derive(Debug, Clone)]
pub struct Referrer {
    /// Its manifest's digest, `sha256:<hex>`.
    pub digest: String,
    /// Its manifest's size in bytes.
    pub size: usize,
    /// Its `artifactType`.
    pub artifact_type: String,
}

/// The tag of the referrers index of `subject` (`sha256:<hex>`).
pub fn tag_of(subject: &str) -> String {
    subject.replacen(':', "-", 1)
}

/// PUT the index listing `referrers` as the referrers tag of `subject`
/// in repository `name` of the HTTPS `registry`, through its HTTP API.
pub fn put_index(registry: &Registry, name: &str, subject: &str, referrers: &[Referrer]) {
    let manifests: Vec<_> = referrers
        .iter()
        .map(|r| {
            json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": r.digest,
                "size": r.size,
                "artifactType": r.artifact_type,
            })
        })
        .collect();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    let body = registry.path(&format!("referrers-{}.json", tag_of(subject)));
    std::fs::write(&body, serde_json::to_vec(&index).unwrap()).unwrap();
    let url = format!(
        "https://{}/v2/{name}/manifests/{}",
        registry.host(),
        tag_of(subject)
    );
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--fail-with-body", "-X", "PUT"])
        .arg("--cacert")
        .arg(registry.path("ca.crt"))
        .args(["-u", &format!("{USER}:{PASSWORD}")])
        .args([
            "-H",
            "Content-Type: application/vnd.oci.image.index.v1+json",
        ])
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .arg(&url)
        .output()
        .expect("running curl");
    assert!(
        out.status.success(),
        "PUT {url}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
