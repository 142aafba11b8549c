//! The content index on its own: its file format against damage, what
//! opening leaves out, pruning, and building it for streams named
//! before it existed.

use std::{
    io::Write,
    sync::{Arc, atomic::AtomicBool},
};

use composefs::{
    fsverity::{FsVerityHashValue, Sha256HashValue, Sha512HashValue, compute_verity},
    repository::Repository as Store,
};
use composefs_oci::layer_content_id;

use super::{ContentIndex, DIR, build::build, file, prune, record, write};
use crate::oci::split::{
    self, Cancel, LayerLimits, PullTally,
    tests::{repository, tar_of},
};

type Id = Sha256HashValue;
type Repo = Arc<Store<Id>>;

fn sha256(data: &[u8]) -> [u8; 32] {
    openssl::sha::sha256(data)
}

/// An object holding `data`, stored.
fn object(repo: &Repo, data: &[u8]) -> Id {
    repo.ensure_object(data).unwrap()
}

/// An object id's bytes.
fn raw<H: FsVerityHashValue>(id: &H) -> Vec<u8> {
    id.as_bytes().to_vec()
}

/// Sorted by digest, then object.
fn sort(entries: &mut [(file::Sha256Digest, Id)]) {
    entries.sort_by_key(|e| (e.0, raw(&e.1)));
}

fn entries(n: u8) -> Vec<(file::Sha256Digest, Id)> {
    (0..n)
        .map(|i| (sha256(&[i]), compute_verity(&[i, i])))
        .collect()
}

#[test]
fn an_index_file_reads_back_sorted_and_without_a_digest_twice() {
    let mut written = entries(20);
    written.push(written[3].clone());
    let bytes = file::encode(&mut written, &mut Vec::new());
    let mut read = Vec::new();
    let n = file::decode::<Id>(&bytes, |d, id| read.push((d, id))).unwrap();
    assert_eq!(n, 20);
    let mut expected = entries(20);
    sort(&mut expected);
    assert_eq!(read, expected);
}

#[test]
fn every_cut_and_every_flipped_byte_of_an_index_file_is_damage_never_a_panic() {
    let bytes = file::encode(&mut entries(5), &mut Vec::new());
    for len in 0..bytes.len() {
        let cut = file::decode::<Id>(&bytes[..len], |_, _| panic!("a record of a cut file"));
        assert!(cut.is_err(), "cut at {len}");
    }
    for at in 0..bytes.len() {
        let mut garbled = bytes.clone();
        garbled[at] ^= 0x40;
        let result = file::decode::<Id>(&garbled, |_, _| panic!("a record of a garbled file"));
        assert!(result.is_err(), "flip at {at}");
    }
    // A sound file of the other algorithm is refused as that.
    let other = file::encode::<Sha512HashValue>(&mut Vec::new(), &mut Vec::new());
    let why = file::decode::<Id>(&other, |_, _| {}).unwrap_err();
    assert!(why.0.contains("algorithm"), "{why}");
}

/// An index file of `records` as they are, checksummed right: what a
/// hostile or broken writer could leave.
fn hand_made(records: &[(file::Sha256Digest, Id)], count: u64) -> Vec<u8> {
    let mut bytes = b"CFSDCIX1".to_vec();
    bytes.extend_from_slice(&32u32.to_le_bytes());
    bytes.extend_from_slice(&count.to_le_bytes());
    for (d, id) in records {
        bytes.extend_from_slice(d);
        bytes.extend_from_slice(&raw(id));
    }
    let check = sha256(&bytes);
    bytes.extend_from_slice(&check);
    bytes
}

#[test]
fn a_file_whose_records_lie_about_order_or_count_is_damage() {
    let mut records = entries(3);
    sort(&mut records);
    assert!(file::decode::<Id>(&hand_made(&records, 3), |_, _| {}).is_ok());
    for count in [0, 2, 4, u64::MAX] {
        let why = file::decode::<Id>(&hand_made(&records, count), |_, _| {}).unwrap_err();
        assert!(why.0.contains("count"), "{why}");
    }
    records.swap(0, 2);
    let why = file::decode::<Id>(&hand_made(&records, 3), |_, _| {}).unwrap_err();
    assert!(why.0.contains("sorted"), "{why}");
    let twice = [records[0].clone(), records[0].clone()];
    assert!(file::decode::<Id>(&hand_made(&twice, 2), |_, _| {}).is_err());
}

