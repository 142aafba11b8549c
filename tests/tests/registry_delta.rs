//! oci-delta artifacts from a real registry (Debian's docker-registry on
//! 127.0.0.1, HTTPS with htpasswd users): a delta pulled by its own
//! reference, and one found by itself (the referrers tag schema) when an
//! image is pulled by its reference. Either must leave exactly what a
//! full pull leaves; a delta that cannot be used, or fails, leaves a full
//! pull; the registry's request log shows what was fetched.

use cfsd_tests::{
    Daemon,
    delta::{ARTIFACT_TYPE, DeltaSpec, Encoding, Part, encode_tar_diff, image_files},
    oci::{BuiltImage, Compression, Entry, Image, Layer, Layout, Written, noise},
    ocictl::{Pulled, json, published, pull, succeeds, typed_refusal_with},
    peer, referrers,
    referrers::Referrer,
    registry,
    registry::{Cut, Proxy, Registry},
    signing::{Key, Lookaside, push_signed},
    skip, stderr,
};
use cfsd_varlink::oci::{OciError, PullParams};

fn base_layer() -> Layer {
    Layer::new(
        Compression::Gzip,
        vec![
            Entry::dir("usr"),
            Entry::dir("usr/lib"),
            Entry::file("usr/lib/big.bin", noise(1, 300_000)),
            Entry::dir("etc"),
            Entry::file("etc/conf", "key=old\n"),
        ],
    )
}

fn app_layer(data: Vec<u8>, config: &str) -> Layer {
    Layer::new(
        Compression::Gzip,
        vec![
            Entry::dir("opt"),
            Entry::dir("opt/app"),
            Entry::file("opt/app/data", data),
            Entry::file("opt/app/config", config),
        ],
    )
}

/// v1: a base layer and an application layer. Every layer is compressed:
/// skopeo would compress a plain tar on its way to the registry, and the
/// manifest would not be the fixture's any more.
fn v1_image() -> Image {
    Image::new(vec![base_layer(), app_layer(noise(2, 1_000_000), "old\n")]).label("v", "1")
}

/// v2: the same base, the application's data changed in the middle, and
/// a new layer of 400 kB that does not compress.
fn v2_image() -> Image {
    let mut data = noise(2, 1_000_000);
    for b in &mut data[500_000..500_300] {
        *b = b.wrapping_add(3);
    }
    Image::new(vec![
        base_layer(),
        app_layer(data, "new\n"),
        Layer::new(
            Compression::Gzip,
            vec![
                Entry::dir("srv"),
                Entry::file("srv/blob", noise(3, 400_000)),
            ],
        ),
    ])
    .label("v", "2")
}

/// Images v1 and v2 and deltas between them, pushed to a registry.
struct Fixture {
    registry: Registry,
    v1: BuiltImage,
    v2: BuiltImage,
    v1_written: Written,
    v2_written: Written,
    /// v1 → v2: layer 1 as a tar-diff, layer 2 whole (zstd, so that its
    /// blob is not v2's gzip one), pushed as `app:v2-delta`.
    delta: Delta,
}

/// What [`Fixture::discover_v2`] did.
struct Discovered {
    daemon: Daemon,
    pulled: Pulled,
    full_daemon: Daemon,
    full: Pulled,
    /// The registry's requests of the discovering pull.
    log: Vec<String>,
}

/// A delta pushed to the registry.
struct Delta {
    manifest_digest: String,
    manifest_size: usize,
    /// Its tar-diff blob, then its whole-layer blob.
    parts: Vec<String>,
}

impl Delta {
    fn referrer(&self) -> Referrer {
        Referrer {
            digest: self.manifest_digest.clone(),
            size: self.manifest_size,
            artifact_type: ARTIFACT_TYPE.to_owned(),
        }
    }
}

