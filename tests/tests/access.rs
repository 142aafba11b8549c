//! Peer credentials decide per call: read-only methods for every peer
//! that may connect, mutating ones for root and the admin group only. The
//! clients here really run as another uid, through `setpriv`.

use std::os::unix::fs::PermissionsExt;

use cfsd_tests::{
    Daemon, bin,
    oci::{Compression, Entry, Image, Layer, Layout, Written},
    ocictl::{self, published},
    peer::{NOBODY, as_nobody, raw_calls_as},
    stderr,
};
use cfsd_varlink::idl;
use serde_json::{Value, json};

/// A group nobody is given on top, for `--allow-group`.
const ADMINS: u32 = 4242;

fn cfsctl_as_nobody(daemon: &Daemon, groups: &[u32], args: &[&str]) -> std::process::Output {
    // The build tree may sit where nobody cannot reach (under /root, say):
    // run a copy from the test's own directory.
    let cfsctl = daemon.dir().join("cfsctl");
    if !cfsctl.exists() {
        std::fs::copy(bin("cfsctl"), &cfsctl).unwrap();
    }
    as_nobody(groups, cfsctl.to_str().unwrap())
        .arg("--address")
        .arg(daemon.address())
        .args(args)
        .output()
        .expect("running setpriv")
}

/// Make raw calls as nobody over ONE connection and return every reply.
fn raw_calls_as_nobody(daemon: &Daemon, calls: &[Value]) -> Vec<Value> {
    raw_calls_as(daemon, &[], calls)
}

#[test]
fn an_unprivileged_peer_may_read_but_not_change() {
    let daemon = Daemon::start_for_nobody(&[]);
    assert!(daemon.cfsctl(&["init"]).status.success());
    // Something to change: an image, tagged twice.
    let written = small_image();
    let archive = daemon.dir().join("image.tar");
    std::fs::copy(written.archive_path(), &archive).unwrap();
    std::fs::set_permissions(&archive, std::fs::Permissions::from_mode(0o644)).unwrap();
    let source = format!("oci-archive:{}", archive.display());
    ocictl::pull(&daemon, &[&source, "kept"]);
    ocictl::succeeds(&daemon, &["oci", "tag", "kept", "second"]);
    let before = published(&daemon.repo());
    let objects = ocictl::object_count(&daemon.repo());

    for read_only in [
        &["info"][..],
        &["fsck"],
        &["gc", "--dry-run"],
        &["oci", "images"],
        &["oci", "inspect", "kept"],
    ] {
        let out = cfsctl_as_nobody(&daemon, &[], read_only);
        assert!(
            out.status.success(),
            "{read_only:?} as nobody: {}",
            stderr(&out)
        );
    }
    let mnt = daemon.dir().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mnt = mnt.to_str().unwrap();
    for mutating in [
        &["init"][..],
        &["gc"],
        &["oci", "pull", &source, "new"],
        &["oci", "tag", "kept", "third"],
        &["oci", "untag", "second"],
        &["oci", "rm", "kept"],
        &["oci", "mount", "kept", mnt],
    ] {
        let out = cfsctl_as_nobody(&daemon, &[], mutating);
        assert_eq!(out.status.code(), Some(1), "{mutating:?} as nobody");
        let err = stderr(&out);
        assert!(err.contains("permission denied"), "{mutating:?}: {err}");
        assert!(err.contains("uid 65534"), "{err}");
    }
    // The same over the wire, typed, naming each method.
    let calls: Vec<(&str, Value)> = vec![
        ("io.cfsd.Oci.Pull", json!({"transport": "oci-archive"})),
        ("io.cfsd.Oci.Tag", json!({"image": "kept", "tag": "third"})),
        ("io.cfsd.Oci.Untag", json!({"tag": "second"})),
        ("io.cfsd.Oci.Remove", json!({"image": "kept"})),
        ("io.cfsd.Oci.Mount", json!({"image": "kept"})),
        ("io.cfsd.Repository.Gc", json!({"dryRun": false})),
        // It changes nothing, but a delta carries whole image files.
        (
            "io.cfsd.Oci.CreateDelta",
            json!({"source": "kept", "target": "kept"}),
        ),
    ];
    let raw: Vec<Value> = calls
        .iter()
        .map(|(method, parameters)| json!({"method": method, "parameters": parameters}))
        .collect();
    let replies = raw_calls_as_nobody(&daemon, &raw);
    for ((method, _), reply) in calls.iter().zip(&replies) {
        let interface = method.rsplit_once('.').unwrap().0;
        assert_eq!(
            reply["error"],
            format!("{interface}.PermissionDenied"),
            "{reply}"
        );
        assert_eq!(reply["parameters"]["method"], *method, "{reply}");
        assert_eq!(reply["parameters"]["uid"], NOBODY, "{reply}");
    }
    assert_eq!(
        published(&daemon.repo()),
        before,
        "nobody changed what is published"
    );
    assert_eq!(ocictl::object_count(&daemon.repo()), objects);
    assert_eq!(
        std::fs::read_dir(mnt).unwrap().count(),
        0,
        "something was mounted"
    );
}

