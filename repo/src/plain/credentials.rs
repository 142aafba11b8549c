//! Reading a tree with the rights of the peer that handed it over.
//!
//! The daemon runs as root, and a peer may hand over a directory fd of a
//! tree it cannot read all of (`/` itself, with `/etc/shadow` in it).
//! Reading that with root's rights would put into the repository what the
//! peer could never read: a confused deputy. So the walk runs on a thread
//! of its own that first takes the peer's uid, gid and supplementary
//! groups. Linux keeps credentials per thread (glibc's `setuid` only
//! makes them look per process by signalling every thread); the raw
//! system calls that `rustix::thread` makes change the calling thread
//! alone. With every uid set to a non-root peer's, the kernel also clears
//! the thread's capabilities, so nothing like `CAP_DAC_READ_SEARCH` is
//! left to override a mode. The thread ends with the walk and its
//! credentials with it.

use rustix::{
    io::Errno,
    process::{Gid, Uid},
    thread::{set_thread_groups, set_thread_res_gid, set_thread_res_uid},
};

/// Whose rights a tree is read with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user id, for file modes and ownership.
    pub uid: u32,
    /// The primary group id.
    pub gid: u32,
    /// The supplementary group ids.
    pub groups: Vec<u32>,
}

impl Credentials {
    /// Make the calling thread act with these credentials, for good.
    /// Fails (EPERM) where the process may not change its ids: a daemon
    /// not run by root may read trees only with its own rights.
    pub(crate) fn assume(&self) -> Result<(), Errno> {
        let groups: Vec<Gid> = self.groups.iter().map(|&g| Gid::from_raw(g)).collect();
        let (uid, gid) = (Uid::from_raw(self.uid), Gid::from_raw(self.gid));
        // Groups and gid first: once the uid is a peer's, the thread may
        // change neither.
        set_thread_groups(&groups)?;
        set_thread_res_gid(gid, gid, gid)?;
        set_thread_res_uid(uid, uid, uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_thread_takes_the_credentials_and_the_process_keeps_its_own() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let creds = Credentials {
            uid: 65534,
            gid: 65534,
            groups: vec![65533],
        };
        let seen = std::thread::spawn(move || {
            creds.assume().unwrap();
            let shadow = std::fs::File::open("/etc/shadow").map(|_| ());
            (
                rustix::process::geteuid().as_raw(),
                rustix::process::getegid().as_raw(),
                rustix::process::getgroups()
                    .unwrap()
                    .iter()
                    .map(|g| g.as_raw())
                    .collect::<Vec<_>>(),
                shadow.map_err(|e| e.kind()),
            )
        })
        .join()
        .unwrap();
        assert_eq!(
            seen,
            (
                65534,
                65534,
                vec![65533],
                Err(std::io::ErrorKind::PermissionDenied)
            )
        );
        assert!(rustix::process::geteuid().is_root(), "the process changed");
        std::fs::File::open("/etc/shadow").unwrap();
    }
}
