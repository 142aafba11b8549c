//! The machinery of the crash tests (`tests/tests/crash*.rs`): the
//! images pulled and killed, a daemon holding the base image, calls
//! killed after a delay, the check of what a kill left, and the
//! uninterrupted reference run the kill points are chosen from.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use composefs::{fsverity::Sha256HashValue, repository::Repository};
use rustix::fs::CWD;
use serde_json::Value;

use crate::{
    Daemon, bin,
    delta::tar_diff_delta,
    oci::{Compression, Entry, Image, Layer, Layout, Written, noise, sha256_digest},
    ocictl::{Pulled, json, parse_pull, published, pull, succeeds},
    stderr,
};

/// Kill points per operation and kind of image.
pub const ROUNDS: usize = 6;

/// The image every repository holds before anything is killed.
pub fn base_image() -> Image {
    Image::new(vec![base_layer()]).label("image", "base")
}

/// The base image's one layer.
pub fn base_layer() -> Layer {
    Layer::new(
        Compression::Gzip,
        vec![
            Entry::dir("usr"),
            Entry::dir("usr/lib"),
            Entry::file("usr/lib/base.bin", noise(1, 1 << 20)),
            Entry::file("usr/lib/small", "base\n"),
        ],
    )
}

/// One layer, a few files.
pub fn small_image() -> Image {
    Image::new(vec![Layer::new(
        Compression::None,
        vec![
            Entry::dir("usr"),
            Entry::file("usr/a", noise(2, 60_000)),
            Entry::file("usr/b", "b\n"),
        ],
    )])
    .label("image", "small")
}

/// Three layers of many small files each.
pub fn many_files_image() -> Image {
    let layer = |n: u64, compression| {
        let mut entries = vec![Entry::dir("usr"), Entry::dir(&format!("usr/d{n}"))];
        for i in 0..300 {
            entries.push(Entry::file(
                &format!("usr/d{n}/f{i}"),
                noise(100 * n + i, 1000 + (i as usize % 7) * 500),
            ));
        }
        Layer::new(compression, entries)
    };
    Image::new(vec![
        layer(1, Compression::Gzip),
        layer(2, Compression::Zstd),
        layer(3, Compression::None),
    ])
    .label("image", "many")
}

/// Two large compressed layers.
pub fn large_image() -> Image {
    Image::new(vec![
        Layer::new(
            Compression::Gzip,
            vec![
                Entry::dir("usr"),
                Entry::file("usr/big1", noise(7, 12 << 20)),
            ],
        ),
        Layer::new(
            Compression::Zstd,
            vec![
                Entry::dir("opt"),
                Entry::file("opt/big2", noise(8, 6 << 20)),
                Entry::file("opt/small", "small\n"),
            ],
        ),
    ])
    .label("image", "large")
}

/// The base image's layer plus one rebuilt by a tar-diff from the base
/// image's files.
pub fn delta_target_image() -> Image {
    let mut changed = noise(1, 1 << 20);
    for b in &mut changed[500_000..500_400] {
        *b = b.wrapping_add(3);
    }
    Image::new(vec![
        base_layer(),
        Layer::new(
            Compression::Zstd,
            vec![
                Entry::dir("usr"),
                Entry::dir("usr/lib"),
                Entry::file("usr/lib/base.bin", changed),
                Entry::file("usr/lib/copy.bin", noise(1, 1 << 20)),
                Entry::file("usr/lib/new.bin", noise(9, 500_000)),
            ],
        ),
    ])
    .label("image", "delta-target")
}

/// One kind of image to pull, with what its source is.
pub struct Kind {
    /// The tag it is pulled as.
    pub tag: &'static str,
    /// The source argument of `oci pull`.
    pub source: String,
    /// The manifest digest of the image it gives.
    pub manifest: String,
    /// The diff_ids of its layers.
    pub diff_ids: Vec<String>,
}