#[test]
fn open_merges_the_files_of_present_keys_and_leaves_out_damaged_and_stale_ones() {
    let (dir, repo) = repository();
    let (a, b) = (vec![b'a'; 100], vec![b'b'; 100]);
    let (ida, idb) = (object(&repo, &a), object(&repo, &b));
    let (key1, key2) = (object(&repo, b"stream one"), object(&repo, b"stream two"));
    record(&repo, &key1, vec![(sha256(&a), ida.clone())], Vec::new()).unwrap();
    record(&repo, &key2, vec![(sha256(&b), idb.clone())], Vec::new()).unwrap();
    // A stream whose object is gone, and a garbled file.
    let gone: Id = compute_verity(b"not stored");
    record(&repo, &gone, vec![([9; 32], ida.clone())], Vec::new()).unwrap();
    let garbled_key = object(&repo, b"stream three");
    let garbled = dir.path().join("repo").join(DIR).join(garbled_key.to_hex());
    std::fs::File::create(&garbled)
        .unwrap()
        .write_all(b"CFSDCIX1 and then nonsense of the right shape? no")
        .unwrap();
    let index = ContentIndex::open(&repo).unwrap();
    assert_eq!(index.find(&sha256(&a)), Some(ida));
    assert_eq!(index.find(&sha256(&b)), Some(idb));
    assert_eq!(index.find(&[9; 32]), None, "a stale file was read");
    assert_eq!(index.len(), 2);
    assert_eq!(index.files(), (2, 2));
}

/// The names in the index directory of `dir`'s repository, sorted.
fn index_names(dir: &tempfile::TempDir) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.path().join("repo").join(DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn a_written_file_is_found_only_once_placed_and_is_removed_if_never_placed() {
    let (dir, repo) = repository();
    let data = vec![b'w'; 100];
    let id = object(&repo, &data);
    let key = object(&repo, b"a stream");
    let unplaced = write(&repo, vec![(sha256(&data), id.clone())], Vec::new()).unwrap();
    let names = index_names(&dir);
    assert!(
        names.len() == 1 && names[0].starts_with(".tmp-"),
        "{names:?}"
    );
    assert_eq!(
        ContentIndex::open(&repo).unwrap().find(&sha256(&data)),
        None
    );
    unplaced.place(&key).unwrap();
    assert_eq!(index_names(&dir), [key.to_hex()]);
    assert_eq!(
        ContentIndex::open(&repo).unwrap().find(&sha256(&data)),
        Some(id.clone())
    );

    // One whose stream is never named leaves nothing behind.
    let other = write(&repo, vec![([7; 32], id)], Vec::new()).unwrap();
    drop(other);
    assert_eq!(index_names(&dir), [key.to_hex()]);
}

#[test]
fn an_absent_index_directory_is_an_empty_index() {
    let (_dir, repo) = repository();
    let index = ContentIndex::open(&repo).unwrap();
    assert!(index.is_empty());
    assert_eq!(index.find(&[0; 32]), None);
}

#[test]
fn prune_removes_the_files_of_gone_keys_and_leftover_temporary_files() {
    let (dir, repo) = repository();
    let key = object(&repo, b"a stream");
    let gone: Id = compute_verity(b"not stored");
    record(&repo, &key, Vec::new(), Vec::new()).unwrap();
    record(&repo, &gone, Vec::new(), Vec::new()).unwrap();
    let index_dir = dir.path().join("repo").join(DIR);
    std::fs::write(index_dir.join(".tmp-1-1"), b"half").unwrap();
    assert_eq!(prune(&repo).unwrap(), 2);
    assert_eq!(index_names(&dir), [key.to_hex()]);
}

/// Split `tar` and name it as a layer stream, recording its contents as
/// a pull does; the stream.
fn import(repo: &Repo, tar: &[u8]) -> Id {
    let (mut input, rx) = split::pipe();
    input.write_all(tar).unwrap();
    let producer = std::thread::spawn(move || input.close());
    let limits = LayerLimits::DEFAULT;
    let cancel = Cancel::default();
    let expected = crate::oci::digest::Digest::of(tar);
    let (stream, _, diff_id, contents) = split::split(
        rx,
        repo.clone(),
        &cancel,
        &limits,
        PullTally::default(),
        &expected,
    )
    .unwrap_or_else(|_| panic!("split failed"));
    producer.join().unwrap().unwrap();
    let name = layer_content_id(&diff_id.to_oci());
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(repo.register_stream(&stream, &name, None))
        .unwrap();
    record(repo, &stream, contents, Vec::new()).unwrap();
    stream
}

/// Every entry of `repo`'s index files, sorted.
fn all_entries(repo: &Repo) -> Vec<(file::Sha256Digest, Id)> {
    let mut all = Vec::new();
    super::for_each_file(repo, |_, bytes| {
        file::decode::<Id>(&bytes.unwrap(), |d, id| all.push((d, id))).unwrap();
    })
    .unwrap();
    sort(&mut all);
    all
}

#[test]
fn a_repository_without_index_files_gets_the_same_entries_built() {
    let (dir, repo) = repository();
    let files: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1000 + i as usize]).collect();
    import(
        &repo,
        &tar_of(&[("a", &files[0]), ("b", &files[1]), ("c", &files[2])]),
    );
    import(
        &repo,
        &tar_of(&[("b", &files[1]), ("d", &files[3]), ("e", &files[4])]),
    );
    let before = all_entries(&repo);
    assert_eq!(before.len(), 6, "b is in both streams");
    // As the code before the index left it: no index directory at all.
    std::fs::remove_dir_all(dir.path().join("repo").join(DIR)).unwrap();
    assert!(ContentIndex::open(&repo).unwrap().is_empty());
    let seen = std::sync::Mutex::new(Vec::new());
    let last = build(
        &repo,
        &|p| seen.lock().unwrap().push(p),
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!((last.done, last.total), (2, 2));
    assert_eq!(last.objects_hashed, 5, "b was hashed once");
    let seen: Vec<u64> = seen.into_inner().unwrap().iter().map(|p| p.done).collect();
    assert_eq!(seen, vec![0, 1, 2]);
    assert_eq!(all_entries(&repo), before);
    let index = ContentIndex::open(&repo).unwrap();
    for data in &files {
        assert_eq!(index.find(&sha256(data)), Some(compute_verity(data)));
    }
    // Built once: a second run has nothing to do.
    let again = build(&repo, &|_| {}, &AtomicBool::new(false)).unwrap();
    assert_eq!((again.total, again.objects_hashed), (0, 0));
}

