//! A secondary repository: another composefs repository that images are
//! copied from (`oci copy --from`) and that a delta's source image may be
//! taken from (`oci pull --source-repo`).
//!
//! It is untrusted input and only ever read. Its directory comes as a file
//! descriptor the client opened with its own rights (or one the admin
//! configured); everything in it is opened beneath that descriptor one
//! name at a time, with no symbolic link, `..` or other mount followed, no
//! lock taken and nothing created, so a repository mounted read-only
//! serves as well as any. Stream and tag symlinks are read as text and
//! parsed, never followed. Every file must be a regular one, and for a
//! client's directory one that client could read itself ([`Reader`]): the
//! daemon reads as root, and a peer must not get through it what it could
//! not read. What is copied is checked as it is copied: each object
//! against its fs-verity digest, each layer against its diff_id, the
//! manifest and config against their digests (see [`copy`]).

pub(crate) mod copy;
pub(crate) mod delta_source;
mod reader;

use std::{
    fs::File,
    io::Read,
    os::fd::{AsFd, OwnedFd},
};

use composefs::fsverity::FsVerityHashValue;
use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};

pub use reader::Reader;

use crate::{Error, HashAlgorithm, oci::digest::Digest};

/// The largest manifest or config read from a secondary repository, as
/// for any source.
const MAX_DOCUMENT: u64 = 16 << 20;

/// Another composefs repository, open for reading only.
#[derive(Debug)]
pub struct SecondaryRepository {
    dir: OwnedFd,
    algorithm: HashAlgorithm,
    /// Whose rights bound what is read; `None` reads all (root's own
    /// request, or a repository the admin configured).
    reader: Option<Reader>,
}

/// Run `$body` with `$s` the hash type of `$repo`'s objects.
macro_rules! with_source_hash {
    ($repo:expr, $s:ident => $body:expr) => {
        match $repo.algorithm() {
            a if a == $crate::HashAlgorithm::SHA256 => {
                type $s = composefs::fsverity::Sha256HashValue;
                $body
            }
            _ => {
                type $s = composefs::fsverity::Sha512HashValue;
                $body
            }
        }
    };
}
pub(crate) use with_source_hash;

