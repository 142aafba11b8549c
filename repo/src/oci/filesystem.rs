//! Which filesystems a source or an output handed over by a peer may
//! live on.
//!
//! A read from a FUSE file waits for whatever process serves that
//! filesystem, and a peer who serves it can make the wait last forever,
//! holding one of the daemon's threads each time. So a source on FUSE is
//! refused before anything is read from it, and an output file on FUSE
//! before anything is written into it. The check itself must not
//! wait on the server either: `fstatfs` on FUSE asks the server, and so
//! does `fstat` once its cached attributes expire. The kernel's mount
//! table says which filesystem a mount is without asking anyone, and
//! `statx` with `AT_STATX_DONT_SYNC` gives the fd's mount id from the
//! cache alone.

use std::{
    fs::File,
    io::{self, BufRead, BufReader},
    os::fd::AsFd,
};

use rustix::fs::{AtFlags, StatxFlags};

use crate::Error;

/// Refuse a source fd that lives on FUSE, or on a mount found in neither
/// this process's mount table nor that of `peer_pid`, the process that
/// handed it over: a filesystem that cannot be named cannot be trusted to
/// answer.
pub fn check_source_filesystem(fd: impl AsFd, peer_pid: Option<u32>) -> Result<(), Error> {
    match refusal(fd, peer_pid, "read")? {
        Some(reason) => Err(Error::InvalidSource {
            reason: format!("the source {reason}"),
        }),
        None => Ok(()),
    }
}

/// Why the daemon may not write into an output fd that `peer_pid` handed
/// over, or `None` if it may. A write into a FUSE file waits for the
/// process serving it, as a read does, and unlike a pipe's it cannot be
/// made non-blocking: a peer serving its own FUSE mount would keep one of
/// the daemon's threads, and its own turn, for ever. The same rule as for
/// sources, and asked of the same tables without asking the server.
pub fn output_filesystem_refusal(
    fd: impl AsFd,
    peer_pid: Option<u32>,
) -> Result<Option<String>, Error> {
    Ok(refusal(fd, peer_pid, "write")?.map(|reason| format!("this one {reason}")))
}

/// Why `fd`'s filesystem may not be used (as "is on ..."), with `verb`
/// what the daemon would do to it; `None` when it may.
fn refusal(fd: impl AsFd, peer_pid: Option<u32>, verb: &str) -> Result<Option<String>, Error> {
    let mount = rustix::fs::statx(
        fd,
        "",
        AtFlags::EMPTY_PATH | AtFlags::STATX_DONT_SYNC,
        StatxFlags::MNT_ID,
    )
    .map_err(|e| Error::storage("examining the file", io::Error::from(e)))?
    .stx_mnt_id;
    let tables = std::iter::once("/proc/self/mountinfo".to_owned())
        .chain(peer_pid.map(|pid| format!("/proc/{pid}/mountinfo")));
    for table in tables {
        // A peer that has exited, or whose table is hidden, leaves only
        // our own table to look in.
        let Ok(file) = File::open(&table) else {
            continue;
        };
        let found = filesystem_of(BufReader::new(file), mount)
            .map_err(|e| Error::storage("reading the mount table", e))?;
        if let Some(fstype) = found {
            return Ok(fuse_refusal(&fstype, verb));
        }
    }
    Ok(Some(format!(
        "is on mount {mount}, which is in neither the daemon's mount table nor the caller's"
    )))
}

/// FUSE in all its spellings: `fuse`, `fuseblk`, `fuse.<subtype>`.
fn fuse_refusal(fstype: &[u8], verb: &str) -> Option<String> {
    let fuse = fstype == b"fuse" || fstype == b"fuseblk" || fstype.starts_with(b"fuse.");
    fuse.then(|| {
        format!(
            "is on a FUSE filesystem ({}), which cfsd does not {verb}: \
             its {verb}s wait on the process serving it",
            String::from_utf8_lossy(fstype)
        )
    })
}

/// The filesystem type of mount `id` in a mountinfo table (`proc(5)`:
/// `ID PARENT MAJ:MIN ROOT POINT OPTS [TAGS...] - FSTYPE SOURCE OPTS`),
/// read a line at a time as bytes: mount points need not be UTF-8, and a
/// table may be long.
fn filesystem_of(mut table: impl BufRead, id: u64) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let wanted = id.to_string();
    loop {
        line.clear();
        if table.read_until(b'\n', &mut line)? == 0 {
            return Ok(None);
        }
        let mut fields = line.split(|&b| b == b' ');
        if fields.next() != Some(wanted.as_bytes()) {
            continue;
        }
        let mut after_separator = fields.skip_while(|f| *f != b"-").skip(1);
        return Ok(after_separator.next().map(|fstype| {
            let end = fstype.iter().position(|&b| b == b'\n');
            fstype[..end.unwrap_or(fstype.len())].to_vec()
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &[u8] = b"\
22 1 0:21 / /proc rw,nosuid - proc proc rw
40 22 0:35 / /mnt/a\\040b rw shared:7 - fuse.sshfs user@host: rw,user_id=0
41 22 0:36 / /mnt/\xff rw - fuseblk /dev/sdb1 rw
42 22 0:37 / /mnt/plain rw master:1 - ext4 /dev/sda1 rw
";

    #[test]
    fn names_the_filesystem_of_a_mount_from_its_table_line() {
        let of = |id| filesystem_of(TABLE, id).unwrap();
        assert_eq!(of(40).as_deref(), Some(&b"fuse.sshfs"[..]));
        assert_eq!(of(41).as_deref(), Some(&b"fuseblk"[..]));
        assert_eq!(of(42).as_deref(), Some(&b"ext4"[..]));
        assert_eq!(of(4), None);
        assert_eq!(of(2), None, "22's parent field is not an id");
    }

    #[test]
    fn fuse_in_every_spelling_is_refused_and_nothing_else() {
        for fstype in ["fuse", "fuseblk", "fuse.sshfs", "fuse.cfsdtest"] {
            let reason = fuse_refusal(fstype.as_bytes(), "write").unwrap();
            assert!(
                reason.contains(fstype) && reason.contains("writes"),
                "{reason}"
            );
        }
        for fstype in ["ext4", "tmpfs", "overlay", "xfs", "fusectl-not"] {
            assert_eq!(fuse_refusal(fstype.as_bytes(), "read"), None, "{fstype}");
        }
    }

    #[test]
    fn a_file_of_this_machine_is_on_a_mount_we_can_name() {
        let file = tempfile::tempfile().unwrap();
        check_source_filesystem(&file, None).unwrap();
        assert_eq!(output_filesystem_refusal(&file, None).unwrap(), None);
    }
}