#[test]
fn a_damaged_index_file_is_built_again() {
    let (dir, repo) = repository();
    let data = vec![b'x'; 3000];
    let stream = import(&repo, &tar_of(&[("x", &data)]));
    let path = dir.path().join("repo").join(DIR).join(stream.to_hex());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[30] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(
        ContentIndex::open(&repo).unwrap().find(&sha256(&data)),
        None
    );
    let built = build(&repo, &|_| {}, &AtomicBool::new(false)).unwrap();
    assert_eq!(built.total, 1);
    let index = ContentIndex::open(&repo).unwrap();
    assert_eq!(index.find(&sha256(&data)), Some(compute_verity(&data)));
}

#[test]
fn fsck_reports_an_entry_whose_object_is_missing_or_holds_other_content() {
    let (dir, repo) = repository();
    let data = vec![b'd'; 500];
    let (id, key) = (object(&repo, &data), object(&repo, b"a stream"));
    let missing: Id = compute_verity(b"never stored");
    let entries = vec![
        (sha256(&data), id.clone()),
        ([1; 32], id.clone()),
        ([2; 32], missing),
    ];
    record(&repo, &key, entries, Vec::new()).unwrap();
    let other_key = object(&repo, b"another stream");
    let garbled = dir.path().join("repo").join(DIR).join(other_key.to_hex());
    std::fs::write(&garbled, b"garbage").unwrap();
    let kinds = |read| {
        let mut report = crate::FsckReport::default();
        report
            .check_content_index(&*repo, read, &Cancel::default())
            .unwrap();
        let mut kinds: Vec<String> = report.problems.into_iter().map(|p| p.kind).collect();
        kinds.sort();
        kinds
    };
    assert_eq!(
        kinds(false),
        ["content-index-damaged", "content-index-missing-object"]
    );
    assert_eq!(
        kinds(true),
        [
            "content-index-damaged",
            "content-index-missing-object",
            "content-index-wrong-content"
        ]
    );
}

#[test]
fn a_check_told_to_stop_ends_as_interrupted_and_reports_nothing() {
    let (_dir, repo) = repository();
    let data = vec![b'd'; 500];
    let (id, key) = (object(&repo, &data), object(&repo, b"a stream"));
    record(&repo, &key, vec![([1; 32], id)], Vec::new()).unwrap();
    let stop = Cancel::default();
    stop.cancel();
    let mut report = crate::FsckReport::default();
    let err = report.check_content_index(&*repo, true, &stop).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::Interrupted);
    // The entry is wrong, but a stopped check reports no half-result.
    assert_eq!(report.problems, Vec::new());
}

