//! Partial pulls of zstd:chunked layers from a real registry (Debian's
//! docker-registry on 127.0.0.1), pushed there by skopeo (bookworm's
//! 1.9, the legacy variant) or by cfsd (the current variant, with a
//! tar-split): with an older version of the image in the
//! repository, only the frames of the files it lacks and of the tar
//! headers are fetched, counted by the proxy in front of the registry;
//! the image is the one a full pull gives. A registry refusing
//! multi-range requests or ranges altogether still gives that image. A
//! layer whose TOC lies (its checksum, offsets past the end, overlapping
//! frames, a file's digest) is a typed error, and nothing is published.

use cfsd_tests::{
    Daemon,
    chunked::{Chunked, entry},
    need_registry,
    oci::{Compression, Entry, Image, Layer, Layout, RawLayer, Written, noise, sha256_digest},
    ocictl::{Pulled, published, pull, succeeds, typed_refusal_with},
    registry::{Cut, Proxy, Ranges, Registry, until},
};
use cfsd_varlink::oci::{OciError, PullParams};
use serde_json::Value;

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
    chunked_setup(&written(&image(2)))
}

/// [`setup`] with `v2` as v2, pushed by skopeo as zstd:chunked.
fn chunked_setup(v2: &Written) -> Setup {
    let registry = Registry::start_http();
    registry.push(
        &v2.oci(None),
        "app:v2",
        &["--dest-compress-format", "zstd:chunked"],
    );
    let v2_id = pull(&Daemon::start_initialised(&[]), &[&v2.oci(None), "v2"])
        .str("imageId")
        .to_owned();
    Setup::pushed(registry, v2_id)
}

impl Setup {
    /// `registry` holding v2 (image id `v2_id`) as `app:v2`, and a new
    /// daemon holding v1.
    fn pushed(registry: Registry, v2_id: String) -> Self {
        let blob = registry.blob_files("app")[0].clone();
        let hex = blob.parent().unwrap().file_name().unwrap();
        let layer = format!("sha256:{}", hex.to_string_lossy());
        let bytes = std::fs::read(&blob).unwrap();
        assert!(bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]), "not zstd");
        let daemon = daemon_for(&registry);
        pull(&daemon, &[&written(&image(1)).oci(None), "v1"]);
        Setup {
            registry,
            daemon,
            v2_id,
            blob_size: bytes.len(),
            layer,
        }
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
    let partial = &pulled.result["partialPull"];
    assert_eq!(partial["layers"], 0, "{}", pulled.result);
    let reason = partial["reason"].as_str().unwrap();
    assert!(reason.contains("ignores range requests"), "{reason}");
    // The TOC's request got the whole blob, unread, and then the layer
    // came whole: the blob at most twice.
    assert!(proxy.sent() > setup.blob_size);
    assert!(proxy.sent() < setup.blob_size * 2 + 50_000);
}

/// The typed error of a pull of `app:TAG` through a proxy, and the bytes
/// the proxy passed.
fn refusal(setup: &Setup, tag: &str) -> (OciError, usize) {
    let proxy = Proxy::with_ranges(setup.registry.port(), Ranges::Pass);
    let params = PullParams {
        transport: "docker".to_owned(),
        reference: Some(format!("{}/app:{tag}", proxy.host())),
        tls_verify: Some(false),
        ..PullParams::default()
    };
    let error = typed_refusal_with(&setup.daemon, &params, Vec::new());
    (error, proxy.sent())
}

/// v2 as pushed, with the entry of `name` in its TOC edited by `edit`.
fn toc_edited(
    pushed: &Chunked,
    name: &str,
    edit: impl Fn(&mut serde_json::Map<String, Value>),
) -> Chunked {
    let mut image = pushed.clone();
    let mut toc = image.toc();
    edit(entry(&mut toc, name));
    image.with_toc(&toc)
}

#[test]
fn partial_pull_of_a_layer_whose_toc_lies_is_a_typed_error_and_publishes_nothing() {
    need_registry!();
    let setup = setup();
    let pushed = Chunked::read(&setup.registry, "app", "v2");
    let offset_of = |name: &str| entry(&mut pushed.clone().toc(), name)["offset"].clone();
    let f00 = offset_of("usr/share/f00");
    let lies = [
        (
            "checksum",
            pushed.clone().with_checksum(&sha256_digest(b"another TOC")),
        ),
        (
            "bounds",
            toc_edited(&pushed, "usr/share/new", |e| {
                e.insert("endOffset".into(), Value::from(1u64 << 40));
            }),
        ),
        (
            "overlap",
            toc_edited(&pushed, "usr/share/f01", |e| {
                e.insert("offset".into(), f00.clone());
            }),
        ),
        // A file that is fetched, whose frames are not what the TOC says.
        (
            "fetched",
            toc_edited(&pushed, "usr/share/new", |e| {
                e.insert("digest".into(), Value::from(sha256_digest(b"else")));
            }),
        ),
        // A changed file the TOC claims is v1's, which the repository has.
        (
            "stored",
            toc_edited(&pushed, "usr/share/f00", |e| {
                let v1 = sha256_digest(&noise(0, FILE_SIZE));
                e.insert("digest".into(), Value::from(v1));
            }),
        ),
    ];
    let before = published(&setup.daemon.repo());
    for (lie, image) in lies {
        image.push(&setup.registry, "app", lie);
        let (error, sent) = refusal(&setup, lie);
        match (lie, &error) {
            (
                "checksum" | "bounds" | "overlap",
                OciError::InvalidChunkedToc { kind, layer, .. },
            ) => {
                assert_eq!(kind, lie, "{error:?}");
                assert!(layer.starts_with("sha256:"), "{error:?}");
                // Nothing but the TOC was fetched of the blob.
                assert!(sent < setup.blob_size / 4, "{lie}: {sent}");
            }
            ("fetched", OciError::DigestMismatch { what, .. }) => {
                assert!(
                    what.contains("usr/share/new") && what.contains("fetched"),
                    "{what}"
                );
            }
            ("stored", OciError::DigestMismatch { what, .. }) => {
                assert!(what.contains("diff_id"), "{what}");
            }
            _ => panic!("{lie}: {error:?}"),
        }
        assert_eq!(published(&setup.daemon.repo()).tags, before.tags, "{lie}");
    }
    // The daemon keeps serving: the honest image still comes in part.
    let (pulled, _) = pull_through(&setup, Ranges::Pass, &[]);
    assert_eq!(pulled.result["partialPull"]["layers"], 1);
}