impl SecondaryRepository {
    /// The repository whose directory `dir` is, read within the rights of
    /// `reader` (none: no bound).
    pub fn open(dir: OwnedFd, reader: Option<Reader>) -> Result<Self, Error> {
        let mut repo = SecondaryRepository {
            dir,
            algorithm: HashAlgorithm::SHA512,
            reader,
        };
        let stat = rustix::fs::fstat(&repo.dir).map_err(|e| io("reading its directory", e))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
            return Err(invalid("it is not a directory".to_owned()));
        }
        repo.check_access(&stat, "its directory", Access::Search)?;
        repo.algorithm = repo.read_algorithm()?;
        Ok(repo)
    }

    /// Its directory, as the client passed it.
    pub fn dir(&self) -> std::os::fd::BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// The algorithm naming its objects.
    pub fn algorithm(&self) -> HashAlgorithm {
        self.algorithm
    }

    /// `meta.json`'s algorithm: composefs-rs's reader follows links and
    /// waits on FIFOs, so the file is opened here and only its one field
    /// is read.
    fn read_algorithm(&self) -> Result<HashAlgorithm, Error> {
        let meta = self
            .read_small("meta.json")?
            .ok_or_else(|| invalid("it has no meta.json: not a composefs repository".to_owned()))?;
        let value: serde_json::Value = serde_json::from_slice(&meta)
            .map_err(|e| invalid(format!("its meta.json is not JSON: {e}")))?;
        let name = value
            .get("algorithm")
            .and_then(|a| a.as_str())
            .ok_or_else(|| invalid("its meta.json names no algorithm".to_owned()))?;
        name.parse()
    }

    /// A small file, whole, if it exists.
    fn read_small(&self, path: &str) -> Result<Option<Vec<u8>>, Error> {
        let Some(file) = self.open_file(path)? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        file.take(MAX_DOCUMENT + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::storage("reading the source repository", e))?;
        if bytes.len() as u64 > MAX_DOCUMENT {
            return Err(invalid(format!(
                "{path} is larger than {MAX_DOCUMENT} bytes"
            )));
        }
        Ok(Some(bytes))
    }

    /// The regular file at `path`, opened one name at a time beneath the
    /// directory: every directory on the way must be one the reader may
    /// search, and the file one it may read. `None` if a name is absent.
    pub(crate) fn open_file(&self, path: &str) -> Result<Option<File>, Error> {
        let (parents, name) = path.rsplit_once('/').unwrap_or(("", path));
        let Some(dir) = self.open_dirs(parents)? else {
            return Ok(None);
        };
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY;
        let Some(fd) = self.open_beneath(dir.as_ref().unwrap_or(&self.dir), name, flags, path)?
        else {
            return Ok(None);
        };
        let stat = rustix::fs::fstat(&fd).map_err(|e| io("reading a file", e))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(invalid(format!("{path} is not a regular file")));
        }
        self.check_access(&stat, path, Access::Read)?;
        // The flag only kept a FIFO from blocking the open.
        rustix::fs::fcntl_setfl(&fd, OFlags::empty()).map_err(|e| io("reading a file", e))?;
        Ok(Some(File::from(fd)))
    }

    /// The directory `path` (`""`: the root, returned as `Some(None)`),
    /// each step checked as [`SecondaryRepository::open_file`] says.
    fn open_dirs(&self, path: &str) -> Result<Option<Option<OwnedFd>>, Error> {
        let mut current: Option<OwnedFd> = None;
        let mut walked = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            walked = if walked.is_empty() {
                part.to_owned()
            } else {
                format!("{walked}/{part}")
            };
            let at = current.as_ref().unwrap_or(&self.dir);
            let flags = OFlags::PATH | OFlags::DIRECTORY;
            let Some(fd) = self.open_beneath(at, part, flags, &walked)? else {
                return Ok(None);
            };
            let stat = rustix::fs::fstat(&fd).map_err(|e| io("reading a directory", e))?;
            self.check_access(&stat, &walked, Access::Search)?;
            current = Some(fd);
        }
        Ok(Some(current))
    }

    /// `name` in `dir`, with nothing but its own name: a link of any kind
    /// is refused without looking at where it points.
    fn open_beneath(
        &self,
        dir: &OwnedFd,
        name: &str,
        flags: OFlags,
        path: &str,
    ) -> Result<Option<OwnedFd>, Error> {
        let opened = rustix::fs::openat2(
            dir.as_fd(),
            name,
            flags | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
            ResolveFlags::BENEATH
                | ResolveFlags::NO_SYMLINKS
                | ResolveFlags::NO_MAGICLINKS
                | ResolveFlags::NO_XDEV,
        );
        match opened {
            Ok(fd) => Ok(Some(fd)),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(rustix::io::Errno::LOOP) => Err(invalid(format!(
                "{path} is a symbolic link, which cfsd does not follow"
            ))),
            Err(rustix::io::Errno::XDEV) => Err(invalid(format!(
                "{path} leads outside the repository or onto another mount"
            ))),
            Err(rustix::io::Errno::NOTDIR) => {
                // O_NOFOLLOW opens a link itself, which is no directory.
                let linked = rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink);
                let what = if linked {
                    "a symbolic link, which cfsd does not follow"
                } else {
                    "not a directory"
                };
                Err(invalid(format!("{path} is {what}")))
            }

            Err(e) => Err(io("opening a file", e)),
        }
    }

    /// The text of the symbolic link `path` (a stream or a tag), read
    /// without following it; `None` if there is none.
    fn read_link(&self, path: &str) -> Result<Option<String>, Error> {
        let (parents, name) = path.rsplit_once('/').unwrap_or(("", path));
        let Some(dir) = self.open_dirs(parents)? else {
            return Ok(None);
        };
        let at = dir.as_ref().unwrap_or(&self.dir);
        match rustix::fs::readlinkat(at, name, Vec::new()) {
            Ok(target) => Ok(Some(target.to_string_lossy().into_owned())),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(rustix::io::Errno::INVAL) => Err(invalid(format!("{path} is not a symbolic link"))),
            Err(e) => Err(io("reading a link", e)),
        }
    }

    /// The object a stream's link names: composefs links
    /// `streams/NAME` to `../objects/XX/REST`.
    fn stream_object<S: FsVerityHashValue>(&self, name: &str) -> Result<Option<S>, Error> {
        let path = format!("streams/{name}");
        let Some(target) = self.read_link(&path)? else {
            return Ok(None);
        };
        let bad = || invalid(format!("{path} links to {target:?}, not to an object"));
        let rest = target.strip_prefix("../objects/").ok_or_else(bad)?;
        S::from_object_pathname(format!("../{rest}").as_bytes())
            .map(Some)
            .map_err(|_| bad())
    }

    /// The object `id`, opened as [`SecondaryRepository::open_file`] says.
    pub(crate) fn open_object<S: FsVerityHashValue>(&self, id: &S) -> Result<File, Error> {
        let path = format!("objects/{}", id.to_object_pathname());
        self.open_file(&path)?
            .ok_or_else(|| invalid(format!("it lacks the object {}", id.to_hex())))
    }

    /// The split stream `name`, if the repository has it.
    fn open_stream<S: FsVerityHashValue>(
        &self,
        name: &str,
    ) -> Result<Option<composefs::splitstream::SplitStreamReader<S>>, Error> {
        let Some(id) = self.stream_object::<S>(name)? else {
            return Ok(None);
        };
        let file = self.open_object(&id)?;
        composefs::splitstream::SplitStreamReader::new(file, None)
            .map(Some)
            .map_err(|e| invalid(format!("its stream {name} is unreadable: {e:#}")))
    }

    /// The manifest or config whose digest is `digest`, checked against
    /// it: the content of its `oci-manifest-` or `oci-config-` stream.
    pub(crate) fn document(&self, digest: &Digest) -> Result<Option<Vec<u8>>, Error> {
        with_source_hash!(self, S => self.document_as::<S>(digest))
    }

    fn document_as<S: FsVerityHashValue>(&self, digest: &Digest) -> Result<Option<Vec<u8>>, Error> {
        for kind in ["oci-manifest", "oci-config"] {
            let name = format!("{kind}-{digest}");
            if let Some(mut stream) = self.open_stream::<S>(&name)? {
                let mut bytes = Vec::new();
                copy::read_stream(self, &mut stream, &mut bytes, MAX_DOCUMENT)
                    .map_err(|e| e.into_error(&name))?;
                digest.verify(
                    &Digest::of(&bytes),
                    format!("digest of {name} of the source repository"),
                )?;
                return Ok(Some(bytes));
            }
        }
        Ok(None)
    }

    /// The manifest digest the tag `tag` names (composefs-oci's links
    /// `streams/refs/oci/TAG` to `../../oci-manifest-DIGEST`).
    pub(crate) fn tagged(&self, tag: &str) -> Result<Option<Digest>, Error> {
        let encoded = tag.replace('%', "%25").replace('/', "%2F");
        let path = format!("streams/refs/oci/{encoded}");
        let Some(target) = self.read_link(&path)? else {
            return Ok(None);
        };
        let digest = target.strip_prefix("../../oci-manifest-").ok_or_else(|| {
            invalid(format!(
                "tag {tag:?} links to {target:?}, not to a manifest"
            ))
        })?;
        Digest::parse(digest, "a tag's manifest").map(Some)
    }

    /// The manifest digest of an image whose config is `config`, found
    /// among its manifest streams.
    pub(crate) fn manifest_for_config(&self, config: &Digest) -> Result<Option<Digest>, Error> {
        let Some(Some(streams)) = self.open_dirs("streams")? else {
            return Ok(None);
        };
        let listed = rustix::fs::openat(
            &streams,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io("listing the streams", e))?;
        let names: Vec<String> = rustix::fs::Dir::read_from(&listed)
            .map_err(|e| io("listing the streams", e))?
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| entry.file_name().to_str().ok().map(str::to_owned))
            .filter_map(|name| name.strip_prefix("oci-manifest-").map(str::to_owned))
            .collect();
        for name in names {
            let Ok(digest) = Digest::parse(&name, "a manifest stream") else {
                continue;
            };
            let Some(bytes) = self.document(&digest)? else {
                continue;
            };
            let manifest: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let named = manifest.pointer("/config/digest").and_then(|d| d.as_str());
            if named == Some(&config.to_string()) {
                return Ok(Some(digest));
            }
        }
        Ok(None)
    }

    /// An `index.json` with the one image `image` (a tag or a manifest
    /// digest) names, for the pull's resolution; `None` if there is none.
    pub(crate) fn index_for(&self, image: &str) -> Result<Option<Vec<u8>>, Error> {
        let digest = match image.strip_prefix("sha256:") {
            Some(_) => Digest::parse(image, "the image")?,
            None => match self.tagged(image)? {
                Some(d) => d,
                None => return Ok(None),
            },
        };
        let Some(manifest) = self.document(&digest)? else {
            return Ok(None);
        };
        let parsed: serde_json::Value = serde_json::from_slice(&manifest).unwrap_or_default();
        let media_type = parsed
            .get("mediaType")
            .and_then(|m| m.as_str())
            .unwrap_or("application/vnd.oci.image.manifest.v1+json");
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": media_type,
                "digest": digest.to_string(),
                "size": manifest.len(),
                "annotations": { "org.opencontainers.image.ref.name": image },
            }],
        });
        Ok(Some(index.to_string().into_bytes()))
    }
}

