//! Where an image comes from: an `oci-archive:` tar or an `oci:` directory,
//! each handed over as an open file descriptor by the client, or a
//! `docker://` registry the daemon reaches itself.

use std::{
    fs::File,
    io::Read,
    os::fd::{AsFd, OwnedFd},
    sync::Arc,
};

use composefs::fsverity::FsVerityHashValue;
use rustix::fs::{Mode, OFlags, ResolveFlags};

use super::{
    archive::{Archive, Pread},
    digest::Digest,
    layer,
    manifest::LayerPlan,
    pipeline::{Blob, LayerSource},
    split::Pipe,
};
use crate::Error;

/// The largest JSON document (index, manifest, config) read from a source.
/// Real ones are kilobytes; this bounds what a hostile source can make the
/// daemon hold in memory.
const MAX_JSON: u64 = 16 << 20;

/// An OCI image layout the client opened and passed as a file descriptor.
#[derive(Debug)]
pub enum Source {
    /// An uncompressed `oci-archive:` tar.
    Archive(File),
    /// An `oci:` layout directory.
    Directory(OwnedFd),
    /// A `docker://` image, admitted by the policy, not yet contacted.
    Registry(Box<crate::registry::Registry>),
    /// Another composefs repository (`oci copy --from`); the pull's
    /// reference is the image's tag or manifest digest there.
    Repository(Arc<crate::secondary::SecondaryRepository>),
}

impl Source {
    /// The policy's transport of a local source.
    pub fn local_transport(&self) -> Option<crate::trust::LocalTransport> {
        match self {
            Source::Archive(_) => Some(crate::trust::LocalTransport::Archive),
            Source::Directory(_) => Some(crate::trust::LocalTransport::Directory),
            Source::Registry(_) | Source::Repository(_) => None,
        }
    }

    /// The descriptor the client passed, for a local source.
    pub fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        match self {
            Source::Archive(file) => Some(file.as_fd()),
            Source::Directory(dir) => Some(dir.as_fd()),
            Source::Repository(repo) => Some(repo.dir()),
            Source::Registry(_) => None,
        }
    }
}

/// An opened source that blobs can be read from, from many threads.
#[derive(Debug)]
pub(crate) enum Layout {
    Archive(Archive),
    Directory(Arc<OwnedFd>),
    Registry(crate::registry::Connected),
    Repository(Arc<crate::secondary::SecondaryRepository>),
}

impl Layout {
    /// Open `source`; an archive is indexed here, once.
    pub(crate) fn open(source: Source) -> Result<Self, Error> {
        let layout = match source {
            Source::Archive(file) => Layout::Archive(Archive::index(file)?),
            Source::Directory(dir) => Layout::Directory(Arc::new(dir)),
            // A repository has no oci-layout marker to check.
            Source::Repository(repo) => return Ok(Layout::Repository(repo)),
            Source::Registry(registry) => {
                return Ok(Layout::Registry(crate::registry::Connected::open(
                    *registry,
                )?));
            }
        };
        layout.check_marker()?;
        Ok(layout)
    }

    /// The registry this layout reads, when it is one.
    pub(crate) fn remote(&self) -> Option<&Arc<crate::registry::remote::Remote>> {
        match self {
            Layout::Registry(connected) => Some(&connected.remote),
            _ => None,
        }
    }

    /// The secondary repository this layout reads, when it is one.
    pub(crate) fn secondary(&self) -> Option<&Arc<crate::secondary::SecondaryRepository>> {
        match self {
            Layout::Repository(repo) => Some(repo),
            _ => None,
        }
    }

    /// Admit the image whose manifest has `digest` (with `delta`, a
    /// delta's target's) as the registry's signature policy requires; a
    /// local source has no policy. The signatures that met the policy,
    /// if it asked for any. Blocks.
    pub(crate) fn admit(
        &self,
        digest: &Digest,
        delta: bool,
    ) -> Result<Option<crate::trust::Accepted>, Error> {
        match self {
            Layout::Registry(connected) => connected.admit(digest, delta),
            _ => Ok(None),
        }
    }

    /// For a registry, what stops its blob readers once dropped; the pull
    /// holds it, so that they stop when the pull does.
    pub(crate) fn take_stop(&self) -> Option<crate::registry::Stop> {
        match self {
            Layout::Registry(connected) => connected.take_stop(),
            _ => None,
        }
    }

