//! The referrers of a manifest: the artifacts whose `subject` it is, as
//! the OCI distribution spec lists them. oci-client asks the referrers
//! API (`GET /v2/NAME/referrers/DIGEST?artifactType=…`) and, when the
//! registry answers 404 there (Debian's docker-registry 2.8 does), reads
//! the referrers tag schema instead: the image index under the tag
//! `sha256-<hex>`, filtered by artifact type here as the API would.

use std::collections::HashMap;

use super::remote::Remote;
use crate::{
    Error,
    oci::{digest::Digest, document::Descriptor},
};

impl Remote {
    /// The manifests of type `artifact_type` whose subject is the manifest
    /// `subject` of this image's repository, as descriptors. A registry
    /// with neither the API nor the tag lists none.
    pub(crate) fn referrers(
        &self,
        subject: &Digest,
        artifact_type: &str,
    ) -> Result<Vec<Descriptor>, Error> {
        let image = self.image.clone_with_digest(subject.to_string());
        let what = format!("the referrers of {subject}");
        let index = self.until_stopped(self.retrying(&what, || {
            self.client.pull_referrers(&image, Some(artifact_type))
        }))??;
        // The API may ignore the filter; the tag schema has none.
        let listed = index
            .manifests
            .into_iter()
            .filter(|entry| entry.artifact_type.as_deref() == Some(artifact_type))
            .filter_map(|entry| {
                Some(Descriptor {
                    media_type: Some(entry.media_type),
                    digest: entry.digest,
                    // A negative size describes nothing that can be fetched.
                    size: u64::try_from(entry.size).ok()?,
                    annotations: entry
                        .annotations
                        .map(|a| a.into_iter().collect::<HashMap<_, _>>())
                        .unwrap_or_default(),
                    platform: None,
                })
            })
            .collect();
        Ok(listed)
    }
}
