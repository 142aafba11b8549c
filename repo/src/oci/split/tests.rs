//! The splitter on its own: what stays inline and what becomes an object,
//! the large-file path, a second import of the same tar, and the ways a
//! split stops early.

use std::{io::Write, sync::Arc};

use composefs::{
    fsverity::{FsVerityHashValue, Sha256HashValue, compute_verity},
    repository::{Repository as Store, RepositoryConfig},
};
use composefs_oci::layer_content_id;
use rustix::fs::CWD;

use super::{
    BUFFERED_BYTES, Cancel, Contents, LayerLimits, PullTally, SplitError, Tally, pipe, split,
};
use crate::oci::digest::Digest;

type Repo = Arc<Store<Sha256HashValue>>;

/// A new insecure repository.
pub(crate) fn repository() -> (tempfile::TempDir, Repo) {
    let dir = tempfile::tempdir().unwrap();
    let config = RepositoryConfig::default().set_insecure();
    let (repo, _) = Store::init_path(CWD, dir.path().join("repo"), config).unwrap();
    (dir, Arc::new(repo))
}

/// A tar of regular files, in order.
pub(crate) fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        tar.append_data(&mut header, name, *data).unwrap();
    }
    tar.into_inner().unwrap()
}

/// Split `tar`, written into the pipe by another thread in pieces of
/// `piece` bytes, as a decompressor would.
fn split_tar(
    repo: &Repo,
    tar: &[u8],
    limits: &LayerLimits,
    cancel: &Cancel,
) -> Result<(Sha256HashValue, Tally<Sha256HashValue>, Digest), SplitError> {
    let (mut input, rx) = pipe();
    let bytes = tar.to_vec();
    let producer = std::thread::spawn(move || {
        for piece in bytes.chunks(100_003) {
            if input.write_all(piece).is_err() {
                return; // the splitter stopped
            }
        }
        let _ = input.close();
    });
    let expected = Digest::of(tar);
    let result = split(
        rx,
        repo.clone(),
        cancel,
        limits,
        PullTally::default(),
        &expected,
    );
    producer.join().unwrap();
    result.map(|(stream, tally, diff_id, _)| (stream, tally, diff_id))
}

/// Name `stream` as the layer `diff_id` and rebuild its tar.
fn rebuilt(repo: &Repo, stream: &Sha256HashValue, diff_id: &Digest) -> Vec<u8> {
    let name = layer_content_id(&diff_id.to_oci());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime
        .block_on(repo.register_stream(stream, &name, None))
        .unwrap();
    let mut tar = Vec::new();
    composefs_oci::oci_image::layer_tar(repo, &diff_id.to_oci(), &mut tar).unwrap();
    tar
}

/// Why `result` failed; it must have.
fn failure<T>(result: Result<T, SplitError>) -> SplitError {
    match result {
        Ok(_) => panic!("the split succeeded"),
        Err(e) => e,
    }
}

fn object(repo_dir: &std::path::Path, id: &Sha256HashValue) -> Vec<u8> {
    let hex = id.to_hex();
    std::fs::read(
        repo_dir
            .join("repo/objects")
            .join(&hex[..2])
            .join(&hex[2..]),
    )
    .unwrap()
}

#[test]
fn files_over_64_bytes_become_objects_and_the_stream_gives_the_tar_back() {
    let (dir, repo) = repository();
    let tiny = vec![b't'; 64];
    let small = vec![b's'; 65];
    // Over what the splitter holds in memory: the large-file path, which
    // streams the file to a temporary object file.
    let large: Vec<u8> = (0..BUFFERED_BYTES + 4097)
        .map(|i| (i % 251) as u8)
        .collect();
    let tar = tar_of(&[
        ("tiny", &tiny),
        ("small", &small),
        ("large", &large),
        ("small-again", &small),
    ]);
    let (stream, tally, diff_id) =
        split_tar(&repo, &tar, &LayerLimits::DEFAULT, &Cancel::default()).unwrap();

    assert_eq!(diff_id, Digest::of(&tar));
    // Two objects, the repeated file stored once; the 64-byte one inline.
    assert_eq!(tally.objects_new(), 2);
    assert_eq!(tally.objects_present(), 0);
    assert_eq!(tally.bytes_new(), (small.len() + large.len()) as u64);
    for content in [&small, &large] {
        let id: Sha256HashValue = compute_verity(content);
        assert_eq!(&object(dir.path(), &id), content, "object {}", id.to_hex());
    }
    assert_eq!(rebuilt(&repo, &stream, &diff_id), tar);
}

