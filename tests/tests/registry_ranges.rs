//! The range reader of partial pulls (`cfsd_repo::registry` ranges),
//! driven against the real registry (Debian's docker-registry on
//! 127.0.0.1), directly and through the test proxy that counts the bytes
//! it passes on and does less with `Range` headers than the registry
//! does: multi-range requests answered with the first range only, with
//! the whole blob, or refused with 400 or 416; ranges ignored
//! altogether; a connection cut in the middle of a multipart body.

use std::sync::Arc;

use cfsd_repo::{
    Error,
    registry::{
        RangeCounts, Registry as Image, RegistryRequest, RegistrySettings, Span, read_blob_ranges,
        read_blob_span,
    },
};
use cfsd_tests::{
    need_registry,
    oci::{Compression, Entry, Image as Fixture, Layer, Layout, Written, noise},
    registry::{self, Cut, Proxy, Ranges, Registry},
};

/// A registry holding, as `app:v1`, an image of one gzip layer of about
/// 600 kB of noise; the layer's digest and bytes.
fn registry_with_blob(registry: Registry) -> (Registry, String, Vec<u8>) {
    let image = Fixture::new(vec![Layer::new(
        Compression::Gzip,
        vec![Entry::file("big", noise(11, 600_000))],
    )]);
    let (layout, built) = Layout::single(&image, None);
    let fixture = Written::new(&layout);
    registry.push(&fixture.oci(None), "app:v1", &[]);
    let digest = built.layer_digests[0].clone();
    let bytes = std::fs::read(registry.blob_file(&digest)).unwrap();
    (registry, digest, bytes)
}

/// The settings and request for `app:v1` at `host`: any image admitted,
/// `registry`'s CA trusted and its user's credentials given when it is
/// the HTTPS one, plain HTTP otherwise.
fn image_at(registry: &Registry, host: &str, https: bool) -> Image {
    let accept = serde_json::json!({"default": [{"type": "insecureAcceptAnything"}]});
    let settings = RegistrySettings {
        certs_dir: if https {
            registry.certs_dir()
        } else {
            registry.path("no-certs.d")
        },
        registries_conf: registry.path("no-registries.conf"),
        policy: registry.policy("accept.json", &accept),
        registries_d: registry.path("no-registries.d"),
        authfile: None,
    };
    let authfile = https.then(|| {
        let path = registry.auth_file(registry::USER, registry::PASSWORD);
        std::fs::File::open(path).unwrap()
    });
    let request = RegistryRequest {
        reference: format!("{host}/app:v1"),
        tls_verify: Some(https),
        authfile,
    };
    Image::new(&settings, request).unwrap()
}

/// Run `work` on a blocking thread of a runtime, as the daemon does.
fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime
        .block_on(async { tokio::task::spawn_blocking(work).await })
        .unwrap()
}

/// `count` spans of `len` bytes, `stride` apart, from `first`.
fn spread(first: u64, count: u64, len: u64, stride: u64) -> Vec<Span> {
    (0..count)
        .map(|i| Span {
            start: first + i * stride,
            end: first + i * stride + len,
        })
        .collect()
}

/// The bytes of `spans` of `blob`, joined.
fn expected(blob: &[u8], spans: &[Span]) -> Vec<u8> {
    spans
        .iter()
        .flat_map(|s| blob[s.start as usize..s.end as usize].to_vec())
        .collect()
}

/// Read `spans` of the blob through a proxy treating ranges as `ranges`
/// (and cutting as `cut`): the bytes must be the blob's; what it took,
/// and the proxy.
fn read_through(ranges: Ranges, cut: Cut, spans: Vec<Span>) -> (Arc<RangeCounts>, Proxy, usize) {
    let (registry, digest, blob) = registry_with_blob(Registry::start_http());
    let proxy = Proxy::start_with(registry.port(), &digest, cut, ranges);
    let image = image_at(&registry, &proxy.host(), false);
    let size = blob.len() as u64;
    let want = expected(&blob, &spans);
    let (bytes, counts) =
        blocking(move || read_blob_ranges(image, &digest, size, spans)).expect("ranges are read");
    assert!(bytes == want, "the spans' bytes differ from the blob's");
    (counts, proxy, blob.len())
}

/// The request heads `proxy` passed that ask for ranges.
fn range_heads(proxy: &Proxy) -> Vec<String> {
    proxy
        .heads()
        .into_iter()
        .filter(|h| h.to_ascii_lowercase().contains("\nrange: bytes="))
        .collect()
}

#[test]
fn registry_ranges_come_in_one_multi_range_request_with_near_spans_merged() {
    need_registry!();
    // 40 spans of 100 bytes, 10 kB apart, and 3 close behind the first.
    let mut spans = spread(1_000, 40, 100, 10_000);
    spans.splice(1..1, spread(1_150, 3, 20, 40));
    let (counts, proxy, size) =
        read_through(Ranges::Pass, Cut::Times { count: 0, after: 0 }, spans);
    assert_eq!(counts.requests(), 1);
    assert!(!counts.single_ranges() && !counts.whole_blob());
    let heads = range_heads(&proxy);
    assert_eq!(heads.len(), 1, "{heads:?}");
    // Merged: 40 ranges asked for, not 43.
    assert_eq!(heads[0].matches(',').count(), 39, "{}", heads[0]);
    // The spans are 4,060 bytes; each part's framing costs about 150
    // bytes more, and the manifest was fetched too.
    let sent = proxy.sent();
    assert!(sent < 16_000, "{sent} bytes passed for a {size} byte blob");
    assert!(counts.received() as usize <= sent);
}

