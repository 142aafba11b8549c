//! ID-mapped images: `oci mount --uidmap --gidmap` gives an idmapped
//! mount, and `oci idmap IMAGE NEWTAG` a variant whose EROFS has the
//! shifted owners, shares every file object with the original, is made
//! without reading a layer, and outlives the original. Bad maps get
//! typed errors; only root may ask for an idmapped mount.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::fs::MetadataExt,
    path::Path,
};

use cfsd_tests::{
    Daemon,
    mounted::{mount, mount_with},
    oci::{Compression, Entry, Image, Layer, Layout, Written, noise},
    ocictl::{PrivateRepo, Target, json, object_count, pull, succeeds},
    peer::{NOBODY, raw_calls_as, raw_calls_at, start_as_nobody},
    stdout,
};
use serde_json::{Value, json};

/// A group nobody is given on top, for `--allow-group`.
const ADMINS: u32 = 4242;

/// Files of three owners, two of them big enough to be objects.
fn owned_image() -> Image {
    Image::new(vec![Layer::new(
        Compression::Gzip,
        vec![
            Entry::dir("usr"),
            Entry::file("usr/root-file", noise(1, 9000)),
            Entry::dir("srv").owner(33, 34),
            Entry::file("srv/www", noise(2, 7000)).owner(33, 34),
            Entry::file("home-file", "small\n").owner(1000, 1001),
        ],
    )])
}

/// A repository holding `owned_image` as `orig`.
fn repo_with_image() -> (PrivateRepo, String, Written) {
    let written = Written::new(&Layout::single(&owned_image(), None).0);
    let repo = PrivateRepo::init("sha512");
    let id = pull(&repo, &[&written.archive(None), "orig"])
        .str("imageId")
        .to_owned();
    (repo, id, written)
}

fn owner(path: &Path) -> (u32, u32) {
    let md = std::fs::symlink_metadata(path).unwrap();
    (md.uid(), md.gid())
}

const UIDMAP: &str = "0:100000:65536";
const GIDMAP: &str = "0:200000:65536";

#[test]
fn an_idmapped_mount_shows_the_mapped_owners() {
    let (repo, _, _w) = repo_with_image();
    let scratch = tempfile::tempdir().unwrap();
    let (plain, mapped) = (scratch.path().join("plain"), scratch.path().join("mapped"));
    let Some(_p) = mount(&repo, "orig", &plain) else {
        return;
    };
    let flags = ["--uidmap", UIDMAP, "--gidmap", GIDMAP];
    let Some(_m) = mount_with(&repo, "orig", &mapped, &flags) else {
        return;
    };
    assert_eq!(owner(&plain.join("srv/www")), (33, 34));
    assert_eq!(owner(&mapped.join("srv/www")), (100033, 200034));
    assert_eq!(owner(&mapped.join("usr/root-file")), (100000, 200000));
    assert_eq!(owner(&mapped.join("home-file")), (101000, 201001));
    assert_eq!(owner(&mapped), (100000, 200000));
    assert_eq!(
        std::fs::read(mapped.join("srv/www")).unwrap(),
        noise(2, 7000)
    );
}

/// Every object's name (hex) and size.
fn objects(repo: &Path) -> BTreeMap<String, u64> {
    let mut all = BTreeMap::new();
    for dir in std::fs::read_dir(repo.join("objects")).unwrap() {
        let dir = dir.unwrap();
        if !dir.file_type().unwrap().is_dir() {
            continue;
        }
        let prefix = dir.file_name().into_string().unwrap();
        for file in std::fs::read_dir(dir.path()).unwrap() {
            let file = file.unwrap();
            let name = format!("{prefix}{}", file.file_name().into_string().unwrap());
            all.insert(name, file.metadata().unwrap().len());
        }
    }
    all
}

