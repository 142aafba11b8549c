//! Tags that cannot be file names, or that read as digests, are refused
//! with a typed InvalidTag, by Tag and by Pull, and nothing is written; so
//! every name `oci images` lists resolves to the image it lists it with.

use cfsd_tests::{
    Daemon,
    oci::{Compression, Layout, Written, small_image},
    ocictl::{published, pull, typed_pull_refusal},
};
use cfsd_varlink::{CallError, Client, oci::OciError};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// A daemon holding two images, tagged `v1` and `v2`; their manifest
/// digests.
fn two_images() -> (Daemon, [Written; 2], String, String) {
    let daemon = Daemon::start_initialised(&[]);
    let v1 = Written::new(&Layout::single(&small_image(Compression::Gzip, "one"), None).0);
    let v2 = Written::new(&Layout::single(&small_image(Compression::Gzip, "two"), None).0);
    let d1 = pull(&daemon, &[&v1.archive(None), "v1"])
        .str("manifestDigest")
        .to_owned();
    let d2 = pull(&daemon, &[&v2.archive(None), "v2"])
        .str("manifestDigest")
        .to_owned();
    (daemon, [v1, v2], d1, d2)
}

async fn refused_tag(client: &mut Client, image: &str, tag: &str) -> OciError {
    match client.tag(image, tag).await {
        Err(CallError::Interface(e)) => e,
        other => panic!("tag {image} {tag:?}: {other:?}"),
    }
}

#[test]
fn dot_and_dot_dot_are_invalid_tags() {
    let (daemon, images, _, _) = two_images();
    let before = published(&daemon.repo());
    runtime().block_on(async {
        let mut client = daemon.client().await;
        for tag in [".", ".."] {
            let e = refused_tag(&mut client, "v1", tag).await;
            assert!(
                matches!(&e, OciError::InvalidTag { tag: t, reason }
                    if t == tag && reason == "it is . or .., which name directories"),
                "{e:?}"
            );
        }
    });
    for tag in [".", ".."] {
        let source = std::fs::File::open(images[0].archive_path()).unwrap();
        let e = typed_pull_refusal(&daemon, "oci-archive", source.into(), tag);
        assert!(
            matches!(&e, OciError::InvalidTag { tag: t, .. } if t == tag),
            "{e:?}"
        );
    }
    assert_eq!(published(&daemon.repo()).tags, before.tags);
}

#[test]
fn tags_shaped_like_digests_are_refused() {
    let (daemon, images, d1, d2) = two_images();
    let before = published(&daemon.repo());
    let long_hex = "0123456789abcdef".repeat(4);
    let digest_shaped = [
        "sha256:abcd".to_owned(),
        d2.clone(),
        d2.to_uppercase().replace("SHA256", "sha256"),
        "sha512:abcd".to_owned(),
        format!("blake3:{long_hex}"),
        format!("xxh-128:{}", &long_hex[..32]),
    ];
    runtime().block_on(async {
        let mut client = daemon.client().await;
        for tag in &digest_shaped {
            let e = refused_tag(&mut client, "v1", tag).await;
            let OciError::InvalidTag { tag: t, reason } = &e else {
                panic!("{tag}: {e:?}");
            };
            assert_eq!(t, tag);
            assert!(
                reason.contains("shaped like a digest") && reason.contains(&d1),
                "{reason}"
            );
        }
        // Everyday tags with a colon are not digests.
        for tag in ["debian:12", "v1:latest", "app:cafe"] {
            client.tag("v1", tag).await.unwrap();
        }
        // The image's own digest names that image anyway.
        client.tag("v1", &d1).await.unwrap();
    });
    let source = std::fs::File::open(images[0].archive_path()).unwrap();
    let e = typed_pull_refusal(&daemon, "oci-archive", source.into(), &d2);
    assert!(
        matches!(&e, OciError::InvalidTag { tag, .. } if *tag == d2),
        "{e:?}"
    );

    let after = published(&daemon.repo());
    for tag in &digest_shaped {
        assert!(!after.tags.contains_key(tag), "{tag} was written");
    }
    assert_eq!(after.tags.len(), before.tags.len() + 4);
}

#[test]
fn every_listed_name_inspects_as_the_image_it_is_listed_with() {
    let (daemon, _images, d1, d2) = two_images();
    runtime().block_on(async {
        let mut client = daemon.client().await;
        let _ = client.tag("v1", &d2).await;
        let _ = client.tag("v1", "sha256:abcd").await;
        client.tag("v1", "debian:12").await.unwrap();
        let listed = client.list_images().await.unwrap().images;
        let names: Vec<&str> = listed.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["debian:12", "v1", "v2"]);
        for image in &listed {
            let inspected = client.inspect(&image.name).await.unwrap();
            assert_eq!(
                inspected.manifest_digest, image.manifest_digest,
                "{}",
                image.name
            );
        }
        assert_eq!(client.inspect(&d2).await.unwrap().manifest_digest, d2);
        assert_eq!(client.inspect(&d1).await.unwrap().manifest_digest, d1);
        // A malformed digest names no image, and says so plainly.
        match client.inspect("sha256:abcd").await {
            Err(CallError::Interface(e @ OciError::ImageNotFound { .. })) => {
                let text = e.to_string();
                assert!(text.starts_with("no image \"sha256:abcd\""), "{text}");
            }
            other => panic!("{other:?}"),
        }
    });
}
