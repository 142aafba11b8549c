//! `oci-archive:` indexing: any bytes as the outer tar. When cfsd indexes
//! them, every regular file the `tar` crate reads sequentially must be
//! indexed at the same extent, lie inside the file, and read back by pread
//! as the same bytes; when it refuses them, with a typed error, and a
//! readable archive with files must not be refused.

#![no_main]

use std::{
    collections::HashMap,
    io::{Cursor, Read, Write},
};

use cfsd_repo::{Error, fuzzing::IndexedArchive};
use libfuzzer_sys::fuzz_target;

/// One regular file as the reference reader sees it.
struct Member {
    offset: u64,
    data: Vec<u8>,
}

fuzz_target!(|data: &[u8]| {
    let mut file = tempfile::tempfile().expect("a temporary file");
    file.write_all(data).expect("writing the archive");
    let ours = IndexedArchive::index(file);
    match (ours, reference_members(data)) {
        (Ok(archive), Ok(members)) => check_members(&archive, &members, data.len() as u64),
        (Ok(archive), Err(e)) => {
            // Only the padding after the last member's data may be missing.
            let padded = unpadded_members(data).unwrap_or_else(|| {
                panic!("cfsd indexed an archive the tar crate cannot read: {e}")
            });
            check_members(&archive, &padded, data.len() as u64);
        }
        (Err(e), Ok(members)) if !members.is_empty() && !compressed(data) => {
            panic!("cfsd refused a readable archive with files: {e}")
        }
        (Err(e), _) => assert!(
            matches!(
                e,
                Error::InvalidSource { .. } | Error::CompressedArchive { .. }
            ),
            "bad archives get a typed error, not {e:?}"
        ),
    }
});

fn check_members(archive: &IndexedArchive, members: &HashMap<String, Member>, size: u64) {
    for (name, member) in members {
        let (offset, len) = archive
            .extent(name)
            .unwrap_or_else(|| panic!("{name} was not indexed"));
        assert_eq!(
            (offset, len),
            (member.offset, member.data.len() as u64),
            "{name}"
        );
        assert!(offset + len <= size, "{name} lies beyond the end");
        let read = archive.read(name).expect("indexed").expect("readable");
        assert!(read == member.data, "{name} reads back other bytes");
    }
}

/// The members of an archive that lacks only the padding after its last
/// member's data: whole once padded, all data inside the real bytes.
fn unpadded_members(data: &[u8]) -> Option<HashMap<String, Member>> {
    let mut padded = data.to_vec();
    padded.resize(data.len().next_multiple_of(512), 0);
    let members = reference_members(&padded).ok()?;
    let inside = members
        .values()
        .all(|m| m.offset + m.data.len() as u64 <= data.len() as u64);
    inside.then_some(members)
}

/// The regular files, by name as pull looks them up, last one winning.
fn reference_members(data: &[u8]) -> std::io::Result<HashMap<String, Member>> {
    let mut members = HashMap::new();
    let mut archive = tar::Archive::new(Cursor::new(data));
    for entry in archive.entries()? {
        let mut entry = entry?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = normalise(&entry.path()?.to_string_lossy());
        let offset = entry.raw_file_position();
        let mut content = Vec::new();
        entry.read_to_end(&mut content)?;
        members.insert(
            name,
            Member {
                offset,
                data: content,
            },
        );
    }
    Ok(members)
}

/// `./a`, `/a` and `a` name the same member.
fn normalise(path: &str) -> String {
    let mut path = path;
    while let Some(rest) = path.strip_prefix("./") {
        path = rest;
    }
    path.trim_start_matches('/').to_owned()
}

fn compressed(data: &[u8]) -> bool {
    [
        &[0x1f, 0x8b][..],
        &[0x28, 0xb5, 0x2f, 0xfd],
        b"\xfd7zXZ\0",
        b"BZh",
    ]
    .iter()
    .any(|magic| data.starts_with(magic))
}