/// Every regular file's object digest in `image`'s dump.
fn file_objects(repo: &PrivateRepo, image: &str) -> BTreeSet<String> {
    succeeds(repo, &["oci", "dump", image])
        .lines()
        .filter_map(|l| l.split(' ').nth(10))
        .filter(|d| *d != "-")
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_variant_shares_every_object_and_outlives_its_original() {
    let (repo, orig_id, _w) = repo_with_image();
    let before = objects(&repo.repo_path());
    let reply = json(
        &repo,
        &[
            "oci", "idmap", "orig", "mapped", "--uidmap", UIDMAP, "--gidmap", GIDMAP,
        ],
    );
    let variant_id = reply["imageId"].as_str().unwrap().to_owned();
    assert_ne!(variant_id, orig_id);
    // The EROFS image, and the config and manifest streams and JSON: no
    // file content (16 kB of it in the image).
    let after = objects(&repo.repo_path());
    assert!(before.keys().all(|k| after.contains_key(k)));
    let added: u64 = after
        .iter()
        .filter(|(k, _)| !before.contains_key(*k))
        .map(|(_, size)| size)
        .sum();
    let new: Vec<_> = after
        .iter()
        .filter(|(k, _)| !before.contains_key(*k))
        .collect();
    let erofs = after[&variant_id];
    // Ids past 65535 need EROFS's extended inodes: larger, not by much.
    assert!(erofs <= 2 * after[&orig_id], "{erofs} bytes of EROFS");
    assert!(added - erofs < 4096, "{added} bytes added: {new:?}");
    let objects = file_objects(&repo, "orig");
    assert_eq!(objects.len(), 2, "{objects:?}");
    assert_eq!(file_objects(&repo, "mapped"), objects);
    // Rebuilt from the layers with the recorded maps: the same id.
    assert_eq!(
        succeeds(&repo, &["oci", "compute-id", "mapped"]).trim(),
        variant_id
    );

    succeeds(&repo, &["oci", "rm", "orig"]);
    succeeds(&repo, &["gc"]);
    let scratch = tempfile::tempdir().unwrap();
    let point = scratch.path().join("m");
    let Some(_m) = mount(&repo, "mapped", &point) else {
        return;
    };
    assert_eq!(owner(&point.join("srv/www")), (100033, 200034));
    assert_eq!(owner(&point.join("home-file")), (101000, 201001));
    assert_eq!(
        std::fs::read(point.join("usr/root-file")).unwrap(),
        noise(1, 9000)
    );
}

#[test]
fn a_variant_is_made_without_reading_a_layer() {
    let (repo, _, _w) = repo_with_image();
    // Ruin the layer stream's object: a read of it would fail.
    let streams = repo.repo_path().join("streams");
    let layer = std::fs::read_dir(&streams)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("oci-layer-")
        })
        .unwrap();
    std::fs::write(
        std::fs::canonicalize(&layer).unwrap(),
        b"not a split stream",
    )
    .unwrap();
    assert!(!repo.run(&["oci", "compute-id", "orig"]).status.success());
    succeeds(
        &repo,
        &[
            "oci", "idmap", "orig", "mapped", "--uidmap", UIDMAP, "--gidmap", GIDMAP,
        ],
    );
    let scratch = tempfile::tempdir().unwrap();
    let point = scratch.path().join("m");
    let Some(_m) = mount(&repo, "mapped", &point) else {
        return;
    };
    assert_eq!(owner(&point.join("srv/www")), (100033, 200034));
}

#[test]
fn the_identity_variant_has_the_originals_image_id() {
    let (repo, orig_id, _w) = repo_with_image();
    let full = "0:0:4294967295";
    let reply = json(
        &repo,
        &[
            "oci", "idmap", "orig", "same", "--uidmap", full, "--gidmap", full,
        ],
    );
    assert_eq!(reply["imageId"], orig_id.as_str(), "EROFS round trip");
}

/// The typed error of a failed `cfsctl --json` command.
fn typed_error(repo: &impl Target, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = repo.run(&all);
    assert!(!out.status.success(), "{args:?} succeeded");
    serde_json::from_str(stdout(&out).trim()).unwrap()
}

#[test]
fn bad_maps_get_typed_errors_and_publish_nothing() {
    let (repo, _, _w) = repo_with_image();
    let cases: &[(&str, &str, &str)] = &[
        (
            "0:4294967295:2",
            "io.cfsd.Oci.InvalidIdMap",
            "runs past id 4294967294",
        ),
        (
            "0:100000:10,5:300000:10",
            "io.cfsd.Oci.InvalidIdMap",
            "overlap on the image side",
        ),
        (
            "0:100000:10,10:100005:3",
            "io.cfsd.Oci.InvalidIdMap",
            "overlap on the host side",
        ),
        ("0:1:0", "io.cfsd.Oci.InvalidIdMap", "length 0"),
        // Files are owned by 33 and 1000, which this does not cover.
        (
            "0:100000:10",
            "io.cfsd.Oci.UnmappedId",
            r#""id":33,"image":"orig","kind":"uid""#,
        ),
    ];
    let before = object_count(&repo.repo_path());
    let scratch = tempfile::tempdir().unwrap();
    let point = scratch.path().to_str().unwrap();
    for (map, name, says) in cases {
        let err = typed_error(
            &repo,
            &[
                "oci", "idmap", "orig", "bad", "--uidmap", map, "--gidmap", GIDMAP,
            ],
        );
        assert_eq!(err["error"], *name, "{map}: {err}");
        assert!(err.to_string().contains(says), "{map}: {err}");
        let mount = [
            "oci", "mount", "orig", point, "--uidmap", map, "--gidmap", GIDMAP,
        ];
        if *name == "io.cfsd.Oci.InvalidIdMap" {
            let err = typed_error(&repo, &mount);
            assert_eq!(err["error"], *name, "mount {map}: {err}");
        } else {
            // An idmapped mount shows an id no range covers as 65534.
            succeeds(&repo, &mount);
            let _m = cfsd_tests::mounted::Mounted(scratch.path().to_owned());
            assert_eq!(owner(&scratch.path().join("srv/www")), (65534, 200034));
        }
    }
    assert_eq!(object_count(&repo.repo_path()), before);
    let images = json(&repo, &["oci", "images"]);
    assert!(!images.to_string().contains("\"bad\""), "{images}");
}

