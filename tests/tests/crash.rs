//! Crash safety: cfsd is SIGKILLed at many points in time during full
//! pulls, delta pulls, tag changes, image removal and GC, restarted on the
//! same repository, and what it left is checked on disk and through
//! cfsctl:
//!
//! - `fsck` finds nothing wrong;
//! - every tag names a complete image: `oci images` lists exactly the
//!   tags, each with its EROFS image present under `images/` and the image
//!   id an uninterrupted run gave, and `oci inspect` agrees;
//! - every `oci-layer-<diff_id>` stream gives back, read with composefs-rs's
//!   own code, a tar whose sha256 is that diff_id;
//! - what was there before (the base image and its tags) is untouched;
//! - running the interrupted operation again succeeds and gives the image
//!   id of an uninterrupted run;
//! - nothing is removed by a restart or a later pull: only GC removes the
//!   objects an interrupted import left, `gc --dry-run` counts them, `gc`
//!   reports them, and afterwards the object store is exactly what it was
//!   before the image came.
//!
//! The kill points are chosen deterministically: each operation is first
//! timed in an uninterrupted reference run, then killed at spread-out
//! fractions of that time; images of different sizes and shapes (one small
//! layer, many small files, large compressed layers, a tar-diff delta)
//! make the same fractions land in different phases (reading, splitting,
//! naming streams, building the EROFS image, rewriting the config and
//! manifest, tagging). Every assertion holds whichever phase a kill hit.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use cfsd_tests::{
    Daemon, bin,
    delta::tar_diff_delta,
    oci::{Compression, Entry, Image, Layer, Layout, Written, noise, sha256_digest},
    ocictl::{Pulled, json, parse_pull, published, pull, succeeds},
    stderr,
};
use composefs::{fsverity::Sha256HashValue, repository::Repository};
use rustix::fs::CWD;
use serde_json::Value;

/// Kill points per operation and kind of image.
const ROUNDS: usize = 6;

/// The image every repository holds before anything is killed.
fn base_image() -> Image {
    Image::new(vec![base_layer()]).label("image", "base")
}

