//! Chunk-level reuse in partial pulls: a large file that changed in one
//! place between two zstd:chunked images (pushed by bookworm's skopeo,
//! which cuts large files into chunks with a rolling checksum) is
//! rebuilt from the chunks an earlier chunked pull stored, fetching only
//! the chunks that changed. The image is the one a full pull gives. A
//! repository that got the old image from elsewhere knows no chunks and
//! fetches the whole file; a TOC that lied about chunks when the old
//! image was pulled makes the new pull fetch those chunks, not fail. A
//! partial pull, or an index build, on a full disk is `NoSpace`, leaves
//! nothing published, and works once there is room.

use cfsd_tests::{
    Daemon,
    chunked::Chunked,
    loop_fs::daemon_on_loop_fs,
    need_registry,
    oci::{Compression, Entry, Image, Layer, Layout, Written, noise},
    ocictl::{Pulled, fails, json, published, pull, succeeds, typed_refusal_with},
    registry::Registry,
};
use cfsd_varlink::oci::{OciError, PullParams};
use serde_json::Value;

/// The large file's size: about 32 chunks of skopeo's 64 KiB average.
const BIG: usize = 2 << 20;
/// Small files beside it (1.2 MB), unchanged between the versions: enough
/// that a pull fetching the large file whole is still worth making in part.
const SMALL: u64 = 40;

/// Version `version` of the image: the large file, whose version 2
/// has 100 bytes in its middle replaced, and [`SMALL`] small files.
fn image(version: u64) -> Image {
    let mut big = noise(5, BIG);
    if version >= 2 {
        big[BIG / 2..BIG / 2 + 100].copy_from_slice(&noise(6, 100));
    }
    let mut entries = vec![
        Entry::dir("usr"),
        Entry::dir("usr/lib"),
        Entry::file("usr/lib/big", big),
    ];
    for i in 0..SMALL {
        entries.push(Entry::file(
            &format!("usr/lib/s{i}"),
            noise(100 + i, 30_000),
        ));
    }
    Image::new(vec![Layer::new(Compression::Gzip, entries)])
}

fn written(version: u64) -> Written {
    Written::new(&Layout::single(&image(version), None).0)
}

/// A registry holding both versions as skopeo's zstd:chunked (`app:v1`,
/// `app:v2`), and v2's image id as a full pull of its layout gives it.
fn registry() -> (Registry, String) {
    let registry = Registry::start_http();
    for version in [1, 2] {
        registry.push(
            &written(version).oci(None),
            &format!("app:v{version}"),
            &["--dest-compress-format", "zstd:chunked"],
        );
    }
    let v2_id = pull(
        &Daemon::start_initialised(&[]),
        &[&written(2).oci(None), "v2"],
    )
    .str("imageId")
    .to_owned();
    (registry, v2_id)
}

fn daemon_for(registry: &Registry) -> Daemon {
    let args = registry.daemon_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::start_initialised(&args)
}

/// Pull `app:TAG` of `registry` into `daemon`.
fn pull_tag(daemon: &Daemon, registry: &Registry, tag: &str) -> Pulled {
    let source = format!("docker://{}/app:{tag}", registry.host());
    pull(daemon, &[&source, "--tls-verify=false", tag])
}

