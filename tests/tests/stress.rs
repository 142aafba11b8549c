//! Many clients at once against one cfsd (issue #6): eight clients pull
//! the same and different images, full and delta, while another collects
//! garbage in a loop and a third lists and inspects. Afterwards:
//!
//! - every pull succeeded and gave the image id a lone pull gives;
//! - `fsck` is clean, every tag is listed and names a complete image, and
//!   every layer stream gives back a tar whose sha256 is its diff_id;
//! - an image pulled by several clients at once is imported once: the
//!   other pulls wait for that import and only tag the image, with no new
//!   objects;
//! - it is stored once: after a final GC the object store holds exactly
//!   as many objects as a repository into which each image was pulled
//!   once;
//! - listing and inspecting never failed, except with `ImageNotFound` for
//!   a tag not yet set.
//!
//! That the eight clients' identical pulls overlapped is likely, not
//! certain; a second test makes two of them overlap for sure, holding the
//! first one's writes, and sees the second wait for it.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Barrier,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use cfsd_tests::{
    Daemon,
    delta::tar_diff_delta,
    oci::{BuiltImage, Compression, Entry, Image, Layer, Layout, Written, noise, sha256_digest},
    ocictl::{PrivateRepo, Target, json, object_count, parse_pull, published, pull, succeeds},
    stalled::{Stalled, finished_within},
    stderr, stdout,
};
use composefs::{fsverity::Sha256HashValue, repository::Repository};
use rustix::fs::CWD;
use serde_json::{Value, json};

const ALGORITHM: &str = "sha256";

/// A layer of a few files, different for each `seed`.
fn layer(seed: u64, dir: &str, compression: Compression) -> Layer {
    Layer::new(
        compression,
        vec![
            Entry::dir(dir),
            Entry::file(&format!("{dir}/data.bin"), noise(seed, 200_000)),
            Entry::file(&format!("{dir}/more.bin"), noise(seed + 100, 50_000)),
            Entry::file(&format!("{dir}/small"), format!("seed {seed}\n")),
        ],
    )
}

/// A base image and the image a tar-diff delta against it rebuilds: the
/// base's layer plus one that changes a few bytes of the base's file.
fn base_and_target(seed: u64) -> (Image, Image) {
    let base = Image::new(vec![layer(seed, "usr", Compression::Gzip)]);
    let mut changed = noise(seed, 200_000);
    for b in &mut changed[100_000..100_200] {
        *b = b.wrapping_add(1);
    }
    let target = Image::new(vec![
        layer(seed, "usr", Compression::Gzip),
        Layer::new(
            Compression::Zstd,
            vec![
                Entry::dir("usr"),
                Entry::file("usr/data.bin", changed),
                Entry::file("usr/new.bin", noise(seed + 7, 80_000)),
            ],
        ),
    ]);
    (base, target)
}

/// One image a client may pull.
struct Source {
    /// The `oci pull` source argument.
    arg: String,
    /// The manifest digest the pull gives.
    manifest: String,
    /// Every layer's diff_id.
    diff_ids: Vec<String>,
}

/// Every source, written once.
struct Fixtures {
    bases: Vec<Source>,
    /// img1, img2, img3, delta1, delta2.
    pulls: Vec<Source>,
    _written: Vec<Written>,
}

fn source(written: &mut Vec<Written>, layout: &Layout, built: &BuiltImage, dir: bool) -> Source {
    let w = Written::new(layout);
    let arg = if dir { w.oci(None) } else { w.archive(None) };
    written.push(w);
    Source {
        arg,
        manifest: built.manifest_digest.clone(),
        diff_ids: built.diff_ids.clone(),
    }
}

impl Fixtures {
    fn new() -> Self {
        let mut written = Vec::new();
        let mut bases = Vec::new();
        let mut deltas = Vec::new();
        for seed in [1, 2] {
            let (base, target) = base_and_target(seed);
            let (layout, base_built) = Layout::single(&base, None);
            bases.push(source(&mut written, &layout, &base_built, false));
            let (_, target_built) = Layout::single(&target, None);
            let delta = tar_diff_delta(&base, &base_built, &target_built, 1);
            deltas.push(source(&mut written, &delta, &target_built, false));
        }
        // img2 shares its lower layer with img1, so that layer is imported
        // by many pulls at once; img3 is read from a directory.
        let images = [
            (vec![layer(10, "usr", Compression::Gzip)], false),
            (
                vec![
                    layer(10, "usr", Compression::Gzip),
                    layer(11, "opt", Compression::None),
                ],
                false,
            ),
            (
                vec![
                    layer(12, "usr", Compression::Zstd),
                    layer(13, "etc", Compression::Gzip),
                ],
                true,
            ),
        ];
        let mut pulls = Vec::new();
        for (layers, dir) in images {
            let (layout, built) = Layout::single(&Image::new(layers), None);
            pulls.push(source(&mut written, &layout, &built, dir));
        }
        pulls.extend(deltas);
        Fixtures {
            bases,
            pulls,
            _written: written,
        }
    }

