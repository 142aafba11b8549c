//! Memory and disk bombs (issue #19, item 6): small blobs whose layers
//! would make the daemon keep or write far more than they weigh. Each is
//! generated here, pulled from a real cfsd, and must get a typed error
//! while the daemon's peak memory (`VmHWM`) stays bounded, publish nothing,
//! and leave the daemon pulling a good image. `docs/reliability.md`,
//! "Hostile input", lists them.

use std::{fs::File, io::Write, os::fd::OwnedFd};

use cfsd_tests::{
    Daemon,
    delta::{DeltaSpec, Ops, Part},
    oci::{Compression, Entry, Image, Layer, Layout, RawLayer, Written, noise, small_image},
    ocictl::{Published, published, pull, pull_fails, typed_pull_refusal},
    status_kib,
};
use cfsd_varlink::oci::{OciError, TRANSPORT_ARCHIVE, TRANSPORT_DIRECTORY};
use flate2::write::GzEncoder;
use openssl::sha::Sha256;
use rustix::fs::{Mode, OFlags};

/// The daemon's peak memory stays below this through every bomb. The
/// layer metadata limit is 128 MiB by default: a bomb that fills it costs
/// that much and a little more, while before the limits a million empty
/// entries cost about 900 MiB and a 276 KB archive 470 MiB.
const PEAK_KIB: u64 = 224 << 10;

/// The default metadata limit, in bytes, as the wire reports it.
const METADATA_LIMIT: u64 = 128 << 20;

/// A gzip-compressed tar written piece by piece, hashed as it goes, so
/// that a tar of hundreds of MiB is never held by the test either.
struct Bomb {
    gzip: GzEncoder<Vec<u8>>,
    tar: Sha256,
}

impl Bomb {
    /// A tar that starts with `usr/`, which composefs needs in an image.
    fn new() -> Self {
        let mut bomb = Bomb {
            gzip: GzEncoder::new(Vec::new(), flate2::Compression::best()),
            tar: Sha256::new(),
        };
        bomb.header("usr/", tar::EntryType::Directory, 0);
        bomb
    }

    fn write(&mut self, bytes: &[u8]) {
        self.tar.update(bytes);
        self.gzip.write_all(bytes).unwrap();
    }

    /// A header of `kind` for `path` declaring `size` bytes of data.
    fn header(&mut self, path: &str, kind: tar::EntryType, size: u64) {
        let mut header = tar::Header::new_gnu();
        header.set_path(path).unwrap();
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(0o755);
        header.set_cksum();
        self.write(header.as_bytes());
    }

    /// `n` zero bytes.
    fn zeros(&mut self, mut n: u64) {
        let chunk = vec![0u8; 1 << 20];
        while n > 0 {
            let take = n.min(chunk.len() as u64) as usize;
            self.write(&chunk[..take]);
            n -= take as u64;
        }
    }

    /// The end-of-archive blocks, and the layer claiming the tar's true
    /// diff_id.
    fn finish(mut self) -> RawLayer {
        self.zeros(1024);
        let diff_id = format!("sha256:{}", hex::encode(self.tar.finish()));
        let blob = self.gzip.finish().unwrap();
        RawLayer::of_blob(blob, Compression::Gzip, diff_id)
    }
}

/// A layout of one image of `layer`, in both forms.
fn written(layer: RawLayer) -> Written {
    let mut layout = Layout::new();
    layout.add_raw_image(&[layer], None);
    Written::new(&layout)
}

