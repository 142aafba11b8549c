//! The rules every entry of one layer's tar must follow before the layer
//! is stored, checked in tar order.
//!
//! composefs-oci 0.9.4 stores a layer's tar byte for byte and only reads
//! the paths when it builds the EROFS image, after the layer stream is
//! already named. There a `..` component, a file under a symlink or under
//! a file, or a hard link to a path it cannot find fails the whole image
//! with a message about tree internals, and a second entry for a path
//! silently replaces the first. These rules refuse all of them up front,
//! naming the entry and the rule, so that a bad layer is never named in
//! the repository. An absolute path is read as relative to the layer's
//! root, as composefs, containerd and GNU tar read it: ko writes its layers
//! that way. The reasoning for each rule is in `docs/reliability.md`,
//! "Hostile input".

use std::collections::HashMap;

use tar_core::{EntryType, parse::ParsedEntry};

/// The longest name one path component may have: Linux's `NAME_MAX`, and
/// EROFS's limit too.
const MAX_NAME: usize = 255;

/// The longest path an entry may have: Linux's `PATH_MAX`. Also bounds
/// what [`EntryRules`] holds per entry.
const MAX_PATH: usize = 4096;

/// What kind of tar entry a rule sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// A hard link to an earlier entry.
    Hardlink,
    /// A device or a FIFO.
    Other,
}

impl EntryKind {
    /// The kind of a tar entry of type `entry_type`.
    pub(crate) fn of(entry_type: EntryType) -> Self {
        match entry_type {
            EntryType::Regular | EntryType::Continuous => EntryKind::File,
            EntryType::Directory => EntryKind::Directory,
            EntryType::Symlink => EntryKind::Symlink,
            EntryType::Link => EntryKind::Hardlink,
            _ => EntryKind::Other,
        }
    }

    fn name(self) -> &'static str {
        match self {
            EntryKind::File => "a file",
            EntryKind::Directory => "a directory",
            EntryKind::Symlink => "a symlink",
            EntryKind::Hardlink => "a hard link",
            EntryKind::Other => "a device or FIFO",
        }
    }
}

/// The checks one layer's entries must pass, in tar order.
#[derive(Debug, Default)]
pub(crate) struct EntryRules {
    /// Every path named so far, normalised (no leading `/` or `./`, no
    /// trailing `/`), and what it was.
    seen: HashMap<Box<[u8]>, EntryKind>,
}

impl EntryRules {
    /// Rules for a new layer, which has named nothing yet.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Check the next entry as the tar parser gives it: its PAX records
    /// ([`check_pax`]), that only a file has data ([`check_data`]), then
    /// [`EntryRules::check`].
    pub(crate) fn check_entry(&mut self, entry: &ParsedEntry<'_>) -> Result<(), String> {
        if let Some(pax) = entry.pax {
            check_pax(&entry.path, pax)?;
        }
        let kind = EntryKind::of(entry.entry_type);
        check_data(&entry.path, kind, entry.size)?;
        self.check(&entry.path, kind, entry.link_target.as_deref())
    }

    /// Check the next entry. `path` is the full entry path after PAX/GNU
    /// long-name handling; `link` is the link target of a symlink or
    /// hardlink. The error text names the entry and the rule it breaks.
    pub(crate) fn check(
        &mut self,
        path: &[u8],
        kind: EntryKind,
        link: Option<&[u8]>,
    ) -> Result<(), String> {
        let entry = || format!("entry {:?}", show(path));
        let normal = normalise(path).map_err(|why| format!("{} {why}", entry()))?;
        if normal.is_empty() {
            // `./`, `.` or `/`: the root itself, whose metadata composefs
            // replaces with /usr's anyway (or cfsd with a fixed one).
            return match kind {
                EntryKind::Directory => Ok(()),
                other => Err(format!(
                    "{} is the layer's root but is {}, not a directory",
                    entry(),
                    other.name()
                )),
            };
        }
        self.check_ancestors(&normal)
            .map_err(|why| format!("{} {why}", entry()))?;
        self.check_duplicate(&normal, kind)
            .map_err(|why| format!("{} {why}", entry()))?;
        if kind == EntryKind::Hardlink {
            self.check_hardlink(link)
                .map_err(|why| format!("{} {why}", entry()))?;
        }
        self.seen.insert(normal.into_boxed_slice(), kind);
        Ok(())
    }