impl Fixture {
    fn new(registry: Registry) -> Self {
        let v1_image = v1_image();
        let (v1_layout, v1) = Layout::single(&v1_image, None);
        let (v2_layout, v2) = Layout::single(&v2_image(), None);
        let v1_written = Written::new(&v1_layout);
        registry.push(&v1_written.oci(None), "app:v1", &[]);
        let v2_written = Written::new(&v2_layout);
        registry.push(&v2_written.oci(None), "app:v2", &[]);
        let tar_diff = encode_tar_diff(
            &v2.layer_tars[1],
            &image_files(&v1_image),
            Encoding::ZstdDict,
        );
        let parts = vec![
            (1, Part::TarDiff(tar_diff)),
            (2, Part::Whole(Compression::Zstd)),
        ];
        let delta = push_delta(&registry, &v1, &v2, parts, "app:v2-delta");
        Fixture {
            registry,
            v1,
            v2,
            v1_written,
            v2_written,
            delta,
        }
    }

    /// A daemon for the registry holding v1, pulled from its layout.
    fn daemon_with_v1(&self) -> Daemon {
        let daemon = self.daemon(&[]);
        pull(&daemon, &[&self.v1_written.oci(None), "v1"]);
        daemon
    }

    fn daemon(&self, extra: &[&str]) -> Daemon {
        let mut args = self.registry.daemon_args();
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        Daemon::start_initialised(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// `cfsctl oci pull docker://HOST/NAME TAG [EXTRA]` with credentials.
    fn pull(&self, daemon: &Daemon, name: &str, tag: &str, extra: &[&str]) -> Pulled {
        let source = format!("docker://{}/{name}", self.registry.host());
        let auth = self.registry.auth_file(registry::USER, registry::PASSWORD);
        let mut args = vec![source.as_str(), tag, "--authfile", auth.to_str().unwrap()];
        args.extend_from_slice(extra);
        pull(daemon, &args)
    }

    /// v2 pulled in full into a daemon that holds v1.
    fn full_v2(&self) -> (Daemon, Pulled) {
        let daemon = self.daemon_with_v1();
        let pulled = self.pull(&daemon, "app:v2", "v2", &["--no-delta"]);
        assert_eq!(pulled.str("manifestDigest"), self.v2.manifest_digest);
        (daemon, pulled)
    }

    /// v2's layer blobs that v1 does not have: what a delta spares.
    fn v2_only_layers(&self) -> Vec<String> {
        self.v2.layer_digests[1..].to_vec()
    }

    /// `log` fetched each blob of the delta once and none of v2's own
    /// layers beyond v1's.
    fn assert_delta_fetched_not_layers(&self, log: &[String]) {
        for layer in self.v2_only_layers() {
            let fetched = blob_requests(log, &layer);
            assert!(fetched.is_empty(), "{layer} fetched: {log:#?}");
        }
        for part in &self.delta.parts {
            assert_eq!(blob_requests(log, part).len(), 1, "{part}: {log:#?}");
        }
    }

    /// v2 pulled in full, and pulled by its reference with discovery on
    /// into a daemon holding v1: the same image either way.
    fn discover_v2(&self) -> Discovered {
        let (full_daemon, full) = self.full_v2();
        let daemon = self.daemon_with_v1();
        let since = self.registry.requests().len();
        let pulled = self.pull(&daemon, "app:v2", "v2", &[]);
        assert_same_image(&pulled, &full);
        Discovered {
            log: requests_since(&self.registry, since),
            daemon,
            pulled,
            full_daemon,
            full,
        }
    }

    /// The referrers tag of v2 listing `deltas`.
    fn list_for_v2(&self, deltas: &[&Delta]) {
        let listed: Vec<Referrer> = deltas.iter().map(|d| d.referrer()).collect();
        referrers::put_index(&self.registry, "app", &self.v2.manifest_digest, &listed);
    }
}

/// Push the delta from `source` to `target` carrying `parts` as `name`.
fn push_delta(
    registry: &Registry,
    source: &BuiltImage,
    target: &BuiltImage,
    parts: Vec<(usize, Part)>,
    name: &str,
) -> Delta {
    let spec = DeltaSpec {
        source,
        target,
        parts,
        embedded_config: None,
    };
    let (layout, built) = spec.layout();
    registry.push(&Written::new(&layout).archive(None), name, &[]);
    Delta {
        manifest_digest: built.manifest_digest,
        manifest_size: built.manifest.len(),
        parts: built.part_digests,
    }
}

/// The registry's request lines from number `since` on.
fn requests_since(registry: &Registry, since: usize) -> Vec<String> {
    registry.requests().split_off(since)
}

/// The requests among `log` that fetch blob `digest`.
fn blob_requests<'a>(log: &'a [String], digest: &str) -> Vec<&'a String> {
    log.iter()
        .filter(|l| l.contains(&format!("/blobs/{digest}")))
        .collect()
}

