//! The content index (`content-index/` in the repository): every import
//! path fills it, it names only objects that are there with that content,
//! through GC and SIGKILLs, and damage to it is reported, never a panic.
//!
//! The index files are read here with a reader of our own, written from
//! the format's description in docs/repository.md, so that a change of
//! format shows.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use cfsd_tests::{
    Daemon, bin,
    delta::tar_diff_delta,
    oci::{Compression, Entry, Image, Layer, Layout, Written, noise},
    ocictl::{json, pull, succeeds},
};
use openssl::sha::sha256;

/// One index entry: the file it is in, the content digest, the object.
type Entries = BTreeMap<[u8; 32], BTreeSet<String>>;

/// Every index file of `repo`, by its name, with its entries; a file
/// that does not read back whole fails the test.
fn index_files(repo: &Path) -> BTreeMap<String, Vec<([u8; 32], String)>> {
    let mut files = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(repo.join("content-index")) else {
        return files;
    };
    for entry in dir {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if name.starts_with(".tmp-") {
            continue;
        }
        let bytes = std::fs::read(entry.path()).unwrap();
        files.insert(
            name.clone(),
            decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}")),
        );
    }
    files
}

/// The records of one index file, checked whole.
fn decode(bytes: &[u8]) -> Result<Vec<([u8; 32], String)>, String> {
    if bytes.len() < 52 || &bytes[..8] != b"CFSDCIX1" {
        return Err("not an index file".into());
    }
    let (body, check) = bytes.split_at(bytes.len() - 32);
    if sha256(body) != check {
        return Err("checksum".into());
    }
    let id_len = u32::from_le_bytes(body[8..12].try_into().unwrap()) as usize;
    let count = u64::from_le_bytes(body[12..20].try_into().unwrap()) as usize;
    let records = &body[20..];
    if records.len() != count * (32 + id_len) {
        return Err("count".into());
    }
    Ok(records
        .chunks_exact(32 + id_len)
        .map(|r| (r[..32].try_into().unwrap(), hex(&r[32..])))
        .collect())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every entry of every index file, merged.
fn entries(repo: &Path) -> Entries {
    let mut all = Entries::new();
    for records in index_files(repo).into_values() {
        for (digest, id) in records {
            all.entry(digest).or_default().insert(id);
        }
    }
    all
}

fn object_path(repo: &Path, id: &str) -> std::path::PathBuf {
    repo.join("objects").join(&id[..2]).join(&id[2..])
}

/// Every entry names an object that is there and has the entry's
/// content; every index file is of a stream or image that is there.
fn assert_sound(repo: &Path, when: &str) {
    for name in index_files(repo).keys() {
        assert!(
            object_path(repo, name).exists(),
            "{when}: the index file {name} outlived its stream"
        );
    }
    for (digest, ids) in entries(repo) {
        for id in ids {
            let content = std::fs::read(object_path(repo, &id))
                .unwrap_or_else(|e| panic!("{when}: entry {} names {id}: {e}", hex(&digest)));
            assert_eq!(sha256(&content), digest, "{when}: object {id}");
        }
    }
}

/// Each of `files` (over 64 bytes: composefs keeps the others inline) is
/// found by its sha256 and names an object with that content.
fn assert_found(repo: &Path, files: &[Vec<u8>]) {
    let all = entries(repo);
    for data in files.iter().filter(|d| d.len() > 64) {
        let ids = all
            .get(&sha256(data))
            .unwrap_or_else(|| panic!("a file of {} bytes is not indexed", data.len()));
        for id in ids {
            assert_eq!(&std::fs::read(object_path(repo, id)).unwrap(), data);
        }
    }
    assert_sound(repo, "after the pulls");
}

fn base_files() -> Vec<Vec<u8>> {
    vec![noise(1, 1 << 20), noise(2, 5000), b"small\n".to_vec()]
}

fn base_image() -> Image {
    let files = base_files();
    Image::new(vec![Layer::new(
        Compression::Gzip,
        vec![
            Entry::dir("usr"),
            Entry::file("usr/big", files[0].clone()),
            Entry::file("usr/medium", files[1].clone()),
            Entry::file("usr/small", files[2].clone()),
        ],
    )])
}

fn other_files() -> Vec<Vec<u8>> {
    (0..40)
        .map(|i| noise(100 + i, 100 + 300 * i as usize))
        .collect()
}

fn other_image() -> Image {
    let mut entries = vec![Entry::dir("opt")];
    for (i, data) in other_files().into_iter().enumerate() {
        entries.push(Entry::file(&format!("opt/f{i}"), data));
    }
    Image::new(vec![Layer::new(Compression::Zstd, entries)])
}

/// The base image's layer plus one a tar-diff delta rebuilds from it;
/// the files of that second layer.
fn delta_target() -> (Image, Vec<Vec<u8>>) {
    let mut changed = noise(1, 1 << 20);
    changed[500_000..500_400].fill(7);
    let files = vec![changed, noise(1, 1 << 20), noise(9, 300_000)];
    let image = Image::new(vec![
        base_image().layers.remove(0),
        Layer::new(
            Compression::Zstd,
            vec![
                Entry::dir("usr"),
                Entry::file("usr/big", files[0].clone()),
                Entry::file("usr/copy", files[1].clone()),
                Entry::file("usr/new", files[2].clone()),
            ],
        ),
    ]);
    (image, files)
}

#[test]
fn archive_directory_delta_and_plain_image_fill_the_index() {
    let daemon = Daemon::start_initialised(&[]);
    let base = base_image();
    let (layout, base_built) = Layout::single(&base, None);
    let archive = Written::new(&layout);
    pull(&daemon, &[&archive.archive(None), "base"]);
    assert_found(&daemon.repo(), &base_files());

    let (layout, _) = Layout::single(&other_image(), None);
    let directory = Written::new(&layout);
    pull(&daemon, &[&directory.oci(None), "other"]);
    assert_found(&daemon.repo(), &other_files());

    let (target, target_files) = delta_target();
    let (_, target_built) = Layout::single(&target, None);
    let delta = Written::new(&tar_diff_delta(&base, &base_built, &target_built, 1));
    pull(&daemon, &[&delta.archive(None), "target"]);
    assert_found(&daemon.repo(), &target_files);

    let tree = tempfile::tempdir().unwrap();
    let tree_files: Vec<Vec<u8>> = (0..5)
        .map(|i| noise(300 + i, 70 + 9000 * i as usize))
        .collect();
    std::fs::create_dir(tree.path().join("usr")).unwrap();
    for (i, data) in tree_files.iter().enumerate() {
        std::fs::write(tree.path().join(format!("usr/f{i}")), data).unwrap();
    }
    succeeds(
        &daemon,
        &["create-image", tree.path().to_str().unwrap(), "tree"],
    );
    assert_found(&daemon.repo(), &tree_files);
}

#[test]
fn gc_after_untag_removes_the_index_files_of_collected_streams() {
    let daemon = Daemon::start_initialised(&[]);
    let (layout, _) = Layout::single(&base_image(), None);
    let base = Written::new(&layout);
    pull(&daemon, &[&base.archive(None), "base"]);
    let before = index_files(&daemon.repo());
    let (layout, _) = Layout::single(&other_image(), None);
    let other = Written::new(&layout);
    pull(&daemon, &[&other.archive(None), "other"]);
    assert_eq!(index_files(&daemon.repo()).len(), before.len() + 1);
    succeeds(&daemon, &["oci", "untag", "other"]);
    let gc = json(&daemon, &["gc"]);
    assert!(gc["objectsRemoved"].as_u64().unwrap() > 40, "{gc}");
    assert_eq!(index_files(&daemon.repo()), before);
    assert_sound(&daemon.repo(), "after gc");
    assert!(!entries(&daemon.repo()).contains_key(&sha256(&other_files()[5])));
}

/// An image of many files in a few layers: a kill lands while objects
/// are written, while streams are named, or between.
fn many_files_image() -> Image {
    let layer = |n: u64| {
        let mut entries = vec![Entry::dir(&format!("d{n}"))];
        for i in 0..400 {
            let data = noise(1000 * n + i, 200 + (i as usize % 9) * 700);
            entries.push(Entry::file(&format!("d{n}/f{i}"), data));
        }
        Layer::new(Compression::Gzip, entries)
    };
    Image::new((1..=4).map(layer).collect())
}

#[test]
fn a_sigkill_during_a_pull_never_leaves_an_entry_naming_a_missing_object() {
    let (layout, _) = Layout::single(&many_files_image(), None);
    let written = Written::new(&layout);
    let source = written.archive(None);
    // The uninterrupted time, which the kills are fractions of.
    let reference = Daemon::start_initialised(&[]);
    let start = Instant::now();
    pull(&reference, &[&source, "many"]);
    let took = start.elapsed();
    let complete = entries(&reference.repo());
    drop(reference);
    let mut daemon = Daemon::start_initialised(&[]);
    for fraction in [0.15, 0.35, 0.55, 0.75, 0.95] {
        let client = Command::new(bin("cfsctl"))
            .arg("--address")
            .arg(daemon.address())
            .args(["oci", "pull", &source, "many"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(took.mul_f64(fraction));
        daemon.kill();
        assert_sound(&daemon.repo(), &format!("killed at {fraction}"));
        daemon.restart();
        let _ = client.wait_with_output();
        assert_sound(&daemon.repo(), &format!("restarted after {fraction}"));
        // A collection of what the kill left keeps it so.
        succeeds(&daemon, &["gc"]);
        assert_sound(&daemon.repo(), &format!("collected after {fraction}"));
    }
    pull(&daemon, &[&source, "many"]);
    assert_eq!(entries(&daemon.repo()), complete);
    assert_sound(&daemon.repo(), "after the last pull");
}

#[test]
fn a_garbled_index_file_is_left_out_reported_by_fsck_and_pulls_go_on() {
    let daemon = Daemon::start_initialised(&[]);
    let (layout, _) = Layout::single(&base_image(), None);
    let base = Written::new(&layout);
    pull(&daemon, &[&base.archive(None), "base"]);
    let repo = daemon.repo();
    let name = index_files(&repo).into_keys().next().unwrap();
    let path = repo.join("content-index").join(&name);
    for garbage in [b"".to_vec(), b"CFSDCIX1".to_vec(), vec![0xff; 4096], {
        let mut bytes = std::fs::read(&path).unwrap();
        let end = bytes.len() - 1;
        bytes[end] ^= 1;
        bytes
    }] {
        std::fs::write(&path, &garbage).unwrap();
        let out = daemon.cfsctl(&["--json", "fsck"]);
        let fsck: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(fsck["ok"], false, "{fsck}");
        let problems = fsck["problems"].as_array().unwrap();
        assert!(
            problems.iter().any(|p| p["kind"] == "content-index-damaged"
                && p["detail"].as_str().unwrap().contains(&name)),
            "{fsck}"
        );
        // A pull that reuses the base's objects still works.
        let (layout, _) = Layout::single(&other_image(), None);
        let other = Written::new(&layout);
        pull(&daemon, &[&other.archive(None), "other"]);
    }
}

/// A daemon holding the base and other images and a plain image of a
/// tree, as the code before the index left them: no `content-index/`.
/// The entries the imports had made.
fn daemon_without_index(args: &[&str]) -> (Daemon, Entries, Vec<Written>) {
    let daemon = Daemon::start(args);
    succeeds(&daemon, &["init"]);
    let mut written = Vec::new();
    for (image, tag) in [(base_image(), "base"), (other_image(), "other")] {
        let (layout, _) = Layout::single(&image, None);
        let w = Written::new(&layout);
        pull(&daemon, &[&w.archive(None), tag]);
        written.push(w);
    }
    let tree = tempfile::tempdir().unwrap();
    std::fs::create_dir(tree.path().join("usr")).unwrap();
    std::fs::write(tree.path().join("usr/plain"), noise(77, 9000)).unwrap();
    succeeds(
        &daemon,
        &["create-image", tree.path().to_str().unwrap(), "tree"],
    );
    let before = entries(&daemon.repo());
    assert!(before.contains_key(&sha256(&noise(77, 9000))));
    std::fs::remove_dir_all(daemon.repo().join("content-index")).unwrap();
    (daemon, before, written)
}

#[test]
fn index_builds_the_same_entries_for_a_repository_made_without_it_with_progress() {
    let (daemon, before, _written) = daemon_without_index(&[]);
    let out = daemon.cfsctl(&["--json", "--progress", "json", "index"]);
    assert!(out.status.success(), "{}", cfsd_tests::stderr(&out));
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (last, progress) = lines.split_last().unwrap();
    // Two layer streams and the images (each OCI image's EROFS, the
    // plain one): a reply before any, one after each, then the last.
    let total = last["total"].as_u64().unwrap();
    assert!(total >= 3, "{last}");
    let done: Vec<u64> = progress
        .iter()
        .map(|p| p["progress"]["done"].as_u64().unwrap())
        .collect();
    assert_eq!(done, (0..=total).collect::<Vec<_>>(), "{progress:?}");
    assert_eq!(last["done"], total);
    assert_eq!(last["objectsHashed"], 1 + 2 + 40, "{last}");
    assert_eq!(entries(&daemon.repo()), before);
    assert_sound(&daemon.repo(), "after index");
    // Once is enough.
    let again = json(&daemon, &["index"]);
    assert_eq!(
        (again["total"].as_u64(), again["objectsHashed"].as_u64()),
        (Some(0), Some(0))
    );
}

#[test]
fn index_is_refused_to_an_unprivileged_peer_and_allowed_to_the_admin_group() {
    let (daemon, before, _written) =
        daemon_without_index(&["--socket-group", "65534", "--allow-group", "4242"]);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(daemon.dir(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let call = serde_json::json!({"method": "io.cfsd.Repository.IndexContent", "more": true});
    let refused = cfsd_tests::peer::raw_calls_as(&daemon, &[], std::slice::from_ref(&call));
    assert_eq!(
        refused[0]["error"], "io.cfsd.Repository.PermissionDenied",
        "{refused:?}"
    );
    assert_eq!(refused[0]["parameters"]["uid"], 65534);
    assert!(
        !daemon.repo().join("content-index").exists(),
        "a refused call wrote"
    );
    // The build tree may be out of nobody's reach: a copy of cfsctl.
    let cfsctl = daemon.dir().join("cfsctl");
    std::fs::copy(bin("cfsctl"), &cfsctl).unwrap();
    let out = cfsd_tests::peer::as_nobody(&[4242], cfsctl.to_str().unwrap())
        .arg("--address")
        .arg(daemon.address())
        .args(["--json", "index"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", cfsd_tests::stderr(&out));
    assert_eq!(entries(&daemon.repo()), before);
}

#[test]
fn a_client_that_hangs_up_mid_index_leaves_gc_free_and_a_later_index_finishes() {
    let (daemon, before, _written) = daemon_without_index(&[]);
    let mut connection = daemon.raw();
    connection.send_bytes(
        serde_json::json!({"method": "io.cfsd.Repository.IndexContent", "more": true})
            .to_string()
            .as_bytes(),
    );
    let first = connection.receive().unwrap();
    assert_eq!(first["continues"], true, "{first}");
    drop(connection);
    // The hold goes with the work, which stops at its next object: a
    // collection does not wait for a caller that left.
    succeeds(&daemon, &["gc"]);
    assert_sound(&daemon.repo(), "after the hang-up");
    let finished = json(&daemon, &["index"]);
    assert_eq!(entries(&daemon.repo()), before, "{finished}");
}
