//! `examples/updater.py`, a user's first program against cfsd, run as a
//! user would: install v1 from an archive, update to v2 with an oci-delta,
//! and fail cleanly with advice where the delta's source is missing.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use cfsd_tests::{
    Daemon,
    oci::{Compression, Entry, Image, Layer, Layout, Written, small_image},
    ocictl::{Pulled, json, pull},
    stderr, stdout,
};

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

fn updater() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/updater.py")
}

fn run_updater(daemon: &Daemon, source: &str) -> Output {
    Command::new(python())
        .arg(updater())
        .args(["--address", &daemon.address(), "--tag", "os", source])
        .output()
        .expect("running examples/updater.py (python3 with `pip install varlink`)")
}

/// Run the updater, which must succeed; its report.
fn updated(daemon: &Daemon, source: &str) -> String {
    let out = run_updater(daemon, source);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    stdout(&out)
}

/// The value of `key: value` in the updater's report.
fn field<'a>(report: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}: ");
    report
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {key} in the report:\n{report}"))
}

/// What `oci inspect` says a tag names: (manifest digest, image id).
fn tagged(daemon: &Daemon, tag: &str) -> (String, String) {
    let inspect = json(daemon, &["oci", "inspect", tag]);
    let text = |key: &str| inspect[key].as_str().unwrap().to_owned();
    (text("manifestDigest"), text("imageId"))
}

/// v1, and v2 which keeps v1's layer and adds one.
fn images() -> (Image, Image) {
    let v1 = small_image(Compression::Gzip, "version 1\n");
    let added = Layer::new(
        Compression::Gzip,
        vec![Entry::file("usr/share/content", "version 2\n")],
    );
    let v2 = Image::new(vec![v1.layers[0].clone(), added]);
    (v1, v2)
}

/// The vendor's side: v1 and v2 in a repository, and the delta between
/// them written next to v2's archive.
struct Vendor {
    v1: Written,
    v1_id: String,
    v2: Pulled,
    delta_source: String,
    delta_digest: String,
    /// Holds the delta file.
    _v2_written: Written,
    _daemon: Daemon,
}

fn vendor() -> Vendor {
    let (v1, v2) = images();
    let written = |image: &Image| Written::new(&Layout::single(image, None).0);
    let (v1_written, v2_written) = (written(&v1), written(&v2));
    let daemon = Daemon::start_initialised(&[]);
    let v1_pulled = pull(&daemon, &[&v1_written.archive(None), "v1"]);
    let v2_pulled = pull(&daemon, &[&v2_written.archive(None), "v2"]);
    let delta_file = v2_written.dir.path().join("delta.tar");
    let delta_source = format!("oci-archive:{}", delta_file.display());
    let delta = json(
        &daemon,
        &["oci", "delta", "create", "v1", "v2", &delta_source],
    );
    Vendor {
        v1: v1_written,
        v1_id: v1_pulled.str("imageId").to_owned(),
        v2: v2_pulled,
        delta_source,
        delta_digest: delta["manifestDigest"].as_str().unwrap().to_owned(),
        _v2_written: v2_written,
        _daemon: daemon,
    }
}

#[test]
fn example_updater_installs_then_updates_with_a_delta() {
    let vendor = vendor();
    let (v1_written, v1_id, v2_pulled) = (&vendor.v1, vendor.v1_id.as_str(), &vendor.v2);
    let (delta_source, delta_digest) = (vendor.delta_source.as_str(), vendor.delta_digest.as_str());

    // The machine's side, through the example only.
    let machine = Daemon::start_initialised(&[]);
    let report = updated(&machine, &v1_written.archive(None));
    assert!(
        report
            .lines()
            .any(|l| l.contains(" done ") && l.ends_with("100%")),
        "no progress shown:\n{report}"
    );
    assert_eq!(field(&report, "previous image"), "none");
    assert_eq!(field(&report, "image"), v1_id);
    assert_eq!(field(&report, "changed"), "yes");
    assert_eq!(field(&report, "delta"), "none");
    assert_eq!(tagged(&machine, "os").1, v1_id);

    let report = updated(&machine, delta_source);
    assert_eq!(field(&report, "previous image"), v1_id);
    assert_eq!(field(&report, "image"), v2_pulled.str("imageId"));
    assert_eq!(field(&report, "manifest"), v2_pulled.str("manifestDigest"));
    assert_eq!(field(&report, "delta"), delta_digest);
    assert_eq!(field(&report, "layers"), "2 (1 already present)");
    // What the vendor's own pull of v2 wrote on top of v1.
    let bytes_new = v2_pulled.result["bytesNew"].to_string();
    assert_eq!(field(&report, "bytes new"), bytes_new);
    assert_eq!(tagged(&machine, "os").1, v2_pulled.str("imageId"));
    assert_eq!(tagged(&machine, "os-previous").1, v1_id);
}

#[test]
fn example_updater_explains_a_delta_without_its_source() {
    let vendor = vendor();
    let machine = Daemon::start_initialised(&[]);
    let out = run_updater(&machine, &vendor.delta_source);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{}{err}", stdout(&out));
    assert!(
        err.contains("updater: io.cfsd.Oci.DeltaSourceMissing"),
        "{err}"
    );
    assert!(err.contains("hint: the delta applies to an image"), "{err}");
    let images = json(&machine, &["oci", "images"]);
    assert_eq!(images["images"], serde_json::json!([]), "{images}");
}
