//! The images that live composefs mounts still serve, as the kernel
//! reports them, so that garbage collection keeps them.
//!
//! A composefs mount is an overlay whose source is `composefs:<image id>`
//! and whose data layer is the repository's `objects/` directory; its
//! EROFS image is file-backed and held open by the kernel, but its files'
//! contents are looked up in `objects/` by name for as long as the mount
//! lives. Nothing in cfsd's memory records a mount: the kernel's mount
//! tables do, in every mount namespace, and they survive a cfsd restart.
//! See "Concurrency and GC" in `docs/reliability.md`.

use std::{
    collections::{BTreeSet, HashSet},
    io,
    os::{fd::AsFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use rustix::fs::{AtFlags, StatxFlags};

/// The overlay source composefs gives a mount of image `<id>`.
const SOURCE_PREFIX: &str = "composefs:";

/// One composefs mount, read from a mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ComposefsMount {
    /// The image id, the name under `images/`.
    image: String,
    /// The overlay's data directories, as the mounting process saw them.
    data_dirs: Vec<PathBuf>,
}

/// The ids of the images of this repository that are mounted in any mount
/// namespace this process can read, given its `objects/` directory.
///
/// A mount whose data directory cannot be resolved from here (another
/// namespace's path) is counted as this repository's: keeping an image
/// too long is harmless, removing one a mount serves is not.
pub(crate) fn mounted_images(objects: &Path) -> io::Result<BTreeSet<String>> {
    let ours = match std::fs::metadata(objects) {
        Ok(md) => md,
        // No object yet, so nothing a mount could lose.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => return Err(e),
    };
    let ours = (ours.dev(), ours.ino());
    let is_ours = |dir: &Path| match std::fs::metadata(dir) {
        Ok(md) => (md.dev(), md.ino()) == ours,
        Err(_) => true,
    };
    let mut images = BTreeSet::new();
    for table in mount_tables()? {
        for mount in composefs_mounts(&table) {
            if mount.data_dirs.iter().any(|d| is_ours(d)) {
                images.insert(mount.image);
            }
        }
    }
    Ok(images)
}

/// The kernel's id of the mount `fd` is the root of, which a detached
/// mount keeps when it is attached.
pub fn mount_id(fd: impl AsFd) -> io::Result<u64> {
    let st = rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID)?;
    Ok(st.stx_mnt_id)
}

/// Whether the mount `id` is attached in a mount namespace this process
/// can read.
pub fn is_attached(id: u64) -> io::Result<bool> {
    Ok(mount_tables()?
        .iter()
        .any(|table| table.lines().any(|line| line_mount_id(line) == Some(id))))
}

/// The text of `/proc/PID/mountinfo` once per mount namespace: ours, and
/// each other one that a process lives in and we may read. Processes that
/// exit or hide their table meanwhile are skipped; ours must be readable.
fn mount_tables() -> io::Result<Vec<String>> {
    let mut seen = HashSet::new();
    if let Ok(ns) = std::fs::read_link("/proc/self/ns/mnt") {
        seen.insert(ns);
    }
    let mut tables = vec![std::fs::read_to_string("/proc/self/mountinfo")?];
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let pid = entry.path();
        let Ok(ns) = std::fs::read_link(pid.join("ns/mnt")) else {
            continue;
        };
        if !seen.insert(ns) {
            continue;
        }
        if let Ok(table) = std::fs::read_to_string(pid.join("mountinfo")) {
            tables.push(table);
        }
    }
    Ok(tables)
}

/// The mount id, the first field of a mountinfo line.
fn line_mount_id(line: &str) -> Option<u64> {
    line.split(' ').next()?.parse().ok()
}

/// The composefs mounts in one mountinfo table.
fn composefs_mounts(table: &str) -> Vec<ComposefsMount> {
    table.lines().filter_map(composefs_mount).collect()
}