#[test]
fn a_second_split_of_the_same_tar_writes_no_object_and_gives_the_same_stream() {
    let (_dir, repo) = repository();
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 7) as u8).collect();
    let tar = tar_of(&[("a", &content), ("b", &[b'b'; 100])]);
    let (first, _, _) = split_tar(&repo, &tar, &LayerLimits::DEFAULT, &Cancel::default()).unwrap();
    let (second, tally, _) =
        split_tar(&repo, &tar, &LayerLimits::DEFAULT, &Cancel::default()).unwrap();
    assert_eq!(first, second);
    assert_eq!(tally.objects_new(), 0);
    assert_eq!(tally.objects_present(), 2);
    assert_eq!(tally.bytes_new(), 0);
}

#[test]
fn a_tar_cut_inside_a_file_is_a_tar_fault_with_the_digest_of_what_came() {
    let (_dir, repo) = repository();
    let tar = tar_of(&[("a", &[b'a'; 5000])]);
    let cut = &tar[..512 + 1000];
    match failure(split_tar(
        &repo,
        cut,
        &LayerLimits::DEFAULT,
        &Cancel::default(),
    )) {
        SplitError::Tar { reason, diff_id } => {
            assert!(reason.contains("ends in the middle of a file"), "{reason}");
            assert_eq!(diff_id, Digest::of(cut));
        }
        other => panic!("expected a tar fault, got {other:?}"),
    }
}

#[test]
fn a_tar_over_the_layer_size_limit_is_refused_naming_the_limit() {
    let (_dir, repo) = repository();
    let tar = tar_of(&[("a", &[b'a'; 50_000])]);
    let limits = LayerLimits {
        max_layer_size: 20_000,
        ..LayerLimits::DEFAULT
    };
    match failure(split_tar(&repo, &tar, &limits, &Cancel::default())) {
        SplitError::Limit(exceeded) => {
            assert_eq!(exceeded.what, super::limits::UNCOMPRESSED_SIZE);
            assert_eq!(exceeded.limit, 20_000);
        }
        other => panic!("expected the size limit, got {other:?}"),
    }
}

