//! The layer pipeline against a source held in memory, which counts what
//! it is asked to open and can lie about what it holds.

use std::{
    collections::HashMap,
    io::{Cursor, Read},
    sync::{Arc, Mutex},
};

use composefs::{
    fsverity::Sha256HashValue,
    repository::{Repository as Store, RepositoryConfig},
};
use composefs_oci::layer_content_id;
use rustix::fs::CWD;

use super::{
    digest::Digest,
    document::Compression,
    layer,
    manifest::LayerPlan,
    pipeline::{Blob, LayerProgress, LayerSource, Progress, Stage, bring_in},
    split::Pipe,
};
use crate::Error;

type Repo = Arc<Store<Sha256HashValue>>;

/// Uncompressed layer blobs by digest; what was opened, in order.
#[derive(Default)]
struct Memory {
    blobs: HashMap<Digest, Vec<u8>>,
    opened: Mutex<Vec<Digest>>,
    /// Yield each blob as a registry reader would after its connection
    /// broke at this offset and it resumed from `at - back`.
    resumed: Option<Resume>,
}

#[derive(Clone, Copy)]
struct Resume {
    at: usize,
    back: usize,
}

impl LayerSource<Sha256HashValue> for Memory {
    fn blob(&self, layer: &LayerPlan) -> Option<Blob> {
        Some(Blob::of_layer(layer))
    }

    fn open(&self, blob: &Blob) -> Result<Box<dyn Read + Send>, Error> {
        self.opened.lock().unwrap().push(blob.digest.clone());
        let bytes = self.blobs.get(&blob.digest).cloned().unwrap_or_default();
        Ok(match self.resumed {
            None => Box::new(Cursor::new(bytes)),
            Some(Resume { at, back }) => {
                let again = bytes[at - back..].to_vec();
                Box::new(Cursor::new(bytes[..at].to_vec()).chain(Cursor::new(again)))
            }
        })
    }

    fn unpack(
        &self,
        layer: &LayerPlan,
        blob: &Blob,
        bytes: &mut dyn Read,
        out: &mut Pipe<Sha256HashValue>,
    ) -> Result<(), Error> {
        layer::decompress(layer.compression, layer, blob, bytes, out)
    }
}

/// A tar holding one file, `name`, of 5000 bytes of `byte`.
fn tar_of(name: &str, byte: u8) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let data = vec![byte; 5000];
    let mut header = tar::Header::new_ustar();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    tar.append_data(&mut header, name, &data[..]).unwrap();
    tar.into_inner().unwrap()
}

/// The plan of an uncompressed layer whose blob is `tar`.
fn plan(tar: &[u8]) -> LayerPlan {
    LayerPlan {
        blob: Digest::of(tar),
        size: tar.len() as u64,
        compression: Compression::None,
        diff_id: Digest::of(tar),
        pulled: Default::default(),
        hold: Default::default(),
    }
}

fn repository() -> (tempfile::TempDir, Repo) {
    let dir = tempfile::tempdir().unwrap();
    let config = RepositoryConfig::default().set_insecure();
    let (repo, _) = Store::init_path(CWD, dir.path().join("repo"), config).unwrap();
    (dir, Arc::new(repo))
}

/// A progress sink, and what it was told.
fn recorder() -> (Progress, Arc<Mutex<Vec<LayerProgress>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let keeping = seen.clone();
    let progress: Progress = Arc::new(move |p| keeping.lock().unwrap().push(p));
    (progress, seen)
}

fn holding(tars: &[&[u8]]) -> Arc<Memory> {
    let blobs = tars.iter().map(|t| (Digest::of(t), t.to_vec())).collect();
    Arc::new(Memory {
        blobs,
        ..Memory::default()
    })
}

