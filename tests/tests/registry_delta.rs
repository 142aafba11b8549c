//! oci-delta artifacts from a real registry (Debian's docker-registry on
//! 127.0.0.1, HTTPS with htpasswd users): a delta pulled by its own
//! reference, and one found by itself (the referrers tag schema) when an
//! image is pulled by its reference. Either must leave exactly what a
//! full pull leaves; a delta that cannot be used, or fails, leaves a full
//! pull; the registry's request log shows what was fetched. What peers,
//! hang-ups, pushes and signatures do to such pulls is in
//! `registry_delta_peers.rs`; the fixture is
//! `cfsd_tests::registry_delta_fixture`.

use cfsd_tests::{
    delta::Part,
    oci::{Compression, Layout},
    ocictl::{json, published, succeeds, typed_refusal_with},
    registry,
    registry::Registry,
    registry_delta_fixture::{
        Discovered, Fixture, asked_for_referrers, assert_fsck_clean, assert_same_image,
        blob_requests, push_delta, requests_since, v2_image,
    },
};
use cfsd_varlink::oci::{OciError, PullParams};

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
