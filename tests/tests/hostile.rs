//! The hostile-input corpus (issue #6): layers, blobs and documents that
//! are wrong on purpose, each pulled with `cfsctl oci pull` in both forms
//! and over the wire from one real cfsd. Each must get a typed error that
//! names the problem, publish nothing (no tag, no image, no layer stream
//! for the bad layer), and leave the daemon serving: the same daemon then
//! pulls a good image. `docs/reliability.md`, "Hostile input", maps every
//! case of the issue to its test, here or elsewhere.

use std::{fs::File, os::fd::OwnedFd, path::Path};

use cfsd_tests::{
    Daemon,
    oci::{
        Compression, Entry, Image, Kind, Layer, Layout, RawLayer, Written, compress, media, noise,
        sha256_digest, small_image, tar_with_pax,
    },
    ocictl::{json, published, pull, pull_fails, typed_pull_refusal},
};
use cfsd_varlink::oci::{OciError, TRANSPORT_ARCHIVE, TRANSPORT_DIRECTORY};
use rustix::fs::{Mode, OFlags};

/// The varlink error name of `error`, e.g. `io.cfsd.Oci.InvalidLayer`.
fn error_name(error: &OciError) -> String {
    let value = serde_json::to_value(error).unwrap();
    value["error"].as_str().unwrap().to_owned()
}

/// Both forms of `written` as fds, as cfsctl opens them.
fn sources(written: &Written) -> [(&'static str, OwnedFd); 2] {
    let dir = rustix::fs::open(
        written.dir.path().join("layout"),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    let archive: OwnedFd = File::open(written.archive_path()).unwrap().into();
    [(TRANSPORT_DIRECTORY, dir), (TRANSPORT_ARCHIVE, archive)]
}

/// What a refusal must look like.
struct Expect<'a> {
    /// The varlink error name.
    name: &'a str,
    /// Words every message must contain: what is wrong, and where.
    words: &'a [&'a str],
    /// diff_ids that must not name a layer stream afterwards.
    bad_diff_ids: &'a [&'a str],
}

/// Pull `written` in both forms with cfsctl and over the wire; every pull
/// must fail as `expect` says, publish nothing and leave the daemon
/// serving. Returns cfsctl's message for the archive.
fn refused(daemon: &Daemon, written: &Written, expect: &Expect<'_>) -> String {
    let before = published(&daemon.repo());
    let images_before = json(daemon, &["oci", "images"]);
    let mut messages = Vec::new();
    for source in [written.oci(None), written.archive(None)] {
        let err = pull_fails(daemon, &[&source, "hostile"]);
        eprintln!("refused {source}: {err}");
        messages.push(err);
    }
    for (transport, fd) in sources(written) {
        let typed = typed_pull_refusal(daemon, transport, fd, "hostile");
        eprintln!("typed ({transport}): {typed:?}");
        assert_eq!(error_name(&typed), expect.name, "{transport}: {typed}");
        messages.push(typed.to_string());
    }
    for message in &messages {
        for word in expect.words {
            assert!(message.contains(word), "{word:?} is not in {message:?}");
        }
    }
    let after = published(&daemon.repo());
    assert_eq!(after.tags, before.tags, "a tag appeared");
    assert_eq!(after.images, before.images, "an EROFS image appeared");
    for diff_id in expect.bad_diff_ids {
        let name = format!("oci-layer-{diff_id}");
        assert!(
            !after.streams.contains_key(&name),
            "the bad layer was named: {name}"
        );
    }
    assert_eq!(json(daemon, &["oci", "images"]), images_before);
    let info = json(daemon, &["info"]);
    assert!(info["info"].is_object(), "{info}");
    messages.swap_remove(1)
}

/// After the refusals, the same daemon still pulls a good image.
fn still_pulls(daemon: &Daemon) {
    let (layout, built) = Layout::single(&small_image(Compression::Gzip, "good\n"), None);
    let pulled = pull(daemon, &[&Written::new(&layout).archive(None), "good"]);
    assert_eq!(pulled.str("manifestDigest"), built.manifest_digest);
    let fsck = json(daemon, &["fsck"]);
    assert_eq!(fsck["ok"], true, "{fsck}");
}

