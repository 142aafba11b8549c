//! The caller's registry credentials: cfsctl finds and opens the auth
//! file with the caller's own rights and passes it to the daemon as an
//! fd, since the daemon never reads a user's home.

use std::{
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

use rustix::fs::{Mode, OFlags};

use crate::failure::Local;

/// The auth file to pass: `explicit` (`--authfile`), which must open, or
/// else the first of the usual containers and Docker places that exists.
pub fn open(explicit: Option<&Path>) -> Result<Option<OwnedFd>, Local> {
    if let Some(path) = explicit {
        return open_file(path).map(Some);
    }
    for path in candidates(|name| std::env::var_os(name).map(PathBuf::from)) {
        match open_file(&path) {
            Ok(fd) => return Ok(Some(fd)),
            Err(_) if !path.exists() => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Where the containers tools look, in their order: `$REGISTRY_AUTH_FILE`,
/// `$XDG_RUNTIME_DIR/containers/auth.json`,
/// `$XDG_CONFIG_HOME/containers/auth.json` (`~/.config` by default), then
/// Docker's `~/.docker/config.json`.
fn candidates(var: impl Fn(&str) -> Option<PathBuf>) -> Vec<PathBuf> {
    if let Some(file) = var("REGISTRY_AUTH_FILE") {
        return vec![file];
    }
    let mut paths = Vec::new();
    if let Some(run) = var("XDG_RUNTIME_DIR") {
        paths.push(run.join("containers/auth.json"));
    }
    let home = var("HOME");
    let config = var("XDG_CONFIG_HOME").or_else(|| home.as_ref().map(|h| h.join(".config")));
    if let Some(config) = config {
        paths.push(config.join("containers/auth.json"));
    }
    if let Some(home) = home {
        paths.push(home.join(".docker/config.json"));
    }
    paths
}

fn open_file(path: &Path) -> Result<OwnedFd, Local> {
    // Non-blocking, so that a fifo is refused by the daemon instead of
    // hanging this open.
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK;
    rustix::fs::open(path, flags, Mode::empty()).map_err(|e| Local::OpenFailed {
        path: path.display().to_string(),
        reason: std::io::Error::from(e).to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_containers_order_is_followed() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| PathBuf::from(v))
            }
        };
        assert_eq!(
            candidates(env(&[("REGISTRY_AUTH_FILE", "/a"), ("HOME", "/h")])),
            [PathBuf::from("/a")]
        );
        assert_eq!(
            candidates(env(&[("XDG_RUNTIME_DIR", "/run/u"), ("HOME", "/h")])),
            [
                PathBuf::from("/run/u/containers/auth.json"),
                "/h/.config/containers/auth.json".into(),
                "/h/.docker/config.json".into(),
            ]
        );
        assert_eq!(
            candidates(env(&[("XDG_CONFIG_HOME", "/c")])),
            [PathBuf::from("/c/containers/auth.json")]
        );
    }
}