    /// `oci-layout` must exist and name a version this reader knows.
    fn check_marker(&self) -> Result<(), Error> {
        let missing = || Error::InvalidSource {
            reason: "there is no oci-layout file".to_owned(),
        };
        let reader = self.file("oci-layout")?.ok_or_else(missing)?;
        let bytes = read_limited(reader, "oci-layout")?;
        let marker: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| Error::InvalidJson {
                what: "oci-layout".to_owned(),
                reason: e.to_string(),
            })?;
        match marker.get("imageLayoutVersion").and_then(|v| v.as_str()) {
            Some(v) if v.starts_with("1.") => Ok(()),
            other => Err(Error::InvalidSource {
                reason: format!("unsupported imageLayoutVersion {other:?}"),
            }),
        }
    }

    /// `index.json`, as raw bytes.
    pub(crate) fn index(&self) -> Result<Vec<u8>, Error> {
        if let Layout::Registry(connected) = self {
            return Ok(connected.remote.index());
        }
        if let Layout::Repository(_) = self {
            return Err(Error::InvalidSource {
                reason: "a repository holds many images: name the one to copy".to_owned(),
            });
        }
        let reader = self
            .file("index.json")?
            .ok_or_else(|| Error::InvalidSource {
                reason: "there is no index.json".to_owned(),
            })?;
        read_limited(reader, "index.json")
    }

    /// A reader of the layer blob `digest`, checked to be `size` bytes
    /// long; from a registry, streamed from the connection.
    fn layer(&self, digest: &Digest, size: u64, what: &str) -> Result<Box<dyn Read + Send>, Error> {
        if let Layout::Registry(connected) = self {
            return Ok(connected.layer(digest, size));
        }
        let blob = self.blob(digest)?;
        check_size(blob.len(), size, what)?;
        Ok(Box::new(blob))
    }

    /// A reader of the blob `digest`, and its length on disk.
    pub(crate) fn blob(&self, digest: &Digest) -> Result<Pread, Error> {
        let path = format!("blobs/sha256/{}", digest.hex());
        self.file(&path)?.ok_or_else(|| Error::BlobMissing {
            digest: digest.to_string(),
        })
    }

    /// A small JSON blob, checked against its size and digest.
    pub(crate) fn json_blob(
        &self,
        digest: &Digest,
        size: u64,
        what: &str,
    ) -> Result<Vec<u8>, Error> {
        if size > MAX_JSON {
            return Err(Error::InvalidJson {
                what: what.to_owned(),
                reason: format!("{size} bytes is more than the {MAX_JSON} allowed"),
            });
        }
        let bytes = match self {
            Layout::Registry(connected) => connected.remote.document(digest, size, what)?,
            Layout::Repository(repo) => {
                repo.document(digest)?.ok_or_else(|| Error::BlobMissing {
                    digest: digest.to_string(),
                })?
            }
            _ => {
                let blob = self.blob(digest)?;
                check_size(blob.len(), size, what)?;
                read_limited(blob, what)?
            }
        };
        check_size(bytes.len() as u64, size, what)?;
        digest.verify(&Digest::of(&bytes), format!("digest of {what}"))?;
        Ok(bytes)
    }

    /// The regular file at `path` in the layout, if there is one.
    fn file(&self, path: &str) -> Result<Option<Pread>, Error> {
        match self {
            Layout::Archive(archive) => Ok(archive.open(path)),
            Layout::Directory(dir) => open_beneath(dir, path),
            Layout::Registry(_) | Layout::Repository(_) => Err(Error::InvalidSource {
                reason: format!("{path} is a file of a layout; this source has no such files"),
            }),
        }
    }
}

/// A layout makes each layer from the image's own blob, read by pread
/// and decompressed as its media type says.
impl<H: FsVerityHashValue> LayerSource<H> for Layout {
    fn blob(&self, layer: &LayerPlan) -> Option<Blob> {
        Some(Blob::of_layer(layer))
    }

    fn open(&self, blob: &Blob) -> Result<Box<dyn Read + Send>, Error> {
        self.layer(&blob.digest, blob.size, &blob.name)
    }

    fn unpack(
        &self,
        layer: &LayerPlan,
        blob: &Blob,
        bytes: &mut dyn Read,
        out: &mut Pipe<H>,
    ) -> Result<(), Error> {
        layer::decompress(layer.compression, layer, blob, bytes, out)
    }
}

/// The declared size of a blob must be its real size.
pub(crate) fn check_size(actual: u64, declared: u64, what: &str) -> Result<(), Error> {
    if actual == declared {
        return Ok(());
    }
    Err(Error::DigestMismatch {
        what: format!("size of {what}"),
        expected: declared.to_string(),
        actual: actual.to_string(),
    })
}

