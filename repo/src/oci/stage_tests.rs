//! Staged pulls through the library: stage, list, GC, commit, abort.

use crate::{
    Error, HashAlgorithm, Repository, VerityPolicy,
    oci::{PullOptions, Source},
    test_image::{TestImage, TestLayer},
};

/// A one-layer image with a 5000-byte file (an object) as an archive.
fn archive(seed: u8) -> std::fs::File {
    let mut layer = tar::Builder::new(Vec::new());
    for (path, data) in [("usr/", vec![]), ("usr/data", vec![seed; 5000])] {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        let dir = data.is_empty();
        header.set_mode(if dir { 0o755 } else { 0o644 });
        header.set_entry_type(if dir {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        layer.append_data(&mut header, path, &data[..]).unwrap();
    }
    let layer = TestLayer::plain(layer.into_inner().unwrap());
    TestImage::new(vec![layer]).archive(Some("v1"))
}

fn staged() -> PullOptions {
    PullOptions {
        reference: Some("v1".into()),
        stage: true,
        ..PullOptions::default()
    }
}

fn objects(dir: &std::path::Path) -> usize {
    walk(&dir.join("objects"))
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .map(|e| e.unwrap().path())
            .map(|p| if p.is_dir() { walk(&p) } else { 1 })
            .sum()
    })
}

