//! Mounting an image through `cfsctl oci mount` for a test, and
//! unmounting it whatever the test's outcome.

use std::path::{Path, PathBuf};

use crate::{ocictl::Target, skip, stderr};

/// Unmounts its directory when dropped, also when a test fails.
#[derive(Debug)]
pub struct Mounted(pub PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

/// Mount `image` at `dir` with `cfsctl oci mount IMAGE DIR EXTRA...`, or
/// say why the kernel will not and return None.
pub fn mount_with(repo: &impl Target, image: &str, dir: &Path, extra: &[&str]) -> Option<Mounted> {
    std::fs::create_dir_all(dir).unwrap();
    let mut args = vec!["oci", "mount", image, dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = repo.run(&args);
    if !out.status.success() {
        let err = stderr(&out);
        if err.contains("Operation not permitted") || err.contains("Function not implemented") {
            skip(&format!("the kernel refused the mount: {err}"));
            return None;
        }
        panic!("oci mount failed: {err}");
    }
    Some(Mounted(dir.to_owned()))
}

/// [`mount_with`] without options.
pub fn mount(repo: &impl Target, image: &str, dir: &Path) -> Option<Mounted> {
    mount_with(repo, image, dir, &[])
}
