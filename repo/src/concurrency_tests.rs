//! The handle driven from many Rust threads at once: pulls of the same and
//! of different images while another thread collects garbage.

use std::{
    fs::File,
    os::fd::AsFd,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use rustix::fs::FlockOperation;

use crate::{
    Error, HashAlgorithm, Repository, VerityPolicy,
    oci::digest::Digest,
    oci::{PullOptions, PullReport, Source, Stage},
    test_image::{TestImage, TestLayer},
};

/// A one-layer gzip image whose files are `n` objects of seed `seed`.
fn image(seed: u8, n: usize) -> TestImage {
    let mut layer = tar::Builder::new(Vec::new());
    let mut usr = tar::Header::new_ustar();
    usr.set_entry_type(tar::EntryType::Directory);
    usr.set_mode(0o755);
    usr.set_mtime(1_700_000_000);
    usr.set_size(0);
    usr.set_cksum();
    layer.append_data(&mut usr, "usr/", &b""[..]).unwrap();
    for i in 0..n {
        let data = vec![seed.wrapping_add(i as u8); 100 + i];
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        layer
            .append_data(&mut header, format!("usr/f{seed}-{i}"), &data[..])
            .unwrap();
    }
    TestImage::new(vec![TestLayer::gzip(layer.into_inner().unwrap())])
}

fn new_repo() -> (tempfile::TempDir, Repository) {
    let dir = tempfile::tempdir().unwrap();
    let (repo, _) =
        Repository::init(dir.path(), HashAlgorithm::SHA256, VerityPolicy::BestEffort).unwrap();
    (dir, repo)
}

/// Pull `archive` as `tag` on a runtime of this thread's own.
fn pull_on_thread(
    repo: &Repository,
    archive: File,
    tag: &str,
    progress: impl Fn(crate::oci::LayerProgress) + Send + Sync + 'static,
) -> PullReport {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let options = PullOptions {
        tag: Some(tag.to_owned()),
        jobs: 2,
        ..PullOptions::default()
    };
    runtime
        .block_on(repo.pull(Source::Archive(archive), options, progress))
        .unwrap()
}

/// Several threads pull three images, three threads each, while another
/// collects in a loop. The first import of image 0 stops at its first
/// progress report until the two other pulls of image 0 are seen waiting
/// for it (so the pulls overlapped) and the collector has been refused
/// because of exactly that pull (so GC overlapped the import).
#[test]
fn threads_pull_the_same_and_different_images_while_another_collects() {
    let (_dir, repo) = new_repo();
    repo.set_gc_wait(Duration::from_millis(100));
    let images: Vec<TestImage> = (0..3).map(|k| image(k * 40, 20 + k as usize)).collect();
    let manifest0 = Digest::of(&images[0].manifest).to_string();
    let pulling = AtomicBool::new(true);
    let gc_met_import = std::sync::Arc::new(AtomicBool::new(false));
    let (reports, (collected, busy_for_import)) = std::thread::scope(|s| {
        let mut pulls = Vec::new();
        for (k, image) in images.iter().enumerate() {
            for j in 0..3 {
                let (repo, archive) = (repo.clone(), image.archive(None));
                let (waiter, manifest0) = (repo.clone(), manifest0.clone());
                let gc_met = gc_met_import.clone();
                let first = k == 0;
                pulls.push(s.spawn(move || {
                    let progress = move |p: crate::oci::LayerProgress| {
                        if first && p.stage == Stage::Importing && p.done == 0 {
                            wait_until(|| {
                                waiter.pulls_waiting(&manifest0) == 2
                                    && gc_met.load(Ordering::SeqCst)
                            });
                        }
                    };
                    (
                        k,
                        pull_on_thread(&repo, archive, &format!("img{k}-{j}"), progress),
                    )
                }));
            }
        }
        let collector = s.spawn(|| {
            let (mut collected, mut busy_for_import) = (0, 0);
            while pulling.load(Ordering::SeqCst) {
                match repo.gc(false) {
                    Ok(_) => collected += 1,
                    Err(Error::RepositoryBusy { holders, .. }) => {
                        if holders.contains(&format!("a pull of {manifest0}")) {
                            busy_for_import += 1;
                            gc_met_import.store(true, Ordering::SeqCst);
                        }
                    }
                    // Mount tables with names that are not UTF-8, which
                    // other tests on this machine may leave for a moment,
                    // fail every GC until issue 19 item 7 is fixed.
                    Err(Error::Storage {
                        operation: "finding the mounted images",
                        ..
                    }) => {}
                    Err(e) => panic!("GC failed: {e}"),
                }
            }
            (collected, busy_for_import)
        });
        let reports: Vec<(usize, PullReport)> =
            pulls.into_iter().map(|p| p.join().unwrap()).collect();
        pulling.store(false, Ordering::SeqCst);
        (reports, collector.join().unwrap())
    });
    assert!(busy_for_import > 0, "GC never met the stopped import");
    assert!(collected > 0, "GC never ran between the pulls");
    for k in 0..3 {
        let of_k: Vec<&PullReport> = reports
            .iter()
            .filter(|(i, _)| *i == k)
            .map(|(_, r)| r)
            .collect();
        let imports = of_k.iter().filter(|r| !r.already_present).count();
        assert_eq!(imports, 1, "image {k} was imported {imports} times");
        for r in &of_k {
            assert_eq!(r.image_id, of_k[0].image_id);
            assert_eq!(
                repo.compute_id(&r.tag).unwrap(),
                r.image_id,
                "{} is incomplete",
                r.tag
            );
        }
    }
    repo.gc(false).unwrap();
    assert_eq!(repo.images().unwrap().len(), 9);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let fsck = runtime.block_on(repo.fsck(false)).unwrap();
    assert!(fsck.is_ok(), "{fsck:?}");
}

/// Poll `done` until it holds, failing after 30 s.
fn wait_until(done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether another open file description can lock the repository
/// directory shared right now, i.e. no collection holds it exclusively.
fn can_share(path: &std::path::Path) -> bool {
    let dir = File::open(path).unwrap();
    rustix::fs::flock(dir.as_fd(), FlockOperation::NonBlockingLockShared).is_ok()
}

/// composefs's dry run takes `flock(LOCK_SH)` on the descriptor a running
/// collection holds exclusively, which would make the lock shared in the
/// middle of the collection. A dry run started during a collection waits
/// for it instead: it then reports nothing left to remove, and the lock
/// stayed exclusive until the collection was done.
#[test]
fn a_dry_run_during_a_collection_waits_for_it() {
    let (dir, repo) = new_repo();
    let garbage = seed_garbage(dir.path(), 20_000);
    let collected = AtomicBool::new(false);
    let (real, dry, lost) = std::thread::scope(|s| {
        let collector = s.spawn(|| {
            let report = repo.gc(false).unwrap();
            collected.store(true, Ordering::SeqCst);
            report
        });
        wait_until(|| !can_share(dir.path()) || collector.is_finished());
        assert!(
            !collector.is_finished(),
            "the collection was too quick to overlap"
        );
        let dry = s.spawn(|| repo.gc(true).unwrap());
        // While the collection has not reported, nobody else may lock the
        // repository shared, not even after the dry run began.
        let mut lost = false;
        while !collector.is_finished() {
            let shared = can_share(dir.path());
            // composefs makes the lock shared just before it returns.
            lost |= shared && !collected.load(Ordering::SeqCst) && !near_the_end(dir.path());
        }
        (collector.join().unwrap(), dry.join().unwrap(), lost)
    });
    assert_eq!(real.objects_removed, garbage);
    assert_eq!(
        dry.objects_removed, 0,
        "the dry run ran during the collection: {dry:?}"
    );
    assert!(
        !lost,
        "the collection's exclusive lock became shared while it ran"
    );
}

/// Whether the collection has removed every object: composefs turns the
/// lock shared only after that.
fn near_the_end(path: &std::path::Path) -> bool {
    crate::usage::objects(path).is_ok_and(|u| u.count == 0)
}

/// Put `count` unreferenced objects into the store; return the count.
fn seed_garbage(path: &std::path::Path, count: u64) -> u64 {
    for i in 0..count {
        let digest = Digest::of(&i.to_le_bytes()).hex().to_owned();
        let shard = path.join("objects").join(&digest[..2]);
        std::fs::create_dir_all(&shard).unwrap();
        std::fs::write(shard.join(&digest[2..]), b"x").unwrap();
    }
    count
}