#[test]
fn a_refused_call_gets_a_typed_error_and_the_connection_stays_usable() {
    let daemon = Daemon::start_for_nobody(&[]);
    let replies = raw_calls_as_nobody(
        &daemon,
        &[
            serde_json::json!({"method": "io.cfsd.Repository.Init"}),
            serde_json::json!({"method": "io.cfsd.Repository.Gc", "parameters": {"dryRun": false}}),
            serde_json::json!({"method": "io.cfsd.Repository.Info"}),
        ],
    );
    assert_eq!(replies.len(), 3, "{replies:?}");
    for (reply, method) in replies.iter().zip(["Init", "Gc"]) {
        assert_eq!(
            reply["error"], "io.cfsd.Repository.PermissionDenied",
            "{reply}"
        );
        assert_eq!(
            reply["parameters"]["method"],
            format!("io.cfsd.Repository.{method}")
        );
        assert_eq!(reply["parameters"]["uid"], NOBODY);
    }
    // Nothing was created by the refused Init: the repository is still
    // missing, which the third call on the same connection reports.
    assert_eq!(replies[2]["error"], "io.cfsd.Repository.NotInitialized");
    assert!(!daemon.repo().join("meta.json").exists());
}

#[test]
fn members_of_the_allowed_group_may_change_the_repository() {
    let admins = ADMINS.to_string();
    let daemon = Daemon::start_for_nobody(&["--allow-group", &admins]);
    let refused = cfsctl_as_nobody(&daemon, &[], &["init"]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));

    let out = cfsctl_as_nobody(&daemon, &[ADMINS], &["--json", "init"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["created"], true);
    let out = cfsctl_as_nobody(&daemon, &[ADMINS], &["gc"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_peer_outside_the_socket_group_cannot_connect_at_all() {
    let daemon = Daemon::start(&[]);
    std::fs::set_permissions(daemon.dir(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let out = cfsctl_as_nobody(&daemon, &[], &["info"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
}

/// A small image, written as an archive and a layout in the test's own
/// directory.
fn small_image() -> Written {
    let image = Image::new(vec![Layer::new(
        Compression::Gzip,
        vec![
            Entry::dir("usr"),
            Entry::dir("etc"),
            Entry::file("etc/secret", "only root may read this\n"),
        ],
    )]);
    Written::new(&Layout::single(&image, None).0)
}

/// The input parameters of every method an interface declares.
fn method_inputs(text: &str) -> Vec<(String, Vec<String>)> {
    text.split("\nmethod ")
        .skip(1)
        .map(|m| {
            let (name, rest) = m.split_once('(').unwrap();
            let inputs = rest.split_once(')').unwrap().0;
            let names = inputs
                .lines()
                .map(|l| l.trim())
                .filter(|l| !l.starts_with('#'))
                .flat_map(|l| l.split(','))
                .filter_map(|p| p.split_once(':'))
                .map(|(n, _)| n.trim().to_owned())
                .collect();
            (name.to_owned(), names)
        })
        .collect()
}

#[test]
fn no_method_takes_a_path() {
    let mut checked = 0;
    for (interface, text) in idl::INTERFACES {
        for (method, inputs) in method_inputs(text) {
            for input in &inputs {
                let lower = input.to_lowercase();
                assert!(
                    !["path", "file", "dir", "socket"]
                        .iter()
                        .any(|word| lower.contains(word)),
                    "{interface}.{method} takes {input}, which looks like a path"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 12, "only {checked} methods found");
    // Those that read or write a file take it as an fd instead; their
    // source and target are images in the repository.
    let oci = method_inputs(idl::OCI);
    let inputs = |name: &str| oci.iter().find(|(m, _)| m == name).unwrap().1.clone();
    // A docker:// pull names an image in a registry, not a path; its
    // auth file comes as an fd too.
    assert_eq!(
        inputs("Pull"),
        [
            "transport",
            "reference",
            "tag",
            "platform",
            "jobs",
            "tlsVerify",
            "noDelta",
            "digest",
            "stage",
            "sourceRepo",
            "noPartial"
        ]
    );
    // sourceRepo is a flag; the repository comes as the call's last fd,
    // and Copy's as its only one.
    assert_eq!(inputs("Copy"), ["image", "tag", "jobs"]);
    assert_eq!(
        inputs("CreateDelta"),
        ["source", "target", "jobs", "method", "reference"]
    );
    assert_eq!(inputs("Export"), ["image", "compression", "reference"]);
}

#[test]
fn a_peer_who_may_pull_cannot_make_cfsd_read_a_file_it_cannot_read() {
    let admins = ADMINS.to_string();
    let daemon = Daemon::start_for_nobody(&["--allow-group", &admins]);
    assert!(daemon.cfsctl(&["init"]).status.success());
    let image = small_image();
    // Root's alone: nobody cannot open it, nor list the directory.
    let secret = daemon.dir().join("secret.tar");
    std::fs::copy(image.archive_path(), &secret).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let source = format!("oci-archive:{}", secret.display());

    let out = cfsctl_as_nobody(&daemon, &[ADMINS], &["oci", "pull", &source, "stolen"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("cannot open {}", secret.display())),
        "{err}"
    );
    assert!(err.contains("Permission denied"), "{err}");

    // The same peer naming the path in every parameter it can, with no
    // fd: the daemon opens nothing by name.
    let path = secret.display().to_string();
    let replies = raw_calls_as(
        &daemon,
        &[ADMINS],
        &[
            json!({"method": "io.cfsd.Oci.Pull", "parameters": {
                "transport": "oci-archive", "reference": path, "tag": path}}),
            json!({"method": "io.cfsd.Oci.Pull", "parameters": {
                "transport": "oci-archive", "path": path}}),
            json!({"method": "io.cfsd.Oci.CreateDelta", "parameters": {
                "source": path, "target": path}}),
            json!({"method": "io.cfsd.Oci.ListImages"}),
        ],
    );
    assert_eq!(
        replies[0]["error"], "io.cfsd.Oci.MissingFd",
        "{}",
        replies[0]
    );
    assert_eq!(replies[0]["parameters"]["method"], "io.cfsd.Oci.Pull");
    assert_eq!(
        replies[1]["error"], "org.varlink.service.InvalidParameter",
        "{}",
        replies[1]
    );
    assert_eq!(replies[1]["parameters"]["parameter"], "path");
    assert_eq!(
        replies[2]["error"], "io.cfsd.Oci.MissingFd",
        "{}",
        replies[2]
    );
    assert_eq!(
        replies[3]["parameters"]["images"],
        json!([]),
        "{}",
        replies[3]
    );
    let published = published(&daemon.repo());
    assert!(
        published.tags.is_empty() && published.streams.is_empty(),
        "{published:?}"
    );
    assert_eq!(ocictl::object_count(&daemon.repo()), 0);

    // Handed over by root, who can open it, the same file pulls: it was
    // never the file that was refused.
    ocictl::pull(&daemon, &[&source, "mine"]);
}

#[test]
fn mount_needs_root_even_for_the_admin_group() {
    let admins = ADMINS.to_string();
    let daemon = Daemon::start_for_nobody(&["--allow-group", &admins]);
    assert!(daemon.cfsctl(&["init"]).status.success());
    let image = small_image();
    ocictl::pull(&daemon, &[&image.archive(None), "img"]);

    let mount = json!({"method": "io.cfsd.Oci.Mount", "parameters": {"image": "img"}});
    let tag = json!({"method": "io.cfsd.Oci.Tag", "parameters": {"image": "img", "tag": "other"}});
    let admin = raw_calls_as(&daemon, &[ADMINS], &[mount.clone(), tag]);
    let plain = raw_calls_as(&daemon, &[], &[mount]);
    for refused in [&admin[0], &plain[0]] {
        assert_eq!(
            refused["error"], "io.cfsd.Oci.PermissionDenied",
            "{refused}"
        );
        assert_eq!(refused["parameters"]["method"], "io.cfsd.Oci.Mount");
        assert_eq!(refused["parameters"]["uid"], NOBODY);
    }
    // The admin group may still change the repository otherwise.
    assert!(admin[1].get("error").is_none(), "{}", admin[1]);
    assert!(published(&daemon.repo()).tags.contains_key("other"));

    let target = daemon.dir().join("mnt");
    std::fs::create_dir(&target).unwrap();
    let out = cfsctl_as_nobody(
        &daemon,
        &[ADMINS],
        &["oci", "mount", "img", target.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("permission denied"), "{err}");
    assert!(err.contains("io.cfsd.Oci.Mount, which needs root"), "{err}");
}
