//! `cfsctl oci delta create` through a real cfsd: what the archive holds
//! (the `subject` a registry lists it under, the reused layers by blob
//! and by diff_id, the reference asked for), that both methods give a
//! delta that applies to exactly the target, and that making a delta
//! changes nothing in the repository it reads.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use cfsd_tests::{
    Daemon,
    delta::versions,
    oci::{BuiltImage, Layout, Written},
    ocictl::{PrivateRepo, json, pull, succeeds},
    tar_members,
};
use serde_json::Value;

/// Both versions pulled into `daemon` as `v1` and `v2`.
fn daemon_with_versions() -> (Daemon, BuiltImage, BuiltImage, Vec<Written>) {
    daemon_with_versions_and(&[])
}

/// [`daemon_with_versions`], cfsd given `args`.
fn daemon_with_versions_and(args: &[&str]) -> (Daemon, BuiltImage, BuiltImage, Vec<Written>) {
    let daemon = Daemon::start_initialised(args);
    let (v1, v2) = versions();
    let mut written = Vec::new();
    let mut built = Vec::new();
    for (image, tag) in [(&v1, "v1"), (&v2, "v2")] {
        let (layout, b) = Layout::single(image, None);
        let w = Written::new(&layout);
        pull(&daemon, &[&w.archive(None), tag]);
        written.push(w);
        built.push(b);
    }
    let v2 = built.pop().unwrap();
    let v1 = built.pop().unwrap();
    (daemon, v1, v2, written)
}

/// Every file under `dir` with its bytes: what a read-only call must
/// leave exactly as it was.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                todo.push(entry.path());
            } else if kind.is_symlink() {
                let target = std::fs::read_link(entry.path()).unwrap();
                out.insert(entry.path(), target.into_os_string().into_encoded_bytes());
            } else {
                out.insert(entry.path(), std::fs::read(entry.path()).unwrap());
            }
        }
    }
    out
}

/// The index's one manifest descriptor and the manifest it names.
fn artifact(members: &BTreeMap<String, Vec<u8>>) -> (Value, Value) {
    let index: Value = serde_json::from_slice(&members["index.json"]).unwrap();
    let descriptor = index["manifests"][0].clone();
    let hex = descriptor["digest"]
        .as_str()
        .unwrap()
        .strip_prefix("sha256:")
        .unwrap()
        .to_owned();
    let manifest = serde_json::from_slice(&members[&format!("blobs/sha256/{hex}")]).unwrap();
    (descriptor, manifest)
}

/// A JSON list kept in an annotation, as a list of strings.
fn annotation_list(manifest: &Value, key: &str) -> Vec<String> {
    let text = manifest["annotations"][key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key}: {manifest}"));
    serde_json::from_str(text).unwrap()
}