/// Every fixture, written once.
pub struct Fixtures {
    /// The source argument of `oci pull` for the base image.
    pub base_source: String,
    /// The base image's manifest digest.
    pub base_manifest: String,
    /// The diff_ids of the base image's layers.
    pub base_diff_ids: Vec<String>,
    /// The images pulled and killed.
    pub kinds: Vec<Kind>,
    _written: Vec<Written>,
}

impl Default for Fixtures {
    /// [`Fixtures::new`].
    fn default() -> Self {
        Self::new()
    }
}

impl Fixtures {
    /// Build and write every image.
    pub fn new() -> Self {
        let mut written = Vec::new();
        let base = base_image();
        let (layout, base_built) = Layout::single(&base, None);
        let w = Written::new(&layout);
        let base_source = w.archive(None);
        written.push(w);

        let mut kinds = Vec::new();
        for (tag, image, directory) in [
            ("small", small_image(), false),
            ("many", many_files_image(), true),
            ("large", large_image(), false),
        ] {
            let (layout, built) = Layout::single(&image, None);
            let w = Written::new(&layout);
            kinds.push(Kind {
                tag,
                source: if directory {
                    w.oci(None)
                } else {
                    w.archive(None)
                },
                manifest: built.manifest_digest.clone(),
                diff_ids: built.diff_ids.clone(),
            });
            written.push(w);
        }

        let target = delta_target_image();
        let (_, target_built) = Layout::single(&target, None);
        let w = Written::new(&tar_diff_delta(&base, &base_built, &target_built, 1));
        kinds.push(Kind {
            tag: "delta",
            source: w.archive(None),
            manifest: target_built.manifest_digest.clone(),
            diff_ids: target_built.diff_ids.clone(),
        });
        written.push(w);

        Fixtures {
            base_source,
            base_manifest: base_built.manifest_digest,
            base_diff_ids: base_built.diff_ids,
            kinds,
            _written: written,
        }
    }

    /// Every diff_id a layer stream may be named after.
    pub fn diff_ids(&self) -> BTreeSet<String> {
        self.kinds
            .iter()
            .flat_map(|k| k.diff_ids.iter().cloned())
            .chain(self.base_diff_ids.iter().cloned())
            .collect()
    }
}

/// A cfsd serving a sha256 repository, holding the base image tagged
/// `base` and `moving`.
pub fn daemon_with_base(fixtures: &Fixtures) -> Daemon {
    let daemon = Daemon::start(&[]);
    succeeds(&daemon, &["init", "--algorithm", "sha256"]);
    let pulled = pull(&daemon, &[&fixtures.base_source, "base"]);
    assert_eq!(pulled.str("manifestDigest"), fixtures.base_manifest);
    succeeds(&daemon, &["oci", "tag", "base", "moving"]);
    daemon
}

/// Run cfsctl against `daemon` without waiting for it.
pub fn spawn_cfsctl(daemon: &Daemon, args: &[&str]) -> Child {
    Command::new(bin("cfsctl"))
        .arg("--address")
        .arg(daemon.address())
        .arg("--json")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running cfsctl")
}

/// How long `oci pull ARGS` takes, run to completion; it must succeed.
pub fn timed_pull(daemon: &Daemon, args: &[&str]) -> (Duration, Pulled) {
    let start = Instant::now();
    let out = spawn_cfsctl(daemon, &[&["oci", "pull"], args].concat())
        .wait_with_output()
        .unwrap();
    let took = start.elapsed();
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    (took, parse_pull(&String::from_utf8_lossy(&out.stdout)))
}

/// A varlink call made on a raw connection opened beforehand, so that its
/// time is the daemon's alone, not a client's start-up.
pub fn timed_call(daemon: &Daemon, call: &Value) -> (Duration, Value) {
    let mut connection = daemon.raw();
    let start = Instant::now();
    let reply = connection.call(call.clone());
    let took = start.elapsed();
    assert!(reply.get("error").is_none(), "{call}: {reply}");
    (took, reply["parameters"].clone())
}