#[test]
fn a_cancelled_split_stops_and_names_nothing() {
    let (dir, repo) = repository();
    let tar = tar_of(&[("a", &[b'a'; 5000])]);
    let cancel = Cancel::default();
    cancel.cancel();
    match failure(split_tar(&repo, &tar, &LayerLimits::DEFAULT, &cancel)) {
        SplitError::Cancelled => {}
        other => panic!("expected cancellation, got {other:?}"),
    }
    let streams = std::fs::read_dir(dir.path().join("repo/streams"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(streams, 0, "a cancelled split named a stream");
}

#[test]
fn a_split_cancelled_inside_one_large_file_stops_within_a_chunk() {
    let (_dir, repo) = repository();
    // One file larger than memory holds: it goes to a temporary file,
    // chunk by chunk, all of it one entry.
    let size = BUFFERED_BYTES * 2;
    let tar = tar_of(&[("large", &vec![7u8; size])]);
    let cancel = Cancel::default();
    let (mut input, rx) = pipe();
    let canceller = cancel.clone();
    let producer = std::thread::spawn(move || {
        let mut sent = 0;
        for piece in tar.chunks(1 << 20) {
            if input.write_all(piece).is_err() {
                return sent;
            }
            sent += piece.len();
            // Its caller goes once a tenth of the file is on its way.
            if sent >= size / 10 {
                canceller.cancel();
            }
        }
        let _ = input.close();
        sent
    });
    let result = split(
        rx,
        repo.clone(),
        &cancel,
        &LayerLimits::DEFAULT,
        PullTally::default(),
        &Digest::of(b"a tar that is never whole"),
    );
    let sent = producer.join().unwrap();
    match failure(result) {
        SplitError::Cancelled => {}
        other => panic!("expected cancellation, got {other:?}"),
    }
    // The pipe holds a few chunks; the rest of the file was never taken.
    assert!(
        sent < size / 2,
        "{sent} of {size} bytes were taken after the cancel"
    );
}

/// Split `tar` as [`split_tar`] does, the producer making `claims` (tar
/// position, size, object) as it reaches each position.
fn split_claimed(
    repo: &Repo,
    tar: &[u8],
    claims: &[(u64, u64, Sha256HashValue)],
) -> (Sha256HashValue, Tally<Sha256HashValue>, Digest) {
    let (stream, tally, diff_id, _) = split_claimed_with_contents(repo, tar, claims);
    (stream, tally, diff_id)
}

/// [`split_claimed`], with the stream's contents for the content index.
fn split_claimed_with_contents(
    repo: &Repo,
    tar: &[u8],
    claims: &[(u64, u64, Sha256HashValue)],
) -> (
    Sha256HashValue,
    Tally<Sha256HashValue>,
    Digest,
    Contents<Sha256HashValue>,
) {
    split_with(repo, tar, claims, &Digest::of(tar))
}

/// [`split_claimed_with_contents`], checking the tar against `expected`.
fn split_with(
    repo: &Repo,
    tar: &[u8],
    claims: &[(u64, u64, Sha256HashValue)],
    expected: &Digest,
) -> (
    Sha256HashValue,
    Tally<Sha256HashValue>,
    Digest,
    Contents<Sha256HashValue>,
) {
    let (mut input, rx) = pipe();
    let (bytes, claims) = (tar.to_vec(), claims.to_vec());
    let producer = std::thread::spawn(move || {
        let mut done = 0;
        for (at, size, id) in claims {
            input.write_all(&bytes[done..at as usize]).unwrap();
            input.object_follows(id, size);
            done = at as usize;
        }
        input.write_all(&bytes[done..]).unwrap();
        input.close().unwrap();
    });
    let limits = LayerLimits::DEFAULT;
    let result = split(
        rx,
        repo.clone(),
        &Cancel::default(),
        &limits,
        PullTally::default(),
        expected,
    );
    producer.join().unwrap();
    result.unwrap()
}

/// A repository holding an object of 5000 `b`s, which no tar below has:
/// a claim naming it shows in the rebuilt tar wherever it was honoured.
fn with_marker() -> (tempfile::TempDir, Repo, Sha256HashValue) {
    let (dir, repo) = repository();
    let marker = vec![b'b'; 5000];
    let (_, tally, _) = split_tar(
        &repo,
        &tar_of(&[("marker", &marker)]),
        &LayerLimits::DEFAULT,
        &Cancel::default(),
    )
    .unwrap();
    assert_eq!(tally.objects_new(), 1);
    (dir, repo, compute_verity(&marker))
}

/// A big file, then `x` of 5000 `a`s whose content starts exactly where
/// the pipe's second chunk does (a claim made there travels with that
/// chunk); where `x`'s content starts.
fn tar_with_x() -> (Vec<u8>, u64) {
    let big = vec![b'z'; 261_120];
    let tar = tar_of(&[("big", &big), ("x", &[b'a'; 5000])]);
    let at = 512 + 261_120 + 512;
    assert_eq!(at, super::CHUNK_BYTES as u64);
    (tar, at)
}

#[test]
fn a_claimed_entry_refers_to_the_claimed_object_and_the_diff_id_is_of_the_bytes_sent() {
    let (_dir, repo, marker) = with_marker();
    let (tar, at) = tar_with_x();
    let (stream, tally, diff_id) = split_claimed(&repo, &tar, &[(at, 5000, marker.clone())]);
    // The digest is of what flowed, whatever the claim said: the caller's
    // diff_id check is what makes a claim safe.
    assert_eq!(diff_id, Digest::of(&tar));
    // The claim was taken at its word: no hash of x's bytes was made.
    let mut expected = tar.clone();
    expected[at as usize..at as usize + 5000].fill(b'b');
    assert_eq!(rebuilt(&repo, &stream, &diff_id), expected);
    assert_eq!(tally.objects_new(), 1, "only big is stored");
    assert_eq!(tally.objects_present(), 1, "the claimed object");
}

#[test]
fn a_claim_that_is_not_exactly_an_entrys_content_is_ignored() {
    let (tar, at) = tar_with_x();
    for (claim_at, size) in [
        (at + 1, 4999),
        (at, 4999),
        (at, 5001),
        (at - 512, 5000),
        (0, 5000),
    ] {
        let (_dir, repo, marker) = with_marker();
        let (stream, tally, diff_id) = split_claimed(&repo, &tar, &[(claim_at, size, marker)]);
        assert_eq!(diff_id, Digest::of(&tar));
        assert_eq!(
            rebuilt(&repo, &stream, &diff_id),
            tar,
            "claim at {claim_at} of {size}"
        );
        assert_eq!(tally.objects_present() + tally.objects_new(), 2);
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    openssl::sha::sha256(data)
}

#[test]
fn each_stored_file_is_listed_by_the_sha256_of_its_content() {
    let (_dir, repo) = repository();
    let (small, medium) = (vec![b's'; 64], vec![b'm'; 5000]);
    let large: Vec<u8> = (0..BUFFERED_BYTES + 1).map(|i| (i % 253) as u8).collect();
    let tar = tar_of(&[("small", &small), ("medium", &medium), ("large", &large)]);
    let (_, _, _, mut contents) = split_claimed_with_contents(&repo, &tar, &[]);
    let key = |e: &(_, Sha256HashValue)| (e.0, e.1.to_hex());
    contents.sort_by_key(key);
    let mut expected = vec![
        (sha256(&medium), compute_verity(&medium)),
        (sha256(&large), compute_verity(&large)),
    ];
    expected.sort_by_key(key);
    // Inline contents (64 bytes and less) are no object: not listed.
    assert_eq!(contents, expected);
}

#[test]
fn a_claimed_content_is_listed_by_its_objects_digest_not_the_tars_bytes() {
    let (_dir, repo, marker) = with_marker();
    let (tar, at) = tar_with_x();
    let (_, _, _, contents) =
        split_claimed_with_contents(&repo, &tar, &[(at, 5000, marker.clone())]);
    // No index file knows the marker yet: its object was read.
    assert!(contents.contains(&(sha256(&[b'b'; 5000]), marker.clone())));
    assert!(!contents.iter().any(|(d, _)| *d == sha256(&[b'a'; 5000])));
    // Once an index file knows it, that digest is taken, unread.
    let stream_key = compute_verity::<Sha256HashValue>(b"any present object");
    repo.ensure_object(b"any present object").unwrap();
    let known = [7u8; 32];
    crate::content::record(
        &repo,
        &stream_key,
        vec![(known, marker.clone())],
        Vec::new(),
    )
    .unwrap();
    let (_, _, _, contents) =
        split_claimed_with_contents(&repo, &tar, &[(at, 5000, marker.clone())]);
    assert!(contents.contains(&(known, marker)));
}

/// `tar` padded with 13 zero blocks past its end-of-archive marker, as
/// our Debian v2's layer was before skopeo 1.9's legacy zstd:chunked
/// writer dropped them.
fn padded_tar(tar: &[u8]) -> Vec<u8> {
    let mut padded = tar.to_vec();
    padded.resize(tar.len() + 13 * 512, 0);
    padded
}

#[test]
fn a_tar_short_of_its_padding_is_stored_as_the_tar_its_diff_id_names() {
    let (_dir, repo) = repository();
    let short = tar_of(&[("a", &[b'a'; 700]), ("b", b"bbb")]);
    let tar = padded_tar(&short);
    let expected = Digest::of(&tar);
    let (stream, _, diff_id, _) = split_with(&repo, &short, &[], &expected);
    assert_eq!(diff_id, expected);
    assert_eq!(rebuilt(&repo, &stream, &diff_id), tar);
}

#[test]
fn a_tar_that_differs_by_more_than_zero_blocks_keeps_its_own_digest() {
    let (_dir, repo) = repository();
    let short = tar_of(&[("a", &[b'a'; 700])]);
    let mut other = padded_tar(&short);
    *other.last_mut().unwrap() = 1;
    let (_, _, diff_id, _) = split_with(&repo, &short, &[], &Digest::of(&other));
    assert_eq!(diff_id, Digest::of(&short));
}