/// A chunk record of `size` bytes at `offset` of `object`.
fn chunk(object: &Id, offset: u64, size: u64) -> file::StoredChunk<Id> {
    file::StoredChunk {
        object: object.clone(),
        offset,
        size,
    }
}

#[test]
fn chunk_records_read_back_sorted_and_a_file_without_them_keeps_the_first_form() {
    let id: Id = compute_verity(b"a file");
    let mut chunks = vec![
        (sha256(b"second"), chunk(&id, 10, 5)),
        (sha256(b"first"), chunk(&id, 0, 10)),
        (sha256(b"first"), chunk(&id, 0, 10)),
    ];
    let bytes = file::encode(&mut entries(3), &mut chunks);
    assert_eq!(&bytes[..8], b"CFSDCIX2");
    let (mut files, mut read) = (0, Vec::new());
    let n = file::decode_all::<Id>(&bytes, |_, _| files += 1, |d, c| read.push((d, c)));
    assert_eq!((n, files), (Ok(3), 3));
    let mut expected = vec![
        (sha256(b"first"), chunk(&id, 0, 10)),
        (sha256(b"second"), chunk(&id, 10, 5)),
    ];
    expected.sort_by_key(|c| c.0);
    assert_eq!(read, expected);
    // The plain reader passes over the chunks.
    assert_eq!(file::decode::<Id>(&bytes, |_, _| {}), Ok(3));
    for len in 0..bytes.len() {
        let cut = file::decode_all::<Id>(&bytes[..len], |_, _| {}, |_, _| panic!("cut"));
        assert!(cut.is_err(), "a file cut to {len} bytes was read");
    }
    let plain = file::encode(&mut entries(3), &mut Vec::new());
    assert_eq!(&plain[..8], b"CFSDCIX1");
}

#[test]
fn chunk_records_of_an_empty_or_overflowing_stretch_are_damage() {
    let id: Id = compute_verity(b"a file");
    for (offset, size) in [(0, 0), (u64::MAX - 1, 2)] {
        let mut chunks = vec![(sha256(b"c"), chunk(&id, offset, size))];
        let bytes = file::encode(&mut Vec::new(), &mut chunks);
        let why = file::decode_all::<Id>(&bytes, |_, _| {}, |_, _| {}).unwrap_err();
        assert!(why.0.contains("stretch"), "{why}");
    }
}

#[test]
fn chunk_hints_join_only_the_files_whose_content_the_splitter_hashed() {
    let (a, b): (Id, Id) = (compute_verity(b"a"), compute_verity(b"b"));
    let contents = vec![(sha256(b"file a"), a.clone()), (sha256(b"file b"), b)];
    let mut hints = super::ChunkHints::new();
    hints.insert(sha256(b"file a"), vec![([1; 32], 0, 7), ([2; 32], 7, 3)]);
    // A TOC naming chunks of content no file of the layer has.
    hints.insert(sha256(b"file c"), vec![([3; 32], 0, 9)]);
    let joined = super::chunks_of(&contents, &hints);
    assert_eq!(
        joined,
        vec![([1; 32], chunk(&a, 0, 7)), ([2; 32], chunk(&a, 7, 3))]
    );
}

#[test]
fn open_finds_recorded_chunks_and_fsck_hashes_their_stretch() {
    let (_dir, repo) = repository();
    let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    let (id, key) = (object(&repo, &data), object(&repo, b"a stream"));
    let chunks = vec![
        (sha256(&data[100..300]), chunk(&id, 100, 200)),
        // A lying record: the digest of other bytes.
        (sha256(b"not there"), chunk(&id, 0, 50)),
    ];
    record(&repo, &key, vec![(sha256(&data), id.clone())], chunks).unwrap();
    let index = ContentIndex::open(&repo).unwrap();
    assert_eq!(index.find(&sha256(&data)), Some(id.clone()));
    assert_eq!(index.chunk_count(), 2);
    assert_eq!(
        index.find_chunk(&sha256(&data[100..300])),
        Some(chunk(&id, 100, 200))
    );
    let mut report = crate::FsckReport::default();
    report
        .check_content_index(&*repo, true, &Cancel::default())
        .unwrap();
    let found: Vec<(String, String)> = report
        .problems
        .into_iter()
        .map(|p| (p.kind, p.detail))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "content-index-wrong-content");
    assert!(
        found[0].1.contains("bytes 0..50 of objects/"),
        "{}",
        found[0].1
    );
}