/// What the repository held at the moment of a kill.
pub struct KillSite {
    /// Whether a collection had marked itself running.
    pub gc_marker: bool,
    /// Every object's name.
    pub objects: BTreeSet<String>,
}

/// Send `call` on a connection opened beforehand, SIGKILL the daemon
/// after `delay`, note what it left, restart it on the same repository.
pub fn kill_during_call(daemon: &mut Daemon, call: &Value, delay: Duration) -> KillSite {
    let mut connection = daemon.raw();
    connection.send_bytes(call.to_string().as_bytes());
    std::thread::sleep(delay);
    daemon.kill();
    let site = KillSite {
        gc_marker: daemon.repo().join(GC_MARKER).exists(),
        objects: objects(&daemon.repo()),
    };
    daemon.restart();
    let reply = connection.receive();
    eprintln!("killed at {delay:?} during {call}: reply {reply:?}");
    site
}

/// The file a running collection keeps in the repository.
pub const GC_MARKER: &str = ".cfsd-gc-running";

/// Start `args`, SIGKILL the daemon after `delay`, restart it on the same
/// repository. Whether the call finished first does not matter.
pub fn kill_during(daemon: &mut Daemon, args: &[&str], delay: Duration) {
    let client = spawn_cfsctl(daemon, args);
    std::thread::sleep(delay);
    daemon.kill_and_restart();
    // The client sees its connection close, or had its reply already, or
    // (killed before it connected) is served by the new daemon: in every
    // case it is done before anything is checked.
    let out = client.wait_with_output().unwrap();
    eprintln!(
        "killed at {delay:?} during {args:?}: client {} {}",
        out.status,
        stderr(&out).trim()
    );
}

/// The names of every file under `objects/`.
pub fn objects(repo: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for dir in std::fs::read_dir(repo.join("objects")).unwrap() {
        let dir = dir.unwrap();
        if !dir.file_type().unwrap().is_dir() {
            continue;
        }
        for file in std::fs::read_dir(dir.path()).unwrap() {
            out.insert(format!(
                "{}/{}",
                dir.file_name().to_string_lossy(),
                file.unwrap().file_name().to_string_lossy()
            ));
        }
    }
    out
}

/// What may be found after a kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Anything but GC: `fsck` must be clean.
    Other,
    /// GC: what it had begun to remove may be left half removed (see
    /// `crash_gc.rs`), but nothing a tag reaches.
    Gc,
}