/// Whether `log` holds a discovery request: the referrers API or the
/// referrers tag.
fn asked_for_referrers(log: &[String], subject: &str) -> bool {
    let tag = referrers::tag_of(subject);
    log.iter()
        .any(|l| l.contains("/referrers/") || l.contains(&format!("/manifests/{tag}")))
}

/// `pulled` is the full pull `full`: the same image, byte for byte.
fn assert_same_image(pulled: &Pulled, full: &Pulled) {
    for key in ["manifestDigest", "configDigest", "imageId", "tag"] {
        assert_eq!(pulled.str(key), full.str(key), "{key}: {}", pulled.result);
    }
}

fn assert_fsck_clean(daemon: &Daemon) {
    let fsck = json(daemon, &["fsck"]);
    assert_eq!(fsck["ok"], true, "{fsck}");
}

#[test]
fn registry_delta_by_reference_equals_the_full_pull_without_v2_layers() {
    cfsd_tests::need_registry!();
    let fixture = Fixture::new(Registry::start_https());
    let (full_daemon, full) = fixture.full_v2();
    let daemon = fixture.daemon_with_v1();
    let since = fixture.registry.requests().len();
    let pulled = fixture.pull(&daemon, "app:v2-delta", "v2", &[]);
    assert_same_image(&pulled, &full);
    assert_eq!(
        pulled.result["delta"]["manifestDigest"],
        fixture.delta.manifest_digest
    );
    assert_eq!(
        pulled.result["delta"]["sourceConfig"],
        fixture.v1.config_digest
    );
    // Asked for by the delta's own reference, nothing is discovered.
    assert!(
        pulled.result.get("deltaDiscovery").is_none(),
        "{}",
        pulled.result
    );
    assert_fsck_clean(&daemon);
    let inspect = json(&daemon, &["oci", "inspect", "v2"]);
    assert_eq!(inspect, json(&full_daemon, &["oci", "inspect", "v2"]));
    let log = requests_since(&fixture.registry, since);
    fixture.assert_delta_fetched_not_layers(&log);
}