/// What a reader must be allowed to do with a file.
#[derive(Debug, Clone, Copy)]
enum Access {
    Read,
    Search,
}

impl SecondaryRepository {
    fn check_access(
        &self,
        stat: &rustix::fs::Stat,
        path: &str,
        access: Access,
    ) -> Result<(), Error> {
        let Some(reader) = &self.reader else {
            return Ok(());
        };
        let bit = match access {
            Access::Read => 4,
            Access::Search => 1,
        };
        if reader.may(stat.st_uid, stat.st_gid, stat.st_mode, bit) {
            return Ok(());
        }
        Err(Error::SourceRepository {
            reason: format!(
                "uid {} may not {} {path}, so cfsd does not either",
                reader.uid,
                match access {
                    Access::Read => "read",
                    Access::Search => "search",
                }
            ),
        })
    }
}

fn invalid(reason: String) -> Error {
    Error::SourceRepository { reason }
}

fn io(operation: &'static str, e: rustix::io::Errno) -> Error {
    Error::storage(operation, std::io::Error::from(e))
}

#[cfg(test)]
mod tests {
    use std::{
        os::unix::fs::{PermissionsExt, symlink},
        path::Path,
    };

    use super::*;

    fn repo_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("meta.json"),
            r#"{"version":1,"algorithm":"fsverity-sha256-12"}"#,
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("objects/ab")).unwrap();
        std::fs::write(dir.path().join("objects/ab/cd"), b"object").unwrap();
        dir
    }

    fn open(dir: &Path, reader: Option<Reader>) -> Result<SecondaryRepository, Error> {
        SecondaryRepository::open(File::open(dir).unwrap().into(), reader)
    }

    fn reason(e: Error) -> String {
        match e {
            Error::SourceRepository { reason } => reason,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reads_its_algorithm_and_refuses_what_is_no_repository() {
        let dir = repo_dir();
        assert_eq!(
            open(dir.path(), None).unwrap().algorithm(),
            HashAlgorithm::SHA256
        );
        std::fs::remove_file(dir.path().join("meta.json")).unwrap();
        symlink("/etc/os-release", dir.path().join("meta.json")).unwrap();
        let refused = reason(open(dir.path(), None).unwrap_err());
        assert!(
            refused.contains("meta.json is a symbolic link"),
            "{refused}"
        );
    }

    #[test]
    fn a_linked_directory_on_the_way_is_refused() {
        let dir = repo_dir();
        std::fs::rename(dir.path().join("objects/ab"), dir.path().join("elsewhere")).unwrap();
        symlink("../elsewhere", dir.path().join("objects/ab")).unwrap();
        let repo = open(dir.path(), None).unwrap();
        let refused = reason(repo.open_file("objects/ab/cd").unwrap_err());
        assert!(
            refused.contains("objects/ab is a symbolic link"),
            "{refused}"
        );
        assert!(repo.open_file("objects/ef/gh").unwrap().is_none());
    }

    #[test]
    fn a_reader_gets_only_what_its_modes_allow() {
        let dir = repo_dir();
        let mode = |path: &str, mode: u32| {
            let path = dir.path().join(path);
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        mode("", 0o755);
        mode("meta.json", 0o644);
        mode("objects", 0o755);
        mode("objects/ab", 0o700);
        let peer = || Some(Reader::new(1000, vec![1000]));
        let repo = open(dir.path(), peer()).unwrap();
        let refused = reason(repo.open_file("objects/ab/cd").unwrap_err());
        assert!(
            refused.contains("uid 1000 may not search objects/ab"),
            "{refused}"
        );
        mode("objects/ab", 0o755);
        mode("objects/ab/cd", 0o600);
        let refused = reason(repo.open_file("objects/ab/cd").unwrap_err());
        assert!(refused.contains("may not read objects/ab/cd"), "{refused}");
        mode("objects/ab/cd", 0o604);
        assert!(repo.open_file("objects/ab/cd").unwrap().is_some());
    }
}
