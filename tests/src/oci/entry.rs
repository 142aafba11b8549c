//! Tar entries and layers built header by header: every kind of entry
//! composefs handles, and the encodings tools use for them.

use super::*;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// How a path longer than the 100-byte name field is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NameStyle {
    /// A GNU header; long names in `././@LongLink` entries (`L`, `K`).
    #[default]
    Gnu,
    /// A ustar header; long names in a PAX `path`/`linkpath` record.
    Pax,
    /// A ustar header; long names split into the prefix and name fields.
    UstarPrefix,
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file with this content.
    File(Vec<u8>),
    /// A symbolic link to this target.
    Symlink(String),
    /// A hard link to this earlier path of the same layer.
    Hardlink(String),
    /// A character device (major, minor).
    CharDevice(u32, u32),
    /// A block device (major, minor).
    BlockDevice(u32, u32),
    /// A named pipe.
    Fifo,
}

/// One tar entry of a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The path inside the layer, without a leading `/` or trailing `/`.
    pub path: String,
    /// What it is.
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time in seconds.
    pub mtime: u64,
    /// Extended attributes, written as `SCHILY.xattr.*` PAX records.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// How long names are encoded.
    pub name_style: NameStyle,
}

impl Entry {
    fn new(path: &str, kind: Kind, mode: u32) -> Self {
        Entry {
            path: path.trim_matches('/').to_owned(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: MTIME,
            xattrs: Vec::new(),
            name_style: NameStyle::default(),
        }
    }

    /// A directory, 0755.
    pub fn dir(path: &str) -> Self {
        Self::new(path, Kind::Dir, 0o755)
    }

    /// A regular file, 0644.
    pub fn file(path: &str, data: impl Into<Vec<u8>>) -> Self {
        Self::new(path, Kind::File(data.into()), 0o644)
    }

    /// A symbolic link, 0777.
    pub fn symlink(path: &str, target: &str) -> Self {
        Self::new(path, Kind::Symlink(target.to_owned()), 0o777)
    }

    /// A hard link to `target`, an earlier path of the same layer. Its
    /// header's mode is that of the target, as tar writes it.
    pub fn hardlink(path: &str, target: &str) -> Self {
        Self::new(
            path,
            Kind::Hardlink(target.trim_matches('/').to_owned()),
            0o644,
        )
    }

    /// A character device, 0666.
    pub fn char_device(path: &str, major: u32, minor: u32) -> Self {
        Self::new(path, Kind::CharDevice(major, minor), 0o666)
    }

    /// A block device, 0660.
    pub fn block_device(path: &str, major: u32, minor: u32) -> Self {
        Self::new(path, Kind::BlockDevice(major, minor), 0o660)
    }

    /// A named pipe, 0644.
    pub fn fifo(path: &str) -> Self {
        Self::new(path, Kind::Fifo, 0o644)
    }

    /// The whiteout that deletes `path` of the layers below: an empty file
    /// `.wh.<name>` next to it.
    pub fn whiteout(path: &str) -> Self {
        let path = path.trim_matches('/');
        let (dir, name) = match path.rsplit_once('/') {
            Some((dir, name)) => (format!("{dir}/"), name),
            None => (String::new(), path),
        };
        Self::file(&format!("{dir}.wh.{name}"), Vec::new())
    }

    /// The opaque marker that hides everything the layers below have in
    /// `dir`: an empty file `.wh..wh..opq` in it.
    pub fn opaque(dir: &str) -> Self {
        Self::file(
            &format!("{}/.wh..wh..opq", dir.trim_matches('/')),
            Vec::new(),
        )
    }

    /// With these permission bits.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// Owned by `uid`:`gid`.
    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    /// With this mtime.
    pub fn mtime(mut self, mtime: u64) -> Self {
        self.mtime = mtime;
        self
    }

    /// With the extended attribute `name` = `value`.
    pub fn xattr(mut self, name: &str, value: &[u8]) -> Self {
        self.xattrs.push((name.to_owned(), value.to_vec()));
        self
    }

    /// With long names written in `style`.
    pub fn name_style(mut self, style: NameStyle) -> Self {
        self.name_style = style;
        self
    }

    /// Whether this is a whiteout or an opaque marker.
    pub fn is_whiteout(&self) -> bool {
        let name = self.path.rsplit('/').next().unwrap_or(&self.path);
        name.starts_with(".wh.")
    }
}

/// One PAX extended-header record: `"<len> <key>=<value>\n"`, where `len`
/// counts the whole record including its own digits.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = 1 + key.len() + 1 + value.len() + 1;
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    let mut record = format!("{len} {key}=").into_bytes();
    record.extend_from_slice(value);
    record.push(b'\n');
    assert_eq!(record.len(), len);
    record
}

/// Copy `bytes` into a NUL-padded header field, truncating to its size.
fn set_field(field: &mut [u8], bytes: &[u8]) {
    field.fill(0);
    let n = bytes.len().min(field.len());
    field[..n].copy_from_slice(&bytes[..n]);
}

/// An extension entry (`L`, `K` or `x`) carrying `data`.
pub(super) fn extension_header(kind: u8, name: &str, data: &[u8], gnu: bool) -> tar::Header {
    let mut header = if gnu {
        tar::Header::new_gnu()
    } else {
        tar::Header::new_ustar()
    };
    set_field(&mut header.as_old_mut().name, name.as_bytes());
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(data.len() as u64);
    header.set_entry_type(tar::EntryType::new(kind));
    header.set_cksum();
    header
}

