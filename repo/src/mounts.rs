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
    ffi::OsStr,
    fs::File,
    io::{self, BufRead, BufReader},
    ops::ControlFlow,
    os::{
        fd::AsFd,
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::{Path, PathBuf},
};

use rustix::fs::{AtFlags, StatxFlags};

/// The overlay source composefs gives a mount of image `<id>`.
const SOURCE_PREFIX: &[u8] = b"composefs:";

/// What one question may read of the mount tables, over every
/// namespace: the tables are streamed, so this bounds time, not memory.
/// The kernel formats each line as it is read, at a cost that grows with
/// the line's paths (a 40 MB table of 5,000 mounts at 4,000-byte paths
/// takes seconds), so both lines and bytes are counted. A real system's
/// tables are a few hundred lines of some 150 bytes per namespace. Past
/// either limit the answer is [`Scan::Incomplete`], never a shorter list.
const BUDGET: Budget = Budget {
    lines: 1_000_000,
    bytes: 64 << 20,
};

/// Lines and bytes of mount tables that may still be read.
#[derive(Debug, Clone, Copy)]
struct Budget {
    lines: u64,
    bytes: u64,
}

impl Budget {
    /// Spend one line of `len` bytes; false if that is more than is left.
    fn spend(&mut self, len: usize) -> bool {
        let len = len as u64 + 1;
        if self.lines == 0 || self.bytes < len {
            return false;
        }
        self.lines -= 1;
        self.bytes -= len;
        true
    }
}

/// The longest mountinfo line held. Paths are at most 4096 bytes, escaped
/// at most fourfold, and overlay's options list several; a longer line
/// makes the scan [`Scan::Incomplete`] rather than be cut short or held.
const MAX_LINE: usize = 1 << 20;

/// One composefs mount, read from a mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ComposefsMount {
    /// The image id, the name under `images/`.
    image: String,
    /// The overlay's data directories, as the mounting process saw them.
    data_dirs: Vec<PathBuf>,
}

/// Whether every mount table was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// Every namespace's table, to its end (or the visitor stopped).
    Complete,
    /// The [`BUDGET`] ran out first, or a line was longer than
    /// [`MAX_LINE`].
    Incomplete,
}

/// The ids of the images of this repository that are mounted in any mount
/// namespace this process can read, given its `objects/` directory.
///
/// A mount whose data directory cannot be resolved from here (another
/// namespace's path) is counted as this repository's: keeping an image
/// too long is harmless, removing one a mount serves is not. For the same
/// reason, when the tables are too long to read in full (see
/// [`BUDGET`]), every image of the repository counts as mounted, with a
/// warning: GC then removes only what no image needs.
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
    let scan = scan_tables(BUDGET, &mut |line| {
        if let Some(mount) = composefs_mount(line)
            && mount.data_dirs.iter().any(|d| is_ours(d))
        {
            images.insert(mount.image);
        }
        ControlFlow::Continue(())
    })?;
    if scan == Scan::Incomplete {
        tracing::warn!(
            "the mount tables hold more than {} lines or {} bytes; \
             keeping every image as if it were mounted",
            BUDGET.lines,
            BUDGET.bytes
        );
        images.extend(all_images(objects)?);
    }
    Ok(images)
}

/// Every image of the repository whose `objects/` is `objects`.
fn all_images(objects: &Path) -> io::Result<Vec<String>> {
    let Some(images) = objects.parent().map(|repo| repo.join("images")) else {
        return Ok(Vec::new());
    };
    let entries = match std::fs::read_dir(images) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut all = Vec::new();
    for entry in entries {
        if let Some(name) = entry?.file_name().to_str() {
            all.push(name.to_owned());
        }
    }
    Ok(all)
}

/// The kernel's id of the mount `fd` is the root of, which a detached
/// mount keeps when it is attached.
pub fn mount_id(fd: impl AsFd) -> io::Result<u64> {
    let st = rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID)?;
    Ok(st.stx_mnt_id)
}

