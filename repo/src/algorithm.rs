//! The fs-verity algorithm that names a repository's objects.

use std::{fmt, str::FromStr};

use composefs::fsverity::Algorithm;

use crate::Error;

/// The fs-verity algorithm that names a repository's objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashAlgorithm(pub(crate) Algorithm);

impl HashAlgorithm {
    /// SHA-256 with 4 KiB Merkle blocks.
    pub const SHA256: Self = HashAlgorithm(Algorithm::SHA256);
    /// SHA-512 with 4 KiB Merkle blocks.
    pub const SHA512: Self = HashAlgorithm(Algorithm::SHA512);
}

impl Default for HashAlgorithm {
    /// SHA-512, as `cfsctl init` of composefs-rs chooses.
    fn default() -> Self {
        Self::SHA512
    }
}

impl FromStr for HashAlgorithm {
    type Err = Error;

    /// Accepts the short names `sha256` and `sha512` as well as the full
    /// `fsverity-<hash>-<lg-block-size>` names composefs writes.
    fn from_str(s: &str) -> Result<Self, Error> {
        let full = match s {
            "sha256" | "sha512" => format!("fsverity-{s}-12"),
            _ => s.to_owned(),
        };
        full.parse::<Algorithm>()
            .map(HashAlgorithm)
            .map_err(|e| Error::UnsupportedAlgorithm {
                algorithm: s.to_owned(),
                reason: e.to_string(),
            })
    }
}

impl fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_full_names() {
        assert_eq!(
            "sha256".parse::<HashAlgorithm>().unwrap(),
            HashAlgorithm::SHA256
        );
        assert_eq!(
            "fsverity-sha512-12".parse::<HashAlgorithm>().unwrap(),
            HashAlgorithm::SHA512
        );
        assert_eq!(HashAlgorithm::default().to_string(), "fsverity-sha512-12");
        let err = "md5".parse::<HashAlgorithm>().unwrap_err();
        assert!(
            matches!(err, Error::UnsupportedAlgorithm { ref algorithm, .. } if algorithm == "md5")
        );
        assert!("fsverity-sha256-16".parse::<HashAlgorithm>().is_err());
    }
}