#[test]
fn registry_ranges_past_the_limit_of_one_request_take_several() {
    need_registry!();
    let spans = spread(0, 450, 10, 1_000);
    let (counts, proxy, _) = read_through(Ranges::Pass, Cut::Times { count: 0, after: 0 }, spans);
    // 200 ranges per request at most.
    assert_eq!(counts.requests(), 3);
    assert_eq!(range_heads(&proxy).len(), 3);
    assert!(proxy.sent() < 100_000, "{}", proxy.sent());
}

#[test]
fn registry_refusing_multi_range_requests_is_asked_one_range_at_a_time() {
    need_registry!();
    for ranges in [
        Ranges::FirstOnly,
        Ranges::WholeForMulti,
        Ranges::RefuseMulti(416),
        Ranges::RefuseMulti(400),
    ] {
        let spans = spread(5_000, 12, 300, 40_000);
        let (counts, proxy, size) = read_through(ranges, Cut::Times { count: 0, after: 0 }, spans);
        assert!(counts.single_ranges(), "{ranges:?}");
        assert!(!counts.whole_blob(), "{ranges:?}");
        let heads = range_heads(&proxy);
        let single = heads.iter().filter(|h| !h.contains(',')).count();
        // The first range again, or not, then one request per range.
        assert!(single >= 11, "{ranges:?}: {heads:?}");
        // A whole body to the multi-range request, at most once.
        assert!(proxy.sent() < size + 30_000, "{ranges:?}: {}", proxy.sent());
        if ranges != Ranges::WholeForMulti {
            assert!(proxy.sent() < 20_000, "{ranges:?}: {}", proxy.sent());
        }
    }
}

#[test]
fn registry_ignoring_ranges_is_seen_at_the_first_look_and_read_whole_after() {
    need_registry!();
    let (registry, digest, blob) = registry_with_blob(Registry::start_http());
    let proxy = Proxy::with_ranges(registry.port(), Ranges::Ignore);
    let size = blob.len() as u64;
    let image = image_at(&registry, &proxy.host(), false);
    let tail = Span {
        start: size - 64,
        end: size,
    };
    let (looked, counts) = {
        let digest = digest.clone();
        blocking(move || read_blob_span(image, &digest, size, tail)).unwrap()
    };
    assert_eq!(looked, None);
    assert_eq!(counts.requests(), 1);
    let spans = spread(100, 5, 1_000, 100_000);
    let want = expected(&blob, &spans);
    let image = image_at(&registry, &proxy.host(), false);
    let (bytes, counts) = blocking(move || read_blob_ranges(image, &digest, size, spans)).unwrap();
    assert!(bytes == want);
    assert!(counts.whole_blob() && counts.single_ranges());
}

#[test]
fn registry_ranges_cut_mid_multipart_body_resume_from_the_next_byte_wanted() {
    need_registry!();
    let spans = spread(2_000, 30, 2_000, 19_000);
    let cut = Cut::Times {
        count: 2,
        after: 20_000,
    };
    let (counts, proxy, _) = read_through(Ranges::Pass, cut, spans);
    assert_eq!(counts.requests(), 3, "{:?}", range_heads(&proxy));
    // Each resume asks only for what was not yet received.
    let heads = range_heads(&proxy);
    let first: Vec<&str> = heads[0].split(',').collect();
    let second: Vec<&str> = heads[1].split(',').collect();
    assert!(second.len() < first.len(), "{heads:?}");
    assert!(proxy.sent() < 110_000, "{}", proxy.sent());
}

#[test]
fn registry_ranges_over_https_use_its_ca_and_the_credentials() {
    need_registry!();
    let (registry, digest, blob) = registry_with_blob(Registry::start_https());
    let size = blob.len() as u64;
    let spans = spread(10, 8, 500, 70_000);
    let want = expected(&blob, &spans);
    let image = image_at(&registry, &registry.host(), true);
    let (bytes, counts) = blocking(move || read_blob_ranges(image, &digest, size, spans)).unwrap();
    assert!(bytes == want);
    assert_eq!(counts.requests(), 1);
    assert!(!counts.single_ranges());
}

#[test]
fn registry_ranges_of_a_blob_it_does_not_have_are_a_typed_status() {
    need_registry!();
    let (registry, _, _) = registry_with_blob(Registry::start_http());
    let image = image_at(&registry, &registry.host(), false);
    let missing = format!("sha256:{}", "0".repeat(64));
    let spans = spread(0, 2, 10, 100);
    let result = blocking(move || read_blob_ranges(image, &missing, 1_000, spans));
    assert!(
        matches!(result, Err(Error::RegistryStatus { status: 404, .. })),
        "{result:?}"
    );
}
