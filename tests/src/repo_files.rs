//! A repository's files, read for comparing two repositories byte for
//! byte and for finding an object by its size.

use std::path::{Path, PathBuf};

/// Every file under `repo` with its content (a link: its target), but
/// the lock, `meta.json` and `lost+found`, sorted by path.
pub fn tree(repo: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pending = vec![repo.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let name = path.strip_prefix(repo).unwrap().display().to_string();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                if name != "lost+found" {
                    pending.push(path);
                }
            } else if kind.is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                out.push((name, target.display().to_string().into_bytes()));
            } else if !name.contains("lock") && name != "meta.json" {
                out.push((name, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// The file of `size` bytes under `dir` (not following links).
pub fn file_of_size(dir: &Path, size: u64) -> PathBuf {
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                pending.push(path);
            } else if meta.len() == size {
                return path;
            }
        }
    }
    panic!("no file of {size} bytes under {}", dir.display());
}

/// The temporary files left in the repository directory `repo` (names
/// starting `.tmp`).
pub fn tmp_leftovers(repo: &Path) -> Vec<std::ffi::OsString> {
    std::fs::read_dir(repo)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with(".tmp"))
        .collect()
}