async fn stage(repo: &Repository, seed: u8) -> String {
    let report = repo
        .pull(Source::Archive(archive(seed)), staged(), |_| {})
        .await
        .unwrap();
    assert_eq!(report.tag, "");
    report.stage.expect("a staged pull names its stage")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stage_is_kept_by_gc_until_committed_or_aborted() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, _) =
        Repository::init(dir.path(), HashAlgorithm::SHA256, VerityPolicy::BestEffort).unwrap();
    let kept = stage(&repo, b'k').await;
    let dropped = stage(&repo, b'd').await;
    assert!(repo.images().unwrap().is_empty(), "a stage sets no tag");
    let listed = repo.stages().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        listed
            .iter()
            .all(|s| s.state == "complete" && s.image_id.is_some())
    );
    // GC keeps of a stage exactly what it keeps of a tagged image: the
    // same two images pulled with tags, collected, hold as many objects.
    let control = tempfile::tempdir().unwrap();
    let (tagged, _) = Repository::init(
        control.path(),
        HashAlgorithm::SHA256,
        VerityPolicy::BestEffort,
    )
    .unwrap();
    for (seed, tag) in [(b'k', "k"), (b'd', "d")] {
        let options = PullOptions {
            tag: Some(tag.into()),
            stage: false,
            ..staged()
        };
        tagged
            .pull(Source::Archive(archive(seed)), options, |_| {})
            .await
            .unwrap();
    }
    tagged.gc(false).unwrap();
    repo.gc(false).unwrap();
    assert_eq!(objects(dir.path()), objects(control.path()));
    assert_eq!(repo.gc(false).unwrap().objects_removed, 0);

    repo.abort_stage(&dropped).unwrap();
    assert!(matches!(
        repo.abort_stage(&dropped),
        Err(Error::StageNotFound { .. })
    ));
    let predicted = repo.gc(true).unwrap();
    let freed = repo.gc(false).unwrap();
    assert!(freed.objects_removed > 0);
    assert_eq!(predicted.objects_removed, freed.objects_removed);

    let committed = repo.commit_stage(&kept, "app:v1").unwrap();
    assert_eq!(repo.compute_id("app:v1").unwrap(), committed.image_id);
    assert!(
        repo.stages().unwrap().is_empty(),
        "a committed stage is gone"
    );
    assert!(matches!(
        repo.commit_stage(&kept, "app:v2"),
        Err(Error::StageNotFound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn commit_refuses_a_stage_whose_objects_went_or_that_never_finished() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, _) =
        Repository::init(dir.path(), HashAlgorithm::SHA256, VerityPolicy::BestEffort).unwrap();
    let id = stage(&repo, b'x').await;
    let data = crate::oci::digest::Digest::of(&[b'x'; 5000]);
    // Find the file object of usr/data (the one 5000-byte object) and remove it.
    let object = std::fs::read_dir(dir.path().join("objects"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).into_iter().flatten())
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::metadata(p).unwrap().len() == 5000)
        .unwrap_or_else(|| panic!("no object of {data}"));
    std::fs::remove_file(&object).unwrap();
    let err = repo.commit_stage(&id, "app:v1").unwrap_err();
    match err {
        Error::StageObjectsMissing {
            stage,
            missing,
            first,
        } => {
            assert_eq!((stage.as_str(), missing), (id.as_str(), 1));
            assert!(
                object.ends_with(first.strip_prefix("objects/").unwrap()),
                "{first}"
            );
        }
        other => panic!("{other}"),
    }
    assert!(repo.images().unwrap().is_empty(), "nothing was tagged");

    // A record left `pulling` by a process that died is incomplete.
    let record = dir.path().join("stages").join(&id);
    let text = std::fs::read_to_string(&record).unwrap();
    std::fs::write(&record, text.replace("\"complete\"", "\"pulling\"")).unwrap();
    assert_eq!(repo.stages().unwrap()[0].state, "incomplete");
    assert!(matches!(
        repo.commit_stage(&id, "app:v1"),
        Err(Error::StageIncomplete { .. })
    ));
    repo.gc(false).unwrap();
    assert!(
        repo.stages().unwrap().is_empty(),
        "GC collects an incomplete stage"
    );
    assert!(!record.exists());
    assert_eq!(objects(dir.path()), 0, "and everything it held");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_staged_pull_takes_no_tag_and_crafted_ids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, _) =
        Repository::init(dir.path(), HashAlgorithm::SHA256, VerityPolicy::BestEffort).unwrap();
    let options = PullOptions {
        tag: Some("x".into()),
        ..staged()
    };
    let err = repo
        .pull(Source::Archive(archive(b'a')), options, |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidTag { .. }), "{err}");
    assert!(!dir.path().join("stages").exists());
    std::fs::create_dir_all(dir.path().join("stages")).unwrap();
    std::fs::write(dir.path().join("outside"), b"{}").unwrap();
    for crafted in ["../outside", "..", "/etc/passwd", &"g".repeat(32)] {
        for err in [
            repo.commit_stage(crafted, "t").unwrap_err(),
            repo.abort_stage(crafted).unwrap_err(),
        ] {
            assert!(matches!(err, Error::InvalidStageId { .. }), "{err}");
        }
    }
    assert!(dir.path().join("outside").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn staging_a_present_image_writes_nothing_and_a_bad_record_stops_gc() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, _) =
        Repository::init(dir.path(), HashAlgorithm::SHA256, VerityPolicy::BestEffort).unwrap();
    let options = PullOptions {
        tag: Some("app".into()),
        stage: false,
        ..staged()
    };
    let tagged = repo
        .pull(Source::Archive(archive(b'p')), options, |_| {})
        .await
        .unwrap();
    let id = stage(&repo, b'p').await;
    let listed = repo.stages().unwrap();
    assert_eq!(listed[0].bytes_new, 0);
    assert_eq!(listed[0].image_id.as_deref(), Some(&*tagged.image_id));
    // A record that does not parse is left out of the list, and GC,
    // which cannot tell what it keeps, refuses to run.
    let bad = "0".repeat(32);
    std::fs::write(dir.path().join("stages").join(&bad), b"{").unwrap();
    assert_eq!(repo.stages().unwrap().len(), 1);
    assert!(matches!(repo.gc(false), Err(Error::InvalidJson { .. })));
    std::fs::remove_file(dir.path().join("stages").join(&bad)).unwrap();
    repo.untag("app").unwrap();
    repo.gc(false).unwrap();
    let committed = repo.commit_stage(&id, "again").unwrap();
    assert_eq!(committed.image_id, tagged.image_id);
}
