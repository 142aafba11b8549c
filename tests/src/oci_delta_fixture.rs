//! The fixture of the oci-delta pull tests (`tests/tests/oci_delta*.rs`):
//! a source image and a target image two layers apart, deltas between
//! them, and the check that a delta's result is what a full pull of the
//! target leaves.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::{
    Daemon,
    delta::{DeltaSpec, Encoding, Part, encode_tar_diff, image_files},
    oci::{BuiltImage, Compression, Entry, Image, Layer, Layout, Written, noise},
    ocictl::{PrivateRepo, Pulled, Target, json, published, pull},
};

/// 2 MiB and a little: more than cfsd's 1 MiB pipe between the tar-diff
/// applier and the splitter.
pub const DATA_LEN: usize = 2 * 1024 * 1024 + 4321;

/// The source image: a base layer, a middle layer and an application
/// layer.
pub fn source_image() -> Image {
    Image::new(vec![
        base_layer(),
        Layer::new(Compression::Zstd, middle_entries()),
        Layer::new(
            Compression::None,
            vec![
                Entry::dir("opt"),
                Entry::dir("opt/app"),
                Entry::file("opt/app/data", noise(14, DATA_LEN)),
                Entry::file("opt/app/config", "mode=old\nthreads=4\n"),
                Entry::file("opt/app/keep.bin", noise(15, 40_000)),
                Entry::file("opt/app/gone", noise(18, 3000)),
            ],
        ),
    ])
    .label("image", "source")
}

/// The layer source and target share blob for blob.
pub fn base_layer() -> Layer {
    Layer::new(
        Compression::Gzip,
        vec![
            Entry::dir("usr"),
            Entry::dir("usr/bin"),
            Entry::dir("usr/lib"),
            Entry::dir("usr/share"),
            Entry::dir("etc"),
            Entry::file("usr/lib/big.bin", noise(11, 300_000)),
            Entry::file("usr/bin/tool", noise(12, 70_000)).mode(0o755),
            Entry::file("etc/conf", "key=old\n"),
            Entry::file("usr/share/tiny", "0123456789"),
        ],
    )
}

/// The entries of the layer source and target share by diff_id, each
/// compressed its own way.
pub fn middle_entries() -> Vec<Entry> {
    vec![
        Entry::dir("usr/share/doc"),
        Entry::file("usr/share/doc/readme", noise(13, 5000)),
        Entry::symlink("usr/bin/link", "tool"),
        Entry::symlink("usr/linkdir", "lib"),
    ]
}

/// The source's data file with 300 bytes changed in the middle.
pub fn changed_data() -> Vec<u8> {
    let mut data = noise(14, DATA_LEN);
    for b in &mut data[1_000_000..1_000_300] {
        *b = b.wrapping_add(7);
    }
    data
}

/// Layer 0 is the source's, blob for blob; layer 1 the source's tar
/// compressed otherwise (same diff_id, another blob); layer 2 changes,
/// keeps, moves, adds and grows files; layer 3 is new.
pub fn target_image() -> Image {
    Image::new(vec![
        base_layer(),
        Layer::new(Compression::Gzip, middle_entries()),
        Layer::new(
            Compression::Zstd,
            vec![
                Entry::dir("opt"),
                Entry::dir("opt/app"),
                Entry::file("opt/app/data", changed_data()),
                Entry::file("opt/app/config", "mode=new\nthreads=16\nextra=1\n"),
                Entry::file("opt/app/keep.bin", noise(15, 40_000)),
                // The content of a file of another layer, at a new path.
                Entry::file("opt/app/moved.bin", noise(11, 300_000)),
                Entry::file("opt/app/new.bin", noise(16, 20_000)),
                // Modified at the same length in an upper layer.
                Entry::file("etc/conf", "key=new\n"),
            ],
        ),
        Layer::new(
            Compression::Gzip,
            vec![
                Entry::dir("srv"),
                Entry::file("srv/data", noise(17, 30_000)),
                Entry::whiteout("opt/app/gone"),
            ],
        ),
    ])
    .label("image", "target")
}

/// The target layers a delta carries.
pub const CHANGED: [usize; 2] = [2, 3];

/// The source and target images, built and written.
pub struct Fixture {
    /// The source image.
    pub source: BuiltImage,
    /// The source image, written as a layout and an archive.
    pub source_written: Written,
    /// The target image.
    pub target: BuiltImage,
    /// The target image, written as a layout and an archive.
    pub target_written: Written,
    /// The source image's regular files, as the tar-diffs see them.
    pub files: BTreeMap<String, Vec<u8>>,
}

impl Default for Fixture {
    /// Layers 2 and 3 of the target are new.
    fn default() -> Self {
        Self::new()
    }
}

impl Fixture {
    /// Layers 2 and 3 of the target are new.
    pub fn new() -> Self {
        Self::with_target(target_image())
    }

    /// Only layer 2 of the target is new: a failing delta has no other
    /// layer to rebuild, so whether one finishes first cannot matter.
    pub fn one_change() -> Self {
        let mut target = target_image();
        target.layers.truncate(3);
        Self::with_target(target)
    }

    /// The source image and `target_image`.
    pub fn with_target(target_image: Image) -> Self {
        let source_image = source_image();
        let (source_layout, source) = Layout::single(&source_image, None);
        let (target_layout, target) = Layout::single(&target_image, None);
        // What the fixture promises.
        assert_eq!(source.layer_digests[0], target.layer_digests[0]);
        assert_eq!(source.diff_ids[1], target.diff_ids[1]);
        assert_ne!(source.layer_digests[1], target.layer_digests[1]);
        assert!(!source.diff_ids.contains(&target.diff_ids[2]));
        Fixture {
            files: image_files(&source_image),
            source_written: Written::new(&source_layout),
            source,
            target_written: Written::new(&target_layout),
            target,
        }
    }