#[test]
fn delta_create_names_its_subject_reused_layers_and_reference() {
    let (daemon, v1, v2, _written) = daemon_with_versions();
    let before = tree(&daemon.repo());
    let out = daemon.dir().join("delta.tar");
    let dest = format!("oci-archive:{}:updates/app", out.display());
    let made = json(&daemon, &["oci", "delta", "create", "v1", "v2", &dest]);
    assert_eq!(made["layersChanged"], 1, "{made}");
    assert_eq!(made["targetDigest"], v2.manifest_digest.as_str(), "{made}");
    assert_eq!(made["sourceDigest"], v1.manifest_digest.as_str(), "{made}");

    // Reading two images wrote nothing into their repository.
    assert_eq!(
        tree(&daemon.repo()),
        before,
        "delta create changed the repository"
    );

    let members = tar_members(&out);
    let (descriptor, manifest) = artifact(&members);
    assert_eq!(
        descriptor["annotations"]["org.opencontainers.image.ref.name"],
        "updates/app"
    );
    assert_eq!(
        manifest["artifactType"],
        "application/vnd.io.github.containers.oci-delta.v1"
    );
    // A registry lists the delta among v2's referrers by this subject.
    assert_eq!(manifest["subject"]["digest"], v2.manifest_digest.as_str());
    assert_eq!(manifest["subject"]["size"], v2.manifest.len() as u64);
    assert_eq!(
        manifest["subject"]["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    // The shared lower layer travels only by name, as blob and diff_id.
    assert_eq!(
        annotation_list(&manifest, "io.github.containers.delta.reused"),
        [v2.layer_digests[0].clone()]
    );
    assert_eq!(
        annotation_list(&manifest, "io.github.containers.delta.reused-diff-id"),
        [v2.diff_ids[0].clone()]
    );
    let lower_hex = v2.layer_digests[0].strip_prefix("sha256:").unwrap();
    assert!(
        !members.contains_key(&format!("blobs/sha256/{lower_hex}")),
        "the reused layer was carried"
    );
}

/// Each method's delta, applied where only v1 is, gives v2's image id;
/// the reference chosen at creation is what the pull names.
#[test]
fn delta_create_by_either_method_applies_to_exactly_the_target() {
    let (daemon, _v1, _v2, written) = daemon_with_versions();
    let full_id = json(&daemon, &["oci", "inspect", "v2"])["imageId"].clone();
    let mut blobs = Vec::new();
    for method in ["zstd", "bsdiff"] {
        let out = daemon.dir().join(format!("{method}.tar"));
        let dest = format!("oci-archive:{}:to-v2", out.display());
        let made = json(
            &daemon,
            &[
                "oci", "delta", "create", "v1", "v2", &dest, "--method", method,
            ],
        );
        let changed = made["changed"].as_array().unwrap();
        assert_eq!(changed.len(), 1, "{made}");
        // The changed file is diffed, by the method asked for, inside a
        // tar-diff of the layer.
        assert_eq!(changed[0]["method"], "tar-diff", "{made}");
        assert_eq!(changed[0]["filesDiffed"], 1, "{made}");
        let (_, manifest) = artifact(&tar_members(&out));
        let carried = manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["annotations"]["io.github.containers.delta.content"] == "image-layer")
            .unwrap_or_else(|| panic!("no carried layer: {manifest}"))["digest"]
            .clone();
        blobs.push(carried);

        let updater = PrivateRepo::init("sha512");
        pull(&updater, &[&written[0].archive(None), "v1"]);
        let applied = pull(
            &updater,
            &[&format!("oci-archive:{}:to-v2", out.display()), "v2"],
        );
        assert_eq!(
            applied.str("imageId"),
            full_id.as_str().unwrap(),
            "{method}"
        );
        let fsck = json(&updater, &["fsck"]);
        assert_eq!(fsck["ok"], true, "{method}: {fsck}");
        // The archive holds no manifest under any other name.
        let wrong = format!("oci-archive:{}:latest", out.display());
        let refused = cfsd_tests::ocictl::Target::run(&updater, &["oci", "pull", &wrong, "nope"]);
        assert!(
            !refused.status.success(),
            "{method}: an unnamed reference pulled"
        );
        succeeds(&updater, &["oci", "images"]);
    }
    assert_ne!(blobs[0], blobs[1], "--method changed nothing in the delta");
}

/// The scratch space one CreateDelta may take is bounded: past it the
/// delta fails as a full disk does, writes nothing, and leaves no scratch.
#[test]
fn delta_create_stops_at_its_scratch_budget_as_no_space() {
    let (daemon, _v1, _v2, _written) = daemon_with_versions_and(&["--max-delta-scratch", "100000"]);
    let before = tree(&daemon.repo());
    let out = daemon.dir().join("delta.tar");
    let dest = format!("oci-archive:{}", out.display());
    let mut all = vec!["--json", "oci", "delta", "create", "v1", "v2"];
    all.push(&dest);
    let failed = cfsd_tests::ocictl::Target::run(&daemon, &all);
    assert_eq!(failed.status.code(), Some(1));
    let line: Value = serde_json::from_slice(&failed.stdout).unwrap();
    assert_eq!(line["error"], "io.cfsd.Oci.NoSpace", "{line}");
    let reason = line["parameters"]["reason"].as_str().unwrap();
    assert!(reason.contains("--max-delta-scratch"), "{reason}");
    // cfsctl removes the output it created for a delta that failed.
    assert!(
        std::fs::metadata(&out).map_or(true, |m| m.len() == 0),
        "the delta wrote output"
    );
    assert_eq!(
        tree(&daemon.repo()),
        before,
        "scratch or other files were left"
    );
}