/// Whether the mount `id` is attached in a mount namespace this process
/// can read. Tables too long to read in full (see [`BUDGET`]) may hide
/// it: then it is reported as not attached yet.
pub fn is_attached(id: u64) -> io::Result<bool> {
    let mut found = false;
    scan_tables(BUDGET, &mut |line| {
        if line_mount_id(line) == Some(id) {
            found = true;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    })?;
    Ok(found)
}

/// Give `visit` every line of `/proc/PID/mountinfo` once per mount
/// namespace, as bytes, one line in memory at a time: ours first, which
/// must be readable, then each other namespace a process lives in and we
/// may read, root's processes before others'. A namespace counts as read
/// only once one of its tables was read to the end: a process that exits
/// meanwhile is skipped, and the next process of its namespace read
/// instead. Stops when `visit` breaks, or once `budget` is spent.
fn scan_tables(
    mut budget: Budget,
    visit: &mut dyn FnMut(&[u8]) -> ControlFlow<()>,
) -> io::Result<Scan> {
    let mut seen = HashSet::new();
    let own = std::fs::read_link("/proc/self/ns/mnt").ok();
    match read_table(File::open("/proc/self/mountinfo")?, &mut budget, visit)? {
        Read::Whole => {}
        Read::Stopped => return Ok(Scan::Complete),
        Read::OutOfBudget => return Ok(Scan::Incomplete),
    }
    seen.extend(own);
    for (_, pid) in processes()? {
        let Ok(ns) = std::fs::read_link(pid.join("ns/mnt")) else {
            continue;
        };
        if seen.contains(&ns) {
            continue;
        }
        let Ok(table) = File::open(pid.join("mountinfo")) else {
            continue;
        };
        match read_table(table, &mut budget, visit) {
            Ok(Read::Whole) => {
                seen.insert(ns);
            }
            Ok(Read::Stopped) => return Ok(Scan::Complete),
            Ok(Read::OutOfBudget) => return Ok(Scan::Incomplete),
            // The process exited or hid its table part-way.
            Err(_) => {}
        }
    }
    Ok(Scan::Complete)
}

/// Every process's `/proc/PID`, root's first (their mounts are the
/// system's), each with its owner.
fn processes() -> io::Result<Vec<(u32, PathBuf)>> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        if !entry.file_name().as_bytes().iter().all(u8::is_ascii_digit) {
            continue;
        }
        let Ok(md) = entry.metadata() else { continue };
        all.push((md.uid(), entry.path()));
    }
    all.sort_by_key(|(uid, _)| *uid != 0);
    Ok(all)
}

/// How far one table was read.
enum Read {
    Whole,
    Stopped,
    OutOfBudget,
}

/// Give `visit` each line of `table`, without its newline, spending one of
/// `budget` on each.
fn read_table(
    table: File,
    budget: &mut Budget,
    visit: &mut dyn FnMut(&[u8]) -> ControlFlow<()>,
) -> io::Result<Read> {
    let mut table = BufReader::with_capacity(64 << 10, table);
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_line(&mut table, &mut line)? {
            Line::End => return Ok(Read::Whole),
            Line::TooLong => return Ok(Read::OutOfBudget),
            Line::Read => {}
        }
        if !budget.spend(line.len()) {
            return Ok(Read::OutOfBudget);
        }
        if visit(&line).is_break() {
            return Ok(Read::Stopped);
        }
    }
}

/// What [`read_line`] found.
enum Line {
    /// A line, in the buffer.
    Read,
    /// The end of the table.
    End,
    /// A line longer than [`MAX_LINE`].
    TooLong,
}