/// A single-layer image of the raw `tar`, compressed with `compression`.
fn raw_tar_image(tar: &[u8], compression: Compression) -> (Written, String, String) {
    let mut layout = Layout::new();
    let layer = RawLayer::of_tar(tar, compression);
    let diff_id = layer.diff_id.clone();
    let image = layout.add_raw_image(&[layer], None);
    (
        Written::new(&layout),
        image.layer_digests[0].clone(),
        diff_id,
    )
}

/// An entry whose path is exactly `path`, which [`Entry`]'s constructors
/// would tidy up.
fn at(mut entry: Entry, path: &str) -> Entry {
    entry.path = path.to_owned();
    entry
}

/// A hard link whose target is exactly `target`, which
/// [`Entry::hardlink`] would tidy up.
fn linked(path: &str, target: &str) -> Entry {
    Entry {
        kind: Kind::Hardlink(target.to_owned()),
        ..Entry::hardlink(path, "x")
    }
}

// ---------------------------------------------------------------------
// Tar entries: the rules of repo/src/oci/entry_rules.rs.
// ---------------------------------------------------------------------

#[test]
fn hostile_tar_entries_are_refused_naming_the_entry_and_the_rule() {
    let daemon = Daemon::start_initialised(&[]);
    let cases: Vec<(Vec<Entry>, &str, &[&str])> = vec![
        (
            vec![at(Entry::file("x", "escape\n"), "usr/../../etc/cron.d/x")],
            "usr/../../etc/cron.d/x",
            &["`..`"],
        ),
        (
            vec![at(Entry::file("x", "escape\n"), "../escape")],
            "../escape",
            &["`..`"],
        ),
        (
            vec![
                Entry::file("usr/passwd", "relative\n"),
                at(Entry::file("x", "absolute\n"), "/usr/passwd"),
            ],
            "/usr/passwd",
            &["duplicate"],
        ),
        (
            vec![
                Entry::symlink("usr/lib", "/etc"),
                Entry::file("usr/lib/passwd", "through the link\n"),
            ],
            "usr/lib/passwd",
            &["through the symlink", "usr/lib"],
        ),
        (
            vec![Entry::symlink("usr/up", "../.."), Entry::dir("usr/up/etc")],
            "usr/up/etc",
            &["through the symlink"],
        ),
        (
            vec![Entry::hardlink("usr/link", "usr/missing")],
            "usr/link",
            &["usr/missing", "no earlier entry"],
        ),
        (
            vec![
                Entry::file("usr/target", "t\n"),
                linked("usr/link", "usr/../../etc/shadow"),
            ],
            "usr/link",
            &["usr/../../etc/shadow", "`..`"],
        ),
        (
            vec![linked("usr/link", "/../etc/shadow")],
            "usr/link",
            &["/../etc/shadow", "`..`"],
        ),
        (
            vec![
                Entry::dir("usr/dir"),
                Entry::hardlink("usr/link", "usr/dir"),
            ],
            "usr/link",
            &["directory", "usr/dir"],
        ),
        (
            vec![
                Entry::file("usr/twice", "first\n"),
                Entry::file("usr/twice", "second\n"),
            ],
            "usr/twice",
            &["duplicate"],
        ),
        (
            vec![
                Entry::dir("usr/both"),
                Entry::file("usr/both", "now a file\n"),
            ],
            "usr/both",
            &["duplicate", "a directory, now as a file"],
        ),
    ];
    for (entries, path, rule) in cases {
        let mut all = vec![Entry::dir("usr")];
        all.extend(entries);
        let layer = Layer::new(Compression::Gzip, all);
        let tar = layer.tar();
        let (written, layer_digest, diff_id) = raw_tar_image(&tar, Compression::Gzip);
        let mut words = vec![layer_digest.as_str(), path];
        words.extend_from_slice(rule);
        refused(
            &daemon,
            &written,
            &Expect {
                name: "io.cfsd.Oci.InvalidLayer",
                words: &words,
                bad_diff_ids: &[&diff_id],
            },
        );
    }
    still_pulls(&daemon);
}

