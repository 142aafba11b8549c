//! How much the repository holds.

use std::{fs, io, path::Path};

/// How many entries of one kind there are, and the bytes of their objects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Number of entries.
    pub count: u64,
    /// Bytes of the objects behind them.
    pub bytes: u64,
}

impl Usage {
    fn add(&mut self, bytes: u64) {
        self.count += 1;
        self.bytes += bytes;
    }
}

/// The files of the object store, `objects/XX/REST`.
pub(crate) fn objects(repo: &Path) -> io::Result<Usage> {
    let mut usage = Usage::default();
    each_object(repo, |_, object| {
        usage.add(object.metadata()?.len());
        Ok(())
    })?;
    Ok(usage)
}

/// Call `visit` with the name (`objects/XX/REST`) and entry of each
/// regular file of the object store; the first error stops the walk.
pub(crate) fn each_object(
    repo: &Path,
    mut visit: impl FnMut(&Path, &fs::DirEntry) -> io::Result<()>,
) -> io::Result<()> {
    for shard in read_dir_if_present(&repo.join("objects"))? {
        let shard = shard?;
        if !shard.file_type()?.is_dir() {
            continue;
        }
        for object in fs::read_dir(shard.path())? {
            let object = object?;
            if object.file_type()?.is_file() {
                let name = Path::new("objects")
                    .join(shard.file_name())
                    .join(object.file_name());
                visit(&name, &object)?;
            }
        }
    }
    Ok(())
}

/// The named entries of `streams/` or `images/`: each is a link to an
/// object, and counts that object's size. The `refs/` tree only names
/// these entries again and is not counted twice.
pub(crate) fn entries(dir: &Path) -> io::Result<Usage> {
    let mut usage = Usage::default();
    for entry in read_dir_if_present(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            continue;
        }
        // A dangling link still counts as an entry; fsck reports it.
        let bytes = fs::metadata(entry.path()).map(|m| m.len()).unwrap_or(0);
        usage.add(bytes);
    }
    Ok(usage)
}

fn read_dir_if_present(
    dir: &Path,
) -> io::Result<Box<dyn Iterator<Item = io::Result<fs::DirEntry>>>> {
    match fs::read_dir(dir) {
        Ok(entries) => Ok(Box::new(entries)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Box::new(std::iter::empty())),
        Err(e) => Err(e),
    }
}