    fn diff_ids(&self) -> BTreeSet<String> {
        self.bases
            .iter()
            .chain(&self.pulls)
            .flat_map(|s| s.diff_ids.iter().cloned())
            .collect()
    }
}

/// What each of the eight clients pulls, in order, by index into
/// [`Fixtures::pulls`]: each image by at least two clients at once, the
/// deltas (3 and 4) among them.
const CLIENTS: [[usize; 3]; 8] = [
    [0, 1, 3],
    [0, 2, 4],
    [1, 0, 2],
    [2, 1, 0],
    [3, 2, 1],
    [3, 0, 4],
    [4, 1, 2],
    [4, 3, 0],
];

fn tag(client: usize, image: usize) -> String {
    format!("c{client}-img{image}")
}

/// Pull each image once, in order, into a fresh repository: manifest
/// digest → image id, and the objects left after GC.
fn reference(fixtures: &Fixtures) -> (BTreeMap<String, String>, usize) {
    let repo = PrivateRepo::init(ALGORITHM);
    let mut ids = BTreeMap::new();
    for (i, s) in fixtures.bases.iter().chain(&fixtures.pulls).enumerate() {
        let pulled = pull(&repo, &[&s.arg, &format!("ref{i}")]);
        assert_eq!(pulled.str("manifestDigest"), s.manifest);
        ids.insert(s.manifest.clone(), pulled.str("imageId").to_owned());
    }
    succeeds(&repo, &["gc"]);
    (ids, object_count(&repo.repo_path()))
}

/// Run one client's pulls; each one's tag and result.
fn client(daemon: &Daemon, fixtures: &Fixtures, n: usize) -> Vec<(String, Result<Value, String>)> {
    CLIENTS[n]
        .iter()
        .map(|&image| {
            let tag = tag(n, image);
            let out = daemon.cfsctl(&["--json", "oci", "pull", &fixtures.pulls[image].arg, &tag]);
            let result = if out.status.success() {
                Ok(parse_pull(&stdout(&out)).result)
            } else {
                Err(format!("{}: {}", out.status, stderr(&out)))
            };
            (tag, result)
        })
        .collect()
}

/// GC until `done`; how many collections ran, and any that failed.
fn collector(daemon: &Daemon, done: &AtomicBool) -> (usize, Vec<String>) {
    let (mut runs, mut failures) = (0, Vec::new());
    while !done.load(Ordering::SeqCst) {
        let out = daemon.cfsctl(&["--json", "gc"]);
        runs += 1;
        if !out.status.success() {
            failures.push(stderr(&out));
        }
    }
    (runs, failures)
}

/// List and inspect until `done`: every listed image, and each of the
/// tags the pulls will set. How many calls were made, and every error but
/// `ImageNotFound` for a tag that was not listed.
fn lister(daemon: &Daemon, tags: &[String], done: &AtomicBool) -> (usize, Vec<Value>) {
    let mut connection = daemon.raw();
    let (mut calls, mut errors) = (0, Vec::new());
    let mut call = |method: &str, parameters: Value, may_be_missing: bool| {
        calls += 1;
        let reply = connection.call(json!({"method": method, "parameters": parameters}));
        let unexpected = reply
            .get("error")
            .is_some_and(|e| !(may_be_missing && e == "io.cfsd.Oci.ImageNotFound"));
        if unexpected {
            errors.push(json!({"call": parameters, "reply": reply}));
        }
        reply
    };
    while !done.load(Ordering::SeqCst) {
        let list = call("io.cfsd.Oci.ListImages", json!({}), false);
        let listed: BTreeSet<String> = list["parameters"]["images"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["name"].as_str().map(str::to_owned))
            .collect();
        for name in &listed {
            call("io.cfsd.Oci.Inspect", json!({"image": name}), false);
        }
        for tag in tags.iter().filter(|t| !listed.contains(*t)) {
            call("io.cfsd.Oci.Inspect", json!({"image": tag}), true);
        }
    }
    (calls, errors)
}

