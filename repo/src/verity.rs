//! Whether a filesystem can give the repository fs-verity.

use std::{io::Write, path::Path};

use composefs::fsverity::{EnableVerityError, Sha256HashValue, enable_verity_raw};

/// What the daemon demands of fs-verity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerityPolicy {
    /// Use fs-verity where the filesystem has it, and run insecure, saying
    /// so, where it does not.
    #[default]
    BestEffort,
    /// Refuse a repository that does not enforce fs-verity.
    Required,
}

/// Whether fs-verity protects a repository, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerityStatus {
    /// Every object carries fs-verity and the kernel checks every read.
    Enforced,
    /// Objects are not protected by fs-verity, for the given reason.
    Insecure(String),
}

impl VerityStatus {
    /// Whether fs-verity is enforced.
    pub fn is_enforced(&self) -> bool {
        matches!(self, VerityStatus::Enforced)
    }
}

/// Find out whether the filesystem holding `dir` supports fs-verity, by
/// enabling it on a scratch file there. Returns why not, when it does not.
///
/// Asking the kernel is the only reliable test: support depends on the
/// filesystem type, on its mkfs-time features and on the kernel build.
pub fn probe(dir: &Path) -> Result<(), String> {
    let (mut file, path) = tempfile::Builder::new()
        .prefix(".verity-probe")
        .tempfile_in(dir)
        .map_err(|e| format!("cannot create a probe file in {}: {e}", dir.display()))?
        .into_parts();
    file.write_all(b"composefs verity probe")
        .map_err(|e| format!("cannot write the probe file: {e}"))?;
    // fs-verity refuses files that are still open for writing.
    drop(file);
    let readonly =
        std::fs::File::open(&path).map_err(|e| format!("cannot reopen the probe file: {e}"))?;
    match enable_verity_raw::<Sha256HashValue>(&readonly) {
        Ok(()) | Err(EnableVerityError::AlreadyEnabled) => Ok(()),
        Err(EnableVerityError::FilesystemNotSupported) => Err(format!(
            "the filesystem holding {} does not support fs-verity",
            dir.display()
        )),
        Err(e) => Err(format!(
            "enabling fs-verity on a probe file in {} failed: {e}",
            dir.display()
        )),
    }
}
