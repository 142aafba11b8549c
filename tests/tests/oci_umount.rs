//! `cfsctl oci umount DIR` detaches the image `oci mount` attached there,
//! and nothing that is not an image cfsd mounted.

use cfsd_tests::{
    Daemon,
    oci::{Compression, Layout, Written, small_image},
    ocictl::{fails, pull, succeeds},
};

/// Whether `dir` is a mount point in this process's mount namespace.
fn mounted(dir: &std::path::Path) -> bool {
    let wanted = dir.canonicalize().unwrap().display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(wanted.as_str()))
}

#[test]
fn oci_umount_detaches_an_image_and_refuses_anything_else() {
    let daemon = Daemon::start_initialised(&[]);
    let (layout, _) = Layout::single(&small_image(Compression::Gzip, "umount\n"), None);
    pull(&daemon, &[&Written::new(&layout).archive(None), "u"]);
    let dir = tempfile::tempdir().unwrap();
    let at = dir.path().to_str().unwrap();
    succeeds(&daemon, &["oci", "mount", "u", at]);
    assert!(mounted(dir.path()));
    assert!(dir.path().join("usr/share/content").exists());
    let out = succeeds(&daemon, &["oci", "umount", at]);
    assert!(out.contains("Unmounted"), "{out}");
    assert!(!mounted(dir.path()));
    let err = fails(&daemon, &["oci", "umount", at]);
    assert!(err.contains("nothing is mounted there"), "{err}");
    // A mount that is not an image is left alone.
    let err = fails(&daemon, &["oci", "umount", "/proc"]);
    assert!(err.contains("not an image cfsd mounted"), "{err}");
    assert!(std::path::Path::new("/proc/self").exists());
}