/// Every tag is listed with the image id a lone pull gives, its EROFS
/// image is on disk, fsck is clean and every layer stream reproduces its
/// diff_id.
fn check_repository(
    daemon: &Daemon,
    ids: &BTreeMap<String, String>,
    tags: &BTreeSet<String>,
    diff_ids: &BTreeSet<String>,
) {
    let state = published(&daemon.repo());
    assert_eq!(&state.tags.keys().cloned().collect::<BTreeSet<_>>(), tags);
    let list = json(daemon, &["oci", "images"]);
    let mut listed = BTreeSet::new();
    for image in list["images"].as_array().unwrap() {
        let name = image["name"].as_str().unwrap();
        let id = image["imageId"].as_str().unwrap();
        assert_eq!(
            Some(id),
            ids.get(image["manifestDigest"].as_str().unwrap())
                .map(String::as_str),
            "{name}"
        );
        assert!(state.images.contains(id), "images/{id} of {name}");
        listed.insert(name.to_owned());
    }
    assert_eq!(&listed, tags, "`oci images` vs the tags on disk");

    let fsck = json(daemon, &["fsck"]);
    assert_eq!(fsck["ok"], true, "{fsck:#}");

    let repo = Repository::<Sha256HashValue>::open_path(CWD, daemon.repo()).unwrap();
    let layers = state.streams_starting("oci-layer-");
    assert_eq!(
        layers
            .iter()
            .map(|n| n["oci-layer-".len()..].to_owned())
            .collect::<BTreeSet<_>>(),
        *diff_ids
    );
    for name in layers {
        let diff_id = &name["oci-layer-".len()..];
        let mut tar = Vec::new();
        composefs_oci::layer_tar(&repo, &diff_id.parse().unwrap(), &mut tar)
            .unwrap_or_else(|e| panic!("reading {name}: {e:#}"));
        assert_eq!(sha256_digest(&tar), diff_id, "{name}");
    }
}

#[test]
fn eight_clients_pull_while_gc_runs_and_others_list() {
    let fixtures = Fixtures::new();
    let (ids, reference_objects) = reference(&fixtures);

    let daemon = Daemon::start(&[]);
    succeeds(&daemon, &["init", "--algorithm", ALGORITHM]);
    let mut tags = BTreeSet::new();
    for (i, base) in fixtures.bases.iter().enumerate() {
        pull(&daemon, &[&base.arg, &format!("base{i}")]);
        tags.insert(format!("base{i}"));
    }
    let client_tags: Vec<String> = (0..CLIENTS.len())
        .flat_map(|n| CLIENTS[n].map(|image| tag(n, image)))
        .collect();
    tags.extend(client_tags.iter().cloned());

    let done = AtomicBool::new(false);
    let start = Barrier::new(CLIENTS.len() + 2);
    let (pulls, (gc_runs, gc_failures), (calls, list_errors)) = thread::scope(|s| {
        let clients: Vec<_> = (0..CLIENTS.len())
            .map(|n| {
                let (daemon, fixtures, start) = (&daemon, &fixtures, &start);
                s.spawn(move || {
                    start.wait();
                    client(daemon, fixtures, n)
                })
            })
            .collect();
        let gc = s.spawn(|| {
            start.wait();
            collector(&daemon, &done)
        });
        let list = s.spawn(|| {
            start.wait();
            lister(&daemon, &client_tags, &done)
        });
        let pulls: Vec<_> = clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect();
        done.store(true, Ordering::SeqCst);
        (pulls, gc.join().unwrap(), list.join().unwrap())
    });
    eprintln!(
        "{} pulls, {gc_runs} collections, {calls} list and inspect calls",
        pulls.len()
    );

    for (tag, result) in &pulls {
        let result = result
            .as_ref()
            .unwrap_or_else(|e| panic!("pull of {tag} failed: {e}"));
        let image: usize = tag.rsplit_once("img").unwrap().1.parse().unwrap();
        let source = &fixtures.pulls[image];
        assert_eq!(result["manifestDigest"], source.manifest.as_str(), "{tag}");
        assert_eq!(result["imageId"], ids[&source.manifest].as_str(), "{tag}");
    }
    // Pulls of one image at once are run one after the other: the first
    // imports it, the others find it complete and only tag it.
    for (image, source) in fixtures.pulls.iter().enumerate() {
        let of_image: Vec<&Value> = pulls
            .iter()
            .filter(|(tag, _)| tag.ends_with(&format!("img{image}")))
            .map(|(_, r)| r.as_ref().unwrap())
            .collect();
        let imported: Vec<_> = of_image
            .iter()
            .filter(|r| r["alreadyPresent"] == false)
            .collect();
        assert_eq!(
            imported.len(),
            1,
            "img{image} ({}) imported by: {imported:#?}",
            source.manifest
        );
        for r in of_image.iter().filter(|r| r["alreadyPresent"] == true) {
            assert_eq!(r["objectsNew"], 0, "img{image}: {r}");
        }
        // Only a pull that found the image present can have shared an
        // import, and the one that imported it shared nothing.
        for r in &imported {
            assert_eq!(r["sharedImport"], false, "img{image}: {r}");
        }
    }
    assert!(gc_failures.is_empty(), "GC failed: {gc_failures:?}");
    assert!(gc_runs > 1, "GC ran {gc_runs} times while pulling");
    assert!(
        list_errors.is_empty(),
        "list or inspect failed: {list_errors:#?}"
    );

    check_repository(&daemon, &ids, &tags, &fixtures.diff_ids());
    // What concurrent pulls stored twice, or left behind, GC removes: the
    // store is then what lone pulls of each image leave.
    succeeds(&daemon, &["gc"]);
    assert_eq!(object_count(&daemon.repo()), reference_objects);
    check_repository(&daemon, &ids, &tags, &fixtures.diff_ids());
}

