//! A repository on a filesystem of its own, small enough to fill: what
//! the tests of full disks and read-only remounts run on.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::{Daemon, ocictl::succeeds, stderr};

/// A 64 MiB ext4 filesystem in a file, mounted at a directory until
/// dropped.
pub struct LoopFs {
    mountpoint: PathBuf,
    _image: tempfile::TempDir,
}

impl LoopFs {
    /// A fresh filesystem mounted at `mountpoint`, with no blocks kept
    /// for root: root fills it as anyone would.
    pub fn mount_at(mountpoint: &Path) -> Self {
        let image = tempfile::tempdir().unwrap();
        let file = image.path().join("fs.img");
        run(Command::new("truncate").args(["-s", "64M"]).arg(&file));
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&file));
        std::fs::create_dir_all(mountpoint).unwrap();
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&file)
            .arg(mountpoint));
        LoopFs {
            mountpoint: mountpoint.to_owned(),
            _image: image,
        }
    }

    /// Remount it with the options `how` (`ro`, `rw`).
    pub fn remount(&self, how: &str) {
        run(Command::new("mount")
            .args(["-o", &format!("remount,{how}")])
            .arg(&self.mountpoint));
    }

    /// Fill it with the file `name` (under the mountpoint) until at most
    /// `left` bytes are free; the file, which removing frees the room.
    pub fn fill(&self, name: &str, left: u64) -> PathBuf {
        let filler = self.mountpoint.join(name);
        let free = self.free();
        if free > left {
            let size = (free - left).to_string();
            run(Command::new("fallocate").args(["-l", &size]).arg(&filler));
        }
        assert!(self.free() <= left + 4096, "{} bytes left", self.free());
        filler
    }

    /// The bytes free for root.
    pub fn free(&self) -> u64 {
        let stats = rustix::fs::statvfs(&self.mountpoint).unwrap();
        stats.f_bavail * stats.f_frsize
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mountpoint)
            .status();
    }
}

/// A daemon started with `args` whose repository is the root of a fresh
/// loop filesystem.
pub fn daemon_on_loop_fs(args: &[&str]) -> (Daemon, LoopFs) {
    let daemon = Daemon::start(args);
    let fs = LoopFs::mount_at(&daemon.repo());
    succeeds(&daemon, &["init"]);
    (daemon, fs)
}

fn run(command: &mut Command) {
    let out = command.output().unwrap();
    assert!(out.status.success(), "{command:?}: {}", stderr(&out));
}