/// Parse one mountinfo line (`proc(5)`): `ID PARENT MAJ:MIN ROOT POINT
/// OPTS [TAGS...] - FSTYPE SOURCE SUPEROPTS`, fields octal-escaped.
fn composefs_mount(line: &str) -> Option<ComposefsMount> {
    let (_, tail) = line.split_once(" - ")?;
    let mut tail = tail.split(' ');
    if tail.next()? != "overlay" {
        return None;
    }
    let image = unescape(tail.next()?)
        .strip_prefix(SOURCE_PREFIX)?
        .to_owned();
    if image.is_empty() || !image.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let data_dirs = data_dirs(tail.next().unwrap_or(""));
    Some(ComposefsMount { image, data_dirs })
}

/// The data directories in overlay's super options: each `datadir+=DIR`
/// (layers passed as fds), or what follows `::` in `lowerdir=` (the older
/// string form). Overlay escapes commas inside values, so splitting on
/// them is safe.
fn data_dirs(options: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for option in options.split(',') {
        if let Some(dir) = option.strip_prefix("datadir+=") {
            dirs.push(PathBuf::from(unescape(dir)));
        } else if let Some(layers) = option.strip_prefix("lowerdir=") {
            let layers = unescape(layers);
            if let Some((_, data)) = layers.split_once("::") {
                dirs.extend(data.split("::").map(PathBuf::from));
            }
        }
    }
    dirs
}

/// Undo mountinfo's `\ooo` escapes.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                let value = d.iter().fold(0u32, |v, b| v * 8 + u32::from(b - b'0'));
                out.push(value as u8);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "efdfbfb3917b11ca6704672181fe4218ed27cf5ac612f07cfb77fcb74682d395";

    #[test]
    fn a_composefs_overlay_line_gives_its_image_and_data_directory() {
        let line = format!(
            "45 27 0:40 / /tmp/h\\040x/mnt ro,relatime - overlay composefs:{ID} \
             ro,lowerdir+=/,datadir+=/srv/my\\040repo/objects,redirect_dir=on,metacopy=on"
        );
        assert_eq!(
            composefs_mount(&line),
            Some(ComposefsMount {
                image: ID.to_owned(),
                data_dirs: vec![PathBuf::from("/srv/my repo/objects")],
            })
        );
    }

    #[test]
    fn optional_fields_and_the_older_lowerdir_form_are_understood() {
        let line = format!(
            "7 1 0:9 / /m rw shared:4 master:1 - overlay composefs:{ID} \
             rw,lowerdir=/l::/repo/objects::/other"
        );
        let mount = composefs_mount(&line).unwrap();
        assert_eq!(
            mount.data_dirs,
            vec![PathBuf::from("/repo/objects"), PathBuf::from("/other")]
        );
    }

    #[test]
    fn other_mounts_are_not_composefs_mounts() {
        let plain = "30 1 0:30 / /var/lib/x rw - overlay overlay rw,lowerdir=/a,upperdir=/b";
        let not_overlay = format!("31 1 0:31 / /x rw - erofs composefs:{ID} ro");
        let not_an_id = "32 1 0:32 / /y ro - overlay composefs:../../etc ro,datadir+=/r";
        assert_eq!(composefs_mount(plain), None);
        assert_eq!(composefs_mount(&not_overlay), None);
        assert_eq!(composefs_mount(not_an_id), None);
    }

    #[test]
    fn escapes_are_undone_and_stray_backslashes_kept() {
        assert_eq!(unescape("a\\040b\\054c\\134d"), "a b,c\\d");
        assert_eq!(unescape("tail\\04"), "tail\\04");
        assert_eq!(unescape("\\x41"), "\\x41");
    }

    #[test]
    fn this_process_has_a_mount_table_with_its_root_mount() {
        let tables = mount_tables().unwrap();
        assert!(!tables.is_empty());
        let root = std::fs::File::open("/").unwrap();
        assert!(is_attached(mount_id(&root).unwrap()).unwrap());
        assert!(!is_attached(u64::MAX).unwrap());
    }
}
