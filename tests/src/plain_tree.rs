//! Trees an admin-group member hands over for plain images, and a daemon
//! that lets that group in.

use std::{os::unix::fs::PermissionsExt, path::Path};

use crate::{Daemon, peer::open_path_to};

/// The admin group given to nobody on top.
pub const ADMINS: u32 = 4242;

/// A daemon nobody may reach, [`ADMINS`] its admin group, initialised.
pub fn admin_daemon() -> Daemon {
    let daemon = Daemon::start_for_nobody(&["--allow-group", &ADMINS.to_string()]);
    assert!(daemon.cfsctl(&["init"]).status.success());
    daemon
}

/// A tree everyone may reach, with `/usr`, a small readable file
/// `usr/readable`, and what `extra` adds as root.
pub fn tree(extra: impl FnOnce(&Path)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    open_path_to(dir.path());
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(dir.path().join("usr")).unwrap();
    std::fs::write(dir.path().join("usr/readable"), vec![1u8; 1000]).unwrap();
    extra(dir.path());
    dir
}