#[test]
fn hostile_rules_accept_what_real_layers_do() {
    let daemon = Daemon::start_initialised(&[]);
    // `./` prefixes (as `tar -C dir .` writes), the root entry, a
    // directory listed twice, hard links to earlier files and symlinks,
    // absolute and dangling symlink targets, whiteouts.
    let entries = vec![
        at(Entry::dir("x"), "."),
        at(Entry::dir("x"), "./usr"),
        at(Entry::dir("x"), "./usr/bin"),
        at(Entry::file("x", noise(9, 5000)), "./usr/bin/tool"),
        Entry::hardlink("usr/bin/tool-again", "./usr/bin/tool"),
        Entry::symlink("usr/bin/sh", "/usr/bin/tool"),
        Entry::symlink("usr/bin/dangling", "../../nowhere"),
        Entry::hardlink("usr/bin/sh-again", "usr/bin/sh"),
        Entry::dir("usr/bin").mode(0o711),
        Entry::whiteout("usr/gone"),
        Entry::symlink("lib", "usr/lib"),
    ];
    let (layout, built) = Layout::single(
        &Image::new(vec![Layer::new(Compression::Zstd, entries)]),
        None,
    );
    let written = Written::new(&layout);
    for source in [written.oci(None), written.archive(None)] {
        let pulled = pull(&daemon, &[&source, "real"]);
        assert_eq!(pulled.str("manifestDigest"), built.manifest_digest);
    }
    let state = published(&daemon.repo());
    assert!(
        state
            .streams
            .contains_key(&format!("oci-layer-{}", built.diff_ids[0])),
        "{:?}",
        state.streams
    );
    let fsck = json(&daemon, &["fsck"]);
    assert_eq!(fsck["ok"], true, "{fsck}");
}

/// The same files spelled with absolute paths, as ko writes its layers,
/// or with relative ones.
fn ko_style(absolute: bool) -> Image {
    let p = |path: &str| {
        if absolute {
            format!("/{path}")
        } else {
            path.to_owned()
        }
    };
    let entries = vec![
        Entry::dir("usr"),
        Entry::file("usr/base", "from the base\n"),
        at(Entry::dir("x"), &p("ko-app")),
        at(
            Entry::file("x", noise(12, 3000)).mode(0o555),
            &p("ko-app/tool"),
        ),
        linked(&p("ko-app/tool-again"), &p("ko-app/tool")),
        at(Entry::dir("x"), &p("var")),
        at(Entry::dir("x"), &p("var/run")),
        at(Entry::dir("x"), &p("var/run/ko")),
        at(Entry::file("x", "kodata\n"), &p("var/run/ko/data")),
    ];
    Image::new(vec![Layer::new(Compression::Gzip, entries)])
}

#[test]
fn hostile_absolute_paths_land_inside_the_image_as_ko_writes_them() {
    let daemon = Daemon::start_initialised(&[]);
    let mut ids = Vec::new();
    for absolute in [true, false] {
        let (layout, built) = Layout::single(&ko_style(absolute), None);
        let tar = &built.layer_tars[0];
        let has_absolute = tar.windows(13).any(|w| w == b"/ko-app/tool\0");
        assert_eq!(has_absolute, absolute);
        let pulled = pull(&daemon, &[&Written::new(&layout).archive(None), "ko"]);
        ids.push(pulled.str("imageId").to_owned());
    }
    // Another tar, the same tree: the EROFS image is the same, so every
    // absolute path landed where its relative spelling does.
    assert_eq!(ids[0], ids[1]);
    let fsck = json(&daemon, &["fsck"]);
    assert_eq!(fsck["ok"], true, "{fsck}");
}

