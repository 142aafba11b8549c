//! The repository is private to the daemon's user: its root directory is
//! mode 0700, so nothing below it can be reached by anyone else, whatever
//! the modes beneath.
//!
//! Objects are images' files, among them every image's `/etc/shadow`;
//! composefs and cfsd create them 0644 in 0755 directories (and names of
//! streams and images alike), which would let any local user read them.
//! Rather than chase each file's mode, the one gate is the root: without
//! search permission on it no path below resolves. See "Who can read the
//! repository" in `docs/reliability.md`.

use std::path::Path;

use rustix::{
    fs::{Mode, OFlags},
    process::geteuid,
};

use crate::{Error, Result};

/// The mode of the repository root.
const ROOT_MODE: u32 = 0o700;

/// Create the repository directory `path`, private from the start, and
/// its parents as needed (with the usual modes: they are not ours).
pub(crate) fn create_root(path: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let creating = |e| Error::storage("creating the repository directory", e);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(creating)?;
    }
    match std::fs::DirBuilder::new().mode(ROOT_MODE).create(path) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(creating(e)),
        _ => ensure_private(path),
    }
}

/// Make sure the repository root at `path` is open to its owner only.
///
/// A root that others may read or search is tightened to 0700, with a
/// warning, when the daemon's user owns it: a repository written by an
/// older cfsd is then served at once, and the content below only ever
/// was reachable through the root, so closing it closes everything. A
/// root owned by another user, or one that cannot be changed, is refused:
/// changing another user's directory is not the daemon's call, and
/// serving it as it is would keep the content open.
pub(crate) fn ensure_private(path: &Path) -> Result<()> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let dir = rustix::fs::open(path, flags, Mode::empty())
        .map_err(|e| Error::storage("opening the repository directory", std::io::Error::from(e)))?;
    let st = rustix::fs::fstat(&dir)
        .map_err(|e| Error::storage("reading the repository's mode", std::io::Error::from(e)))?;
    let mode = st.st_mode & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    let refuse = |why: String| Error::Unreadable {
        path: path.to_owned(),
        reason: format!("its directory is mode {mode:04o}, open to other users, and {why}"),
    };
    let euid = geteuid().as_raw();
    if st.st_uid != euid {
        return Err(refuse(format!(
            "owned by uid {}, not by the daemon's uid {euid}, so the daemon does not change it",
            st.st_uid
        )));
    }
    rustix::fs::fchmod(&dir, Mode::from_raw_mode(ROOT_MODE))
        .map_err(|e| refuse(format!("cannot be made {ROOT_MODE:04o}: {e}")))?;
    tracing::warn!(
        "the repository directory {} was mode {mode:04o}, open to other users; \
         made it {ROOT_MODE:04o}",
        path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn a_new_root_is_private_and_its_parents_are_made() {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().join("a/b/repo");
        create_root(&root).unwrap();
        assert_eq!(mode(&root), 0o700);
        assert_ne!(
            mode(root.parent().unwrap()) & 0o077,
            0,
            "parents keep umask modes"
        );
    }

    #[test]
    fn an_open_root_of_ours_is_tightened_and_a_private_one_left_alone() {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().join("repo");
        std::fs::create_dir(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_root(&root).unwrap();
        assert_eq!(mode(&root), 0o700);
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o500)).unwrap();
        ensure_private(&root).unwrap();
        assert_eq!(
            mode(&root),
            0o500,
            "a root already closed to others is not touched"
        );
    }
}