/// The chunks skopeo cut the large file into in `tag`'s TOC.
fn chunks_of_big(registry: &Registry, tag: &str) -> usize {
    let toc = Chunked::read(registry, "app", tag).toc();
    toc["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["name"] == "usr/lib/big" && e.get("chunkDigest").is_some())
        .count()
}

#[test]
fn partial_pull_takes_unchanged_chunks_of_a_changed_file_from_an_earlier_chunked_pull() {
    need_registry!();
    let (registry, v2_id) = registry();
    let chunks = chunks_of_big(&registry, "v2");
    assert!(chunks >= 10, "skopeo cut the file into {chunks} chunks");
    let daemon = daemon_for(&registry);
    let v1 = pull_tag(&daemon, &registry, "v1");
    // Pulled in full, with its TOC read and its chunks recorded.
    let partial = &v1.result["partialPull"];
    assert_eq!(partial["layers"], 0, "{}", v1.result);
    let reason = partial["reason"].as_str().unwrap();
    assert!(reason.contains("holds none of the files"), "{reason}");
    let v2 = pull_tag(&daemon, &registry, "v2");
    assert_eq!(v2.str("imageId"), v2_id);
    let partial = &v2.result["partialPull"];
    assert_eq!(partial["filesReused"], SMALL, "{}", v2.result);
    // One or two chunks hold the change; the rest come from v1's file.
    let reused = partial["chunksReused"].as_u64().unwrap() as usize;
    assert!(
        reused + 2 >= chunks && reused < chunks,
        "{reused} of {chunks}"
    );
    // Two chunks at most of ~64 KiB noise, and the tar headers.
    let fetched = partial["bytesFetched"].as_u64().unwrap();
    assert!(
        fetched < 400_000,
        "{fetched} bytes fetched for a {BIG} byte file"
    );
}

#[test]
fn partial_pull_without_recorded_chunks_fetches_the_whole_changed_file() {
    need_registry!();
    let (registry, v2_id) = registry();
    let daemon = daemon_for(&registry);
    // v1 from its layout: the same files, but no TOC to learn chunks from.
    pull(&daemon, &[&written(1).oci(None), "v1"]);
    let v2 = pull_tag(&daemon, &registry, "v2");
    assert_eq!(v2.str("imageId"), v2_id);
    let partial = &v2.result["partialPull"];
    assert_eq!(partial["filesReused"], SMALL, "{}", v2.result);
    assert_eq!(partial["chunksReused"], 0, "{}", v2.result);
    let fetched = partial["bytesFetched"].as_u64().unwrap();
    assert!(fetched > BIG as u64, "{fetched}");
}

#[test]
fn chunks_a_lying_toc_recorded_are_fetched_and_the_pull_gives_the_image() {
    need_registry!();
    let (registry, v2_id) = registry();
    // v1 with the digests of the large file's first two chunks swapped:
    // a full pull does not read the TOC's chunks, so it records them.
    let mut v1 = Chunked::read(&registry, "app", "v1");
    let mut toc = v1.toc();
    let big: Vec<usize> = toc["entries"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .filter(|(_, e)| e["name"] == "usr/lib/big" && e.get("chunkDigest").is_some())
        .map(|(i, _)| i)
        .collect();
    let entries = toc["entries"].as_array_mut().unwrap();
    let (first, second) = (big[0], big[1]);
    let digest = |e: &Value| e["chunkDigest"].clone();
    let (a, b) = (digest(&entries[first]), digest(&entries[second]));
    entries[first]["chunkDigest"] = b;
    entries[second]["chunkDigest"] = a;
    v1.with_toc(&toc).push(&registry, "app", "v1-lying");
    let daemon = daemon_for(&registry);
    pull_tag(&daemon, &registry, "v1-lying");
    let v2 = pull_tag(&daemon, &registry, "v2");
    assert_eq!(v2.str("imageId"), v2_id);
    let partial = &v2.result["partialPull"];
    let reused = partial["chunksReused"].as_u64().unwrap() as usize;
    let chunks = chunks_of_big(&registry, "v2");
    // The two lying records are checked, found wrong, and fetched.
    assert!(
        reused + 4 >= chunks && reused + 2 <= chunks,
        "{reused} of {chunks}"
    );
}

#[test]
fn a_partial_pull_or_an_index_build_on_a_full_disk_is_no_space_and_works_with_room() {
    need_registry!();
    let (registry, v2_id) = registry();
    let args = registry.daemon_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (daemon, fs) = daemon_on_loop_fs(&args);
    pull_tag(&daemon, &registry, "v1");
    let before = published(&daemon.repo());
    // Room for the TOC and a few chunks, not for the new file.
    let filler = fs.fill("filler", 256 << 10);
    let params = PullParams {
        transport: "docker".to_owned(),
        reference: Some(format!("{}/app:v2", registry.host())),
        tls_verify: Some(false),
        tag: Some("v2".to_owned()),
        ..PullParams::default()
    };
    match typed_refusal_with(&daemon, &params, Vec::new()) {
        OciError::NoSpace { operation, reason } => {
            assert!(!operation.is_empty() && !reason.is_empty())
        }
        other => panic!("not NoSpace: {other:?}"),
    }
    assert_eq!(published(&daemon.repo()), before, "a full disk published");
    // An index file to write again, with no block left to write it in.
    let index = daemon.repo().join("content-index");
    for file in std::fs::read_dir(&index).unwrap() {
        std::fs::remove_file(file.unwrap().path()).unwrap();
    }
    let tight = fs.fill("filler-2", 0);
    let err = fails(&daemon, &["index"]);
    assert!(err.contains("no space left"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&index).unwrap().collect();
    assert!(left.is_empty(), "a full disk left index files: {left:?}");

    std::fs::remove_file(&filler).unwrap();
    std::fs::remove_file(tight).unwrap();
    succeeds(&daemon, &["index"]);
    let v2 = pull_tag(&daemon, &registry, "v2");
    assert_eq!(v2.str("imageId"), v2_id);
    // The index built again knows v1's files, but not their chunks: only
    // a TOC says where those are.
    let partial = &v2.result["partialPull"];
    assert_eq!(partial["filesReused"], SMALL, "{}", v2.result);
    assert_eq!(partial["chunksReused"], 0, "{}", v2.result);
    let fsck = json(&daemon, &["fsck"]);
    assert_eq!(fsck["ok"], true, "{fsck}");
}
