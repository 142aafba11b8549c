//! What cfsctl says when a command cannot be done: what is wrong, and
//! what would work instead.

use std::process::Command;

use cfsd_tests::{
    Daemon, bin, cfsctl,
    oci::{Compression, Layout, Written, noise, small_image},
    ocictl::{
        PrivateRepo, Target, fails, json, published, pull, typed_pull_refusal, typed_refusal_of,
    },
    peer::{NOBODY, as_nobody, raw_calls_as},
    stderr,
};
use cfsd_varlink::{
    oci::{OciError, PullParams},
    repository::RepositoryError,
};

fn image(content: &str) -> Written {
    let (layout, _) = Layout::single(&small_image(Compression::Gzip, content), None);
    Written::new(&layout)
}

#[test]
fn cli_messages_a_source_of_the_wrong_kind_names_the_transport_that_fits() {
    let repo = PrivateRepo::init("sha256");
    let written = image("kinds\n");
    let dir = written.dir.path().join("layout");
    let err = fails(
        &repo,
        &["oci", "pull", &format!("oci-archive:{}", dir.display())],
    );
    assert!(err.contains("is a directory"), "{err}");
    assert!(err.contains(&format!("oci:{}", dir.display())), "{err}");

    let file = written.archive_path();
    let err = fails(&repo, &["oci", "pull", &format!("oci:{}", file.display())]);
    assert!(err.contains("is a file, not a directory"), "{err}");
    assert!(
        err.contains(&format!("oci-archive:{}", file.display())),
        "{err}"
    );
    assert!(!err.contains("os error"), "{err}");
    assert_eq!(published(&repo.repo_path()).tags.len(), 0);
}

#[test]
fn cli_messages_delta_create_says_what_it_writes() {
    let repo = PrivateRepo::init("sha256");
    pull(&repo, &[&image("a\n").archive(None), "a"]);
    pull(&repo, &[&image("b\n").archive(None), "b"]);
    let out = repo.dir().join("out.tar");
    for dest in [out.display().to_string(), format!("oci:{}", out.display())] {
        let err = fails(&repo, &["oci", "delta", "create", "a", "b", &dest]);
        assert!(err.contains("oci-archive:FILE"), "{err}");
        assert!(!err.contains("oci:DIR"), "{err}");
    }
    assert!(!out.exists());
}

#[test]
fn cli_messages_untag_of_a_missing_tag_says_no_tag() {
    let daemon = Daemon::start_initialised(&[]);
    let err = fails(&daemon, &["oci", "untag", "missing"]);
    assert!(err.contains("no tag \"missing\""), "{err}");
    assert!(!err.contains("no image"), "{err}");
}

#[test]
fn cli_messages_mounting_onto_a_file_says_it_is_not_a_directory() {
    let daemon = Daemon::start_initialised(&[]);
    pull(&daemon, &[&image("mount\n").archive(None), "m"]);
    let file = daemon.dir().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let err = fails(&daemon, &["oci", "mount", "m", file.to_str().unwrap()]);
    assert!(err.contains("not a directory"), "{err}");
    assert!(!err.contains("Invalid argument"), "{err}");
}

#[test]
fn cli_messages_mounting_as_non_root_says_who_may_mount() {
    let repo = PrivateRepo::init("sha256");
    pull(&repo, &[&image("nobody\n").archive(None), "m"]);
    // nobody's own private daemon: it may call Mount, but cannot mount.
    let path = repo.repo_path();
    Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(repo.dir())
        .status()
        .unwrap();
    let target = tempfile::tempdir().unwrap();
    Command::new("chown")
        .arg("65534:65534")
        .arg(target.path())
        .status()
        .unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(bin("cfsctl"))
        .arg("--repo")
        .arg(&path)
        .args(["oci", "mount", "m"])
        .arg(target.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("only root may mount"), "{err}");
}

#[test]
fn cli_messages_bytes_of_a_random_file_are_escaped() {
    let daemon = Daemon::start_initialised(&[]);
    let dir = tempfile::tempdir().unwrap();
    let random = dir.path().join("random.tar");
    // A tar header whose name is control characters: a parser quotes it.
    let mut bytes = noise(7, 4096);
    for (i, b) in bytes.iter_mut().take(100).enumerate() {
        *b = [0x1b, b'[', b'2', b'J', 0x07][i % 5];
    }
    std::fs::write(&random, &bytes).unwrap();
    let out = daemon.cfsctl(&["oci", "pull", &format!("oci-archive:{}", random.display())]);
    assert_eq!(out.status.code(), Some(1));
    let err = &out.stderr;
    let controls: Vec<u8> = err
        .iter()
        .copied()
        .filter(|b| b.is_ascii_control() && *b != b'\n')
        .collect();
    assert!(
        controls.is_empty(),
        "control bytes {controls:?} in {}",
        stderr(&out)
    );
}

