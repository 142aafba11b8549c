//! Partial pulls of zstd:chunked layers from a real registry (Debian's
//! docker-registry on 127.0.0.1), pushed there by skopeo (bookworm's
//! 1.9, the legacy variant): with an older version of the image in the
//! repository, only the frames of the files it lacks and of the tar
//! headers are fetched, counted by the proxy in front of the registry;
//! the image is the one a full pull gives. A registry refusing
//! multi-range requests or ranges altogether still gives that image.

use cfsd_tests::{
    Daemon, need_registry,
    oci::{Compression, Entry, Image, Layer, Layout, Written, noise},
    ocictl::{Pulled, pull},
    registry::{Proxy, Ranges, Registry},
};

/// How many files the fixture's layer has, and their size: about 1 MB.
const FILES: u64 = 40;
const FILE_SIZE: usize = 25_000;

/// Version `version` of the fixture image: one layer of [`FILES`] noise
/// files; version 2 changes three and adds one.
fn image(version: u64) -> Image {
    let mut entries = vec![Entry::dir("usr"), Entry::dir("usr/share")];
    for i in 0..FILES {
        let seed = if version >= 2 && i < 3 { 1_000 + i } else { i };
        entries.push(Entry::file(
            &format!("usr/share/f{i:02}"),
            noise(seed, FILE_SIZE),
        ));
    }
    if version >= 2 {
        entries.push(Entry::file("usr/share/new", noise(77, 30_000)));
        entries.push(Entry::file("usr/share/tiny", "tiny\n"));
    }
    Image::new(vec![Layer::new(Compression::Gzip, entries)])
}

fn written(image: &Image) -> Written {
    Written::new(&Layout::single(image, None).0)
}

/// A daemon that trusts `registry` and admits any image.
fn daemon_for(registry: &Registry) -> Daemon {
    let args = registry.daemon_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::start_initialised(&args)
}

/// A plain-HTTP registry with v2 pushed as zstd:chunked (`app:v2`); a
/// daemon holding v1, pulled from its `oci:` layout; v2's image id as a
/// full pull of its layout gives it; and v2's layer blob size there.
struct Setup {
    registry: Registry,
    daemon: Daemon,
    v2_id: String,
    blob_size: usize,
    /// `sha256:<hex>` of v2's layer blob.
    layer: String,
}

fn setup() -> Setup {
    let registry = Registry::start_http();
    let v2 = written(&image(2));
    registry.push(
        &v2.oci(None),
        "app:v2",
        &["--dest-compress-format", "zstd:chunked"],
    );
    let blob = registry.blob_files("app")[0].clone();
    let hex = blob
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy();
    let digest = format!("sha256:{hex}");
    let layer = std::fs::read(&blob).unwrap();
    assert!(layer.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]), "not zstd");
    let v2_id = pull(&Daemon::start_initialised(&[]), &[&v2.oci(None), "v2"])
        .str("imageId")
        .to_owned();
    let daemon = daemon_for(&registry);
    pull(&daemon, &[&written(&image(1)).oci(None), "v1"]);
    Setup {
        registry,
        daemon,
        v2_id,
        blob_size: layer.len(),
        layer: digest,
    }
}

/// Pull `app:v2` through a proxy treating ranges as `ranges`, with
/// `extra` options; the image must be v2's.
fn pull_through(setup: &Setup, ranges: Ranges, extra: &[&str]) -> (Pulled, Proxy) {
    let proxy = Proxy::with_ranges(setup.registry.port(), ranges);
    let source = format!("docker://{}/app:v2", proxy.host());
    let mut args = vec![source.as_str(), "--tls-verify=false"];
    args.extend_from_slice(extra);
    let pulled = pull(&setup.daemon, &args);
    assert_eq!(pulled.str("imageId"), setup.v2_id);
    (pulled, proxy)
}

/// The requests `proxy` passed for parts of v2's layer blob (a whole
/// blob is asked for as `bytes=0-`).
fn range_requests(setup: &Setup, proxy: &Proxy) -> usize {
    proxy
        .heads()
        .iter()
        .filter(|h| h.contains(&setup.layer))
        .map(|h| h.to_ascii_lowercase())
        .filter(|h| h.contains("\nrange: bytes=") && !h.contains("\nrange: bytes=0-\r"))
        .count()
}

#[test]
fn partial_pull_of_a_legacy_chunked_layer_fetches_only_what_is_missing() {
    need_registry!();
    let setup = setup();
    let (pulled, proxy) = pull_through(&setup, Ranges::Pass, &[]);
    let partial = &pulled.result["partialPull"];
    assert_eq!(partial["layers"], 1, "{}", pulled.result);
    // 37 of the 40 old files come from the repository.
    assert_eq!(partial["filesReused"], FILES - 3, "{}", pulled.result);
    assert_eq!(partial["singleRanges"], false);
    // The TOC, then the frames in one multi-range request.
    assert_eq!(range_requests(&setup, &proxy), 2, "{:?}", proxy.heads());
    // Three changed files and a new one of ~25-30 kB each, and the
    // headers: far below the ~1 MB blob.
    let sent = proxy.sent();
    assert!(
        sent < setup.blob_size / 4,
        "{sent} bytes passed for a {} byte blob",
        setup.blob_size
    );
    let received = partial["bytesReceived"].as_u64().unwrap() as usize;
    assert!(received <= sent && received > 100_000, "{received}");
}

#[test]
fn partial_pull_refused_by_no_partial_pulls_the_whole_blob() {
    need_registry!();
    let setup = setup();
    let (pulled, proxy) = pull_through(&setup, Ranges::Pass, &["--no-partial"]);
    assert!(
        pulled.result.get("partialPull").is_none(),
        "{}",
        pulled.result
    );
    assert_eq!(range_requests(&setup, &proxy), 0);
    assert!(proxy.sent() > setup.blob_size);
}

#[test]
fn partial_pull_from_a_registry_refusing_multi_range_asks_one_range_at_a_time() {
    need_registry!();
    for ranges in [Ranges::FirstOnly, Ranges::RefuseMulti(416)] {
        // Each pull starts from v1 alone.
        let setup = setup();
        let (pulled, proxy) = pull_through(&setup, ranges, &[]);
        let partial = &pulled.result["partialPull"];
        assert_eq!(
            partial["singleRanges"], true,
            "{ranges:?}: {}",
            pulled.result
        );
        assert!(range_requests(&setup, &proxy) > 3, "{ranges:?}");
        assert!(proxy.sent() < setup.blob_size / 2, "{ranges:?}");
    }
}

#[test]
fn partial_pull_from_a_registry_ignoring_ranges_pulls_the_verified_whole_blob() {
    need_registry!();
    let setup = setup();
    let (pulled, proxy) = pull_through(&setup, Ranges::Ignore, &[]);
    assert!(
        pulled.result.get("partialPull").is_none(),
        "{}",
        pulled.result
    );
    // The TOC's request got the whole blob, unread, and then the layer
    // came whole: the blob at most twice.
    assert!(proxy.sent() > setup.blob_size);
    assert!(proxy.sent() < setup.blob_size * 2 + 50_000);
}
