//! `oci-archive:`: an OCI layout packed in one uncompressed tar, indexed
//! once and then read at the indexed offsets with pread.

use std::{
    collections::HashMap,
    fs::File,
    io::{self, Read, Seek, SeekFrom},
    sync::Arc,
};

use crate::Error;

/// Where one member's data lies in the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Extent {
    /// Offset of the first data byte.
    pub offset: u64,
    /// Length of the data.
    pub len: u64,
}

/// An indexed `oci-archive:` tar: member path → data extent.
#[derive(Debug)]
pub struct Archive {
    file: Arc<File>,
    members: HashMap<String, Extent>,
}

impl Archive {
    /// Index the tar in `file`. Reads every header once; member data is
    /// skipped, not read.
    pub fn index(file: File) -> Result<Self, Error> {
        refuse_compressed(&file)?;
        let size = file
            .metadata()
            .map_err(|e| Error::storage("reading the archive", e))?
            .len();
        let file = Arc::new(file);
        let mut members = HashMap::new();
        let mut tar = tar::Archive::new(Pread::new(file.clone(), 0, u64::MAX));
        let invalid = |e: io::Error| Error::InvalidSource {
            reason: format!("the archive is not a readable tar: {e}"),
        };
        for entry in tar.entries_with_seek().map_err(invalid)? {
            let entry = entry.map_err(invalid)?;
            let path = entry.path().map_err(invalid)?;
            let name = normalise(&path.to_string_lossy());
            let extent = Extent {
                offset: entry.raw_file_position(),
                len: entry.size(),
            };
            // The tar reader skips data by seeking, which succeeds past the
            // end: a cut-short archive must be caught here, not when a blob
            // read fails later as if the disk had. Any member counts, as
            // for tar extraction.
            check_inside(&name, extent, size)?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            // A later member of the same name replaces an earlier one, as
            // tar extraction would.
            members.insert(name, extent);
        }
        if members.is_empty() {
            return Err(Error::InvalidSource {
                reason: "the archive holds no files".to_owned(),
            });
        }
        Ok(Archive { file, members })
    }

    /// The extent of the member at `path` (relative to the layout root).
    pub(crate) fn member(&self, path: &str) -> Option<Extent> {
        self.members.get(path).copied()
    }

    /// A reader of the member at `path`.
    pub(crate) fn open(&self, path: &str) -> Option<Pread> {
        let extent = self.member(path)?;
        Some(Pread::new(self.file.clone(), extent.offset, extent.len))
    }
}

/// A member's data must lie inside the archive.
fn check_inside(name: &str, extent: Extent, size: u64) -> Result<(), Error> {
    if extent
        .offset
        .checked_add(extent.len)
        .is_some_and(|end| end <= size)
    {
        return Ok(());
    }
    Err(Error::InvalidSource {
        reason: format!(
            "the archive is cut short: {name} has {} bytes at offset {}, \
             past the end of the {size}-byte archive",
            extent.len, extent.offset
        ),
    })
}

/// `./index.json` and `index.json` name the same member.
fn normalise(path: &str) -> String {
    let mut path = path;
    while let Some(rest) = path.strip_prefix("./") {
        path = rest;
    }
    path.trim_start_matches('/').to_owned()
}

/// An outer archive that is compressed as a whole is refused with a
/// message that says so, rather than a tar parse error.
fn refuse_compressed(file: &File) -> Result<(), Error> {
    let mut magic = [0u8; 6];
    let n = rustix::io::pread(file, &mut magic, 0)
        .map_err(|e| Error::storage("reading the archive", io::Error::from(e)))?;
    let magic = &magic[..n];
    let compression = if magic.starts_with(&[0x1f, 0x8b]) {
        "gzip"
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        "zstd"
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        "xz"
    } else if magic.starts_with(b"BZh") {
        "bzip2"
    } else {
        return Ok(());
    };
    Err(Error::CompressedArchive {
        compression: compression.to_owned(),
    })
}