    /// Nothing may be written below a symlink or a non-directory that this
    /// layer created: extraction would follow the link (perhaps out of the
    /// root), and composefs cannot place it at all.
    fn check_ancestors(&self, normal: &[u8]) -> Result<(), String> {
        let parents = normal
            .iter()
            .enumerate()
            .filter(|&(_, &b)| b == b'/')
            .map(|(i, _)| &normal[..i]);
        for parent in parents {
            match self.seen.get(parent) {
                None | Some(EntryKind::Directory) => {}
                Some(EntryKind::Symlink) => {
                    return Err(format!(
                        "is written through the symlink {:?} of the same layer",
                        show(parent)
                    ));
                }
                Some(other) => {
                    return Err(format!(
                        "lies under {:?}, which is {} in the same layer, not a directory",
                        show(parent),
                        other.name()
                    ));
                }
            }
        }
        Ok(())
    }

    /// A path appears once, as the image spec requires; only a directory
    /// may be repeated as a directory, which real tools do and which only
    /// updates its metadata.
    fn check_duplicate(&self, normal: &[u8], kind: EntryKind) -> Result<(), String> {
        match self.seen.get(normal) {
            None => Ok(()),
            Some(EntryKind::Directory) if kind == EntryKind::Directory => Ok(()),
            Some(earlier) => Err(format!(
                "is a duplicate: the layer already has this path as {}, now as {}",
                earlier.name(),
                kind.name()
            )),
        }
    }

    /// A hard link names a non-directory an earlier entry of this layer
    /// created.
    fn check_hardlink(&self, link: Option<&[u8]>) -> Result<(), String> {
        let link = link
            .filter(|l| !l.is_empty())
            .ok_or("is a hard link without a target")?;
        let target = normalise(link)
            .map_err(|why| format!("is a hard link to {:?}, which {why}", show(link)))?;
        match self.seen.get(target.as_slice()) {
            Some(EntryKind::Directory) => {
                Err(format!("is a hard link to the directory {:?}", show(link)))
            }
            Some(_) => Ok(()),
            None if target.is_empty() => Err("is a hard link to the layer's root".to_owned()),
            None => Err(format!(
                "is a hard link to {:?}, which no earlier entry of the layer created",
                show(link)
            )),
        }
    }
}

/// Only a regular file has data. A directory, link, device or FIFO whose
/// header declares `size` bytes would have them kept inline in the split
/// stream, in memory until the layer is stored, where no extractor ever
/// reads them: refused at the header, before any of it is read.
pub(crate) fn check_data(path: &[u8], kind: EntryKind, size: u64) -> Result<(), String> {
    if size == 0 || kind == EntryKind::File {
        return Ok(());
    }
    Err(format!(
        "entry {:?} is {} but declares {size} bytes of data; only regular files have data",
        show(path),
        kind.name()
    ))
}

/// Check the raw PAX extended-header data that precedes the entry at
/// `path`: every record must be `<length> <key>=<value>\n`, its decimal
/// length counting the whole record. tar-core 0.1.0 stops reading at a
/// length that is not a number and silently drops the records after it,
/// where GNU tar and Go's archive/tar refuse the archive; a record that
/// one reader honours and another drops (a `path`, a `size`) would make
/// the layer mean different things to different tools.
pub(crate) fn check_pax(path: &[u8], pax: &[u8]) -> Result<(), String> {
    let mut at = 0;
    while at < pax.len() {
        let rest = &pax[at..];
        at += record_len(rest).map_err(|why| {
            format!(
                "entry {:?} has a malformed PAX record at byte {at} of its extended header: {why}",
                show(path)
            )
        })?;
    }
    Ok(())
}