/// What the repository publishes, checked for consistency: tag → manifest
/// digest. `ids` maps every manifest digest an image may have to the
/// image id an uninterrupted run gave it; `diff_ids` are every layer's.
pub fn check(
    daemon: &Daemon,
    ids: &BTreeMap<String, String>,
    diff_ids: &BTreeSet<String>,
    after: After,
    context: &str,
) -> BTreeMap<String, String> {
    let state = published(&daemon.repo());
    let list = json(daemon, &["oci", "images"]);
    let listed = list["images"].as_array().unwrap();
    let mut tags = BTreeMap::new();
    // What the tags reach: manifest, config and layer digests, image ids.
    let mut live = BTreeSet::new();
    let mut live_layers = BTreeSet::new();
    for image in listed {
        let name = image["name"].as_str().unwrap().to_owned();
        let manifest = image["manifestDigest"].as_str().unwrap().to_owned();
        let image_id = image["imageId"]
            .as_str()
            .unwrap_or_else(|| panic!("{context}: {name} has no EROFS image: {image}"));
        assert_eq!(
            ids.get(&manifest).map(String::as_str),
            Some(image_id),
            "{context}: {name} is not the image an uninterrupted run gave"
        );
        assert!(
            state.images.contains(image_id),
            "{context}: images/{image_id} of {name} is missing"
        );
        let inspect = json(daemon, &["oci", "inspect", &name]);
        assert_eq!(inspect["manifestDigest"], manifest.as_str(), "{context}");
        assert_eq!(inspect["imageId"], image_id, "{context}");
        for diff_id in inspect["config"]["rootfs"]["diff_ids"].as_array().unwrap() {
            live_layers.insert(diff_id.as_str().unwrap().to_owned());
        }
        live.insert(inspect["configDigest"].as_str().unwrap().to_owned());
        live.insert(image_id.to_owned());
        live.insert(manifest.clone());
        tags.insert(name, manifest);
    }
    live.extend(live_layers.iter().cloned());
    // Every tag on disk is listed: none names an unreadable image.
    assert_eq!(
        state.tags.keys().cloned().collect::<BTreeSet<_>>(),
        tags.keys().cloned().collect::<BTreeSet<_>>(),
        "{context}: tags on disk vs `oci images`"
    );

    let out = daemon.cfsctl(&["--json", "fsck"]);
    let fsck: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{context}: fsck ({e}): {}", stderr(&out)));
    match after {
        After::Other => {
            assert!(out.status.success(), "{context}: fsck: {fsck:#}");
            assert_eq!(fsck["ok"], true, "{context}: fsck: {fsck:#}");
        }
        After::Gc => {
            for problem in fsck["problems"].as_array().unwrap() {
                let detail = problem["detail"].as_str().unwrap();
                assert!(
                    !live.iter().any(|l| detail.contains(l.as_str())),
                    "{context}: fsck finds live content damaged: {detail}"
                );
            }
        }
    }

    // Every named layer stream is a whole, verified layer (after a
    // killed GC: every one a tag reaches).
    let repo = Repository::<Sha256HashValue>::open_path(CWD, daemon.repo()).unwrap();
    for name in state.streams_starting("oci-layer-") {
        let diff_id = name.strip_prefix("oci-layer-").unwrap();
        assert!(
            diff_ids.contains(diff_id),
            "{context}: unknown stream {name}"
        );
        if after == After::Gc && !live_layers.contains(diff_id) {
            continue;
        }
        let mut tar = Vec::new();
        composefs_oci::layer_tar(&repo, &diff_id.parse().unwrap(), &mut tar)
            .unwrap_or_else(|e| panic!("{context}: reading {name}: {e:#}"));
        assert_eq!(sha256_digest(&tar), diff_id, "{context}: {name}");
    }
    tags
}

/// Where a kill landed, judged by what it left. A kill that landed in
/// none of [`REQUIRED`] proves less, so the test retries other delays
/// until each of them has been hit.
pub const PULL_NOTHING: &str = "pull: nothing written";
/// A pull killed once it had written objects, before naming any.
pub const PULL_OBJECTS: &str = "pull: objects written, nothing named";
/// A pull killed once it had named some layer streams.
pub const PULL_STREAMS: &str = "pull: some layer streams named";
/// A pull killed once it had named its manifest, before tagging it.
pub const PULL_MANIFEST: &str = "pull: manifest named, untagged";
/// A pull killed once it had tagged its image.
pub const PULL_TAGGED: &str = "pull: tagged";
/// A GC killed before it began.
pub const GC_NOT_BEGUN: &str = "gc: not begun";
/// A GC killed once marked running, before removing anything.
pub const GC_MARKED: &str = "gc: marked, nothing removed yet";
/// A GC killed half way, which the restart finishes.
pub const GC_HALF_DONE: &str = "gc: half done, finished by the restart";
/// A GC killed once done.
pub const GC_DONE: &str = "gc: done";

/// Where a kill of a pull or a GC can land, in the order they come.
pub const PULL_PHASES: [&str; 5] = [
    PULL_NOTHING,
    PULL_OBJECTS,
    PULL_STREAMS,
    PULL_MANIFEST,
    PULL_TAGGED,
];
/// Every phase a GC may be killed in.
pub const GC_PHASES: [&str; 4] = [GC_NOT_BEGUN, GC_MARKED, GC_HALF_DONE, GC_DONE];

/// The phases every run must have killed in.
pub const REQUIRED: [&str; 3] = [PULL_STREAMS, PULL_MANIFEST, GC_HALF_DONE];