fn named(repo: &Repo, plan: &LayerPlan) -> Option<Sha256HashValue> {
    repo.has_stream(&layer_content_id(&plan.diff_id.to_oci()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_diff_ids_are_fetched_once_and_refs_come_in_config_order() {
    let (_dir, repo) = repository();
    let tars: Vec<Vec<u8>> = (0..4).map(|i| tar_of(&format!("f{i}"), i)).collect();
    let borrowed: Vec<&[u8]> = tars.iter().map(Vec::as_slice).collect();
    let source = holding(&borrowed);
    let [a, b, c, d] = [0, 1, 2, 3].map(|i| plan(&tars[i]));
    let layers = [a.clone(), b.clone(), a.clone(), c, d, b];
    let (progress, _) = recorder();
    let brought = bring_in(&repo, source.clone(), &layers, 3, &progress)
        .await
        .unwrap();
    let mut opened = source.opened.lock().unwrap().clone();
    opened.sort_by_key(ToString::to_string);
    let mut distinct: Vec<Digest> = tars.iter().map(|t| Digest::of(t)).collect();
    distinct.sort_by_key(ToString::to_string);
    assert_eq!(opened, distinct, "each distinct layer once");
    let order: Vec<String> = brought.refs.iter().map(|(d, _)| d.to_string()).collect();
    let want: Vec<String> = layers.iter().map(|p| p.diff_id.to_string()).collect();
    assert_eq!(order, want);
    assert_eq!(brought.refs[0].1, brought.refs[2].1);
    for (plan, (_, stream)) in layers.iter().zip(&brought.refs) {
        assert_eq!(named(&repo, plan).as_ref(), Some(stream));
    }
    assert_eq!(brought.present, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn present_layers_are_not_fetched_and_are_reported_present() {
    let (_dir, repo) = repository();
    let (old, new) = (tar_of("old", 1), tar_of("new", 2));
    let (progress, _) = recorder();
    let first = bring_in(&repo, holding(&[&old]), &[plan(&old)], 1, &progress)
        .await
        .unwrap();
    let source = holding(&[&old, &new]);
    let (progress, seen) = recorder();
    let layers = [plan(&old), plan(&new)];
    let second = bring_in(&repo, source.clone(), &layers, 2, &progress)
        .await
        .unwrap();
    assert_eq!(*source.opened.lock().unwrap(), [Digest::of(&new)]);
    assert_eq!(second.present, 1);
    assert_eq!(second.refs[0], first.refs[0]);
    let seen = seen.lock().unwrap();
    let of = |tar: &[u8]| -> Vec<Stage> {
        let blob = Digest::of(tar).to_string();
        seen.iter()
            .filter(|p| p.layer == blob)
            .map(|p| p.stage)
            .collect()
    };
    assert_eq!(of(&old), [Stage::Present]);
    let stages = of(&new);
    assert_eq!(stages.first(), Some(&Stage::Queued));
    assert_eq!(stages.last(), Some(&Stage::Done));
    assert!(!stages.contains(&Stage::Present));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_that_lies_about_a_blob_names_nothing() {
    let (dir, repo) = repository();
    let (good, other) = (tar_of("good", 1), tar_of("good", 2));
    let mut lying = plan(&good);
    // The source holds other bytes under the good blob's digest.
    let source = Arc::new(Memory {
        blobs: [(lying.blob.clone(), other.clone())].into(),
        ..Memory::default()
    });
    lying.size = other.len() as u64;
    let (progress, _) = recorder();
    let err = bring_in(&repo, source, &[lying.clone()], 1, &progress)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::DigestMismatch { what, .. } if what.starts_with("digest of layer")),
        "{err}"
    );
    assert_eq!(named(&repo, &lying), None);
    assert_nothing_named(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blob_whose_tar_is_not_its_diff_id_names_nothing() {
    let (dir, repo) = repository();
    let (tar, claimed) = (tar_of("a", 1), tar_of("a", 2));
    let mut wrong = plan(&tar);
    wrong.diff_id = Digest::of(&claimed);
    let (progress, _) = recorder();
    let err = bring_in(&repo, holding(&[&tar]), &[wrong.clone()], 1, &progress)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::DigestMismatch { what, .. } if what.starts_with("diff_id of layer")),
        "{err}"
    );
    assert_eq!(named(&repo, &wrong), None);
    assert_nothing_named(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resumed_blob_is_checked_across_the_resume() {
    let tar = tar_of("a", 1);
    let layer = plan(&tar);
    // The pipeline's digest runs over the bytes as the reader yields
    // them: a resume at the right offset is the blob, one a byte early is
    // not, whatever the tar parser makes of it.
    for (back, verifies) in [(0, true), (1, false)] {
        let (dir, repo) = repository();
        let source = Arc::new(Memory {
            blobs: [(layer.blob.clone(), tar.clone())].into(),
            resumed: Some(Resume { at: 3000, back }),
            ..Memory::default()
        });
        let (progress, _) = recorder();
        let brought = bring_in(&repo, source, std::slice::from_ref(&layer), 1, &progress).await;
        match brought {
            Ok(_) => assert!(verifies, "a resume one byte early was taken"),
            Err(Error::DigestMismatch { what, .. }) if !verifies => {
                assert!(what.starts_with("digest of layer"), "{what}");
                assert_nothing_named(&dir);
            }
            Err(e) => panic!("resumed {back} early: {e}"),
        }
    }
}

/// No stream of any name exists in the repository of `dir`.
fn assert_nothing_named(dir: &tempfile::TempDir) {
    let streams = dir.path().join("repo/streams");
    let names = std::fs::read_dir(streams).map_or(0, |d| d.count());
    assert_eq!(names, 0, "a stream was named");
}