#[test]
fn registry_delta_whose_source_is_missing_is_refused_before_any_layer_blob() {
    cfsd_tests::need_registry!();
    let fixture = Fixture::new(Registry::start_https());
    let daemon = fixture.daemon(&[]);
    let before = published(&daemon.repo());
    let since = fixture.registry.requests().len();
    let auth = fixture
        .registry
        .auth_file(registry::USER, registry::PASSWORD);
    let params = PullParams {
        transport: "docker".to_owned(),
        reference: Some(format!("{}/app:v2-delta", fixture.registry.host())),
        tag: Some("v2".to_owned()),
        ..PullParams::default()
    };
    let fd = std::fs::File::open(&auth).unwrap().into();
    match typed_refusal_with(&daemon, &params, vec![fd]) {
        OciError::DeltaSourceMissing { config, image } => {
            assert_eq!(config, fixture.v1.config_digest);
            assert_eq!(image.as_deref(), Some(fixture.v1.manifest_digest.as_str()));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(published(&daemon.repo()), before);
    let log = requests_since(&fixture.registry, since);
    let layers = fixture.delta.parts.iter().chain(&fixture.v2.layer_digests);
    for blob in layers {
        assert!(
            blob_requests(&log, blob).is_empty(),
            "{blob} fetched: {log:#?}"
        );
    }
}

#[test]
fn registry_discovery_through_the_tag_schema_fetches_the_delta_not_the_layers() {
    cfsd_tests::need_registry!();
    let fixture = Fixture::new(Registry::start_https());
    fixture.list_for_v2(&[&fixture.delta]);
    let Discovered {
        daemon,
        pulled,
        full,
        log,
        ..
    } = fixture.discover_v2();
    let found = &pulled.result["deltaDiscovery"];
    assert_eq!(found["used"], true, "{found}");
    assert_eq!(found["manifest"], fixture.delta.manifest_digest);
    let reason = found["reason"].as_str().unwrap();
    assert!(reason.contains("smallest"), "{found}");
    assert_eq!(
        pulled.result["delta"]["manifestDigest"],
        fixture.delta.manifest_digest
    );
    assert_fsck_clean(&daemon);
    let subject = &fixture.v2.manifest_digest;
    assert!(asked_for_referrers(&log, subject), "{log:#?}");
    fixture.assert_delta_fetched_not_layers(&log);
    // The full pull said why it did not look.
    let off = &full.result["deltaDiscovery"];
    assert_eq!(off["used"], false, "{off}");
    let reason = off["reason"].as_str().unwrap();
    assert!(reason.contains("turned off"), "{off}");
}

#[test]
fn registry_discovered_delta_of_another_target_is_ignored_with_a_reason() {
    cfsd_tests::need_registry!();
    let fixture = Fixture::new(Registry::start_https());
    // A delta from v1 to an image that is not v2, listed under v2's tag.
    let mut other = v2_image().label("v", "3");
    other.layers.truncate(2);
    let (_, v3) = Layout::single(&other, None);
    let parts = vec![(1, Part::Whole(Compression::Zstd))];
    let stray = push_delta(&fixture.registry, &fixture.v1, &v3, parts, "app:v3-delta");
    fixture.list_for_v2(&[&stray]);
    let Discovered { pulled, log, .. } = fixture.discover_v2();
    let found = &pulled.result["deltaDiscovery"];
    assert_eq!(found["used"], false, "{found}");
    let reason = found["reason"].as_str().unwrap();
    assert!(
        reason.contains(&stray.manifest_digest) && reason.contains(&v3.manifest_digest),
        "{reason}"
    );
    assert!(pulled.result.get("delta").is_none(), "{}", pulled.result);
    assert!(blob_requests(&log, &stray.parts[0]).is_empty(), "{log:#?}");
    for layer in fixture.v2_only_layers() {
        assert_eq!(blob_requests(&log, &layer).len(), 1, "{layer}: {log:#?}");
    }
}

#[test]
fn registry_discovery_takes_the_usable_delta_with_the_fewest_blob_bytes() {
    cfsd_tests::need_registry!();
    let fixture = Fixture::new(Registry::start_https());
    // The same rebuild with both layers whole: usable, but larger.
    let parts = vec![
        (1, Part::Whole(Compression::Zstd)),
        (2, Part::Whole(Compression::Gzip)),
    ];
    let (v1, v2) = (&fixture.v1, &fixture.v2);
    let larger = push_delta(&fixture.registry, v1, v2, parts, "app:v2-whole");
    fixture.list_for_v2(&[&larger, &fixture.delta]);
    let Discovered { pulled, log, .. } = fixture.discover_v2();
    let found = &pulled.result["deltaDiscovery"];
    assert_eq!(found["used"], true, "{found}");
    assert_eq!(found["manifest"], fixture.delta.manifest_digest);
    assert!(
        found["reason"].as_str().unwrap().contains("of 2 usable"),
        "{found}"
    );
    fixture.assert_delta_fetched_not_layers(&log);
    for part in &larger.parts {
        assert!(blob_requests(&log, part).is_empty(), "{part}: {log:#?}");
    }
}

#[test]
fn registry_discovered_delta_whose_source_is_missing_gives_a_full_pull() {
    cfsd_tests::need_registry!();
    let fixture = Fixture::new(Registry::start_https());
    fixture.list_for_v2(&[&fixture.delta]);
    let daemon = fixture.daemon(&[]);
    let since = fixture.registry.requests().len();
    let pulled = fixture.pull(&daemon, "app:v2", "v2", &[]);
    assert_eq!(pulled.str("manifestDigest"), fixture.v2.manifest_digest);
    let found = &pulled.result["deltaDiscovery"];
    assert_eq!(found["used"], false, "{found}");
    let reason = found["reason"].as_str().unwrap();
    assert!(
        reason.contains(&fixture.v1.config_digest) && reason.contains("not in the repository"),
        "{reason}"
    );
    let log = requests_since(&fixture.registry, since);
    for part in &fixture.delta.parts {
        assert!(blob_requests(&log, part).is_empty(), "{part}: {log:#?}");
    }
    assert_fsck_clean(&daemon);
}

#[test]
fn registry_discovered_delta_with_a_corrupt_blob_falls_back_to_a_full_pull() {
    cfsd_tests::need_registry!();
    let fixture = Fixture::new(Registry::start_https());
    fixture.list_for_v2(&[&fixture.delta]);
    // The registry serves the tar-diff with one byte changed.
    let tar_diff = fixture.registry.blob_file(&fixture.delta.parts[0]);
    let mut bytes = std::fs::read(&tar_diff).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&tar_diff, bytes).unwrap();
    let Discovered {
        daemon,
        pulled,
        full_daemon,
        log,
        ..
    } = fixture.discover_v2();
    let found = &pulled.result["deltaDiscovery"];
    assert_eq!(found["used"], false, "{found}");
    assert_eq!(found["manifest"], fixture.delta.manifest_digest);
    let reason = found["reason"].as_str().unwrap();
    assert!(
        reason.contains("failed") && reason.contains("digest"),
        "{reason}"
    );
    assert!(pulled.result.get("delta").is_none(), "{}", pulled.result);
    assert_fsck_clean(&daemon);
    // What the repository publishes is the full pull's, name for name.
    assert_eq!(
        published(&daemon.repo()).stable(),
        published(&full_daemon.repo()).stable()
    );
    let tried = blob_requests(&log, &fixture.delta.parts[0]);
    assert_eq!(tried.len(), 1, "{log:#?}");
    // The v2 layer the failed delta could not rebuild came whole.
    assert_eq!(blob_requests(&log, &fixture.v2.layer_digests[1]).len(), 1);
}

#[test]
fn registry_no_delta_sends_no_discovery_request() {
    cfsd_tests::need_registry!();
    let fixture = Fixture::new(Registry::start_https());
    fixture.list_for_v2(&[&fixture.delta]);
    let daemon = fixture.daemon_with_v1();
    let since = fixture.registry.requests().len();
    // As people see it: cfsctl says why no delta was used.
    let source = format!("docker://{}/app:v2", fixture.registry.host());
    let auth = fixture
        .registry
        .auth_file(registry::USER, registry::PASSWORD);
    let auth = auth.to_str().unwrap();
    let shown = succeeds(
        &daemon,
        &[
            "--progress=none",
            "oci",
            "pull",
            &source,
            "v2",
            "--authfile",
            auth,
            "--no-delta",
        ],
    );
    assert!(shown.contains(&fixture.v2.manifest_digest), "{shown}");
    assert!(
        shown.contains("Delta discovery: not used: looking for a delta was turned off"),
        "{shown}"
    );
    let log = requests_since(&fixture.registry, since);
    assert!(
        !asked_for_referrers(&log, &fixture.v2.manifest_digest),
        "{log:#?}"
    );
    for part in &fixture.delta.parts {
        assert!(blob_requests(&log, part).is_empty(), "{part}: {log:#?}");
    }
    // Without it, the same daemon would have asked (v2 is present now,
    // so another tag pulls nothing and asks nothing either).
    let again = fixture.pull(&daemon, "app:v2", "again", &[]);
    assert!(again.bool("alreadyPresent"));
}

#[test]
fn registry_delta_pull_by_an_unprivileged_peer_reaches_no_registry() {
    cfsd_tests::need_registry!();
    let fixture = Fixture::new(Registry::start_https());
    fixture.list_for_v2(&[&fixture.delta]);
    let daemon = fixture.daemon(&["--socket-group", "65534"]);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(daemon.dir(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let requests = fixture.registry.requests().len();
    for name in ["app:v2-delta", "app:v2"] {
        let out = peer::as_nobody(&[], cfsd_tests::bin("cfsctl").to_str().unwrap())
            .args(["--address", &daemon.address(), "oci", "pull"])
            .arg(format!("docker://{}/{name}", fixture.registry.host()))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name}");
        let err = stderr(&out);
        assert!(err.contains("permission denied"), "{name}: {err}");
    }
    assert_eq!(
        fixture.registry.requests().len(),
        requests,
        "the registry was asked"
    );
}

/// Wait, up to 10 s, until `done`; else fail saying `what`.
fn until(done: &dyn Fn() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn registry_delta_pull_whose_client_hangs_up_closes_its_connections_at_once() {
    cfsd_tests::need_registry!();
    let fixture = Fixture::new(Registry::start_http());
    let daemon = fixture.daemon_with_v1();
    let before = published(&daemon.repo());
    // The registry stalls 60 kB into the delta's whole-layer blob.
    let whole = &fixture.delta.parts[1];
    let proxy = Proxy::start(fixture.registry.port(), whole, Cut::Stall { after: 60_000 });
    let mut cfsctl = std::process::Command::new(cfsd_tests::bin("cfsctl"))
        .args(["--address", &daemon.address(), "--progress=none"])
        .args(["oci", "pull", "--tls-verify=false"])
        .arg(format!("docker://{}/app:v2-delta", proxy.host()))
        .arg("v2")
        .spawn()
        .unwrap();
    let asked = || proxy.heads().iter().any(|h| h.contains(whole.as_str()));
    until(&asked, "the delta blob was not asked for");
    let (opened, closed) = proxy.connections();
    assert!(opened > closed, "no connection is open: {opened} {closed}");
    cfsctl.kill().unwrap();
    cfsctl.wait().unwrap();
    // Well before the 30 s read timeout: the hang-up stopped the reader.
    let all_closed = || {
        let (opened, closed) = proxy.connections();
        opened == closed
    };
    until(
        &all_closed,
        "the daemon kept its registry connection after the client hung up",
    );
    // No tag and no image; at most a layer that was verified before the
    // hang-up, named as the full pull names it.
    let after = published(&daemon.repo());
    assert_eq!((&after.tags, &after.images), (&before.tags, &before.images));
    let layer_streams: Vec<String> = fixture
        .v2
        .diff_ids
        .iter()
        .map(|d| format!("oci-layer-{d}"))
        .collect();
    for name in after
        .streams
        .keys()
        .filter(|n| !before.streams.contains_key(*n))
    {
        assert!(layer_streams.contains(name), "{name} was named");
    }
    // The daemon serves on: the same delta, straight from the registry.
    let source = format!("docker://{}/app:v2-delta", fixture.registry.host());
    let pulled = pull(&daemon, &[&source, "v2", "--tls-verify=false"]);
    assert_eq!(pulled.str("manifestDigest"), fixture.v2.manifest_digest);
}

/// The files a traced process created (`O_CREAT` or `O_TMPFILE`), as
/// absolute paths, from `strace -f -y -e trace=openat` output.
fn created_files(trace: &str) -> Vec<String> {
    trace
        .lines()
        .filter(|l| l.contains("openat(") && (l.contains("O_CREAT") || l.contains("O_TMPFILE")))
        .filter(|l| !l.contains("= -1"))
        .map(|l| {
            let call = &l[l.find("openat(").unwrap() + "openat(".len()..];
            let (dir, rest) = call.split_once(", \"").unwrap();
            let name = &rest[..rest.find('"').unwrap()];
            if name.starts_with('/') {
                return name.to_owned();
            }
            let dir = dir
                .split_once('<')
                .map_or(dir, |(_, d)| d.trim_end_matches('>'));
            format!("{dir}/{name}")
        })
        .collect()
}

/// Peak extra disk of a delta pull from a registry, shown structurally:
/// every file the daemon creates while it applies the delta is an
/// object of the repository (`O_TMPFILE` in `objects/XX/`, linked in
/// when complete); there is no temporary copy of a delta blob and no
/// rebuilt layer tar anywhere.
#[test]
fn registry_delta_pull_writes_nothing_but_the_repository_objects() {
    cfsd_tests::need_registry!();
    if std::process::Command::new("strace")
        .arg("-V")
        .output()
        .is_err()
    {
        skip("strace is missing");
        return;
    }
    let fixture = Fixture::new(Registry::start_https());
    let trace = fixture.registry.path("cfsd.strace");
    let trace_arg = trace.display().to_string();
    let wrapper = [
        "strace",
        "-f",
        "-y",
        "-qq",
        "-e",
        "trace=openat,open,creat",
        "-o",
        &trace_arg,
    ];
    let args = fixture.registry.daemon_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = Daemon::start_under(&wrapper, &args);
    let out = daemon.cfsctl(&["init"]);
    assert!(out.status.success(), "{}", stderr(&out));
    pull(&daemon, &[&fixture.v1_written.oci(None), "v1"]);
    let before = std::fs::read_to_string(&trace).unwrap().lines().count();
    let pulled = fixture.pull(&daemon, "app:v2-delta", "v2", &[]);
    assert_eq!(pulled.str("manifestDigest"), fixture.v2.manifest_digest);
    let text = std::fs::read_to_string(&trace).unwrap();
    // strace leaves its tracee running when it is killed, and a signal
    // it intercepts may be lost then: kill cfsd itself (SIGKILL is never
    // intercepted), whose pid starts every line.
    let pid: i32 = text.split_whitespace().next().unwrap().parse().unwrap();
    let pid = rustix::process::Pid::from_raw(pid).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    let during: Vec<&str> = text.lines().skip(before).collect();
    let created = created_files(&during.join("\n"));
    assert!(
        !created.is_empty(),
        "no file created: the trace reads wrong"
    );
    let objects = format!("{}/objects/", daemon.repo().display());
    let elsewhere: Vec<&String> = created
        .iter()
        .filter(|p| !p.starts_with(&objects))
        .collect();
    assert!(
        elsewhere.is_empty(),
        "files beside the objects: {elsewhere:#?}"
    );
}

#[test]
fn registry_delta_pushed_by_cfsctl_is_found_and_applied() {
    cfsd_tests::need_registry!();
    let fixture = Fixture::new(Registry::start_https());
    // A publisher holding v1 and v2 makes the delta and pushes it, with
    // the referrers index, as `oci delta create … docker://` does.
    let publisher = fixture.daemon_with_v1();
    pull(&publisher, &[&fixture.v2_written.oci(None), "v2"]);
    let dest = format!("docker://{}/app:v2-made", fixture.registry.host());
    let auth = fixture
        .registry
        .auth_file(registry::USER, registry::PASSWORD);
    let auth = auth.to_str().unwrap();
    let made = json(
        &publisher,
        &[
            "oci",
            "delta",
            "create",
            "v1",
            "v2",
            &dest,
            "--authfile",
            auth,
        ],
    );
    let made = made["manifestDigest"]
        .as_str()
        .expect("a delta digest")
        .to_owned();
    let Discovered { daemon, pulled, .. } = fixture.discover_v2();
    let found = &pulled.result["deltaDiscovery"];
    assert_eq!(found["used"], true, "{found}");
    assert_eq!(found["manifest"], made.as_str(), "{found}");
    assert_fsck_clean(&daemon);
}

#[test]
fn registry_delta_is_admitted_by_its_targets_signature_named_or_discovered() {
    cfsd_tests::need_registry!();
    cfsd_tests::need_gpg!();
    let fixture = Fixture::new(Registry::start_https());
    let registry = &fixture.registry;
    let (key, lookaside) = (Key::new("delta"), Lookaside::new());
    // v2 signed where it is, in app; the same delta in other, where no
    // signature of v2 is.
    push_signed(
        registry,
        &fixture.v2_written.oci(None),
        "app:v2",
        &key,
        &lookaside,
        None,
    );
    let parts = vec![
        (1, Part::Whole(Compression::Gzip)),
        (2, Part::Whole(Compression::Zstd)),
    ];
    let unsigned = push_delta(registry, &fixture.v1, &fixture.v2, parts, "other:v2-delta");
    fixture.list_for_v2(&[&fixture.delta]);
    let keys = tempfile::tempdir().unwrap();
    let trusted = key.public_file(keys.path(), "delta");
    let host = registry.host();
    let signed_by =
        serde_json::json!([{"type": "signedBy", "keyType": "GPGKeys", "keyPath": trusted}]);
    let policy = registry.policy(
        "delta.json",
        &serde_json::json!({"default": [{"type": "reject"}], "transports": {
            "docker": {format!("{host}/app"): signed_by, format!("{host}/other"): signed_by},
            // v1 comes from a layout, which the default would reject.
            "oci": {"": [{"type": "insecureAcceptAnything"}]},
        }}),
    );
    let certs = registry.certs_dir();
    let daemon = || {
        let daemon = Daemon::start_initialised(&[
            "--policy",
            policy.to_str().unwrap(),
            "--registries-d",
            lookaside.registries_d().to_str().unwrap(),
            "--certs-dir",
            certs.to_str().unwrap(),
        ]);
        pull(&daemon, &[&fixture.v1_written.oci(None), "v1"]);
        daemon
    };
    let named = daemon();
    let before = published(&named.repo());
    let since = registry.requests().len();
    let auth = registry.auth_file(registry::USER, registry::PASSWORD);
    let params = PullParams {
        transport: "docker".to_owned(),
        reference: Some(format!("{host}/other:v2-delta")),
        tag: Some("v2".to_owned()),
        ..PullParams::default()
    };
    let fd = std::fs::File::open(&auth).unwrap().into();
    match typed_refusal_with(&named, &params, vec![fd]) {
        OciError::SignatureMissing { scope, image, .. } => {
            assert_eq!(scope, format!("docker \"{host}/other\""));
            assert_eq!(
                image,
                format!("{host}/other@{0} ({0})", fixture.v2.manifest_digest)
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(published(&named.repo()), before);
    let log = requests_since(registry, since);
    for blob in unsigned.parts.iter().chain(&fixture.v2.layer_digests) {
        assert!(
            blob_requests(&log, blob).is_empty(),
            "{blob} fetched: {log:#?}"
        );
    }
    // Named by its own tag, the delta stands for v2 by v2's digest: the
    // signature of v2 in the same repository admits it.
    let pulled = fixture.pull(&named, "app:v2-delta", "v2", &[]);
    assert_eq!(pulled.str("manifestDigest"), fixture.v2.manifest_digest);
    assert_eq!(
        pulled.result["delta"]["manifestDigest"],
        fixture.delta.manifest_digest
    );
    // Found by itself for v2, which its own signature admitted.
    let pulled = fixture.pull(&daemon(), "app:v2", "v2", &[]);
    assert_eq!(
        pulled.result["deltaDiscovery"]["used"], true,
        "{}",
        pulled.result
    );
}