/// The length of the PAX record at the start of `data`, or what is wrong
/// with it.
fn record_len(data: &[u8]) -> Result<usize, &'static str> {
    let space = data
        .iter()
        .position(|&b| b == b' ')
        .ok_or("no space after the length")?;
    let digits = &data[..space];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) || digits.len() > 9 {
        return Err("the length is not a decimal number");
    }
    let len: usize = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .ok_or("the length is not a decimal number")?;
    let record = data
        .get(..len)
        .ok_or("the length runs past the end of the header")?;
    if len <= space + 1 || record.last() != Some(&b'\n') {
        return Err("the record does not end in a newline where its length says");
    }
    let pair = &record[space + 1..len - 1];
    match pair.iter().position(|&b| b == b'=') {
        Some(0) => Err("the record has an empty key"),
        Some(_) => Ok(len),
        None => Err("the record has no `=`"),
    }
}

/// `path` relative to the layer's root, without `.` components, empty
/// components or a trailing `/`, or why it cannot name anything inside the
/// layer. A leading `/` goes: an absolute path names the same file as the
/// relative one, as every extractor confines it to the root.
fn normalise(path: &[u8]) -> Result<Vec<u8>, String> {
    if path.is_empty() {
        return Err("has an empty path".to_owned());
    }
    if path.len() > MAX_PATH {
        return Err(format!(
            "has a path of {} bytes, more than the {MAX_PATH} allowed",
            path.len()
        ));
    }
    if path.contains(&0) {
        return Err("has a NUL byte in its path".to_owned());
    }
    let mut normal = Vec::with_capacity(path.len());
    for component in path.split(|&b| b == b'/') {
        match component {
            b"" | b"." => continue,
            b".." => return Err("has a `..` component".to_owned()),
            name if name.len() > MAX_NAME => {
                return Err(format!(
                    "has a name of {} bytes, more than the {MAX_NAME} allowed",
                    name.len()
                ));
            }
            name => {
                if !normal.is_empty() {
                    normal.push(b'/');
                }
                normal.extend_from_slice(name);
            }
        }
    }
    Ok(normal)
}