/// The `oci:` directory of `written`, opened as cfsctl opens it.
fn layout_fd(written: &Written) -> OwnedFd {
    rustix::fs::open(
        written.dir.path().join("layout"),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap()
}

/// Pull `written` over the wire (as a directory) and with cfsctl (as an
/// archive); both must be refused, nothing published. The typed error.
fn refused(daemon: &Daemon, written: &Written) -> OciError {
    let before = published(&daemon.repo());
    let typed = typed_pull_refusal(daemon, TRANSPORT_DIRECTORY, layout_fd(written), "bomb");
    eprintln!("typed: {typed:?}");
    let archive: OwnedFd = File::open(written.archive_path()).unwrap().into();
    let again = typed_pull_refusal(daemon, TRANSPORT_ARCHIVE, archive, "bomb");
    assert_eq!(again.to_string(), typed.to_string());
    let message = pull_fails(daemon, &[&written.oci(None), "bomb"]);
    assert!(message.contains(&typed.to_string()), "{message}");
    let after = published(&daemon.repo());
    assert_eq!(after.tags, before.tags, "a tag appeared");
    assert_eq!(after.images, before.images, "an image appeared");
    assert_eq!(after.streams, before.streams, "a stream was named");
    typed
}

/// The same daemon pulls a good image afterwards.
fn still_pulls(daemon: &Daemon) {
    let (layout, _) = Layout::single(&small_image(Compression::Gzip, "after the bomb"), None);
    pull(daemon, &[&Written::new(&layout).oci(None), "good"]);
    assert_ne!(published(&daemon.repo()), Published::default());
}

/// A directory entry that declares 256 MiB of data, 256 KiB of gzip:
/// refused at its header, so its data is never kept.
fn directory_with_payload() -> RawLayer {
    let mut bomb = Bomb::new();
    bomb.header("d/", tar::EntryType::Directory, 256 << 20);
    bomb.zeros(256 << 20);
    bomb.finish()
}

/// `n` empty files: headers only, which every split keeps in memory.
fn many_entries(n: usize) -> RawLayer {
    let mut bomb = Bomb::new();
    for i in 0..n {
        bomb.header(&format!("f/{i:08}"), tar::EntryType::Regular, 0);
    }
    bomb.finish()
}

#[test]
fn memory_bombs_are_refused_with_bounded_memory() {
    let daemon = Daemon::start_initialised(&[]);
    let pid = daemon.pid();

    let dir = written(directory_with_payload());
    assert!(std::fs::metadata(dir.archive_path()).unwrap().len() < 2 << 20);
    match refused(&daemon, &dir) {
        OciError::InvalidLayer { reason, .. } => {
            assert!(reason.contains("\"d/\" is a directory"), "{reason}");
            assert!(
                reason.contains("declares 268435456 bytes of data"),
                "{reason}"
            );
        }
        other => panic!("not InvalidLayer: {other:?}"),
    }
    let after_dir = status_kib(pid, "VmHWM");
    assert!(
        after_dir < 96 << 10,
        "peak {after_dir} KiB after a directory bomb"
    );

    let entries = written(many_entries(400_000));
    match refused(&daemon, &entries) {
        OciError::LayerTooLarge { what, limit, .. } => {
            assert!(what.contains("metadata"), "{what}");
            assert_eq!(limit, METADATA_LIMIT);
        }
        other => panic!("not LayerTooLarge: {other:?}"),
    }
    let peak = status_kib(pid, "VmHWM");
    eprintln!("peak memory: {after_dir} KiB after the directory bomb, {peak} KiB after all");
    assert!(peak < PEAK_KIB, "peak {peak} KiB");
    still_pulls(&daemon);
}

/// The gzip bomb of one regular file streams to disk in constant memory
/// and is pulled; the same daemon with a limit on the uncompressed size
/// refuses it, and refuses a header that declares more at once.
#[test]
fn a_large_file_streams_flat_and_the_size_limit_refuses_it() {
    let big = || {
        let mut bomb = Bomb::new();
        bomb.header("big", tar::EntryType::Regular, 256 << 20);
        bomb.zeros(256 << 20);
        bomb.finish()
    };
    let daemon = Daemon::start_initialised(&[]);
    pull(&daemon, &[&written(big()).oci(None), "big"]);
    let peak = status_kib(daemon.pid(), "VmHWM");
    assert!(peak < 128 << 10, "peak {peak} KiB for a 256 MiB file");

    let limit: u64 = 4 << 20;
    let daemon = Daemon::start_initialised(&["--max-layer-size", &limit.to_string()]);
    // Small layers still pass.
    still_pulls(&daemon);
    let refusal = |written: &Written| match refused(&daemon, written) {
        OciError::LayerTooLarge { what, limit: l, .. } => {
            assert_eq!(what, "uncompressed size");
            assert_eq!(l, limit);
        }
        other => panic!("not LayerTooLarge: {other:?}"),
    };
    refusal(&written(big()));
    // A header that declares 1 TiB, with no data behind it: without the
    // limit a truncated tar, with it refused at the header.
    let mut liar = Bomb::new();
    liar.header("huge", tar::EntryType::Regular, 1 << 40);
    refusal(&written(liar.finish()));
    // Data past the limit without any one large file: many 64 KiB files.
    let mut many = Bomb::new();
    let file = noise(7, 64 << 10);
    for i in 0..100 {
        many.header(&format!("f{i}"), tar::EntryType::Regular, file.len() as u64);
        many.write(&file);
    }
    refusal(&written(many.finish()));
    still_pulls(&daemon);
}

/// A 512-byte tar header of the directory `d/`, with no data: repeated,
/// a valid tar of one directory listed again and again.
fn directory_header() -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    header.set_path("d/").unwrap();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_size(0);
    header.set_mode(0o755);
    header.set_cksum();
    header.as_bytes().to_vec()
}

