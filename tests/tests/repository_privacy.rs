//! The repository is private to the daemon's user: its root is 0700 from
//! Init on, an older repository whose root others may enter is closed at
//! start-up, and one the daemon does not own is refused rather than
//! served open. Nobody cannot read an image's files out of `objects/`.

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use cfsd_tests::{
    Daemon,
    oci::{Compression, Entry, Image, Layer, Layout, Written},
    ocictl::{PrivateRepo, Target, pull},
    peer::{NOBODY, open_as_nobody},
};
use cfsd_varlink::{CallError, repository::RepositoryError};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// An image with a file only root may read, as `/etc/shadow` is; long
/// enough to be stored as an object rather than inline in the EROFS.
fn shadow_image() -> Written {
    let shadow = format!(
        "root:$y$secret-hash:19000::::::\n{}",
        "daemon:*:19000::::::\n".repeat(8)
    );
    let image = Image::new(vec![Layer::new(
        Compression::Gzip,
        vec![
            Entry::dir("usr").mode(0o755),
            Entry::dir("etc").mode(0o755),
            Entry::file("etc/shadow", shadow).mode(0o640),
        ],
    )]);
    Written::new(&Layout::single(&image, None).0)
}

/// Every regular file under `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    files
}

fn info(daemon: &Daemon) -> Result<(), RepositoryError> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        match daemon.client().await.info().await {
            Ok(_) => Ok(()),
            Err(CallError::Interface(e)) => Err(e),
            Err(e) => panic!("Info failed off the interface: {e}"),
        }
    })
}

#[test]
fn init_makes_the_root_private() {
    let daemon = Daemon::start_initialised(&[]);
    assert_eq!(mode(&daemon.repo()), 0o700);
    let private = PrivateRepo::init("sha512");
    assert_eq!(mode(&private.repo_path()), 0o700);
}

#[test]
fn init_closes_an_empty_directory_made_for_the_repository() {
    let daemon = Daemon::start(&[]);
    std::fs::create_dir(daemon.repo()).unwrap();
    chmod(&daemon.repo(), 0o755);
    assert!(daemon.cfsctl(&["init"]).status.success());
    assert_eq!(mode(&daemon.repo()), 0o700);
}

#[test]
fn nobody_cannot_read_an_images_files_from_objects() {
    let daemon = Daemon::start_for_nobody(&[]);
    assert!(daemon.cfsctl(&["init"]).status.success());
    let image = shadow_image();
    pull(&daemon, &[&image.archive(None), "img"]);
    let secret = files_under(&daemon.repo().join("objects"))
        .into_iter()
        .find(|f| {
            std::fs::read(f)
                .unwrap()
                .starts_with(b"root:$y$secret-hash")
        })
        .expect("the shadow file's object");
    // Its own mode would let anyone read it: the root is the gate.
    assert_eq!(mode(&secret) & 0o004, 0o004, "{}", secret.display());
    assert_eq!(open_as_nobody(&secret), "EACCES", "{}", secret.display());
    for name in ["meta.json", "objects", "streams", "images"] {
        let path = daemon.repo().join(name);
        assert!(path.exists(), "{}", path.display());
        assert_eq!(open_as_nobody(&path), "EACCES", "{}", path.display());
    }
}

#[test]
fn a_root_open_to_others_is_closed_at_start_up_and_served() {
    let mut daemon = Daemon::start_initialised(&[]);
    let image = shadow_image();
    pull(&daemon, &[&image.archive(None), "img"]);
    daemon.kill();
    // What an older cfsd left.
    chmod(&daemon.repo(), 0o755);
    daemon.restart();
    assert_eq!(mode(&daemon.repo()), 0o700);
    info(&daemon).unwrap();
    let out = daemon.cfsctl(&["oci", "images"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("img"));
}

#[test]
fn an_open_root_of_another_user_is_refused_and_left_as_it_is() {
    let mut daemon = Daemon::start_initialised(&[]);
    daemon.kill();
    chmod(&daemon.repo(), 0o755);
    let nobody = Some(rustix::fs::Uid::from_raw(NOBODY));
    rustix::fs::chown(daemon.repo(), nobody, None).unwrap();
    daemon.restart();
    let refused = info(&daemon).unwrap_err();
    let RepositoryError::Unreadable { path, reason } = &refused else {
        panic!("not Unreadable: {refused:?}");
    };
    assert_eq!(path, &daemon.repo().display().to_string());
    assert_eq!(
        reason,
        "its directory is mode 0755, open to other users, and owned by uid 65534, \
         not by the daemon's uid 0, so the daemon does not change it"
    );
    assert_eq!(
        mode(&daemon.repo()),
        0o755,
        "another user's directory changed"
    );
    // Closed by its owner, it is served without a restart.
    chmod(&daemon.repo(), 0o700);
    info(&daemon).unwrap();
}