/// Read the next line into `line`, without its newline.
fn read_line(table: &mut impl BufRead, line: &mut Vec<u8>) -> io::Result<Line> {
    let mut any = false;
    loop {
        let buf = table.fill_buf()?;
        if buf.is_empty() {
            return Ok(if any { Line::Read } else { Line::End });
        }
        any = true;
        let (part, end) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        if line.len() + part.len() > MAX_LINE {
            return Ok(Line::TooLong);
        }
        line.extend_from_slice(part);
        let used = end.unwrap_or(buf.len());
        table.consume(used);
        if end.is_some() {
            return Ok(Line::Read);
        }
    }
}

/// The mount id, the first field of a mountinfo line.
fn line_mount_id(line: &[u8]) -> Option<u64> {
    let id = line.split(|&b| b == b' ').next()?;
    std::str::from_utf8(id).ok()?.parse().ok()
}

/// Parse one mountinfo line (`proc(5)`): `ID PARENT MAJ:MIN ROOT POINT
/// OPTS [TAGS...] - FSTYPE SOURCE SUPEROPTS`, fields octal-escaped. The
/// mount point and the other paths are bytes: Linux names need not be
/// UTF-8.
///
/// The line is read from its end: the last three fields are escaped, so
/// hold no spaces, and the long ones (the root and the mount point) are
/// never scanned.
fn composefs_mount(line: &[u8]) -> Option<ComposefsMount> {
    let mut fields = line.rsplitn(4, |&b| b == b' ');
    let (options, source) = (fields.next()?, fields.next()?);
    if fields.next()? != b"overlay" || !fields.next()?.ends_with(b" -") {
        return None;
    }
    let source = unescape(source);
    let image = source.strip_prefix(SOURCE_PREFIX)?;
    if image.is_empty() || !image.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let image = String::from_utf8(image.to_vec()).ok()?;
    let data_dirs = data_dirs(options);
    Some(ComposefsMount { image, data_dirs })
}

/// The data directories in overlay's super options: each `datadir+=DIR`
/// (layers passed as fds), or what follows `::` in `lowerdir=` (the older
/// string form). Overlay escapes commas inside values, so splitting on
/// them is safe.
fn data_dirs(options: &[u8]) -> Vec<PathBuf> {
    let path = |bytes: &[u8]| PathBuf::from(OsStr::from_bytes(bytes));
    let mut dirs = Vec::new();
    for option in options.split(|&b| b == b',') {
        if let Some(dir) = option.strip_prefix(b"datadir+=") {
            dirs.push(path(&unescape(dir)));
        } else if let Some(layers) = option.strip_prefix(b"lowerdir=") {
            let layers = unescape(layers);
            if let Some(at) = layers.windows(2).position(|w| w == b"::") {
                let data = &layers[at + 2..];
                dirs.extend(split_on_pair(data).map(path));
            }
        }
    }
    dirs
}