/// A pull of an image that arrives while an identical pull is importing
/// it waits for that import, then only tags the image, and says it shared
/// the import. The overlap is made certain: the first pull's writes are
/// held (it is stuck inside its import) until the daemon has logged that
/// the second one waits for it.
#[test]
fn an_identical_pull_arriving_during_an_import_waits_and_shares_it() {
    let image = Image::new(vec![
        layer(20, "usr", Compression::Gzip),
        layer(21, "opt", Compression::None),
    ]);
    let (layout, built) = Layout::single(&image, None);
    let written = Written::new(&layout);
    let archive = written.archive(None);
    let stalled = Stalled::start();

    stalled.fs.hold_writes();
    let mut first = stalled.spawn_pull(&[&archive, "first"]);
    stalled
        .fs
        .wait_for_held_write(Duration::from_secs(60), "the first pull");
    let mut second = stalled.spawn_pull(&[&archive, "second"]);
    stalled.wait_for_log(
        "pull waits for an identical pull's import",
        Duration::from_secs(60),
    );
    // Both are in flight at once: the first is stuck in its import, the
    // second waits for it.
    assert!(first.try_wait().unwrap().is_none(), "the first pull ended");
    assert!(
        second.try_wait().unwrap().is_none(),
        "the second pull ended"
    );
    stalled.fs.release();

    let mut results = Vec::new();
    for (name, child) in [("first", first), ("second", second)] {
        let out = finished_within(child, Duration::from_secs(120))
            .unwrap_or_else(|| panic!("the {name} pull did not finish"));
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let pulled = parse_pull(&stdout(&out));
        assert_eq!(
            pulled.str("manifestDigest"),
            built.manifest_digest,
            "{name}"
        );
        results.push(pulled.result);
    }
    let (first, second) = (&results[0], &results[1]);
    assert_eq!(first["imageId"], second["imageId"]);
    assert_eq!(first["alreadyPresent"], false, "{first}");
    assert_eq!(first["sharedImport"], false, "{first}");
    assert!(first["objectsNew"].as_u64().unwrap() > 0, "{first}");
    assert_eq!(second["alreadyPresent"], true, "{second}");
    assert_eq!(second["sharedImport"], true, "{second}");
    assert_eq!(second["objectsNew"], 0, "{second}");
    // Both tags name the one image, and the store is whole.
    for tag in ["first", "second"] {
        let inspected = stalled.answered(&["oci", "inspect", tag]);
        assert_eq!(inspected["manifestDigest"], built.manifest_digest.as_str());
    }
    let fsck = stalled.answered(&["fsck"]);
    assert_eq!(fsck["ok"], true, "{fsck}");
}
