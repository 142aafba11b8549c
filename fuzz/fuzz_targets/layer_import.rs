//! The layer importer, as `oci pull` runs it on one layer blob: the first
//! input byte picks the compression (none, gzip, zstd), the rest is the
//! layer tar, which this target compresses so that the fuzzer works on tar
//! structure. One repository is reused for many runs.
//!
//! An imported layer's split stream must give back the tar byte for byte;
//! a refused one gets `InvalidLayer` (not a storage error: nothing is
//! wrong with the repository) and leaves no layer stream behind.

#![no_main]

use std::{io::Write, sync::Mutex};

use cfsd_repo::{Error, HashAlgorithm, Repository, VerityPolicy, fuzzing};
use libfuzzer_sys::fuzz_target;

/// The repository, in a directory removed when it is replaced.
struct Fixture {
    _dir: tempfile::TempDir,
    repo: Repository,
    runtime: tokio::runtime::Runtime,
    runs: u32,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (repo, _) =
            Repository::init(dir.path(), HashAlgorithm::SHA256, VerityPolicy::BestEffort)
                .expect("a repository");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        Fixture {
            _dir: dir,
            repo,
            runtime,
            runs: 0,
        }
    }
}

/// How many runs share a repository. Objects pile up (about 700 MB per
/// million runs); a fresh one now and then keeps long runs within tmpfs.
const RUNS_PER_REPOSITORY: u32 = 20_000;

static FIXTURE: Mutex<Option<Fixture>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let Some((&mode, tar)) = data.split_first() else {
        return;
    };
    let (compression, blob) = match mode % 3 {
        0 => ("none", tar.to_vec()),
        1 => ("gzip", gzip(tar)),
        _ => ("zstd", zstd::encode_all(tar, 1).expect("compressing")),
    };
    let diff_id = digest(tar);
    let mut slot = FIXTURE.lock().unwrap_or_else(|e| e.into_inner());
    if slot.as_ref().is_none_or(|f| f.runs >= RUNS_PER_REPOSITORY) {
        *slot = None;
        *slot = Some(Fixture::new());
    }
    let fixture = slot.as_mut().expect("a fixture");
    fixture.runs += 1;
    let fixture = &*fixture;
    let name = fuzzing::layer_stream_name(&diff_id).expect("a stream name");
    let existed = stream(fixture, &name).is_some();
    let imported = fixture.runtime.block_on(fuzzing::import_layer(
        &fixture.repo,
        &blob,
        compression,
        &diff_id,
    ));
    match imported {
        Ok(stream_name) => {
            assert_eq!(stream_name, name);
            let joined = stream(fixture, &name).expect("the layer stream exists");
            assert!(joined == tar, "the split stream does not give back the tar");
        }
        Err(e) => {
            assert!(matches!(e, Error::InvalidLayer { .. }), "{e:?}");
            assert!(
                existed || stream(fixture, &name).is_none(),
                "a refused layer was named"
            );
        }
    }
});

fn stream(fixture: &Fixture, name: &str) -> Option<Vec<u8>> {
    fuzzing::layer_stream(&fixture.repo, name).expect("reading the layer stream")
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).expect("compressing");
    encoder.finish().expect("compressing")
}

fn digest(bytes: &[u8]) -> String {
    let hex: String = openssl::sha::sha256(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}