/// A window of a file read with pread: it has its own position, so any
/// number of readers can share one file from many threads.
#[derive(Debug, Clone)]
pub(crate) struct Pread {
    file: Arc<File>,
    start: u64,
    len: u64,
    pos: u64,
}

impl Pread {
    /// The `len` bytes of `file` from `start`.
    pub(crate) fn new(file: Arc<File>, start: u64, len: u64) -> Self {
        Pread {
            file,
            start,
            len,
            pos: 0,
        }
    }

    /// The window's length.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }
}

impl Read for Pread {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = rustix::io::pread(&*self.file, &mut buf[..want], self.start + self.pos)?;
        if n == 0 && self.len != u64::MAX {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file is shorter than its index says",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Pread {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn tar_of(members: &[(&str, &[u8])]) -> File {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in members {
            let mut header = tar::Header::new_ustar();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, *data).unwrap();
        }
        let bytes = builder.into_inner().unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&bytes).unwrap();
        file
    }

    #[test]
    fn indexes_members_and_reads_them_at_their_offsets() {
        let big = vec![7u8; 100_000];
        let archive = Archive::index(tar_of(&[
            ("./index.json", b"{}"),
            ("blobs/sha256/aa", &big),
            ("oci-layout", b"x"),
        ]))
        .unwrap();
        let mut data = Vec::new();
        archive
            .open("blobs/sha256/aa")
            .unwrap()
            .read_to_end(&mut data)
            .unwrap();
        assert_eq!(data, big);
        let mut index = String::new();
        archive
            .open("index.json")
            .unwrap()
            .read_to_string(&mut index)
            .unwrap();
        assert_eq!(index, "{}");
        assert!(archive.open("blobs/sha256/bb").is_none());
    }

    /// Found by the archive_index fuzz target: a member cut short was
    /// indexed, and only reading it failed, later (for index.json or a
    /// manifest as a storage error rather than a bad source).
    #[test]
    fn refuses_a_member_cut_short() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_size(5120);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, "usr/big", &[1u8; 5120][..])
            .unwrap();
        let whole = builder.into_inner().unwrap();
        for cut in [512 + 5119, 512 + 100, 513] {
            let mut file = tempfile::tempfile().unwrap();
            file.write_all(&whole[..cut]).unwrap();
            let err = Archive::index(file).unwrap_err();
            assert!(
                matches!(err, Error::InvalidSource { ref reason } if reason.contains("usr/big")),
                "{cut}: {err}"
            );
        }
        // A directory whose data runs past the end is cut short too.
        let mut builder = tar::Builder::new(Vec::new());
        for (name, kind, size) in [
            ("index.json", tar::EntryType::Regular, 2),
            ("blobs/", tar::EntryType::Directory, 2817),
        ] {
            let mut header = tar::Header::new_ustar();
            header.set_entry_type(kind);
            header.set_size(size);
            header.set_cksum();
            builder
                .append_data(&mut header, name, &vec![0u8; size as usize][..])
                .unwrap();
        }
        let bytes = builder.into_inner().unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&bytes[..512 * 4 + 700]).unwrap();
        assert!(matches!(
            Archive::index(file).unwrap_err(),
            Error::InvalidSource { ref reason } if reason.contains("blobs/")
        ));
        // Only the padding after the data missing is still readable.
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&whole[..512 + 5120]).unwrap();
        let archive = Archive::index(file).unwrap();
        assert_eq!(archive.member("usr/big").unwrap().len, 5120);
    }

    #[test]
    fn refuses_compressed_and_non_tar_files() {
        let mut gz = tempfile::tempfile().unwrap();
        gz.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0]).unwrap();
        let err = Archive::index(gz).unwrap_err();
        assert!(
            matches!(err, Error::CompressedArchive { ref compression } if compression == "gzip")
        );
        let mut junk = tempfile::tempfile().unwrap();
        junk.write_all(&[b'x'; 1024]).unwrap();
        assert!(matches!(
            Archive::index(junk).unwrap_err(),
            Error::InvalidSource { .. }
        ));
    }
}