#[test]
fn hostile_bad_pax_records_are_invalid_layers() {
    let daemon = Daemon::start_initialised(&[]);
    // The entry after the PAX header is /usr, which every image needs.
    let usr = Entry::dir("usr");
    let usr_with_xattr = Entry::dir("usr").xattr("user.note", b"a second PAX header");
    let cases: [(&[u8], &Entry, &str); 6] = [
        // The length says 99; the record is 12 bytes.
        (b"99 path=abc\n", &usr, "PAX"),
        // A size that is not a number.
        (b"15 size=twelve\n", &usr, "size"),
        // A record without `=`.
        (b"11 pathabc\n", &usr, "PAX"),
        // Two PAX headers for one entry.
        (b"12 path=usr\n", &usr_with_xattr, "PAX"),
        // The length is not a number: tar-core alone would drop this
        // record and every one after it.
        (b"xx path=abc\n", &usr, "PAX"),
        (b"12 path=abc\nxx path=evil\n", &usr, "PAX"),
    ];
    for (records, entry, word) in cases {
        let tar = tar_with_pax(records, entry);
        let (written, layer_digest, diff_id) = raw_tar_image(&tar, Compression::None);
        let message = refused(
            &daemon,
            &written,
            &Expect {
                name: "io.cfsd.Oci.InvalidLayer",
                words: &[&layer_digest],
                bad_diff_ids: &[&diff_id],
            },
        );
        assert!(
            message.to_lowercase().contains(&word.to_lowercase()),
            "{word:?} not in {message}"
        );
    }
    still_pulls(&daemon);
}

// ---------------------------------------------------------------------
// Truncated data, wrong sizes.
// ---------------------------------------------------------------------

#[test]
fn hostile_truncated_tar_gzip_and_zstd_are_invalid_layers() {
    let daemon = Daemon::start_initialised(&[]);
    let layer = Layer::new(
        Compression::None,
        vec![
            Entry::dir("usr"),
            Entry::file("usr/big", noise(11, 200_000)),
            Entry::file("usr/small", "small\n"),
        ],
    );
    let tar = layer.tar();
    // The tar cut inside the big file's data, and inside a header; its
    // diff_id is the cut tar's, so only the tar parser can tell.
    for cut in [100_000, 512 + 300] {
        let (written, layer_digest, diff_id) = raw_tar_image(&tar[..cut], Compression::None);
        let message = refused(
            &daemon,
            &written,
            &Expect {
                name: "io.cfsd.Oci.InvalidLayer",
                words: &[&layer_digest],
                bad_diff_ids: &[&diff_id],
            },
        );
        let lower = message.to_lowercase();
        assert!(
            lower.contains("eof") || lower.contains("ends"),
            "the truncation is not named: {message}"
        );
    }
    // Compressed data cut short: the blob's digest is the cut blob's, the
    // diff_id the whole tar's.
    for compression in [Compression::Gzip, Compression::Zstd] {
        let blob = compress(&tar, compression);
        let cut = blob[..blob.len() / 2].to_vec();
        let diff_id = sha256_digest(&tar);
        let mut layout = Layout::new();
        let image = layout.add_raw_image(
            &[RawLayer::of_blob(cut, compression, diff_id.clone())],
            None,
        );
        let written = Written::new(&layout);
        let message = refused(
            &daemon,
            &written,
            &Expect {
                name: "io.cfsd.Oci.InvalidLayer",
                words: &[&image.layer_digests[0]],
                bad_diff_ids: &[&diff_id],
            },
        );
        let lower = message.to_lowercase();
        assert!(
            ["eof", "end", "incomplete"]
                .iter()
                .any(|w| lower.contains(w)),
            "{compression:?}: the truncation is not named: {message}"
        );
    }
    still_pulls(&daemon);
}