fn base_layer() -> Layer {
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
fn small_image() -> Image {
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
fn many_files_image() -> Image {
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
fn large_image() -> Image {
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
fn delta_target_image() -> Image {
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
struct Kind {
    /// The tag it is pulled as.
    tag: &'static str,
    /// The source argument of `oci pull`.
    source: String,
    /// The manifest digest of the image it gives.
    manifest: String,
    /// The diff_ids of its layers.
    diff_ids: Vec<String>,
}

/// Every fixture, written once.
struct Fixtures {
    base_source: String,
    base_manifest: String,
    base_diff_ids: Vec<String>,
    kinds: Vec<Kind>,
    _written: Vec<Written>,
}

impl Fixtures {
    fn new() -> Self {
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
    fn diff_ids(&self) -> BTreeSet<String> {
        self.kinds
            .iter()
            .flat_map(|k| k.diff_ids.iter().cloned())
            .chain(self.base_diff_ids.iter().cloned())
            .collect()
    }
}

/// A cfsd serving a sha256 repository, holding the base image tagged
/// `base` and `moving`.
fn daemon_with_base(fixtures: &Fixtures) -> Daemon {
    let daemon = Daemon::start(&[]);
    succeeds(&daemon, &["init", "--algorithm", "sha256"]);
    let pulled = pull(&daemon, &[&fixtures.base_source, "base"]);
    assert_eq!(pulled.str("manifestDigest"), fixtures.base_manifest);
    succeeds(&daemon, &["oci", "tag", "base", "moving"]);
    daemon
}

/// Run cfsctl against `daemon` without waiting for it.
fn spawn_cfsctl(daemon: &Daemon, args: &[&str]) -> Child {
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
fn timed_pull(daemon: &Daemon, args: &[&str]) -> (Duration, Pulled) {
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
fn timed_call(daemon: &Daemon, call: &Value) -> (Duration, Value) {
    let mut connection = daemon.raw();
    let start = Instant::now();
    let reply = connection.call(call.clone());
    let took = start.elapsed();
    assert!(reply.get("error").is_none(), "{call}: {reply}");
    (took, reply["parameters"].clone())
}

/// What the repository held at the moment of a kill.
struct KillSite {
    /// Whether a collection had marked itself running.
    gc_marker: bool,
    /// Every object's name.
    objects: BTreeSet<String>,
}

/// Send `call` on a connection opened beforehand, SIGKILL the daemon
/// after `delay`, note what it left, restart it on the same repository.
fn kill_during_call(daemon: &mut Daemon, call: &Value, delay: Duration) -> KillSite {
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
const GC_MARKER: &str = ".cfsd-gc-running";

/// Start `args`, SIGKILL the daemon after `delay`, restart it on the same
/// repository. Whether the call finished first does not matter.
fn kill_during(daemon: &mut Daemon, args: &[&str], delay: Duration) {
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
fn objects(repo: &Path) -> BTreeSet<String> {
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
enum After {
    /// Anything but GC: `fsck` must be clean.
    Other,
    /// GC: what it had begun to remove may be left half removed (see
    /// [`a_killed_gc_leaves_no_damaged_stream_that_a_pull_reuses`]), but
    /// nothing a tag reaches.
    Gc,
}

/// What the repository publishes, checked for consistency: tag → manifest
/// digest. `ids` maps every manifest digest an image may have to the
/// image id an uninterrupted run gave it; `diff_ids` are every layer's.
fn check(
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
const PULL_NOTHING: &str = "pull: nothing written";
const PULL_OBJECTS: &str = "pull: objects written, nothing named";
const PULL_STREAMS: &str = "pull: some layer streams named";
const PULL_MANIFEST: &str = "pull: manifest named, untagged";
const PULL_TAGGED: &str = "pull: tagged";
const GC_NOT_BEGUN: &str = "gc: not begun";
const GC_MARKED: &str = "gc: marked, nothing removed yet";
const GC_HALF_DONE: &str = "gc: half done, finished by the restart";
const GC_DONE: &str = "gc: done";

/// Where a kill of a pull or a GC can land, in the order they come.
const PULL_PHASES: [&str; 5] = [
    PULL_NOTHING,
    PULL_OBJECTS,
    PULL_STREAMS,
    PULL_MANIFEST,
    PULL_TAGGED,
];
const GC_PHASES: [&str; 4] = [GC_NOT_BEGUN, GC_MARKED, GC_HALF_DONE, GC_DONE];

/// The phases every run must have killed in.
const REQUIRED: [&str; 3] = [PULL_STREAMS, PULL_MANIFEST, GC_HALF_DONE];

/// Extra rounds at most, with other delays, to hit a missed phase.
const RETRIES: usize = 32;

/// What a killed pull of `tag` left, beyond the streams `before`.
fn phase(
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
fn gc_phase(
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
fn removed(report: &Value) -> u64 {
    report["objectsRemoved"]
        .as_u64()
        .unwrap_or_else(|| panic!("no objectsRemoved: {report}"))
}

/// `io.cfsd.Oci.Tag`: point `moving` at `image`.
fn tag_call(image: &str) -> Value {
    serde_json::json!({"method": "io.cfsd.Oci.Tag", "parameters": {"image": image, "tag": "moving"}})
}

/// `io.cfsd.Oci.Remove` of `image`.
fn rm_call(image: &str) -> Value {
    serde_json::json!({"method": "io.cfsd.Oci.Remove", "parameters": {"image": image}})
}

/// `io.cfsd.Repository.Gc`, collecting.
fn gc_call() -> Value {
    serde_json::json!({"method": "io.cfsd.Repository.Gc", "parameters": {"dryRun": false}})
}

/// What an uninterrupted run measured.
struct Reference {
    /// Manifest digest → image id.
    ids: BTreeMap<String, String>,
    /// Per kind: how long pull, tag, rm and gc took.
    times: Vec<[Duration; 4]>,
}

fn reference(fixtures: &Fixtures) -> Reference {
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

#[test]
fn sigkill_at_any_point_leaves_the_old_state_or_the_new_one() {
    let fixtures = Fixtures::new();
    let mut daemon = daemon_with_base(&fixtures);
    let mut crashes = Crashes::new(&fixtures, &daemon);
    let kinds = fixtures.kinds.len();
    for round in 0..ROUNDS {
        for k in 0..kinds {
            // Fractions in (0, 1.2): every kind and round another one.
            let fraction = (round as f64 + (k + 1) as f64 / (kinds + 1) as f64) / ROUNDS as f64;
            crashes.round(&mut daemon, k, fraction * 1.2);
        }
    }
    // Where a kill lands is a matter of timing, and on a loaded machine a
    // narrow phase is easily missed: the delay is narrowed down on the
    // missed phase, between the latest kill that landed before it and the
    // earliest that landed after it.
    let mut extra = 0;
    loop {
        let missed = crashes.missed();
        if missed.is_empty() || extra >= RETRIES {
            break;
        }
        let target = missed[extra % missed.len()];
        let k = extra % kinds;
        let fraction = crashes.aim(k, target, extra);
        crashes.round(&mut daemon, k, fraction);
        extra += 1;
    }
    eprintln!(
        "{} kill points ({extra} retry rounds); they left: {:?}",
        crashes.kills, crashes.phases
    );
    assert!(crashes.kills >= 50, "{}", crashes.kills);
    assert_eq!(
        crashes.missed(),
        Vec::<&str>::new(),
        "no kill landed there: {:?}",
        crashes.phases
    );
}

/// The state every round starts from and returns to, and where the kills
/// landed so far.
struct Crashes<'f> {
    fixtures: &'f Fixtures,
    reference: Reference,
    diff_ids: BTreeSet<String>,
    /// The objects before any image came: the base image's.
    before: BTreeSet<String>,
    before_tags: BTreeMap<String, String>,
    before_streams: BTreeMap<String, String>,
    kills: usize,
    phases: BTreeMap<&'static str, usize>,
    /// Every kill: the kind of image, the fraction, and where it landed.
    history: Vec<(usize, f64, &'static str)>,
}

impl<'f> Crashes<'f> {
    fn new(fixtures: &'f Fixtures, daemon: &Daemon) -> Self {
        let reference = reference(fixtures);
        json(daemon, &["gc"]);
        let before_tags = BTreeMap::from([
            ("base".to_owned(), fixtures.base_manifest.clone()),
            ("moving".to_owned(), fixtures.base_manifest.clone()),
        ]);
        let crashes = Crashes {
            fixtures,
            diff_ids: fixtures.diff_ids(),
            reference,
            before: objects(&daemon.repo()),
            before_tags,
            before_streams: published(&daemon.repo()).streams,
            kills: 0,
            phases: BTreeMap::new(),
            history: Vec::new(),
        };
        assert_eq!(
            crashes.check(daemon, After::Other, "start"),
            crashes.before_tags
        );
        assert_eq!(removed(&json(daemon, &["gc", "--dry-run"])), 0);
        crashes
    }

    /// The phases in [`REQUIRED`] that no kill has landed in yet.
    fn missed(&self) -> Vec<&'static str> {
        REQUIRED
            .into_iter()
            .filter(|p| !self.phases.contains_key(p))
            .collect()
    }

    fn landed(&mut self, k: usize, fraction: f64, phase: &'static str) {
        self.kills += 1;
        *self.phases.entry(phase).or_default() += 1;
        self.history.push((k, fraction, phase));
        eprintln!("{} at {fraction:.4}: {phase}", self.fixtures.kinds[k].tag);
    }

    /// A fraction of kind `k`'s times that should land in `target`: the
    /// middle of the narrowest gap kills of that kind left around it. A
    /// little spread, growing with `attempt`, keeps a gap narrower than
    /// the timing's noise from being tried at one delay only.
    fn aim(&self, k: usize, target: &'static str, attempt: usize) -> f64 {
        let order: &[&str] = if PULL_PHASES.contains(&target) {
            &PULL_PHASES
        } else {
            &GC_PHASES
        };
        let rank = |phase: &str| order.iter().position(|p| *p == phase);
        let goal = rank(target).expect("target is in its order");
        let mine = || {
            self.history
                .iter()
                .filter(move |(kind, _, _)| *kind == k)
                .filter_map(|(_, f, p)| rank(p).map(|r| (*f, r)))
        };
        let hi = mine()
            .filter(|(_, r)| *r > goal)
            .map(|(f, _)| f)
            .fold(1.2, f64::min);
        let lo = mine()
            .filter(|(f, r)| *r < goal && *f < hi)
            .map(|(f, _)| f)
            .fold(0.0, f64::max);
        let spread = (hi - lo) * 0.25 * ((attempt as f64 * 0.618_034).fract() - 0.5);
        (lo + hi) / 2.0 + spread
    }

    fn check(&self, daemon: &Daemon, after: After, context: &str) -> BTreeMap<String, String> {
        check(daemon, &self.reference.ids, &self.diff_ids, after, context)
    }

    /// Kill a pull, a tag, a removal and a GC of image kind `k`, each at
    /// `fraction` of the time it took uninterrupted.
    fn round(&mut self, daemon: &mut Daemon, k: usize, fraction: f64) {
        let times = self.reference.times[k];
        let at = |time: Duration| time.mul_f64(fraction);
        let after_kill = self.kill_pull(daemon, k, at(times[0]), fraction);
        self.kill_tag(daemon, k, at(times[1]), fraction, &after_kill);
        self.kill_rm(daemon, k, at(times[2]), fraction);
        self.kill_gc(daemon, k, at(times[3]), fraction, &after_kill);
    }

    /// A pull, killed; then again, uninterrupted. Returns the objects the
    /// killed pull left.
    fn kill_pull(
        &mut self,
        daemon: &mut Daemon,
        k: usize,
        delay: Duration,
        fraction: f64,
    ) -> BTreeSet<String> {
        let kind = &self.fixtures.kinds[k];
        let context = format!("{} at {fraction:.3}, pull killed", kind.tag);
        let expected_id = self.reference.ids[&kind.manifest].clone();
        kill_during(
            daemon,
            &["oci", "pull", kind.source.as_str(), kind.tag],
            delay,
        );
        let tags = self.check(daemon, After::Other, &context);
        for (tag, manifest) in &self.before_tags {
            assert_eq!(tags.get(tag), Some(manifest), "{context}");
        }
        // The image is there whole, or not at all.
        assert!(tags.len() == 2 || tags.get(kind.tag) == Some(&kind.manifest));
        inspect_after_killed_pull(
            daemon,
            &kind.manifest,
            &expected_id,
            &tags,
            kind.tag,
            &context,
        );
        let after_kill = objects(&daemon.repo());
        let orphans = removed(&json(daemon, &["gc", "--dry-run"])) as usize;
        let new_objects = after_kill.difference(&self.before).count();
        let landed = phase(daemon, &self.before_streams, &tags, kind.tag, new_objects);
        self.landed(k, fraction, landed);
        if tags.len() == 2 {
            // Nothing names what the killed import wrote: all of it is
            // garbage, and GC would see all of it.
            assert_eq!(
                orphans, new_objects,
                "{context}: gc --dry-run must count exactly the objects the killed import left"
            );
        } else {
            assert!(orphans < new_objects, "{context}");
        }
        // Again, uninterrupted: the same image as the reference run, and
        // nothing the killed run left was removed.
        let pulled = pull(daemon, &[&kind.source, kind.tag]);
        assert_eq!(pulled.str("imageId"), expected_id.as_str());
        assert!(
            objects(&daemon.repo()).is_superset(&after_kill),
            "{context}: a pull removed objects"
        );
        after_kill
    }

    /// The moving tag re-pointed, killed: old or new, never gone.
    fn kill_tag(
        &mut self,
        daemon: &mut Daemon,
        k: usize,
        delay: Duration,
        fraction: f64,
        after_kill: &BTreeSet<String>,
    ) {
        let kind = &self.fixtures.kinds[k];
        let context = format!("{} at {fraction:.3}, tag killed", kind.tag);
        kill_during_call(daemon, &tag_call(kind.tag), delay);
        self.kills += 1;
        let tags = self.check(daemon, After::Other, &context);
        let base = &self.fixtures.base_manifest;
        assert_eq!(&tags["base"], base);
        assert_eq!(tags[kind.tag], kind.manifest);
        assert!(
            &tags["moving"] == base || tags["moving"] == kind.manifest,
            "{context}: moving → {}",
            tags["moving"]
        );
        assert!(
            objects(&daemon.repo()).is_superset(after_kill),
            "{context}: a restart removed objects"
        );
        succeeds(daemon, &["oci", "tag", "base", "moving"]);
    }

    /// The image removed, killed: its tag is there or gone.
    fn kill_rm(&mut self, daemon: &mut Daemon, k: usize, delay: Duration, fraction: f64) {
        let kind = &self.fixtures.kinds[k];
        let context = format!("{} at {fraction:.3}, rm killed", kind.tag);
        kill_during_call(daemon, &rm_call(kind.tag), delay);
        self.kills += 1;
        let tags = self.check(daemon, After::Other, &context);
        assert!(tags.len() == 2 || tags.get(kind.tag) == Some(&kind.manifest));
        if tags.len() == 3 {
            succeeds(daemon, &["oci", "rm", kind.tag]);
        }
        assert_eq!(self.check(daemon, After::Other, &context), self.before_tags);
    }

    /// GC, killed. Whatever it removed, the base image is whole, and the
    /// next GC leaves exactly the state before the image came.
    fn kill_gc(
        &mut self,
        daemon: &mut Daemon,
        k: usize,
        delay: Duration,
        fraction: f64,
        after_kill: &BTreeSet<String>,
    ) {
        let kind = &self.fixtures.kinds[k];
        let context = format!("{} at {fraction:.3}, gc killed", kind.tag);
        let garbage = objects(&daemon.repo());
        let dry = removed(&json(daemon, &["gc", "--dry-run"]));
        assert_eq!(
            dry as usize,
            garbage.difference(&self.before).count(),
            "{context}: gc --dry-run must count exactly what the image left"
        );
        assert!(garbage.is_superset(&self.before));
        assert!(
            garbage.is_superset(after_kill),
            "{context}: what the killed import left was removed before GC"
        );
        let site = kill_during_call(daemon, &gc_call(), delay);
        self.landed(k, fraction, gc_phase(&site, &garbage, &self.before));
        assert!(site.objects.is_superset(&self.before), "{context}");
        assert_eq!(self.check(daemon, After::Gc, &context), self.before_tags);
        let left = objects(&daemon.repo());
        assert!(left.is_superset(&self.before), "{context}");
        if site.gc_marker {
            // The restart finished the interrupted collection.
            assert_eq!(
                left, self.before,
                "{context}: an interrupted GC was not finished"
            );
        }
        let dry = removed(&json(daemon, &["gc", "--dry-run"]));
        let gc = json(daemon, &["gc"]);
        assert_eq!(removed(&gc), dry, "{context}: {gc}");
        assert_eq!(dry as usize, left.difference(&self.before).count());
        assert_eq!(objects(&daemon.repo()), self.before, "{context}");
        assert_eq!(removed(&json(daemon, &["gc", "--dry-run"])), 0);
        assert_eq!(self.check(daemon, After::Other, &context), self.before_tags);
        let base = json(daemon, &["oci", "inspect", "base"]);
        assert_eq!(
            base["imageId"],
            self.reference.ids[&self.fixtures.base_manifest].as_str()
        );
    }
}

/// By manifest digest, a killed pull's image is not found, or found
/// whole, or (its manifest stream named before the EROFS image was built)
/// found without an image id; never another.
fn inspect_after_killed_pull(
    daemon: &Daemon,
    manifest: &str,
    expected_id: &str,
    tags: &BTreeMap<String, String>,
    tag: &str,
    context: &str,
) {
    let out = daemon.cfsctl(&["--json", "oci", "inspect", manifest]);
    if out.status.success() {
        let inspect: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(inspect["manifestDigest"], manifest);
        assert!(
            inspect["imageId"].is_null() || inspect["imageId"] == expected_id,
            "{context}: {inspect}"
        );
    } else {
        assert!(!tags.contains_key(tag), "{}", stderr(&out));
    }
}

/// composefs's GC (which cfsd's `Gc` runs) unlinks unreferenced objects
/// first and prunes the stream and image names that point at them only
/// afterwards, so a GC killed in between leaves names whose objects are
/// gone. cfsd marks a running collection on disk and finishes an
/// interrupted one when it next opens the repository, before any call is
/// served: a pull of the same image right after the restart must neither
/// trust such a name nor leave anything for fsck to find.
#[test]
fn a_killed_gc_is_finished_before_a_pull_can_reuse_its_leftovers() {
    let fixtures = Fixtures::new();
    let kind = &fixtures.kinds[1];
    let mut daemon = daemon_with_base(&fixtures);
    let marker = daemon.repo().join(GC_MARKER);
    let mut interrupted = 0;
    for step in 0..40u32 {
        pull(&daemon, &[&kind.source, kind.tag]);
        succeeds(&daemon, &["oci", "rm", kind.tag]);
        let mut connection = daemon.raw();
        connection.send_bytes(gc_call().to_string().as_bytes());
        std::thread::sleep(Duration::from_micros(500 * u64::from(step)));
        daemon.kill();
        let inside = marker.exists();
        // The restarted daemon finishes an interrupted collection before
        // it serves anything.
        daemon.restart();
        assert!(!marker.exists(), "the interrupted GC was not finished");
        if !inside {
            continue;
        }
        interrupted += 1;
        let pulled = pull(&daemon, &[&kind.source, kind.tag]);
        let fsck = daemon.cfsctl(&["--json", "fsck"]);
        assert!(
            fsck.status.success(),
            "after a GC killed at step {step}, pulling {} again ({}) left: {}",
            kind.tag,
            pulled.result,
            cfsd_tests::stdout(&fsck)
        );
        if interrupted >= 3 {
            break;
        }
    }
    assert!(interrupted > 0, "no kill landed inside a GC");
}