    /// The tar-diff of target layer `index` encoded per `encoding`.
    pub fn tar_diff(&self, index: usize, encoding: Encoding) -> Vec<u8> {
        encode_tar_diff(&self.target.layer_tars[index], &self.files, encoding)
    }

    /// A delta carrying `parts`, with the target's own config.
    pub fn spec(&self, parts: Vec<(usize, Part)>) -> DeltaSpec<'_> {
        DeltaSpec {
            source: &self.source,
            target: &self.target,
            parts,
            embedded_config: None,
        }
    }

    /// Layer 2 as a tar-diff per `encoding`, layer 3 as `layer3`.
    pub fn parts(&self, encoding: Encoding, layer3: Part) -> Vec<(usize, Part)> {
        self.parts_with(Part::TarDiff(self.tar_diff(2, encoding)), layer3)
    }

    /// Layer 2 as `layer2`, layer 3 (if the target has it) as `layer3`.
    pub fn parts_with(&self, layer2: Part, layer3: Part) -> Vec<(usize, Part)> {
        let mut parts = vec![(2, layer2)];
        if self.target.layer_tars.len() > 3 {
            parts.push((3, layer3));
        }
        parts
    }

    /// A private repository holding the source image, tagged `source`.
    pub fn repo_with_source(&self) -> PrivateRepo {
        let repo = PrivateRepo::init("sha256");
        let pulled = pull(&repo, &[&self.source_written.archive(None), "source"]);
        assert_eq!(pulled.str("manifestDigest"), self.source.manifest_digest);
        repo
    }
}

/// Write `spec` as a delta layout in both forms.
pub fn written(spec: &DeltaSpec<'_>) -> Written {
    Written::new(&spec.layout().0)
}

/// The target pulled whole into a repository of its own.
pub struct Full {
    /// Its repository.
    pub repo: PrivateRepo,
    /// What the pull reported.
    pub pulled: Pulled,
}

impl Full {
    /// Pull the target of `fixture` whole.
    pub fn new(fixture: &Fixture) -> Self {
        let repo = PrivateRepo::init("sha256");
        let pulled = pull(&repo, &[&fixture.target_written.oci(None), "target"]);
        assert_eq!(pulled.str("manifestDigest"), fixture.target.manifest_digest);
        assert_eq!(pulled.u64("layersPresent"), 0);
        Full { repo, pulled }
    }
}

/// The result of pulling a delta into `repo` must be what a full pull of
/// the target gave `full`.
pub fn assert_same_as_full(fixture: &Fixture, repo: &PrivateRepo, pulled: &Pulled, full: &Full) {
    let context = &pulled.result;
    for key in ["manifestDigest", "configDigest", "imageId", "tag"] {
        assert_eq!(pulled.str(key), full.pulled.str(key), "{key}: {context}");
    }
    assert_eq!(pulled.str("manifestDigest"), fixture.target.manifest_digest);
    assert_eq!(pulled.str("configDigest"), fixture.target.config_digest);
    assert_eq!(pulled.u64("layers"), 4, "{context}");
    // Layer 0 (same blob) and layer 1 (same diff_id, other blob) are the
    // source's.
    assert_eq!(pulled.u64("layersPresent"), 2, "{context}");
    assert!(!pulled.bool("alreadyPresent"), "{context}");
    // Only the rebuilt layers' new files: less than the full pull wrote.
    assert!(
        pulled.u64("bytesNew") < full.pulled.u64("bytesNew"),
        "{context} vs {}",
        full.pulled.result
    );

    let fsck = json(repo, &["fsck"]);
    assert_eq!(fsck["ok"], true, "{fsck}");

    let inspect = json(repo, &["oci", "inspect", "target"]);
    let manifest: Value = serde_json::from_slice(&fixture.target.manifest).unwrap();
    let config: Value = serde_json::from_slice(&fixture.target.config).unwrap();
    assert_eq!(inspect["manifestDigest"], fixture.target.manifest_digest);
    assert_eq!(inspect["configDigest"], fixture.target.config_digest);
    assert_eq!(inspect["manifest"], manifest);
    assert_eq!(inspect["config"], config);
    assert_eq!(inspect["imageId"], full.pulled.str("imageId"));
    assert_eq!(inspect, json(&full.repo, &["oci", "inspect", "target"]));

    // The same tag target, EROFS image and streams as the full pull: layer
    // streams are the same split streams, object for object.
    let ours = published(&repo.repo_path()).stable();
    let theirs = published(&full.repo.repo_path()).stable();
    assert_eq!(ours.tags.get("target"), theirs.tags.get("target"));
    assert!(
        ours.images.is_superset(&theirs.images),
        "{:?} vs {:?}",
        ours.images,
        theirs.images
    );
    for (name, target) in &theirs.streams {
        assert_eq!(
            ours.streams.get(name),
            Some(target),
            "stream {name} differs from the full pull's"
        );
    }
    for diff_id in &fixture.target.diff_ids {
        assert!(ours.streams.contains_key(&format!("oci-layer-{diff_id}")));
    }
}

// ---------------------------------------------------------------------
// Applying deltas.
// ---------------------------------------------------------------------

/// A daemon whose repository holds the fixture's source image.
pub fn daemon_with_source(fixture: &Fixture) -> Daemon {
    let daemon = Daemon::start_initialised(&[]);
    pull(&daemon, &[&fixture.source_written.oci(None), "source"]);
    daemon
}