#[test]
fn hostile_wrong_declared_sizes_are_digest_mismatches() {
    let daemon = Daemon::start_initialised(&[]);
    let tar = Layer::new(Compression::None, vec![Entry::file("usr/f", "size\n")]).tar();
    for delta in [1i64, -1] {
        let mut layer = RawLayer::of_tar(&tar, Compression::Gzip);
        let real = layer.size;
        layer.size = (real as i64 + delta) as u64;
        let diff_id = layer.diff_id.clone();
        let mut layout = Layout::new();
        let image = layout.add_raw_image(&[layer.clone()], None);
        let (declared, real) = (layer.size.to_string(), real.to_string());
        refused(
            &daemon,
            &Written::new(&layout),
            &Expect {
                name: "io.cfsd.Oci.DigestMismatch",
                words: &["size", &image.layer_digests[0], &declared, &real],
                bad_diff_ids: &[&diff_id],
            },
        );
    }
    // A manifest whose index entry declares one byte too many.
    let mut layout = Layout::new();
    let (manifest, config) = manifest_and_config(&mut layout);
    layout.add_blob(config);
    let digest = layout.add_blob(manifest.clone());
    layout.list(media::OCI_MANIFEST, &digest, manifest.len() + 1, None, None);
    refused(
        &daemon,
        &Written::new(&layout),
        &Expect {
            name: "io.cfsd.Oci.DigestMismatch",
            words: &["size", &digest, &(manifest.len() + 1).to_string()],
            bad_diff_ids: &[],
        },
    );
    still_pulls(&daemon);
}

/// A valid single-layer image's manifest and config bytes, with the
/// layer already in `layout` but nothing listed.
fn manifest_and_config(layout: &mut Layout) -> (Vec<u8>, Vec<u8>) {
    let image = small_image(Compression::Gzip, "parts\n");
    let built = layout.build_image(&image);
    (built.manifest, built.config)
}

/// A layout whose one image has `config` as its config blob (named by its
/// true digest and size), and that digest.
fn with_config(config: Vec<u8>) -> (Layout, String) {
    let mut layout = Layout::new();
    let (manifest, _) = manifest_and_config(&mut layout);
    let digest = layout.add_blob(config.clone());
    let mut manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    manifest["config"]["digest"] = digest.clone().into();
    manifest["config"]["size"] = config.len().into();
    layout.add_raw_manifest(
        &serde_json::to_vec(&manifest).unwrap(),
        media::OCI_MANIFEST,
        None,
    );
    (layout, digest)
}

// ---------------------------------------------------------------------
// JSON: invalid, deeply nested, enormous.
// ---------------------------------------------------------------------

/// `depth` nested arrays.
fn nested(depth: usize) -> Vec<u8> {
    let mut doc = "[".repeat(depth).into_bytes();
    doc.extend("]".repeat(depth).bytes());
    doc
}

/// An object whose unknown field holds `depth` nested arrays: a parser
/// that skips unknown fields must still bound its recursion.
fn nested_in_field(depth: usize) -> Vec<u8> {
    let mut doc = br#"{"schemaVersion": 2, "x": "#.to_vec();
    doc.extend(nested(depth));
    doc.push(b'}');
    doc
}

#[test]
fn hostile_invalid_index_and_config_are_invalid_json() {
    let daemon = Daemon::start_initialised(&[]);
    let (layout, _) = Layout::single(&small_image(Compression::Gzip, "json\n"), None);
    let written = Written::with_files(&layout, &[("index.json", b"{\"manifests\": [".to_vec())]);
    refused(
        &daemon,
        &written,
        &Expect {
            name: "io.cfsd.Oci.InvalidJson",
            words: &["index.json"],
            bad_diff_ids: &[],
        },
    );
    // A config blob (of the right digest) that is not JSON.
    let (layout, config_digest) = with_config(b"\xff\xfe not json".to_vec());
    refused(
        &daemon,
        &Written::new(&layout),
        &Expect {
            name: "io.cfsd.Oci.InvalidJson",
            words: &["config", &config_digest],
            bad_diff_ids: &[],
        },
    );
    still_pulls(&daemon);
}

