//! oci-delta pulls from a real registry, as in `registry_delta.rs`: an
//! unprivileged peer reaches no registry, a client that hangs up closes
//! the pull's connections at once, a pull writes nothing but the
//! repository's objects, a delta cfsctl pushed is found and applied, and
//! the target's signature admits a delta. The fixture is
//! `cfsd_tests::registry_delta_fixture`.

use cfsd_tests::{
    Daemon,
    delta::Part,
    oci::Compression,
    ocictl::{json, published, pull, typed_refusal_with},
    peer, registry,
    registry::{Cut, Proxy, Registry},
    registry_delta_fixture::{
        Discovered, Fixture, assert_fsck_clean, blob_requests, push_delta, requests_since,
    },
    signing::{Key, Lookaside, push_signed},
    skip, stderr,
};
use cfsd_varlink::oci::{OciError, PullParams};

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
    // The content index records each named stream's files (a few dozen
    // bytes per file), written beside as a temporary file renamed into
    // place: repository metadata, not a copy of a layer.
    let index = format!("{}/content-index/.tmp-", daemon.repo().display());
    let elsewhere: Vec<&String> = created
        .iter()
        .filter(|p| !p.starts_with(&objects) && !p.starts_with(&index))
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