#[test]
fn cli_messages_fsck_names_a_problems_kind_once() {
    let repo = PrivateRepo::init("sha256");
    pull(&repo, &[&image("fsck\n").archive(None), "f"]);
    // Damage one object: same size, different content.
    let objects = repo.repo_path().join("objects");
    let object = walk(&objects)
        .into_iter()
        .find(|p| std::fs::metadata(p).unwrap().len() > 1000)
        .expect("an object");
    let mut data = std::fs::read(&object).unwrap();
    data[0] ^= 1;
    std::fs::write(&object, data).unwrap();
    let out = repo.run(&["fsck"]);
    assert_eq!(out.status.code(), Some(1));
    let text = cfsd_tests::stdout(&out);
    let report = cfsd_tests::stdout(&repo.run(&["--json", "fsck"]));
    let kind = "object-digest-mismatch";
    assert!(report.contains(kind), "{report}");
    for line in text.lines().filter(|l| l.contains(kind)) {
        assert_eq!(line.matches(kind).count(), 1, "{line}");
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn cli_messages_a_missing_cfsd_is_named_with_where_it_was_looked_for() {
    let dir = tempfile::tempdir().unwrap();
    let lonely = dir.path().join("cfsctl");
    std::fs::copy(bin("cfsctl"), &lonely).unwrap();
    let out = Command::new(&lonely)
        .env("PATH", dir.path())
        .env_remove("CFSD_BIN")
        .args(["--repo", dir.path().join("r").to_str().unwrap(), "info"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&dir.path().join("cfsd").display().to_string()),
        "{err}"
    );
    assert!(err.contains("$CFSD_BIN"), "{err}");
    let _ = cfsctl;
}

#[test]
fn cli_messages_a_delta_without_its_source_names_the_source_image() {
    let source = PrivateRepo::init("sha256");
    let a = image("delta source\n");
    let pulled_a = pull(&source, &[&a.archive(None), "a"]);
    pull(&source, &[&image("delta target\n").archive(None), "b"]);
    let delta = source.dir().join("delta.tar");
    let dest = format!("oci-archive:{}", delta.display());
    let created = json(&source, &["oci", "delta", "create", "a", "b", &dest]);
    let source_manifest = pulled_a.str("manifestDigest");
    assert_eq!(created["sourceDigest"], source_manifest);

    let daemon = Daemon::start_initialised(&[]);
    let err = fails(&daemon, &["oci", "pull", &dest, "b"]);
    assert!(err.contains(source_manifest), "{err}");
    hinted(
        &err,
        "which is not in the repository",
        &["pull that source image"],
    );
    assert!(err.contains(pulled_a.str("configDigest")), "{err}");
    let typed = typed_pull_refusal(
        &daemon,
        "oci-archive",
        std::fs::File::open(&delta).unwrap().into(),
        "b",
    );
    assert_eq!(
        typed,
        OciError::DeltaSourceMissing {
            config: pulled_a.str("configDigest").to_owned(),
            image: Some(source_manifest.to_owned()),
        }
    );
    describes_only(&typed.to_string());

    // With the source there, the summary says the delta was applied and
    // against which image.
    pull(&daemon, &[&a.archive(None), "the-source"]);
    let out = daemon.cfsctl(&["oci", "pull", &dest, "b"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = cfsd_tests::stdout(&out);
    assert!(
        text.contains(&format!(
            "Delta:     {}",
            created["manifestDigest"].as_str().unwrap()
        )),
        "{text}"
    );
    assert!(
        text.contains(source_manifest) && text.contains("the-source"),
        "{text}"
    );
    let pulled = json(&daemon, &["oci", "inspect", "b"]);
    assert_eq!(pulled["manifestDigest"], created["targetDigest"]);
}

#[test]
fn cli_messages_gc_of_a_repository_nobody_may_write_is_permission_denied() {
    let repo = PrivateRepo::init("sha256");
    pull(&repo, &[&image("gc\n").archive(None), "g"]);
    let parent = repo.dir();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).unwrap();
    let before = published(&repo.repo_path());
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(bin("cfsctl"))
        .args(["--json", "--repo"])
        .arg(repo.repo_path())
        .arg("gc")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        line["error"], "io.cfsd.Repository.PermissionDenied",
        "{line}"
    );
    assert_eq!(line["parameters"]["uid"], 65534, "{line}");
    assert_eq!(
        line["parameters"]["method"], "io.cfsd.Repository.Gc",
        "{line}"
    );
    assert!(
        stderr(&out).contains("permission denied"),
        "{}",
        stderr(&out)
    );
    assert_eq!(published(&repo.repo_path()), before);
}

/// A daemon error's text, as every client renders it, describes the
/// problem and names no command or option of cfsctl's.
fn describes_only(text: &str) {
    for advice in ["cfsctl", "--", "oci:DIR", "first", "pick one"] {
        assert!(
            !text.contains(advice),
            "{advice:?} in the wire text {text:?}"
        );
    }
}

/// cfsctl's stderr for a failure: the daemon's text, then a hint line
/// with `words`.
fn hinted(err: &str, text: &str, words: &[&str]) {
    assert!(err.contains(text), "{text:?} not in {err:?}");
    let hint = err
        .lines()
        .find_map(|l| l.strip_prefix("hint: "))
        .unwrap_or_else(|| panic!("no hint in {err:?}"));
    for word in words {
        assert!(hint.contains(word), "{word:?} not in the hint {hint:?}");
    }
}

#[test]
fn cli_messages_wire_texts_describe_the_problem_and_cfsctl_adds_the_hint() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // NotInitialized, from both interfaces.
    let bare = Daemon::start(&[]);
    let (info, images) = runtime.block_on(async {
        let mut client = bare.client().await;
        (client.info().await, client.list_images().await)
    });
    let info = info.expect_err("info of no repository").to_string();
    let images = images.expect_err("images of no repository").to_string();
    for text in [&info, &images] {
        assert!(text.contains("no composefs repository at"), "{text}");
        describes_only(text);
    }
    hinted(&fails(&bare, &["info"]), &info, &["`cfsctl init`"]);
    hinted(
        &fails(&bare, &["oci", "images"]),
        &images,
        &["`cfsctl init`"],
    );

    // ImageNotFound.
    let daemon = Daemon::start_initialised(&[]);
    let missing = runtime
        .block_on(async { daemon.client().await.inspect("nothing").await })
        .expect_err("inspect of no image");
    assert!(
        matches!(&missing, cfsd_varlink::CallError::Interface(OciError::ImageNotFound { image }) if image == "nothing"),
        "{missing:?}"
    );
    let text = missing.to_string();
    describes_only(&text);
    let err = fails(&daemon, &["oci", "inspect", "nothing"]);
    hinted(&err, &text, &["`cfsctl oci images`"]);

    // PlatformNotFound.
    let written = image("platform\n");
    let params = PullParams {
        transport: "oci-archive".to_owned(),
        platform: Some("linux/s390x".to_owned()),
        tag: Some("p".to_owned()),
        ..PullParams::default()
    };
    let archive = std::fs::File::open(written.archive_path()).unwrap();
    let typed = typed_refusal_of(&daemon, &params, archive.into());
    assert!(
        matches!(&typed, OciError::PlatformNotFound { platform, .. } if platform == "linux/s390x"),
        "{typed:?}"
    );
    describes_only(&typed.to_string());
    let source = written.archive(None);
    let err = fails(
        &daemon,
        &["oci", "pull", "--platform", "linux/s390x", &source, "p"],
    );
    hinted(&err, &typed.to_string(), &["--platform"]);

    // CompressedArchive.
    let (layout, _) = Layout::single(&small_image(Compression::Gzip, "gz\n"), None);
    let gzip = daemon.dir().join("image.tar.gz");
    layout.write_gzip_archive(&gzip);
    let typed = typed_pull_refusal(
        &daemon,
        "oci-archive",
        std::fs::File::open(&gzip).unwrap().into(),
        "c",
    );
    assert_eq!(
        typed,
        OciError::CompressedArchive {
            compression: "gzip".to_owned()
        }
    );
    describes_only(&typed.to_string());
    let err = fails(
        &daemon,
        &[
            "oci",
            "pull",
            &format!("oci-archive:{}", gzip.display()),
            "c",
        ],
    );
    hinted(&err, &typed.to_string(), &["`gzip -d`"]);

    // PermissionDenied, as an unprivileged peer of a system daemon.
    let shared = Daemon::start_for_nobody(&[]);
    assert!(shared.cfsctl(&["init"]).status.success());
    let reply = raw_calls_as(
        &shared,
        &[],
        &[serde_json::json!({"method": "io.cfsd.Repository.Gc", "parameters": {}})],
    );
    let typed: RepositoryError = serde_json::from_value(reply[0].clone()).unwrap();
    assert!(
        matches!(typed, RepositoryError::PermissionDenied { uid: NOBODY, .. }),
        "{typed:?}"
    );
    describes_only(&typed.to_string());
    let out = as_nobody(&[], bin("cfsctl").to_str().unwrap())
        .arg("--address")
        .arg(shared.address())
        .arg("gc")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    hinted(&stderr(&out), &typed.to_string(), &["root", "admin group"]);
}