fn idmap_call(uidmap: &str) -> Value {
    json!({"method": "io.cfsd.Oci.Idmap",
           "parameters": {"image": "orig", "tag": "peer", "uidmap": [uidmap], "gidmap": ["0:0:65536"]}})
}

fn mount_call(uidmap: Option<&str>) -> Value {
    let mut parameters = json!({"image": "orig"});
    if let Some(map) = uidmap {
        parameters["uidmap"] = json!([map]);
        parameters["gidmap"] = json!(["0:0:65536"]);
    }
    json!({"method": "io.cfsd.Oci.Mount", "parameters": parameters})
}

#[test]
fn peers_may_not_ask_for_idmapped_mounts_and_only_admins_make_variants() {
    let admins = ADMINS.to_string();
    let daemon = Daemon::start_for_nobody(&["--allow-group", &admins]);
    assert!(daemon.cfsctl(&["init"]).status.success());
    let written = Written::new(&Layout::single(&owned_image(), None).0);
    pull(&daemon, &[&written.archive(None), "orig"]);
    let denied = |method: &str| {
        json!({"error": "io.cfsd.Oci.PermissionDenied",
               "parameters": {"method": format!("io.cfsd.Oci.{method}"), "uid": NOBODY}})
    };
    // A mount mapping nobody's files to root, asked by anyone not root.
    let to_root = mount_call(Some("1000:0:1"));
    let other = raw_calls_as(&daemon, &[], &[to_root.clone(), idmap_call("0:0:1")]);
    assert_eq!(other, [denied("Mount"), denied("Idmap")]);
    let admin = raw_calls_as(
        &daemon,
        &[ADMINS],
        &[
            to_root,
            idmap_call("0:4294967295:2"),
            idmap_call("0:0:65536"),
        ],
    );
    assert_eq!(admin[0], denied("Mount"));
    assert_eq!(
        admin[1]["error"], "io.cfsd.Oci.InvalidIdMap",
        "{}",
        admin[1]
    );
    // The admin group makes variants, as it pulls images; it still may
    // not mount them.
    assert!(
        admin[2]["parameters"]["imageId"].is_string(),
        "{}",
        admin[2]
    );
    let listed = daemon.cfsctl(&["oci", "images"]);
    assert!(stdout(&listed).contains("peer"));
}

#[test]
fn the_daemons_own_user_may_mount_but_not_idmapped() {
    let scratch = tempfile::tempdir().unwrap();
    let (_dir, daemon) = start_as_nobody(scratch.path());
    let replies = raw_calls_at(
        &daemon.socket,
        &[],
        &[mount_call(Some("1000:0:1")), mount_call(None)],
    );
    assert_eq!(
        replies[0],
        json!({"error": "io.cfsd.Oci.PermissionDenied",
               "parameters": {"method": "io.cfsd.Oci.Mount", "uid": NOBODY, "option": "uidmap"}})
    );
    // A plain Mount passes the table and then finds no repository.
    assert_eq!(replies[1]["error"], "io.cfsd.Oci.NotInitialized");
}

#[test]
fn an_admin_who_hangs_up_or_sends_a_huge_map_leaves_the_daemon_serving() {
    let admins = ADMINS.to_string();
    let daemon = Daemon::start_for_nobody(&["--allow-group", &admins]);
    assert!(daemon.cfsctl(&["init"]).status.success());
    let written = Written::new(&Layout::single(&owned_image(), None).0);
    pull(&daemon, &[&written.archive(None), "orig"]);

    // 5,000 ranges: refused by their count, the message kept short.
    let huge: Vec<String> = (0..5000u32)
        .map(|i| format!("{i}:{}:1", 100_000 + i))
        .collect();
    let call = json!({"method": "io.cfsd.Oci.Idmap",
        "parameters": {"image": "orig", "tag": "huge", "uidmap": huge, "gidmap": ["0:0:65536"]}});
    let reply = &raw_calls_as(&daemon, &[ADMINS], &[call])[0];
    assert_eq!(reply["error"], "io.cfsd.Oci.InvalidIdMap", "{reply}");
    assert!(reply.to_string().len() < 1024, "{reply}");

    // Send an Idmap and hang up at once.
    let call = idmap_call("0:0:65536").to_string();
    let script = "import socket, sys\n\
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n\
        s.connect(sys.argv[1]); s.sendall(sys.argv[2].encode() + b'\\0'); s.close()\n";
    let out = cfsd_tests::peer::as_nobody(&[ADMINS], "/usr/bin/python3")
        .args(["-c", script])
        .arg(daemon.socket())
        .arg(&call)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", cfsd_tests::stderr(&out));
    // The daemon goes on; the variant is whole or absent, never half.
    let replies = raw_calls_as(&daemon, &[ADMINS], &[idmap_call("0:0:65536")]);
    assert!(
        replies[0]["parameters"]["imageId"].is_string(),
        "{}",
        replies[0]
    );
    let fsck = daemon.cfsctl(&["fsck"]);
    assert!(fsck.status.success(), "{}", stdout(&fsck));
}
