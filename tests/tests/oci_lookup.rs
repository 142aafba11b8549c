//! Image arguments take what `oci images` shows: a tag, the IMAGE ID
//! column's value, or a unique prefix of a manifest digest or image id.
//! And a pull counts as "already present" only objects stored before it.

use cfsd_tests::{
    Daemon,
    oci::{Compression, Entry, Image, Layer, Layout, Written, noise, small_image},
    ocictl::{fails, json, pull},
    stderr, stdout,
};
use cfsd_varlink::{CallError, oci::OciError};

fn image(content: &str) -> Written {
    let (layout, _) = Layout::single(&small_image(Compression::Gzip, content), None);
    Written::new(&layout)
}

/// The IMAGE ID column of `oci images` for `tag`.
fn image_id_column(daemon: &Daemon, tag: &str) -> String {
    let out = daemon.cfsctl(&["oci", "images"]);
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{tag} ")))
        .unwrap_or_else(|| panic!("{tag} not listed: {text}"));
    line.split_whitespace().nth(3).unwrap().to_owned()
}

#[test]
fn oci_lookup_image_ids_and_digest_prefixes_name_images() {
    let daemon = Daemon::start_initialised(&[]);
    let a = pull(&daemon, &[&image("lookup a\n").archive(None), "a"]);
    let b = pull(&daemon, &[&image("lookup b\n").archive(None), "b"]);
    let column = image_id_column(&daemon, "a");
    assert!(a.str("imageId").starts_with(&column), "{column}");
    let manifest = a.str("manifestDigest");
    let hex = manifest.trim_start_matches("sha256:");
    for name in [
        column.clone(),
        a.str("imageId").to_owned(),
        hex[..12].to_owned(),
        format!("sha256:{}", &hex[..12]),
    ] {
        let inspected = json(&daemon, &["oci", "inspect", &name]);
        assert_eq!(inspected["manifestDigest"], manifest, "{name}");
        let id = json(&daemon, &["oci", "compute-id", &name]);
        assert_eq!(id["imageId"], a.str("imageId"), "{name}");
    }
    // Tag by id, then remove by prefix: every argument takes them.
    let out = daemon.cfsctl(&["oci", "tag", &column, "a2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let removed = json(&daemon, &["oci", "rm", &hex[..8]]);
    let mut untagged: Vec<&str> = removed["untagged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    untagged.sort();
    assert_eq!(untagged, ["a", "a2"]);
    assert_eq!(
        json(&daemon, &["oci", "inspect", "b"])["manifestDigest"],
        b.str("manifestDigest")
    );
    // Too short, or matching nothing, is no image.
    for name in [&hex[..3], "ffffffffffff0000"] {
        let err = fails(&daemon, &["oci", "inspect", name]);
        assert!(err.contains("no image"), "{name}: {err}");
    }
}

/// Two images whose manifest digests share their first four hex digits,
/// found by trying contents: about 300 tries are needed on average.
fn two_with_a_shared_prefix() -> (String, [Written; 2]) {
    let mut seen = std::collections::HashMap::new();
    for i in 0..20_000 {
        let layer = Layer::new(
            Compression::None,
            vec![Entry::dir("usr"), Entry::file("usr/f", format!("{i}\n"))],
        );
        let image = Image::new(vec![layer]);
        let (layout, built) = Layout::single(&image, None);
        let prefix = built.manifest_hex()[..4].to_owned();
        if let Some(other) = seen.insert(prefix.clone(), layout.clone()) {
            return (prefix, [Written::new(&other), Written::new(&layout)]);
        }
    }
    panic!("no shared prefix in 20000 manifests")
}

#[test]
fn oci_lookup_a_prefix_of_several_images_is_ambiguous() {
    let daemon = Daemon::start_initialised(&[]);
    let (prefix, [one, two]) = two_with_a_shared_prefix();
    let one = pull(&daemon, &[&one.archive(None), "one"]);
    let two = pull(&daemon, &[&two.archive(None), "two"]);
    let mut both = vec![
        one.str("manifestDigest").to_owned(),
        two.str("manifestDigest").to_owned(),
    ];
    both.sort();
    for name in [prefix.clone(), format!("sha256:{prefix}")] {
        let err = fails(&daemon, &["oci", "inspect", &name]);
        assert!(err.contains("more than one image"), "{err}");
        assert!(err.contains(&both[0]) && err.contains(&both[1]), "{err}");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let typed = runtime.block_on(async {
            let mut client = daemon.client().await;
            client.inspect(&name).await.unwrap_err()
        });
        match typed {
            CallError::Interface(OciError::AmbiguousImage { image, matches }) => {
                assert_eq!(image, name);
                assert_eq!(matches, both);
            }
            other => panic!("{other:?}"),
        }
    }
    // One more digit tells them apart (unless they share five).
    let longer = &one.str("manifestDigest")["sha256:".len()..][..6];
    if !two.str("manifestDigest").contains(longer) {
        let inspected = json(&daemon, &["oci", "inspect", longer]);
        assert_eq!(inspected["manifestDigest"], one.str("manifestDigest"));
    }
}

#[test]
fn oci_lookup_objects_present_are_those_stored_before_the_pull() {
    let daemon = Daemon::start_initialised(&[]);
    // One image with the same 10 kB file five times in one layer and
    // again in a second layer: one object, new to the repository.
    let same = noise(42, 10_000);
    let mut entries = vec![Entry::dir("usr"), Entry::dir("usr/d")];
    for i in 0..5 {
        entries.push(Entry::file(&format!("usr/d/copy{i}"), same.clone()));
    }
    let first = Layer::new(Compression::Gzip, entries);
    let second = Layer::new(
        Compression::Gzip,
        vec![
            Entry::dir("usr"),
            Entry::dir("usr/e"),
            Entry::file("usr/e/again", same.clone()),
        ],
    );
    let (layout, _) = Layout::single(&Image::new(vec![first, second]), None);
    let pulled = pull(&daemon, &[&Written::new(&layout).archive(None), "dups"]);
    assert_eq!(pulled.u64("objectsNew"), 1, "{}", pulled.result);
    assert_eq!(pulled.u64("objectsPresent"), 0, "{}", pulled.result);
    assert_eq!(pulled.u64("bytesNew"), 10_000, "{}", pulled.result);

    // Another image holding that file and one new one: one present, one new.
    let layer = Layer::new(
        Compression::Gzip,
        vec![
            Entry::dir("usr"),
            Entry::dir("usr/f"),
            Entry::file("usr/f/old", same.clone()),
            Entry::file("usr/f/old-again", same),
            Entry::file("usr/f/new", noise(43, 10_000)),
        ],
    );
    let (layout, _) = Layout::single(&Image::new(vec![layer]), None);
    let pulled = pull(&daemon, &[&Written::new(&layout).archive(None), "more"]);
    assert_eq!(pulled.u64("objectsNew"), 1, "{}", pulled.result);
    assert_eq!(pulled.u64("objectsPresent"), 1, "{}", pulled.result);
}