/// A path for a message: lossy UTF-8, cut short if it is long.
fn show(path: &[u8]) -> String {
    const SHOWN: usize = 200;
    let text = String::from_utf8_lossy(&path[..path.len().min(SHOWN)]);
    if path.len() > SHOWN {
        format!("{text}...")
    } else {
        text.into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::{EntryKind::*, *};

    /// Run `entries` through one [`EntryRules`]; the first refusal, with
    /// its index.
    fn first_refusal(entries: &[(&str, EntryKind, Option<&str>)]) -> Option<(usize, String)> {
        let mut rules = EntryRules::new();
        entries
            .iter()
            .enumerate()
            .find_map(|(i, (path, kind, link))| {
                rules
                    .check(path.as_bytes(), *kind, link.map(str::as_bytes))
                    .err()
                    .map(|e| (i, e))
            })
    }

    fn refused_at(entries: &[(&str, EntryKind, Option<&str>)], at: usize, words: &[&str]) {
        let (i, message) = first_refusal(entries).expect("all entries were accepted");
        assert_eq!(i, at, "refused the wrong entry: {message}");
        for word in words {
            assert!(message.contains(word), "{word:?} not in {message:?}");
        }
    }

    #[test]
    fn ordinary_layers_pass() {
        let layer = [
            ("./", Directory, None),
            ("./usr/", Directory, None),
            ("./usr/bin/", Directory, None),
            ("./usr/bin/tool", File, None),
            ("usr/bin/tool-link", Hardlink, Some("./usr/bin/tool")),
            ("usr/bin/sh", Symlink, Some("/usr/bin/../../../etc/dash")),
            ("usr/bin/dangling", Symlink, Some("/nowhere")),
            ("lib", Symlink, Some("usr/lib")),
            ("dev/", Directory, None),
            ("dev/null", Other, None),
            ("dev/null-again", Hardlink, Some("dev/null")),
            ("usr/bin/sh-hardlink", Hardlink, Some("usr/bin/sh")),
            ("usr/bin/link-of-link", Hardlink, Some("usr/bin/tool-link")),
            ("usr/.wh.gone", File, None),
            ("usr/.wh..wh..opq", File, None),
            // Entries may come before their parents, and parents may be
            // missing (a lower layer has them).
            ("opt/app/file", File, None),
            ("opt/", Directory, None),
            // A directory listed twice updates its metadata.
            ("usr/bin", Directory, None),
            (".", Directory, None),
            ("usr//bin/./double-slash", File, None),
        ];
        assert_eq!(first_refusal(&layer), None);
    }

    #[test]
    fn parent_components_are_refused_anywhere() {
        for path in [
            "..",
            "../etc/passwd",
            "usr/../../etc/passwd",
            "usr/..",
            "a/b/../c",
        ] {
            refused_at(&[(path, File, None)], 0, &[path, "`..`"]);
        }
    }

    #[test]
    fn absolute_paths_name_the_same_files_as_relative_ones() {
        // As ko writes its layers.
        let layer = [
            ("/", Directory, None),
            ("/ko-app/", Directory, None),
            ("/ko-app/tool", File, None),
            ("/var/run/ko/data", File, None),
            ("ko-app/again", Hardlink, Some("/ko-app/tool")),
            ("//ko-app//third", Hardlink, Some("ko-app/tool")),
        ];
        assert_eq!(first_refusal(&layer), None);
        refused_at(
            &[("etc/passwd", File, None), ("/etc/passwd", File, None)],
            1,
            &["\"/etc/passwd\"", "duplicate"],
        );
        refused_at(&[("/../etc/passwd", File, None)], 0, &["`..`"]);
        refused_at(&[("/", File, None)], 0, &["root"]);
    }

    #[test]
    fn empty_long_and_nul_paths_are_refused() {
        refused_at(&[("", File, None)], 0, &["empty"]);
        refused_at(&[("a\0b", File, None)], 0, &["NUL"]);
        let long_name = format!("usr/{}", "n".repeat(MAX_NAME + 1));
        refused_at(&[(&long_name, File, None)], 0, &["256 bytes"]);
        let edge = format!("usr/{}", "n".repeat(MAX_NAME));
        assert_eq!(first_refusal(&[(&edge, File, None)]), None);
        let long_path = "d/".repeat(MAX_PATH / 2) + "f";
        refused_at(&[(&long_path, File, None)], 0, &["4097 bytes"]);
    }

    #[test]
    fn the_root_must_be_a_directory() {
        refused_at(&[("./", File, None)], 0, &["root", "a file"]);
        refused_at(
            &[(".", Symlink, Some("/elsewhere"))],
            0,
            &["root", "a symlink"],
        );
    }

    #[test]
    fn writing_through_a_symlink_of_the_layer_is_refused() {
        refused_at(
            &[("lib", Symlink, Some("/etc")), ("lib/passwd", File, None)],
            1,
            &["lib/passwd", "through the symlink \"lib\""],
        );
        // Deeper down, with a `./` spelling, and as a directory.
        refused_at(
            &[
                ("./usr/", Directory, None),
                ("./usr/lib", Symlink, Some("../../../../etc")),
                ("usr/lib/sub/", Directory, None),
            ],
            2,
            &["through the symlink \"usr/lib\""],
        );
        refused_at(
            &[
                ("esc", Symlink, Some("/")),
                ("esc/x", Hardlink, Some("esc")),
            ],
            1,
            &["through the symlink"],
        );
    }

    #[test]
    fn nothing_lies_under_a_file() {
        refused_at(
            &[("etc", File, None), ("etc/passwd", File, None)],
            1,
            &["etc/passwd", "under \"etc\"", "a file"],
        );
        refused_at(
            &[("dev/null", Other, None), ("dev/null/x", Directory, None)],
            1,
            &["device"],
        );
    }

    #[test]
    fn duplicates_are_refused_except_directory_over_directory() {
        refused_at(
            &[("etc/passwd", File, None), ("./etc/passwd", File, None)],
            1,
            &["./etc/passwd", "duplicate", "a file, now as a file"],
        );
        refused_at(
            &[("etc", Directory, None), ("etc", File, None)],
            1,
            &["duplicate", "a directory, now as a file"],
        );
        refused_at(
            &[("etc/x", File, None), ("etc/x/", Directory, None)],
            1,
            &["duplicate"],
        );
        refused_at(
            &[("l", Symlink, Some("a")), ("l", Symlink, Some("b"))],
            1,
            &["duplicate"],
        );
        refused_at(
            &[
                ("a", File, None),
                ("b", Hardlink, Some("a")),
                ("b", Hardlink, Some("a")),
            ],
            2,
            &["duplicate"],
        );
        assert_eq!(
            first_refusal(&[("etc/", Directory, None), ("./etc", Directory, None)]),
            None
        );
    }

    #[test]
    fn hard_links_name_an_earlier_non_directory_of_the_layer() {
        refused_at(
            &[("b", Hardlink, Some("a")), ("a", File, None)],
            0,
            &["\"b\"", "\"a\"", "no earlier entry"],
        );
        refused_at(
            &[("a", File, None), ("b", Hardlink, Some("../a"))],
            1,
            &["\"../a\"", "`..`"],
        );
        refused_at(
            &[("a", File, None), ("b", Hardlink, Some("/../a"))],
            1,
            &["\"/../a\"", "`..`"],
        );
        refused_at(
            &[("d/", Directory, None), ("b", Hardlink, Some("d"))],
            1,
            &["directory \"d\""],
        );
        refused_at(&[("b", Hardlink, None)], 0, &["without a target"]);
        refused_at(&[("b", Hardlink, Some(""))], 0, &["without a target"]);
        refused_at(&[("b", Hardlink, Some("./"))], 0, &["root"]);
        // A link to itself names nothing earlier.
        refused_at(&[("b", Hardlink, Some("b"))], 0, &["no earlier entry"]);
        // A file under a symlink never existed, so nothing can link to it.
        refused_at(
            &[
                ("l", Symlink, Some("/etc")),
                ("b", Hardlink, Some("l/passwd")),
            ],
            1,
            &["no earlier entry"],
        );
    }

    #[test]
    fn only_regular_files_have_data() {
        assert_eq!(check_data(b"f", File, 1 << 40), Ok(()));
        for kind in [Directory, Symlink, Hardlink, Other] {
            assert_eq!(check_data(b"x", kind, 0), Ok(()));
            let message = check_data(b"usr/x", kind, 512).expect_err(kind.name());
            assert!(message.contains("\"usr/x\""), "{message}");
            assert!(message.contains(kind.name()), "{message}");
            assert!(message.contains("declares 512 bytes"), "{message}");
        }
    }

    #[test]
    fn well_formed_pax_records_pass() {
        let mut pax = b"30 mtime=1700000000.123456789\n".to_vec();
        pax.extend_from_slice(b"12 path=a=b\n");
        // A value may hold newlines and NULs: only the length delimits.
        pax.extend_from_slice(b"26 SCHILY.xattr.user.x=\n\0\n");
        assert_eq!(check_pax(b"f", &pax), Ok(()));
        assert_eq!(check_pax(b"f", b""), Ok(()));
    }

    #[test]
    fn malformed_pax_records_are_refused_naming_the_entry() {
        for (pax, at, why) in [
            (&b"xx path=abc\n"[..], 0, "not a decimal number"),
            (b"12 path=abc\nxx path=evil\n", 12, "not a decimal number"),
            (b"-5 path=abc\n", 0, "not a decimal number"),
            (b"12path=abc\n", 0, "no space"),
            (b"99 path=abc\n", 0, "past the end"),
            (b"11 path=abc\n", 0, "newline"),
            (b"2 \n", 0, "newline"),
            (b"3 \n", 0, "no `=`"),
            (b"11 pathabc\n", 0, "no `=`"),
            (b"9 =value\n", 0, "empty key"),
            (b"12 path=abc\n\0\0\0", 12, "no space"),
        ] {
            let message = check_pax(b"usr/f", pax).expect_err(&String::from_utf8_lossy(pax));
            assert!(message.contains("\"usr/f\""), "{message}");
            assert!(message.contains(&format!("at byte {at} ")), "{message}");
            assert!(message.contains(why), "{why:?} not in {message}");
        }
    }

    /// Parse `tar` as the layer splitter does and check every entry.
    fn check_tar(tar: &[u8]) -> Result<usize, String> {
        use tar_core::parse::{ParseEvent, Parser};
        let mut rules = EntryRules::new();
        let mut parser = Parser::with_defaults();
        let (mut at, mut entries) = (0, 0);
        loop {
            match parser.parse(&tar[at..]).map_err(|e| e.to_string())? {
                ParseEvent::Entry { consumed, entry } => {
                    rules.check_entry(&entry)?;
                    at += consumed + (entry.size as usize).next_multiple_of(512);
                    entries += 1;
                }
                ParseEvent::GlobalExtensions { consumed, .. } => at += consumed,
                ParseEvent::End { .. } => return Ok(entries),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// A tar header of `kind` for `name` (any length: GNU long names and
    /// links), linking to `link`, with `pax` records before it.
    fn append(
        tar: &mut tar::Builder<Vec<u8>>,
        name: &str,
        kind: tar::EntryType,
        link: Option<&str>,
        pax: &[u8],
    ) {
        if !pax.is_empty() {
            let mut ext = tar::Header::new_ustar();
            ext.set_entry_type(tar::EntryType::XHeader);
            ext.set_size(pax.len() as u64);
            ext.set_cksum();
            tar.append(&ext, pax).unwrap();
        }
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(0);
        header.set_mode(0o644);
        // `append_link`/`append_data` write GNU long-name entries for long
        // names, but refuse `..`; go through the raw name field instead
        // when the name fits.
        if name.len() < 100 && link.is_none_or(|l| l.len() < 100) {
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(link) = link {
                header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_cksum();
            tar.append(&header, &[][..]).unwrap();
        } else if let Some(link) = link {
            tar.append_link(&mut header, name, link).unwrap();
        } else {
            tar.append_data(&mut header, name, &[][..]).unwrap();
        }
    }

    #[test]
    fn the_rules_see_what_the_tar_parser_resolves() {
        use tar::EntryType as T;
        let long_dir = format!("usr/{}", "d".repeat(150));
        let long_file = format!("{long_dir}/file");
        let mut ok = tar::Builder::new(Vec::new());
        append(&mut ok, "./usr/", T::Directory, None, b"");
        append(&mut ok, &long_dir, T::Directory, None, b"");
        append(&mut ok, &long_file, T::Regular, None, b"");
        // A GNU long link target naming the long file.
        append(&mut ok, "usr/link", T::Link, Some(&long_file), b"");
        append(&mut ok, "usr/sym", T::Symlink, Some("/anywhere"), b"");
        assert_eq!(check_tar(&ok.into_inner().unwrap()), Ok(5));

        // A PAX path replaces the harmless name in the header.
        let mut pax_path = tar::Builder::new(Vec::new());
        append(&mut pax_path, "usr/", T::Directory, None, b"");
        append(
            &mut pax_path,
            "usr/harmless",
            T::Regular,
            None,
            b"23 path=usr/../../evil\n",
        );
        let message = check_tar(&pax_path.into_inner().unwrap()).unwrap_err();
        assert!(
            message.contains("usr/../../evil") && message.contains("`..`"),
            "{message}"
        );

        // A PAX linkpath that escapes.
        let mut pax_link = tar::Builder::new(Vec::new());
        append(&mut pax_link, "f", T::Regular, None, b"");
        append(
            &mut pax_link,
            "l",
            T::Link,
            Some("f"),
            b"20 linkpath=../../f\n",
        );
        let message = check_tar(&pax_link.into_inner().unwrap()).unwrap_err();
        assert!(message.contains("\"../../f\""), "{message}");

        // A GNU long name written through a symlink.
        let mut through = tar::Builder::new(Vec::new());
        append(&mut through, "usr/lib", T::Symlink, Some("/etc"), b"");
        append(
            &mut through,
            &format!("usr/lib/{}", "x".repeat(120)),
            T::Regular,
            None,
            b"",
        );
        let message = check_tar(&through.into_inner().unwrap()).unwrap_err();
        assert!(
            message.contains("through the symlink \"usr/lib\""),
            "{message}"
        );

        // A malformed PAX record that tar-core alone would skip.
        let mut bad_pax = tar::Builder::new(Vec::new());
        append(&mut bad_pax, "usr/", T::Directory, None, b"xx path=evil\n");
        let message = check_tar(&bad_pax.into_inner().unwrap()).unwrap_err();
        assert!(message.contains("malformed PAX record"), "{message}");
    }

    #[test]
    fn a_refusal_shows_a_long_path_cut_short() {
        let path = format!("usr/{}", "d/".repeat(1000));
        let (_, message) = first_refusal(&[(&format!("{path}../x"), File, None)]).expect("refused");
        assert!(message.len() < 400, "{message}");
        assert!(message.contains("..."), "{message}");
    }
}
