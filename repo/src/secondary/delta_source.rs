//! A delta's source image taken from a secondary repository: copied into
//! this one first, by the copy's own code, so that the delta then applies
//! exactly as against a local source. The copy is published untagged:
//! the pull's hold keeps it while the delta applies, and GC collects what
//! of it the result does not share afterwards.

use std::sync::Arc;

use composefs::{fsverity::FsVerityHashValue, repository::Repository as Store};

use super::{SecondaryRepository, copy::CopyLayers};
use crate::{
    Error,
    coordination::Hold,
    delta::{Delta, source_present},
    oci::{
        Platform,
        digest::Digest,
        manifest::{self, Resolved},
        pipeline::{self, Progress, blocking},
        publish::publish,
        pull::image_error,
        source::Layout,
    },
};

/// Bring the source image of `delta` from `secondary` into `repo`, unless
/// `repo` has it or the delta does not read it for `layers`.
pub(crate) async fn bring_delta_source<H: FsVerityHashValue>(
    repo: &Arc<Store<H>>,
    secondary: &Arc<SecondaryRepository>,
    delta: &Delta,
    layers: &[manifest::LayerPlan],
    hold: &Arc<Hold>,
    jobs: usize,
) -> Result<(), Error> {
    if !delta.needs_source(layers) {
        return Ok(());
    }
    let (store, config) = (repo.clone(), delta.source_config.clone());
    if blocking(move || source_present(&store, &config)).await? {
        return Ok(());
    }
    let (looking, config) = (secondary.clone(), delta.source_config.clone());
    let named = delta.source_manifest.clone();
    let resolved = blocking(move || resolve_source(&looking, &config, named)).await?;
    if let Some(plan) = resolved.layers.first() {
        let _ = plan.hold.set(hold.clone());
    }
    let source = Arc::new(CopyLayers {
        source: secondary.clone(),
        repo: repo.clone(),
    });
    // The target pull reports its own layers; the source's are not its.
    let quiet: Progress = Arc::new(|_| {});
    let brought = pipeline::bring_in(repo, source, &resolved.layers, jobs, &quiet).await?;
    let (store, hold) = (repo.clone(), hold.clone());
    blocking(move || {
        let _hold = hold;
        publish(
            &store,
            &resolved.manifest,
            &resolved.config,
            &brought.refs,
            None,
        )
        .map_err(image_error)?;
        Ok(())
    })
    .await
}

/// The source image, whose config is `config`, as `secondary` holds it.
fn resolve_source(
    secondary: &Arc<SecondaryRepository>,
    config: &Digest,
    named: Option<Digest>,
) -> Result<Resolved, Error> {
    let missing = |image: Option<&Digest>| Error::DeltaSourceMissing {
        config: config.to_string(),
        image: image.map(Digest::to_string),
    };
    let manifest = match &named {
        Some(m) => secondary.document(m)?.map(|_| m.clone()),
        None => secondary.manifest_for_config(config)?,
    }
    .ok_or_else(|| missing(named.as_ref()))?;
    let layout = Layout::Repository(secondary.clone());
    let resolved = manifest::resolve(&layout, Some(&manifest.to_string()), &Platform::host())?;
    if &resolved.config_digest != config {
        return Err(missing(Some(&manifest)));
    }
    Ok(resolved)
}