#[test]
fn hostile_deeply_nested_json_is_invalid_json_and_cfsd_survives() {
    let daemon = Daemon::start_initialised(&[]);
    let depth = 100_000;
    for doc in [nested(depth), nested_in_field(depth)] {
        // As index.json, and as the oci-layout marker.
        let (layout, _) = Layout::single(&small_image(Compression::Gzip, "deep\n"), None);
        for (file, what) in [("index.json", "index.json"), ("oci-layout", "oci-layout")] {
            let written = Written::with_files(&layout, &[(file, doc.clone())]);
            refused(
                &daemon,
                &written,
                &Expect {
                    name: "io.cfsd.Oci.InvalidJson",
                    words: &[what],
                    bad_diff_ids: &[],
                },
            );
        }
        // As a manifest, and as a nested image index.
        for media_type in [media::OCI_MANIFEST, media::OCI_INDEX] {
            let mut layout = Layout::new();
            let digest = layout.add_raw_manifest(&doc, media_type, None);
            refused(
                &daemon,
                &Written::new(&layout),
                &Expect {
                    name: "io.cfsd.Oci.InvalidJson",
                    words: &[&digest],
                    bad_diff_ids: &[],
                },
            );
        }
        // As the config.
        let (layout, config_digest) = with_config(doc.clone());
        refused(
            &daemon,
            &Written::new(&layout),
            &Expect {
                name: "io.cfsd.Oci.InvalidJson",
                words: &[&config_digest],
                bad_diff_ids: &[],
            },
        );
    }
    still_pulls(&daemon);
}

/// The bytes the process `pid` has read with read(2) and its kin, all
/// threads together (`rchar` of `/proc/PID/io`).
fn read_by(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .unwrap()
        .parse()
        .unwrap()
}

/// 16 MiB is cfsd's cap on a JSON document; these are 64 times that.
const HUGE: u64 = 1 << 30;

/// Refused, and cfsd read far less than the document.
fn refused_unread(daemon: &Daemon, written: &Written, expect: &Expect<'_>) -> String {
    let read_before = read_by(daemon.pid());
    let message = refused(daemon, written, expect);
    let read = read_by(daemon.pid()) - read_before;
    assert!(
        read < HUGE / 16,
        "cfsd read {read} bytes for four refusals of a {HUGE}-byte document"
    );
    message
}

#[test]
fn hostile_enormous_json_is_refused_without_reading_it() {
    let daemon = Daemon::start_initialised(&[]);
    let (layout, built) = Layout::single(&small_image(Compression::Gzip, "huge\n"), None);
    let huge = HUGE.to_string();
    // index.json of 1 GiB.
    refused_unread(
        &daemon,
        &Written::with_huge_file(&layout, "index.json", HUGE),
        &Expect {
            name: "io.cfsd.Oci.InvalidJson",
            words: &["index.json", &huge],
            bad_diff_ids: &[],
        },
    );
    // A manifest of 1 GiB, as its index entry says.
    let mut big = Layout::new();
    let digest = sha256_digest(b"a manifest of a gigabyte");
    big.list(media::OCI_MANIFEST, &digest, HUGE as usize, None, None);
    let path = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    refused_unread(
        &daemon,
        &Written::with_huge_file(&big, &path, HUGE),
        &Expect {
            name: "io.cfsd.Oci.InvalidJson",
            words: &[&digest, &huge],
            bad_diff_ids: &[],
        },
    );
    // A manifest of 1 GiB whose index entry claims its usual size.
    let path = format!("blobs/sha256/{}", built.manifest_hex());
    refused_unread(
        &daemon,
        &Written::with_huge_file(&layout, &path, HUGE),
        &Expect {
            name: "io.cfsd.Oci.DigestMismatch",
            words: &["size", &built.manifest_digest, &huge],
            bad_diff_ids: &[],
        },
    );
    still_pulls(&daemon);
}

// ---------------------------------------------------------------------
// Media types and missing blobs.
// ---------------------------------------------------------------------

