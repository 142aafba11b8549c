//! The fixture of the registry delta tests (`tests/tests/registry_delta*.rs`):
//! images v1 and v2 and deltas between them pushed to a real registry,
//! and what its request log shows was fetched.

use crate::{
    Daemon,
    delta::{ARTIFACT_TYPE, DeltaSpec, Encoding, Part, encode_tar_diff, image_files},
    oci::{BuiltImage, Compression, Entry, Image, Layer, Layout, Written, noise},
    ocictl::{Pulled, json, pull},
    referrers,
    referrers::Referrer,
    registry,
    registry::Registry,
};

/// The layer v1 and v2 share.
pub fn base_layer() -> Layer {
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

/// The application layer, with its data and config file.
pub fn app_layer(data: Vec<u8>, config: &str) -> Layer {
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
pub fn v1_image() -> Image {
    Image::new(vec![base_layer(), app_layer(noise(2, 1_000_000), "old\n")]).label("v", "1")
}

/// v2: the same base, the application's data changed in the middle, and
/// a new layer of 400 kB that does not compress.
pub fn v2_image() -> Image {
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
pub struct Fixture {
    /// The registry they are pushed to.
    pub registry: Registry,
    /// Image v1.
    pub v1: BuiltImage,
    /// Image v2.
    pub v2: BuiltImage,
    /// v1 as a layout and an archive.
    pub v1_written: Written,
    /// v2 as a layout and an archive.
    pub v2_written: Written,
    /// v1 → v2: layer 1 as a tar-diff, layer 2 whole (zstd, so that its
    /// blob is not v2's gzip one), pushed as `app:v2-delta`.
    pub delta: Delta,
}

/// What [`Fixture::discover_v2`] did.
pub struct Discovered {
    /// The daemon that discovered the delta.
    pub daemon: Daemon,
    /// What its pull reported.
    pub pulled: Pulled,
    /// The daemon that pulled v2 in full.
    pub full_daemon: Daemon,
    /// What the full pull reported.
    pub full: Pulled,
    /// The registry's requests of the discovering pull.
    pub log: Vec<String>,
}

/// A delta pushed to the registry.
pub struct Delta {
    /// The digest of its manifest.
    pub manifest_digest: String,
    /// The size of its manifest.
    pub manifest_size: usize,
    /// Its tar-diff blob, then its whole-layer blob.
    pub parts: Vec<String>,
}

impl Delta {
    /// Its entry in a referrers index.
    pub fn referrer(&self) -> Referrer {
        Referrer {
            digest: self.manifest_digest.clone(),
            size: self.manifest_size,
            artifact_type: ARTIFACT_TYPE.to_owned(),
        }
    }
}

impl Fixture {
    /// Push v1, v2 and the delta between them to `registry`.
    pub fn new(registry: Registry) -> Self {
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
    pub fn daemon_with_v1(&self) -> Daemon {
        let daemon = self.daemon(&[]);
        pull(&daemon, &[&self.v1_written.oci(None), "v1"]);
        daemon
    }

    /// A daemon for the registry, with `extra` arguments.
    pub fn daemon(&self, extra: &[&str]) -> Daemon {
        let mut args = self.registry.daemon_args();
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        Daemon::start_initialised(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// `cfsctl oci pull docker://HOST/NAME TAG [EXTRA]` with credentials.
    pub fn pull(&self, daemon: &Daemon, name: &str, tag: &str, extra: &[&str]) -> Pulled {
        let source = format!("docker://{}/{name}", self.registry.host());
        let auth = self.registry.auth_file(registry::USER, registry::PASSWORD);
        let mut args = vec![source.as_str(), tag, "--authfile", auth.to_str().unwrap()];
        args.extend_from_slice(extra);
        pull(daemon, &args)
    }

    /// v2 pulled in full into a daemon that holds v1.
    pub fn full_v2(&self) -> (Daemon, Pulled) {
        let daemon = self.daemon_with_v1();
        let pulled = self.pull(&daemon, "app:v2", "v2", &["--no-delta"]);
        assert_eq!(pulled.str("manifestDigest"), self.v2.manifest_digest);
        (daemon, pulled)
    }

    /// v2's layer blobs that v1 does not have: what a delta spares.
    pub fn v2_only_layers(&self) -> Vec<String> {
        self.v2.layer_digests[1..].to_vec()
    }

    /// `log` fetched each blob of the delta once and none of v2's own
    /// layers beyond v1's.
    pub fn assert_delta_fetched_not_layers(&self, log: &[String]) {
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
    pub fn discover_v2(&self) -> Discovered {
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
    pub fn list_for_v2(&self, deltas: &[&Delta]) {
        let listed: Vec<Referrer> = deltas.iter().map(|d| d.referrer()).collect();
        referrers::put_index(&self.registry, "app", &self.v2.manifest_digest, &listed);
    }
}

/// Push the delta from `source` to `target` carrying `parts` as `name`.
pub fn push_delta(
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
pub fn requests_since(registry: &Registry, since: usize) -> Vec<String> {
    registry.requests().split_off(since)
}

/// The requests among `log` that fetch blob `digest`.
pub fn blob_requests<'a>(log: &'a [String], digest: &str) -> Vec<&'a String> {
    log.iter()
        .filter(|l| l.contains(&format!("/blobs/{digest}")))
        .collect()
}

/// Whether `log` holds a discovery request: the referrers API or the
/// referrers tag.
pub fn asked_for_referrers(log: &[String], subject: &str) -> bool {
    let tag = referrers::tag_of(subject);
    log.iter()
        .any(|l| l.contains("/referrers/") || l.contains(&format!("/manifests/{tag}")))
}

/// `pulled` is the full pull `full`: the same image, byte for byte.
pub fn assert_same_image(pulled: &Pulled, full: &Pulled) {
    for key in ["manifestDigest", "configDigest", "imageId", "tag"] {
        assert_eq!(pulled.str(key), full.str(key), "{key}: {}", pulled.result);
    }
}

/// `fsck` of `daemon`'s repository finds nothing wrong.
pub fn assert_fsck_clean(daemon: &Daemon) {
    let fsck = json(daemon, &["fsck"]);
    assert_eq!(fsck["ok"], true, "{fsck}");
}