/// `bytes` split on each `::`.
fn split_on_pair(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(bytes);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.windows(2).position(|w| w == b"::") {
            Some(at) => {
                rest = Some(&current[at + 2..]);
                Some(&current[..at])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

/// Undo mountinfo's `\ooo` escapes, byte for byte.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| field[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                let value = d.iter().fold(0u32, |v, b| v * 8 + u32::from(b - b'0'));
                out.push(value as u8);
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
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
            composefs_mount(line.as_bytes()),
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
        let mount = composefs_mount(line.as_bytes()).unwrap();
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
        assert_eq!(composefs_mount(plain.as_bytes()), None);
        assert_eq!(composefs_mount(not_overlay.as_bytes()), None);
        assert_eq!(composefs_mount(not_an_id.as_bytes()), None);
    }

    #[test]
    fn escapes_are_undone_and_stray_backslashes_kept() {
        assert_eq!(unescape(b"a\\040b\\054c\\134d"), b"a b,c\\d");
        assert_eq!(unescape(b"tail\\04"), b"tail\\04");
        assert_eq!(unescape(b"\\x41"), b"\\x41");
        // An escape may stand for a byte that is not UTF-8.
        assert_eq!(unescape(b"\\377\\200x"), b"\xff\x80x");
    }

    #[test]
    fn names_that_are_not_utf8_are_read_as_bytes() {
        // A bind mount at a non-UTF-8 point beside a composefs mount whose
        // data directory is not UTF-8 either, raw and escaped.
        let mut table = b"40 1 0:5 / /tmp/\xff\xfe rw - ext4 /dev/vda rw\n".to_vec();
        table.extend_from_slice(
            format!("41 1 0:6 / /m ro - overlay composefs:{ID} ro,datadir+=/r\\377/objects\n")
                .as_bytes(),
        );
        table.extend_from_slice(b"42 1 0:7 / /\xc3 rw - tmpfs tmp\xe9 rw\n");
        let mut mounts = Vec::new();
        let mut ids = Vec::new();
        let read = read_table_bytes(&table, &mut of_lines(100), &mut |line| {
            ids.push(line_mount_id(line));
            mounts.extend(composefs_mount(line));
            ControlFlow::Continue(())
        });
        assert!(matches!(read, Read::Whole));
        assert_eq!(ids, [Some(40), Some(41), Some(42)]);
        assert_eq!(
            mounts,
            [ComposefsMount {
                image: ID.to_owned(),
                data_dirs: vec![PathBuf::from(OsStr::from_bytes(b"/r\xff/objects"))],
            }]
        );
    }

    /// A budget of `n` lines of any length.
    fn of_lines(n: u64) -> Budget {
        Budget {
            lines: n,
            bytes: u64::MAX,
        }
    }

    /// [`read_table`] over bytes in memory.
    fn read_table_bytes(
        table: &[u8],
        budget: &mut Budget,
        visit: &mut dyn FnMut(&[u8]) -> ControlFlow<()>,
    ) -> Read {
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, table).unwrap();
        std::io::Seek::rewind(&mut file).unwrap();
        read_table(file, budget, visit).unwrap()
    }

    #[test]
    fn the_budget_and_overlong_lines_end_a_scan_as_incomplete() {
        let table = b"1 0 0:1 / / rw - ext4 a rw\n2 1 0:2 / /b rw - ext4 b rw\n3".to_vec();
        let mut lines = 0;
        let mut count = |_: &[u8]| {
            lines += 1;
            ControlFlow::Continue(())
        };
        assert!(matches!(
            read_table_bytes(&table, &mut of_lines(3), &mut count),
            Read::Whole
        ));
        assert!(matches!(
            read_table_bytes(&table, &mut of_lines(2), &mut count),
            Read::OutOfBudget
        ));
        let long = vec![b'x'; MAX_LINE + 1];
        assert!(matches!(
            read_table_bytes(&long, &mut of_lines(10), &mut count),
            Read::OutOfBudget
        ));
        assert_eq!(lines, 5, "the last line has no newline and still counts");
        // 26 and 27 bytes and their newlines: the second line does not fit.
        let mut bytes = Budget {
            lines: 10,
            bytes: 50,
        };
        assert!(matches!(
            read_table_bytes(&table, &mut bytes, &mut |_| ControlFlow::Continue(())),
            Read::OutOfBudget
        ));
        assert_eq!(bytes.bytes, 50 - 27);
    }

    #[test]
    fn this_process_has_a_mount_table_with_its_root_mount() {
        let mut lines = 0;
        let scan = scan_tables(BUDGET, &mut |_| {
            lines += 1;
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(scan, Scan::Complete);
        assert!(lines > 0);
        assert_eq!(
            scan_tables(of_lines(0), &mut |_| ControlFlow::Continue(())).unwrap(),
            Scan::Incomplete
        );
        let root = std::fs::File::open("/").unwrap();
        assert!(is_attached(mount_id(&root).unwrap()).unwrap());
        assert!(!is_attached(u64::MAX).unwrap());
    }
}