/// Extra rounds at most, with other delays, to hit a missed phase.
pub const RETRIES: usize = 32;

/// What a killed pull of `tag` left, beyond the streams `before`.
pub fn phase(
    daemon: &Daemon,
    before: &BTreeMap<String, String>,
    tags: &BTreeMap<String, String>,
    tag: &str,
    new_objects: usize,
) -> &'static str {
    let now = published(&daemon.repo()).streams;
    let new: Vec<&String> = now.keys().filter(|n| !before.contains_key(*n)).collect();
    if tags.contains_key(tag) {
        PULL_TAGGED
    } else if new.iter().any(|n| n.starts_with("oci-manifest-")) {
        PULL_MANIFEST
    } else if !new.is_empty() {
        PULL_STREAMS
    } else if new_objects > 0 {
        PULL_OBJECTS
    } else {
        PULL_NOTHING
    }
}

/// Where a killed GC was, from the repository as the kill left it, before
/// any restart could finish the collection.
pub fn gc_phase(
    at_kill: &KillSite,
    garbage: &BTreeSet<String>,
    before: &BTreeSet<String>,
) -> &'static str {
    if at_kill.objects == *before {
        GC_DONE
    } else if !at_kill.gc_marker {
        GC_NOT_BEGUN
    } else if at_kill.objects == *garbage {
        GC_MARKED
    } else {
        GC_HALF_DONE
    }
}

/// The GC report numbers.
pub fn removed(report: &Value) -> u64 {
    report["objectsRemoved"]
        .as_u64()
        .unwrap_or_else(|| panic!("no objectsRemoved: {report}"))
}

/// `io.cfsd.Oci.Tag`: point `moving` at `image`.
pub fn tag_call(image: &str) -> Value {
    serde_json::json!({"method": "io.cfsd.Oci.Tag", "parameters": {"image": image, "tag": "moving"}})
}

/// `io.cfsd.Oci.Remove` of `image`.
pub fn rm_call(image: &str) -> Value {
    serde_json::json!({"method": "io.cfsd.Oci.Remove", "parameters": {"image": image}})
}

/// `io.cfsd.Repository.Gc`, collecting.
pub fn gc_call() -> Value {
    serde_json::json!({"method": "io.cfsd.Repository.Gc", "parameters": {"dryRun": false}})
}

/// What an uninterrupted run measured.
pub struct Reference {
    /// Manifest digest → image id.
    pub ids: BTreeMap<String, String>,
    /// Per kind: how long pull, tag, rm and gc took.
    pub times: Vec<[Duration; 4]>,
}

/// Time every operation on every kind, uninterrupted, and note the image
/// ids they give.
pub fn reference(fixtures: &Fixtures) -> Reference {
    let daemon = daemon_with_base(fixtures);
    let base = json(&daemon, &["oci", "inspect", "base"]);
    let mut ids = BTreeMap::from([(
        fixtures.base_manifest.clone(),
        base["imageId"].as_str().unwrap().to_owned(),
    )]);
    let mut times = Vec::new();
    for kind in &fixtures.kinds {
        let (pull_time, pulled) = timed_pull(&daemon, &[&kind.source, kind.tag]);
        assert_eq!(pulled.str("manifestDigest"), kind.manifest);
        ids.insert(kind.manifest.clone(), pulled.str("imageId").to_owned());
        let (tag_time, _) = timed_call(&daemon, &tag_call(kind.tag));
        succeeds(&daemon, &["oci", "tag", "base", "moving"]);
        let (rm_time, _) = timed_call(&daemon, &rm_call(kind.tag));
        let (gc_time, gc) = timed_call(&daemon, &gc_call());
        assert!(removed(&gc) > 0, "{gc}");
        times.push([pull_time, tag_time, rm_time, gc_time]);
        eprintln!(
            "reference {}: pull {pull_time:?}, tag {tag_time:?}, rm {rm_time:?}, gc {gc_time:?}",
            kind.tag
        );
    }
    Reference { ids, times }
}