/// Open `path` inside the layout directory with nothing but its own
/// names: no `..` out of it, no symbolic link of any kind, no other
/// mount. The daemon opens these files with more rights than the peer
/// who handed over the directory, and a link could lead to a file that
/// peer cannot read; refusing every link refuses all of those without
/// looking at where one points, so a refusal says nothing about its
/// target. Only regular files count, and the type is checked before any
/// read: `O_NONBLOCK` makes opening a FIFO return at once instead of
/// waiting for a writer that never comes.
fn open_beneath(dir: &Arc<OwnedFd>, path: &str) -> Result<Option<Pread>, Error> {
    let opened = rustix::fs::openat2(
        dir.as_fd(),
        path,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::NOFOLLOW,
        Mode::empty(),
        ResolveFlags::BENEATH
            | ResolveFlags::NO_SYMLINKS
            | ResolveFlags::NO_MAGICLINKS
            | ResolveFlags::NO_XDEV,
    );
    let refused = |why: &str| {
        Err(Error::InvalidSource {
            reason: format!("{path} {why}"),
        })
    };
    let fd = match opened {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(rustix::io::Errno::LOOP) => {
            return refused("is or passes through a symbolic link, which cfsd does not follow");
        }
        Err(rustix::io::Errno::XDEV) => {
            return refused("leads outside the layout directory or onto another mount");
        }
        Err(e) => {
            return Err(Error::storage(
                "opening a file of the layout",
                std::io::Error::from(e),
            ));
        }
    };
    let stat = rustix::fs::fstat(&fd)
        .map_err(|e| Error::storage("reading the layout", std::io::Error::from(e)))?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
        return refused("is not a regular file");
    }
    // Reads of a regular file never return EAGAIN, but the flag is the
    // peer's business no longer: clear it so the file reads as any other.
    rustix::fs::fcntl_setfl(&fd, OFlags::empty())
        .map_err(|e| Error::storage("reading the layout", std::io::Error::from(e)))?;
    let file = Arc::new(File::from(fd));
    Ok(Some(Pread::new(file, 0, stat.st_size as u64)))
}

/// Read a small document whole, refusing one larger than [`MAX_JSON`].
fn read_limited(reader: Pread, what: &str) -> Result<Vec<u8>, Error> {
    if reader.len() > MAX_JSON {
        return Err(Error::InvalidJson {
            what: what.to_owned(),
            reason: format!("{} bytes is more than the {MAX_JSON} allowed", reader.len()),
        });
    }
    let mut bytes = Vec::new();
    reader
        .take(MAX_JSON)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::storage("reading the source", e))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn layout_dir(dir: &std::path::Path) -> Arc<OwnedFd> {
        Arc::new(OwnedFd::from(File::open(dir).unwrap()))
    }

    fn refusal(dir: &Arc<OwnedFd>, path: &str) -> String {
        match open_beneath(dir, path) {
            Err(Error::InvalidSource { reason }) => reason,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn links_of_any_kind_are_refused_without_a_word_about_their_target() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        std::fs::write(
            dir.path().join("secret"),
            "forty-two bytes of something private!!!!!\n",
        )
        .unwrap();
        symlink("../../secret", dir.path().join("blobs/sha256/inside")).unwrap();
        symlink("/etc/passwd", dir.path().join("blobs/sha256/absolute")).unwrap();
        symlink("blobs", dir.path().join("linked")).unwrap();
        let fd = layout_dir(dir.path());
        for path in [
            "blobs/sha256/inside",
            "blobs/sha256/absolute",
            "linked/sha256/x",
        ] {
            let reason = refusal(&fd, path);
            assert!(reason.contains("symbolic link"), "{reason}");
            assert!(
                !reason.contains("secret") && !reason.contains("42"),
                "{reason}"
            );
        }
        assert!(refusal(&fd, "../x").contains("outside"));
        // The file itself, by its own name, reads.
        assert_eq!(open_beneath(&fd, "secret").unwrap().unwrap().len(), 42);
    }

    #[test]
    fn a_fifo_is_refused_at_once_rather_than_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        rustix::fs::mkfifoat(rustix::fs::CWD, dir.path().join("oci-layout"), Mode::RUSR).unwrap();
        let fd = layout_dir(dir.path());
        // Before O_NONBLOCK this open waited for a writer forever.
        let reason = refusal(&fd, "oci-layout");
        assert!(reason.contains("not a regular file"), "{reason}");
        assert!(open_beneath(&fd, "index.json").unwrap().is_none());
    }
}
