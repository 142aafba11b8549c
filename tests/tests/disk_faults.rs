//! Disk faults keep their kind up to the wire: a repository on a small
//! loop filesystem that fills up mid-pull answers `NoSpace`, publishes
//! nothing and stays consistent, and the same pull succeeds once GC has
//! freed room; a repository whose filesystem is remounted read-only
//! serves every method that only reads and answers `ReadOnlyFilesystem`
//! to the others.

use cfsd_tests::{
    Daemon,
    loop_fs::daemon_on_loop_fs,
    oci::{Compression, Entry, Image, Layer, Layout, Written, noise},
    ocictl::{Published, fails, json, published, pull, succeeds, typed_source_refusal},
};
use cfsd_varlink::oci::OciError;
use serde_json::{Value, json};

/// An image of one uncompressed 32 MiB file: two of them do not fit in
/// the loop filesystem, one does.
fn big_image(seed: u64) -> (Written, String) {
    let image = Image::new(vec![Layer::new(
        Compression::None,
        vec![
            Entry::dir("usr"),
            Entry::file("usr/big.bin", noise(seed, 32 << 20)),
        ],
    )]);
    let (layout, built) = Layout::single(&image, None);
    (Written::new(&layout), built.manifest_digest)
}

#[test]
fn a_pull_that_fills_the_disk_is_no_space_and_succeeds_after_gc() {
    let (daemon, _fs) = daemon_on_loop_fs(&[]);
    let (first, _) = big_image(1);
    let (second, second_digest) = big_image(2);
    pull(&daemon, &[&first.archive(None), "first"]);
    let before = published(&daemon.repo());

    let err = fails(&daemon, &["oci", "pull", &second.archive(None), "second"]);
    assert!(err.contains("no space left"), "{err}");
    match typed_source_refusal(&daemon, &second.archive(None), "second") {
        OciError::NoSpace { operation, reason } => {
            assert!(!operation.is_empty() && !reason.is_empty())
        }
        other => panic!("not NoSpace: {other:?}"),
    }
    assert_eq!(
        published(&daemon.repo()),
        before,
        "a full pull published something"
    );
    let fsck = json(&daemon, &["fsck"]);
    assert_eq!(fsck["ok"], true, "{fsck}");

    // Free the room the first image takes, then the same pull fits.
    succeeds(&daemon, &["oci", "rm", "first"]);
    json(&daemon, &["gc"]);
    let pulled = pull(&daemon, &[&second.archive(None), "second"]);
    assert_eq!(pulled.str("manifestDigest"), second_digest);
    let fsck = json(&daemon, &["fsck"]);
    assert_eq!(fsck["ok"], true, "{fsck}");
}

/// The error name of each raw call.
fn error_names(daemon: &Daemon, calls: &[Value]) -> Vec<String> {
    let mut conn = daemon.raw();
    calls
        .iter()
        .map(|call| {
            let reply = conn.call(call.clone());
            reply["error"].as_str().unwrap_or("(none)").to_owned()
        })
        .collect()
}

#[test]
fn a_read_only_repository_serves_reads_and_refuses_writes_by_name() {
    let (daemon, fs) = daemon_on_loop_fs(&[]);
    let small = Image::new(vec![Layer::new(
        Compression::Gzip,
        vec![Entry::dir("usr"), Entry::file("usr/file", noise(3, 10_000))],
    )]);
    let (layout, _) = Layout::single(&small, None);
    let written = Written::new(&layout);
    pull(&daemon, &[&written.archive(None), "kept"]);
    let (other, _) = big_image(4);
    fs.remount("ro");
    let before: Published = published(&daemon.repo());

    for read_only in [
        &["info"][..],
        &["fsck"],
        &["gc", "--dry-run"],
        &["oci", "images"],
        &["oci", "inspect", "kept"],
        &["oci", "compute-id", "kept"],
    ] {
        json(&daemon, read_only);
    }
    let names = error_names(
        &daemon,
        &[
            json!({"method": "io.cfsd.Oci.Tag", "parameters": {"image": "kept", "tag": "new"}}),
            json!({"method": "io.cfsd.Oci.Untag", "parameters": {"tag": "kept"}}),
            json!({"method": "io.cfsd.Oci.Remove", "parameters": {"image": "kept"}}),
            json!({"method": "io.cfsd.Repository.Gc", "parameters": {"dryRun": false}}),
        ],
    );
    assert_eq!(
        names,
        [
            "io.cfsd.Oci.ReadOnlyFilesystem",
            "io.cfsd.Oci.ReadOnlyFilesystem",
            "io.cfsd.Oci.ReadOnlyFilesystem",
            "io.cfsd.Repository.ReadOnlyFilesystem",
        ]
    );
    assert!(
        matches!(
            typed_source_refusal(&daemon, &other.archive(None), "other"),
            OciError::ReadOnlyFilesystem { .. }
        ),
        "a pull into a read-only repository"
    );
    let err = fails(&daemon, &["oci", "tag", "kept", "new"]);
    assert!(err.contains("read-only"), "{err}");
    assert_eq!(published(&daemon.repo()), before);

    fs.remount("rw");
    succeeds(&daemon, &["oci", "tag", "kept", "new"]);
    let fsck = json(&daemon, &["fsck"]);
    assert_eq!(fsck["ok"], true, "{fsck}");
}

/// A file too large to be held in memory goes to an anonymous file in the
/// repository. One larger than the whole filesystem fills it: the pull is
/// `NoSpace`, and once it has failed the room that file took is free again,
/// with no thread left holding it open.
#[test]
fn a_file_too_large_for_memory_and_for_the_disk_is_no_space_and_gives_its_room_back() {
    let (daemon, fs) = daemon_on_loop_fs(&[]);
    let image = Image::new(vec![Layer::new(
        Compression::None,
        vec![
            Entry::dir("usr"),
            Entry::file("usr/huge.bin", noise(3, (64 << 20) + 4097)),
        ],
    )]);
    let (layout, _) = Layout::single(&image, None);
    let written = Written::new(&layout);
    let free = fs.free();

    match typed_source_refusal(&daemon, &written.archive(None), "huge") {
        OciError::NoSpace { operation, reason } => {
            assert!(!operation.is_empty() && !reason.is_empty())
        }
        other => panic!("not NoSpace: {other:?}"),
    }
    assert_eq!(published(&daemon.repo()), Published::default());
    // The repository's own files may take a few blocks more than before.
    assert!(
        fs.free() + (1 << 20) >= free,
        "{} of {free} bytes free",
        fs.free()
    );
    let fsck = json(&daemon, &["fsck"]);
    assert_eq!(fsck["ok"], true, "{fsck}");
}