/// Append `entry` to `builder`, header by header.
pub(super) fn append_entry(builder: &mut tar::Builder<Vec<u8>>, entry: &Entry) {
    let gnu = entry.name_style == NameStyle::Gnu;
    let mut header = if gnu {
        tar::Header::new_gnu()
    } else {
        tar::Header::new_ustar()
    };
    let mut name = entry.path.clone();
    if entry.kind == Kind::Dir {
        name.push('/');
    }
    let (entry_type, data, link): (_, &[u8], Option<&str>) = match &entry.kind {
        Kind::Dir => (tar::EntryType::Directory, &[], None),
        Kind::File(data) => (tar::EntryType::Regular, data, None),
        Kind::Symlink(target) => (tar::EntryType::Symlink, &[], Some(target)),
        Kind::Hardlink(target) => (tar::EntryType::Link, &[], Some(target)),
        Kind::CharDevice(..) => (tar::EntryType::Char, &[], None),
        Kind::BlockDevice(..) => (tar::EntryType::Block, &[], None),
        Kind::Fifo => (tar::EntryType::Fifo, &[], None),
    };
    header.set_entry_type(entry_type);
    header.set_mode(entry.mode);
    header.set_uid(entry.uid);
    header.set_gid(entry.gid);
    header.set_mtime(entry.mtime);
    header.set_size(data.len() as u64);
    if let Kind::CharDevice(major, minor) | Kind::BlockDevice(major, minor) = entry.kind {
        header.set_device_major(major).unwrap();
        header.set_device_minor(minor).unwrap();
    }

    let mut pax = Vec::new();
    for (key, value) in &entry.xattrs {
        pax.extend(pax_record(&format!("SCHILY.xattr.{key}"), value));
    }
    let long_name = name.len() > 100;
    let long_link = link.is_some_and(|l| l.len() > 100);
    match entry.name_style {
        NameStyle::Gnu => {
            if long_name {
                let mut data = name.as_bytes().to_vec();
                data.push(0);
                let ext = extension_header(b'L', "././@LongLink", &data, true);
                builder.append(&ext, &data[..]).unwrap();
            }
            if long_link {
                let mut data = link.unwrap().as_bytes().to_vec();
                data.push(0);
                let ext = extension_header(b'K', "././@LongLink", &data, true);
                builder.append(&ext, &data[..]).unwrap();
            }
            set_field(&mut header.as_old_mut().name, name.as_bytes());
        }
        NameStyle::Pax => {
            if long_name {
                pax.extend(pax_record("path", name.as_bytes()));
            }
            if long_link {
                pax.extend(pax_record("linkpath", link.unwrap().as_bytes()));
            }
            set_field(&mut header.as_old_mut().name, name.as_bytes());
        }
        NameStyle::UstarPrefix => {
            assert!(!long_link, "ustar cannot hold a long link target");
            let ustar = header.as_ustar_mut().unwrap();
            if long_name {
                // Split at a `/` so that the name fits in 100 bytes and the
                // rest in the 155-byte prefix.
                let split = name
                    .char_indices()
                    .filter(|&(i, c)| c == '/' && i <= 155 && name.len() - i - 1 <= 100)
                    .map(|(i, _)| i)
                    .next()
                    .unwrap_or_else(|| panic!("{name} cannot be split for a ustar header"));
                set_field(&mut ustar.prefix, &name.as_bytes()[..split]);
                set_field(&mut ustar.name, &name.as_bytes()[split + 1..]);
            } else {
                set_field(&mut ustar.name, name.as_bytes());
            }
        }
    }
    if let Some(link) = link {
        set_field(&mut header.as_old_mut().linkname, link.as_bytes());
    }
    if !pax.is_empty() {
        let base = entry.path.rsplit('/').next().unwrap_or("x");
        let pax_name: String = format!("PaxHeaders.0/{base}").chars().take(99).collect();
        let ext = extension_header(b'x', &pax_name, &pax, false);
        builder.append(&ext, &pax[..]).unwrap();
    }
    header.set_cksum();
    builder.append(&header, data).unwrap();
}

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// Its entries in tar order.
    pub entries: Vec<Entry>,
    /// How its blob is compressed.
    pub compression: Compression,
    /// A media type to write instead of the one the compression implies.
    pub media_type: Option<String>,
}

impl Layer {
    /// A layer of `entries` compressed with `compression`.
    pub fn new(compression: Compression, entries: Vec<Entry>) -> Self {
        Layer {
            entries,
            compression,
            media_type: None,
        }
    }

    /// The uncompressed tar: what its diff_id names.
    pub fn tar(&self) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for entry in &self.entries {
            append_entry(&mut builder, entry);
        }
        builder.into_inner().unwrap()
    }

    /// The blob as stored: the tar, compressed.
    pub fn blob(&self) -> Vec<u8> {
        compress(&self.tar(), self.compression)
    }
}

/// `data` compressed with `compression`.
pub fn compress(data: &[u8], compression: Compression) -> Vec<u8> {
    match compression {
        Compression::None => data.to_vec(),
        Compression::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(data).unwrap();
            gz.finish().unwrap()
        }
        Compression::Zstd => zstd::encode_all(data, 3).unwrap(),
    }
}