#[test]
fn hostile_unsupported_manifest_and_config_media_types_are_named() {
    let daemon = Daemon::start_initialised(&[]);
    let weird = "application/vnd.example.not-an-image+json";
    // The index entry's media type.
    let mut layout = Layout::new();
    let (manifest, config) = manifest_and_config(&mut layout);
    layout.add_blob(config);
    let digest = layout.add_raw_manifest(&manifest, weird, None);
    refused(
        &daemon,
        &Written::new(&layout),
        &Expect {
            name: "io.cfsd.Oci.UnsupportedMediaType",
            words: &[weird, &digest],
            bad_diff_ids: &[],
        },
    );
    // The config descriptor's media type.
    let mut layout = Layout::new();
    let (manifest, config) = manifest_and_config(&mut layout);
    layout.add_blob(config);
    let mut manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    manifest["config"]["mediaType"] = weird.into();
    layout.add_raw_manifest(
        &serde_json::to_vec(&manifest).unwrap(),
        media::OCI_MANIFEST,
        None,
    );
    refused(
        &daemon,
        &Written::new(&layout),
        &Expect {
            name: "io.cfsd.Oci.UnsupportedMediaType",
            words: &[weird, "config"],
            bad_diff_ids: &[],
        },
    );
    still_pulls(&daemon);
}

#[test]
fn hostile_indexes_pointing_at_missing_blobs_name_them() {
    let daemon = Daemon::start_initialised(&[]);
    // index.json names a manifest the layout lacks.
    let (mut layout, built) = Layout::single(&small_image(Compression::Gzip, "gone\n"), None);
    layout.drop_blob(&built.manifest_digest);
    refused(
        &daemon,
        &Written::new(&layout),
        &Expect {
            name: "io.cfsd.Oci.BlobMissing",
            words: &[&built.manifest_digest],
            bad_diff_ids: &[],
        },
    );
    // A nested image index names one.
    let image = small_image(Compression::Gzip, "nested\n");
    let mut layout = Layout::new();
    let (_, built) = layout.add_platforms(&[image], None, false);
    layout.drop_blob(&built[0].manifest_digest);
    refused(
        &daemon,
        &Written::new(&layout),
        &Expect {
            name: "io.cfsd.Oci.BlobMissing",
            words: &[&built[0].manifest_digest],
            bad_diff_ids: &[],
        },
    );
    still_pulls(&daemon);
}

/// The huge fixture is what it claims: 1 GiB in both forms, the archive
/// member last and sparse, so the refusals above test what they say.
#[test]
fn hostile_fixtures_are_what_they_claim() {
    let (layout, _) = Layout::single(&small_image(Compression::Gzip, "fixture\n"), None);
    let written = Written::with_huge_file(&layout, "index.json", HUGE);
    let path = written.dir.path().join("layout/index.json");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), HUGE);
    let archive = written.archive_path();
    let len = std::fs::metadata(&archive).unwrap().len();
    assert!(len > HUGE, "{len}");
    assert!(disk_usage(&archive) < 1 << 20, "the archive is not sparse");
    let mut tar = tar::Archive::new(File::open(&archive).unwrap());
    let members: Vec<(String, u64)> = tar
        .entries_with_seek()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.path().unwrap().display().to_string(), e.size())
        })
        .collect();
    assert_eq!(members.last().unwrap(), &("index.json".to_owned(), HUGE));
}

fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).unwrap().blocks() * 512
}

// ---------------------------------------------------------------------
// Layers that are sound alone but conflict.
// ---------------------------------------------------------------------

#[test]
fn hostile_a_write_beneath_a_lower_layers_symlink_is_an_invalid_image() {
    let daemon = Daemon::start_initialised(&[]);
    let image = Image::new(vec![
        Layer::new(
            Compression::Gzip,
            vec![
                Entry::dir("usr"),
                Entry::dir("usr/lib"),
                Entry::symlink("lib", "usr/lib"),
            ],
        ),
        Layer::new(
            Compression::Gzip,
            vec![Entry::file("lib/x", "through the link\n")],
        ),
    ]);
    let (layout, _) = Layout::single(&image, None);
    let message = refused(
        &daemon,
        &Written::new(&layout),
        &Expect {
            name: "io.cfsd.Oci.InvalidImage",
            words: &["\"lib\""],
            bad_diff_ids: &[],
        },
    );
    assert!(message.contains("not a subdirectory"), "{message}");
    still_pulls(&daemon);
}
