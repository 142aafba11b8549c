//! The SOURCE of `oci pull` and the like (`oci:DIR[:REF]`,
//! `oci-archive:FILE[:REF]`): parsed, and opened with this user's own
//! permissions, since the daemon reads a local source only through the fd.

use std::{os::fd::OwnedFd, path::PathBuf};

use cfsd_varlink::oci::{TRANSPORT_ARCHIVE, TRANSPORT_DIRECTORY};
use rustix::fs::{FileType, Mode, OFlags};

use crate::failure::Local;

/// Where `oci pull` reads from, as parsed from SOURCE.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Source {
    pub(crate) transport: &'static str,
    /// The file or directory.
    pub(crate) path: PathBuf,
    /// The name inside the layout, if given.
    pub(crate) reference: Option<String>,
}

impl Source {
    /// `oci:DIR[:REF]` or `oci-archive:FILE[:REF]`; the part after the
    /// transport splits at its first ':', so a REF may itself hold colons
    /// (`sha256:...`) but a path may not.
    pub(crate) fn parse(source: &str) -> Result<Self, Local> {
        Self::parse_as(source, "use oci:DIR[:REF] or oci-archive:FILE[:REF]")
    }

    /// [`Source::parse`], with `usage` saying what is accepted.
    pub(crate) fn parse_as(source: &str, usage: &str) -> Result<Self, Local> {
        let invalid = |reason: String| Local::InvalidSource {
            argument: source.to_owned(),
            reason,
        };
        let (transport, rest) = source
            .split_once(':')
            .ok_or_else(|| invalid(format!("it names no transport: {usage}")))?;
        let transport = match transport {
            "oci" => TRANSPORT_DIRECTORY,
            "oci-archive" => TRANSPORT_ARCHIVE,
            other => return Err(invalid(format!("unknown transport {other:?}: {usage}"))),
        };
        let (path, reference) = match rest.split_once(':') {
            Some((path, reference)) => (path, Some(reference)),
            None => (rest, None),
        };
        if path.is_empty() {
            return Err(invalid(format!("it names no path: {usage}")));
        }
        Ok(Source {
            transport,
            path: PathBuf::from(path),
            reference: reference.filter(|r| !r.is_empty()).map(str::to_owned),
        })
    }

    /// Open the source with this user's own permissions; the daemon reads
    /// only through the fd. A path of the wrong kind for the transport is
    /// refused here, naming the transport that fits it.
    pub(crate) fn open(&self, given: &str) -> Result<OwnedFd, Local> {
        let path = self.path.display();
        // Non-blocking, so that a fifo given by mistake is refused below
        // instead of hanging the open; reads of files and directories
        // ignore the flag.
        let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let fd =
            rustix::fs::open(&self.path, flags, Mode::empty()).map_err(|e| Local::OpenFailed {
                path: path.to_string(),
                reason: std::io::Error::from(e).to_string(),
            })?;
        let kind = rustix::fs::fstat(&fd)
            .map(|st| FileType::from_raw_mode(st.st_mode))
            .map_err(|e| Local::OpenFailed {
                path: path.to_string(),
                reason: std::io::Error::from(e).to_string(),
            })?;
        let wrong = |reason: String| Local::InvalidSource {
            argument: given.to_owned(),
            reason,
        };
        match (self.transport, kind) {
            (TRANSPORT_DIRECTORY, FileType::Directory) => Ok(fd),
            (TRANSPORT_ARCHIVE, FileType::RegularFile) => Ok(fd),
            (TRANSPORT_ARCHIVE, FileType::Directory) => Err(wrong(format!(
                "{path} is a directory; an OCI layout directory is pulled as oci:{path}"
            ))),
            (TRANSPORT_DIRECTORY, FileType::RegularFile) => Err(wrong(format!(
                "{path} is a file, not a directory; an OCI archive (tar) is pulled as \
                 oci-archive:{path}"
            ))),
            (_, other) => Err(wrong(format!(
                "{path} is a {}, neither an OCI layout directory (oci:) nor an archive \
                 (oci-archive:)",
                kind_name(other)
            ))),
        }
    }
}

/// A file type as people name it.
fn kind_name(kind: FileType) -> &'static str {
    match kind {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Unknown => "file of unknown type",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_split_at_the_first_colon_after_the_transport() {
        let s = Source::parse("oci-archive:/tmp/a.tar:sha256:abcd").unwrap();
        assert_eq!(
            s,
            Source {
                transport: TRANSPORT_ARCHIVE,
                path: "/tmp/a.tar".into(),
                reference: Some("sha256:abcd".into()),
            }
        );
        let s = Source::parse("oci:layout").unwrap();
        assert_eq!(s.transport, TRANSPORT_DIRECTORY);
        assert_eq!(s.path, PathBuf::from("layout"));
        assert_eq!(s.reference, None);
        for bad in ["docker://x", "oci:", "layout", "oci-archive::ref"] {
            assert!(Source::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