/// A tar-diff of a few KiB whose COPYs of one source file expand into
/// `n` directory entries: the same limits hold for a rebuilt layer.
#[test]
fn a_tar_diff_that_expands_hits_the_layer_limits() {
    let source = Image::new(vec![Layer::new(
        Compression::Gzip,
        vec![Entry::dir("usr"), Entry::file("hdr", directory_header())],
    )]);
    let target = small_image(Compression::Gzip, "the target");
    let (source_layout, source_built) = Layout::single(&source, None);
    let (_, target_built) = Layout::single(&target, None);
    let mut ops = Ops::new();
    ops.open("hdr");
    for _ in 0..400_000 {
        ops.seek(0).copy(512);
    }
    let tar_diff = ops.encode(b"tardf1\n\0");
    assert!(tar_diff.len() < 64 << 10, "{} bytes", tar_diff.len());
    let spec = DeltaSpec {
        source: &source_built,
        target: &target_built,
        parts: vec![(0, Part::TarDiff(tar_diff))],
        embedded_config: None,
    };
    let delta = Written::new(&spec.layout().0);
    let layer = &target_built.layer_digests[0];

    for (args, what, limit) in [
        (vec![], "metadata", METADATA_LIMIT),
        (
            vec!["--max-layer-size", "1048576"],
            "uncompressed size",
            1 << 20,
        ),
    ] {
        let daemon = Daemon::start_initialised(&args);
        pull(
            &daemon,
            &[&Written::new(&source_layout).oci(None), "source"],
        );
        match refused(&daemon, &delta) {
            OciError::LayerTooLarge {
                layer: l,
                what: w,
                limit: n,
            } => {
                assert_eq!(&l, layer);
                assert!(w.contains(what), "{w}");
                assert_eq!(n, limit);
            }
            other => panic!("not LayerTooLarge: {other:?}"),
        }
        let peak = status_kib(daemon.pid(), "VmHWM");
        assert!(peak < PEAK_KIB, "peak {peak} KiB");
        still_pulls(&daemon);
    }
}

/// Layers each under the layer limit still meet the pull's: the layer
/// that passes it is refused, and an image within it pulls.
#[test]
fn the_pull_size_limit_counts_every_layer() {
    let limit: u64 = 3 << 20;
    let daemon = Daemon::start_initialised(&["--max-pull-size", &limit.to_string()]);
    let layer = |seed: u64| {
        let mut bomb = Bomb::new();
        let data = noise(seed, 2 << 20);
        bomb.header("usr/data", tar::EntryType::Regular, data.len() as u64);
        bomb.write(&data);
        bomb.finish()
    };
    let mut one = Layout::new();
    one.add_raw_image(&[layer(1)], None);
    pull(&daemon, &[&Written::new(&one).oci(None), "one"]);

    let mut two = Layout::new();
    two.add_raw_image(&[layer(2), layer(3)], None);
    let two = Written::new(&two);
    // A layer that finished before the total passed the limit may be
    // named (as after any failed pull, GC removes it); no tag or image is.
    let before = published(&daemon.repo());
    let typed = typed_pull_refusal(&daemon, TRANSPORT_DIRECTORY, layout_fd(&two), "bomb");
    let after = published(&daemon.repo());
    assert_eq!((after.tags, after.images), (before.tags, before.images));
    match typed {
        OciError::LayerTooLarge { what, limit: l, .. } => {
            assert!(what.contains("pull"), "{what}");
            assert_eq!(l, limit);
        }
        other => panic!("not LayerTooLarge: {other:?}"),
    }
    still_pulls(&daemon);
}