#[test]
fn partial_pull_stalled_mid_multipart_body_whose_client_hangs_up_leaves_nothing() {
    need_registry!();
    let setup = setup();
    let before = published(&setup.daemon.repo());
    // The TOC's answer passes (a few kB), then the registry stalls in
    // the middle of the multi-range answer on the same connection.
    let cut = Cut::Stall { after: 40_000 };
    let proxy = Proxy::start_with(setup.registry.port(), &setup.layer, cut, Ranges::Pass);
    let mut cfsctl = std::process::Command::new(cfsd_tests::bin("cfsctl"))
        .args(["--address", &setup.daemon.address(), "--progress=none"])
        .args(["oci", "pull", "--tls-verify=false"])
        .arg(format!("docker://{}/app:v2", proxy.host()))
        .arg("v2")
        .spawn()
        .unwrap();
    let multi = || {
        proxy
            .heads()
            .iter()
            .any(|h| h.contains(&setup.layer) && h.contains(','))
    };
    until(&multi, "the frames were not asked for");
    until(
        &|| proxy.sent() >= 40_000,
        "the proxy passed less than it should",
    );
    let (opened, closed) = proxy.connections();
    assert!(opened > closed, "no connection is open: {opened} {closed}");
    // Well before the 30 s read timeout, the hang-up stops the reader.
    cfsctl.kill().unwrap();
    cfsctl.wait().unwrap();
    proxy.assert_closes_all("the daemon kept its registry connection after the hang-up");
    let after = published(&setup.daemon.repo());
    assert_eq!(
        (&after.tags, &after.images, &after.streams),
        (&before.tags, &before.images, &before.streams)
    );
    // The daemon serves on.
    let (pulled, _) = pull_through(&setup, Ranges::Pass, &[]);
    assert_eq!(pulled.result["partialPull"]["layers"], 1);
}

#[test]
fn partial_pull_of_a_current_chunked_layer_pushed_by_cfsd() {
    need_registry!();
    let registry = Registry::start_http();
    let pusher = daemon_for(&registry);
    let v2_id = pull(&pusher, &[&written(&image(2)).oci(None), "v2"])
        .str("imageId")
        .to_owned();
    let dest = format!("docker://{}/app:v2", registry.host());
    let args = ["oci", "push", "v2", &dest, "--compression", "zstd:chunked"];
    succeeds(&pusher, &[&args[..], &["--tls-verify=false"]].concat());
    let blob = registry.blob_files("app")[0].clone();
    let hex = blob
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy();
    let layer = std::fs::read(&blob).unwrap();
    let manifest = Chunked::read(&registry, "app", "v2").manifest;
    let annotations = manifest["layers"][0]["annotations"].to_string();
    assert!(annotations.contains("io.github.containers.zstd-chunked.tarsplit-position"));
    let daemon = daemon_for(&registry);
    pull(&daemon, &[&written(&image(1)).oci(None), "v1"]);
    let setup = Setup {
        registry,
        daemon,
        v2_id,
        blob_size: layer.len(),
        layer: format!("sha256:{hex}"),
    };
    let (pulled, proxy) = pull_through(&setup, Ranges::Pass, &[]);
    let partial = &pulled.result["partialPull"];
    assert_eq!(partial["layers"], 1, "{}", pulled.result);
    assert_eq!(partial["filesReused"], FILES - 3, "{}", pulled.result);
    assert_eq!(range_requests(&setup, &proxy), 2, "{:?}", proxy.heads());
    let sent = proxy.sent();
    assert!(sent < setup.blob_size / 4, "{sent} of {}", setup.blob_size);
}

#[test]
fn partial_pull_of_a_legacy_layer_whose_tar_was_padded_gives_the_diff_id() {
    need_registry!();
    let setup = chunked_setup(&Written::new(&padded_layout()));
    let (pulled, _) = pull_through(&setup, Ranges::Pass, &[]);
    assert_eq!(
        pulled.result["partialPull"]["layers"], 1,
        "{}",
        pulled.result
    );
}

#[test]
fn full_pull_of_a_legacy_layer_whose_tar_was_padded_gives_the_diff_id() {
    need_registry!();
    let setup = chunked_setup(&Written::new(&padded_layout()));
    let (pulled, _) = pull_through(&setup, Ranges::Pass, &["--no-partial"]);
    assert!(pulled.result["partialPull"].is_null(), "{}", pulled.result);
}

/// An image whose layer tar is padded past its end-of-archive blocks, as
/// GNU tar pads one: skopeo's legacy writer drops those zeros, so a plain
/// decompression of its blob is short of the diff_id, and the splitter
/// adds them back whichever way the layer is pulled.
fn padded_layout() -> Layout {
    let mut tar = image(2).layers[0].tar();
    tar.extend(std::iter::repeat_n(0u8, 13 * 512));
    let mut layout = Layout::new();
    layout.add_raw_image(&[RawLayer::of_tar(&tar, Compression::Gzip)], None);
    layout
}
