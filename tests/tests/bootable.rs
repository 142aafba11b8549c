//! Bootable variants, as upstream `cfsctl` 0.9.4 makes them: the id
//! (`oci compute-id --bootable`), the kernel argument (`compute-karg`),
//! the bootable EROFS kept beside the plain one (GC keeps it, upstream
//! finds it) and `oci mount --bootable`.
//!
//! The real case is a Debian image built with mmdebstrap, carrying an
//! SELinux policy (selinux-policy-default, inside the image) and a /boot
//! with content (memtest86+): `scripts/build-boot-image` builds it once
//! into a cache directory. Smaller crafted images cover an image with no
//! policy, one that cannot be made bootable, and hostile policies.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use cfsd_tests::{
    Daemon,
    oci::{Compression, Entry, Image, Layer, Layout, Written},
    ocictl::{self, PrivateRepo, Target, object_count, published, succeeds},
    peer::{NOBODY, raw_calls_as},
    stderr, stdout,
    upstream::{theirs, upstream},
};
use serde_json::{Value, json};

/// A group nobody is given on top, for `--allow-group`.
const ADMINS: u32 = 4243;
const TAG: &str = "boot";

/// The Debian fixture's oci-archive, built on first use into
/// `$CFSD_TEST_CACHE` (default `/tmp/cfsd-test-cache`) and kept there.
/// `flock` makes the test processes that need it at once build it once.
fn debian_image() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cache = std::env::var_os("CFSD_TEST_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("cfsd-test-cache"))
            .join("boot-image");
        std::fs::create_dir_all(&cache).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-boot-image");
        let out = Command::new("flock")
            .arg(cache.join(".lock"))
            .arg(&script)
            .arg(&cache)
            .output()
            .expect("running flock");
        assert!(
            out.status.success(),
            "building the boot image failed:\n{}{}",
            stdout(&out),
            stderr(&out)
        );
        cache.join("image.tar")
    })
}

fn debian_source() -> String {
    format!("oci-archive:{}:{TAG}", debian_image().display())
}

/// The image's rootfs unpacked by umoci, for upstream `compute-karg`,
/// which reads a directory.
fn unpacked_rootfs(dir: &Path) -> PathBuf {
    let layout = dir.join("layout");
    let rootfs = dir.join("rootfs");
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        &debian_source(),
        &format!("oci:{}:{TAG}", layout.display()),
    ]));
    run(Command::new("umoci")
        .args(["raw", "unpack", "--image"])
        .arg(format!("{}:{TAG}", layout.display()))
        .arg(&rootfs));
    rootfs
}

fn run(command: &mut Command) -> String {
    let out = command.output().expect("running a tool");
    assert!(
        out.status.success(),
        "{command:?}:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// Upstream `compute-karg` of a directory, for the hash and EROFS format.
fn upstream_karg(rootfs: &Path, hash: &str, erofs_version: &str) -> String {
    let karg = run(Command::new(upstream())
        .args([
            "--hash",
            hash,
            "--erofs-version",
            erofs_version,
            "compute-karg",
        ])
        .arg(rootfs));
    karg.trim().to_owned()
}

/// The hash of the repository's objects, as upstream's --hash names it.
fn algorithm(repo: &Path) -> &'static str {
    let meta: Value =
        serde_json::from_slice(&std::fs::read(repo.join("meta.json")).unwrap()).unwrap();
    match meta["algorithm"].as_str() {
        Some("fsverity-sha256-12") => "sha256",
        Some("fsverity-sha512-12") => "sha512",
        other => panic!("unknown algorithm {other:?}"),
    }
}

fn ours(target: &impl Target, args: &[&str]) -> String {
    succeeds(target, args).trim().to_owned()
}

/// The security.selinux label of `path`, not following a symlink.
fn label(path: &Path) -> Option<String> {
    let mut buf = vec![0u8; 256];
    let n = rustix::fs::lgetxattr(path, "security.selinux", &mut buf).ok()?;
    Some(
        String::from_utf8_lossy(&buf[..n])
            .trim_end_matches('\0')
            .to_owned(),
    )
}

/// Mount `image` (`--bootable` in `extra`, or not) with cfsctl, run
/// `look` on the mount, unmount.
fn with_mount<T>(daemon: &Daemon, extra: &[&str], look: impl FnOnce(&Path) -> T) -> T {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut args = vec!["oci", "mount"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[TAG, mnt.to_str().unwrap()]);
    succeeds(daemon, &args);
    let seen = look(&mnt);
    run(Command::new("umount").arg(&mnt));
    seen
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn bootable_id_and_kernel_argument_are_upstreams_for_a_debian_image() {
    let daemon = Daemon::start_initialised(&[]);
    ocictl::pull(&daemon, &[&debian_source(), TAG]);
    let repo = daemon.repo();

    let plain = ours(&daemon, &["oci", "compute-id", TAG]);
    let bootable = ours(&daemon, &["oci", "compute-id", "--bootable", TAG]);
    assert_eq!(
        bootable,
        theirs(&repo, &["oci", "compute-id", "--bootable", TAG]).trim()
    );
    assert_ne!(bootable, plain, "the boot transform changed nothing");

    // Upstream's compute-karg reads the unpacked tree; ours, the pulled
    // image; a repository of EROFS format 1 says composefs.digest=v1-.
    let scratch = tempfile::tempdir().unwrap();
    let rootfs = unpacked_rootfs(scratch.path());
    let algorithm = algorithm(&repo);
    let karg = ours(&daemon, &["oci", "karg", TAG]);
    assert_eq!(karg, upstream_karg(&rootfs, algorithm, "1"));
    let hash_len = if algorithm == "sha256" { 64 } else { 128 };
    assert_eq!(
        karg.len(),
        "composefs.digest=v1-sha256-12:".len() + hash_len
    );
    assert!(karg.ends_with(&bootable), "{karg} names {bootable}");

    // In a repository of format 2 (made by upstream), composefs=.
    let v2 = scratch.path().join("v2");
    run(Command::new(upstream())
        .arg("--repo")
        .arg(&v2)
        .args(["init", "--insecure", "--algorithm", "fsverity-sha256-12"])
        .args(["--erofs-version", "2"]));
    let at = At(v2.clone());
    ocictl::pull(&at, &[&debian_source(), TAG]);
    let karg_v2 = ours(&at, &["oci", "karg", TAG]);
    assert_eq!(karg_v2, upstream_karg(&rootfs, "sha256", "2"));
    assert_eq!(
        karg_v2,
        format!(
            "composefs={}",
            theirs(&v2, &["oci", "compute-id", "--bootable", TAG]).trim()
        )
    );
}

/// A repository directory used through `cfsctl --repo`.
struct At(PathBuf);

impl Target for At {
    fn run(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["--repo", self.0.to_str().unwrap()];
        all.extend_from_slice(args);
        cfsd_tests::cfsctl(&all)
    }

    fn repo_path(&self) -> PathBuf {
        self.0.clone()
    }
}

#[test]
fn the_bootable_image_is_kept_beside_the_plain_one_and_upstream_mounts_it() {
    let daemon = Daemon::start_initialised(&[]);
    ocictl::pull(&daemon, &[&debian_source(), TAG]);
    let repo = daemon.repo();
    let expected = ours(&daemon, &["oci", "compute-id", "--bootable", TAG]);

    let unmade = ocictl::json(&daemon, &["oci", "inspect", TAG]);
    assert_eq!(unmade.get("bootableImageId"), None, "{unmade}");
    assert_eq!(ours(&daemon, &["oci", "make-bootable", TAG]), expected);
    let made = ocictl::json(&daemon, &["oci", "inspect", TAG]);
    assert_eq!(made["bootableImageId"], expected.as_str());
    // Made once: a second call writes nothing and answers the same.
    let before = published(&repo);
    assert_eq!(ours(&daemon, &["oci", "make-bootable", TAG]), expected);
    assert_eq!(published(&repo), before);

    // GC keeps it, through the tag, config and named reference.
    succeeds(&daemon, &["gc"]);
    assert!(repo.join("images").join(&expected).exists());
    let inspected: Value = serde_json::from_str(&theirs(&repo, &["oci", "inspect", TAG])).unwrap();
    assert_eq!(inspected["composefs_boot_erofs"], expected.as_str());
    assert_eq!(
        inspected["composefs_erofs"],
        ours(&daemon, &["oci", "compute-id", TAG]).as_str()
    );

    // Upstream mounts it by that reference: /boot is empty there.
    let dir = tempfile::tempdir().unwrap();
    run(Command::new(upstream())
        .arg("--repo")
        .arg(&repo)
        .args(["oci", "mount", "--bootable", TAG])
        .arg(dir.path()));
    let upstream_boot = names(&dir.path().join("boot"));
    run(Command::new("umount").arg(dir.path()));
    assert_eq!(upstream_boot, Vec::<String>::new());

    // Untagged, the next GC collects it with the image.
    succeeds(&daemon, &["oci", "untag", TAG]);
    succeeds(&daemon, &["gc"]);
    assert!(!repo.join("images").join(&expected).exists());
}

#[test]
fn a_bootable_mount_has_an_empty_boot_and_the_images_own_labels() {
    let daemon = Daemon::start_initialised(&[]);
    ocictl::pull(&daemon, &[&debian_source(), TAG]);

    let plain_boot = with_mount(&daemon, &[], |mnt| names(&mnt.join("boot")));
    assert!(
        plain_boot.contains(&"memtest86+x64.bin".to_owned()),
        "{plain_boot:?}"
    );

    // Not made yet: the bootable mount makes and keeps it.
    let (boot, sysroot, labels) = with_mount(&daemon, &["--bootable"], |mnt| {
        let labels: Vec<Option<String>> = ["usr/bin/ls", "etc/selinux/config", "boot"]
            .iter()
            .map(|path| label(&mnt.join(path)))
            .collect();
        (
            names(&mnt.join("boot")),
            names(&mnt.join("sysroot")),
            labels,
        )
    });
    assert_eq!(boot, Vec::<String>::new());
    assert_eq!(sysroot, Vec::<String>::new());
    // Labels from selinux-policy-default's file_contexts.
    let expected = ["bin_t", "selinux_config_t", "boot_t"]
        .map(|kind| Some(format!("system_u:object_r:{kind}:s0")));
    assert_eq!(labels, expected);
    let inspected: Value =
        serde_json::from_str(&theirs(&daemon.repo(), &["oci", "inspect", TAG])).unwrap();
    assert_eq!(
        inspected["composefs_boot_erofs"],
        ours(&daemon, &["oci", "compute-id", "--bootable", TAG]).as_str()
    );
}

/// A small image that composefs-boot can transform: `/usr`, `/boot`
/// with a file, `/sysroot`, and `extra`.
fn small_bootable(extra: Vec<Entry>) -> Written {
    let image = Image::new(vec![Layer::new(
        Compression::Gzip,
        small_bootable_entries(extra),
    )]);
    Written::new(&Layout::single(&image, None).0)
}

/// The entries of [`small_bootable`].
fn small_bootable_entries(extra: Vec<Entry>) -> Vec<Entry> {
    let mut entries = vec![
        Entry::dir("usr").mtime(1_600_000_000),
        Entry::file("usr/bin-tool", "#!/bin/sh\n")
            .mode(0o755)
            .xattr(
                "security.selinux",
                b"system_u:object_r:container_file_t:s0\0",
            ),
        Entry::dir("boot"),
        Entry::file("boot/vmlinuz", vec![7u8; 5000]),
        Entry::dir("sysroot"),
        Entry::dir("etc"),
    ];
    entries.extend(extra);
    entries
}

#[test]
fn an_image_without_a_policy_is_unlabelled_with_an_empty_boot_as_upstream_makes_it() {
    let daemon = Daemon::start_initialised(&[]);
    let image = small_bootable(Vec::new());
    ocictl::pull(&daemon, &[&image.archive(None), TAG]);
    let bootable = ours(&daemon, &["oci", "compute-id", "--bootable", TAG]);
    assert_eq!(
        bootable,
        theirs(&daemon.repo(), &["oci", "compute-id", "--bootable", TAG]).trim()
    );
    let (plain_label, plain_boot) = with_mount(&daemon, &[], |mnt| {
        (label(&mnt.join("usr/bin-tool")), names(&mnt.join("boot")))
    });
    assert_eq!(plain_boot, ["vmlinuz"]);
    // The layer's build-time label is not in the OCI transform's xattr
    // allowlist: gone already from the plain image, as upstream drops it.
    assert_eq!(plain_label, None);
    let (boot_label, boot) = with_mount(&daemon, &["--bootable"], |mnt| {
        (label(&mnt.join("usr/bin-tool")), names(&mnt.join("boot")))
    });
    assert_eq!(boot_label, None, "a label survived without a policy");
    assert_eq!(boot, Vec::<String>::new());
    assert_eq!(ours(&daemon, &["oci", "make-bootable", TAG]), bootable);
}

/// The `NotBootable` error `method` gets for `image`, and that the
/// daemon answers the next call on the same connection.
fn not_bootable(daemon: &Daemon, method: &str, parameters: Value) -> String {
    let mut conn = daemon.raw();
    let reply =
        conn.call(json!({"method": format!("io.cfsd.Oci.{method}"), "parameters": parameters}));
    assert_eq!(reply["error"], "io.cfsd.Oci.NotBootable", "{reply}");
    assert_eq!(reply["parameters"]["image"], TAG);
    let next = conn.call(json!({"method": "io.cfsd.Oci.ComputeId", "parameters": {"image": TAG}}));
    assert!(next["parameters"]["imageId"].is_string(), "{next}");
    reply["parameters"]["reason"].as_str().unwrap().to_owned()
}

/// Every way to ask for the bootable variant of `image` is refused with
/// a reason containing `why`, and nothing is written.
fn refused_everywhere(image: &Written, why: &str) {
    let daemon = Daemon::start_initialised(&[]);
    ocictl::pull(&daemon, &[&image.archive(None), TAG]);
    let before = (published(&daemon.repo()), object_count(&daemon.repo()));
    let params = json!({"image": TAG});
    for (method, parameters) in [
        ("ComputeId", json!({"image": TAG, "bootable": true})),
        ("MakeBootable", params.clone()),
        ("KernelArgument", params.clone()),
        ("Mount", json!({"image": TAG, "bootable": true})),
    ] {
        let reason = not_bootable(&daemon, method, parameters);
        assert!(reason.contains(why), "{method}: {reason}");
    }
    let after = (published(&daemon.repo()), object_count(&daemon.repo()));
    assert_eq!(after, before, "something was written");
}

#[test]
fn an_image_without_sysroot_is_not_bootable_as_upstream_says() {
    let image = Image::new(vec![Layer::new(
        Compression::Gzip,
        vec![Entry::dir("usr"), Entry::dir("boot")],
    )]);
    let image = Written::new(&Layout::single(&image, None).0);
    refused_everywhere(&image, "sysroot");
    let repo = PrivateRepo::init("sha256");
    ocictl::pull(&repo, &[&image.archive(None), TAG]);
    let out = Command::new(upstream())
        .arg("--repo")
        .arg(repo.repo_path())
        .args(["oci", "compute-id", "--bootable", TAG])
        .output()
        .unwrap();
    assert!(!out.status.success(), "upstream made it bootable");
}

/// The policy files of a policy named `name` whose `file_contexts` is
/// `contexts`.
fn policy(name: &str, contexts: Vec<u8>) -> Vec<Entry> {
    let files = format!("etc/selinux/{name}/contexts/files");
    vec![
        Entry::dir("etc/selinux"),
        Entry::file("etc/selinux/config", format!("SELINUXTYPE={name}\n")),
        Entry::dir(&format!("etc/selinux/{name}")),
        Entry::dir(&format!("etc/selinux/{name}/contexts")),
        Entry::dir(&files),
        Entry::file(&format!("{files}/file_contexts"), contexts),
    ]
}

#[test]
fn a_garbage_policy_is_a_typed_error() {
    let garbage = b"/usr(/.*)?(((\tsystem_u:object_r:usr_t:s0\n\x00\xff garbage\n".to_vec();
    refused_everywhere(
        &small_bootable(policy("junk", garbage)),
        "SELinux spec file file_contexts",
    );
}

#[test]
fn a_huge_policy_is_refused_before_it_is_read() {
    // Valid lines, so only the size can be what is refused.
    let line = b"/usr/bin/tool\tsystem_u:object_r:bin_t:s0\n";
    let huge = line.repeat((17 << 20) / line.len());
    refused_everywhere(
        &small_bootable(policy("huge", huge)),
        "/etc/selinux/huge/contexts/files/file_contexts is",
    );
}

#[test]
fn a_policy_naming_a_missing_directory_is_a_typed_error() {
    let mut entries = vec![
        Entry::dir("etc/selinux"),
        Entry::file("etc/selinux/config", "SELINUXTYPE=../../usr\n"),
    ];
    entries.push(Entry::file("etc/passwd", "root:x:0:0::/root:/bin/sh\n"));
    refused_everywhere(&small_bootable(entries), "SELinux");
}

#[test]
fn bootable_mounts_follow_the_mount_rule_and_making_one_the_change_rule() {
    let admins = ADMINS.to_string();
    let daemon = Daemon::start_for_nobody(&["--allow-group", &admins]);
    assert!(daemon.cfsctl(&["init"]).status.success());
    let image = small_bootable(Vec::new());
    ocictl::pull(&daemon, &[&image.archive(None), TAG]);
    let before = published(&daemon.repo());

    let mount =
        json!({"method": "io.cfsd.Oci.Mount", "parameters": {"image": TAG, "bootable": true}});
    let make = json!({"method": "io.cfsd.Oci.MakeBootable", "parameters": {"image": TAG}});
    let id =
        json!({"method": "io.cfsd.Oci.ComputeId", "parameters": {"image": TAG, "bootable": true}});
    let karg = json!({"method": "io.cfsd.Oci.KernelArgument", "parameters": {"image": TAG}});
    let calls = [mount, make, id, karg];
    let nobody = raw_calls_as(&daemon, &[], &calls);
    let admin = raw_calls_as(&daemon, &[ADMINS], &calls);
    let expected = ours(&daemon, &["oci", "compute-id", "--bootable", TAG]);

    for (who, replies) in [("nobody", &nobody), ("admin", &admin)] {
        let refused = &replies[0];
        assert_eq!(
            refused["error"], "io.cfsd.Oci.PermissionDenied",
            "{who}: {refused}"
        );
        assert_eq!(refused["parameters"]["method"], "io.cfsd.Oci.Mount");
        assert_eq!(refused["parameters"]["uid"], NOBODY);
        // Reading the id and the argument is open to every peer.
        assert_eq!(
            replies[2]["parameters"]["imageId"],
            expected.as_str(),
            "{who}"
        );
        assert_eq!(
            replies[3]["parameters"]["imageId"],
            expected.as_str(),
            "{who}"
        );
    }
    assert_eq!(
        nobody[1]["error"], "io.cfsd.Oci.PermissionDenied",
        "{}",
        nobody[1]
    );
    assert_eq!(
        nobody[1]["parameters"]["method"],
        "io.cfsd.Oci.MakeBootable"
    );
    // Nobody's refused calls wrote nothing; the admin's MakeBootable did.
    assert_ne!(published(&daemon.repo()), before);
    assert_eq!(
        admin[1]["parameters"]["imageId"],
        expected.as_str(),
        "{}",
        admin[1]
    );
}

#[test]
fn a_client_hanging_up_mid_make_bootable_leaves_a_whole_image() {
    let daemon = Daemon::start_initialised(&[]);
    ocictl::pull(&daemon, &[&debian_source(), TAG]);
    let expected = ours(&daemon, &["oci", "compute-id", "--bootable", TAG]);
    {
        let mut conn = daemon.raw();
        conn.send_bytes(
            &serde_json::to_vec(
                &json!({"method": "io.cfsd.Oci.MakeBootable", "parameters": {"image": TAG}}),
            )
            .map(|mut b| {
                b.push(0);
                b
            })
            .unwrap(),
        );
    }
    // The work finishes or never starts; either way a later call gives
    // the whole image, linked, and upstream reads the repository.
    assert_eq!(ours(&daemon, &["oci", "make-bootable", TAG]), expected);
    let inspected: Value =
        serde_json::from_str(&theirs(&daemon.repo(), &["oci", "inspect", TAG])).unwrap();
    assert_eq!(inspected["composefs_boot_erofs"], expected.as_str());
    let fsck = theirs(&daemon.repo(), &["oci", "fsck"]);
    assert!(fsck.contains("oci images: 1/1 ok"), "{fsck}");
}

#[test]
fn cfsctl_json_reports_the_kernel_argument_and_its_image_id() {
    let daemon = Daemon::start_initialised(&[]);
    ocictl::pull(&daemon, &[&small_bootable(Vec::new()).archive(None), TAG]);
    let reply = ocictl::json(&daemon, &["oci", "karg", TAG]);
    let id = ours(&daemon, &["oci", "compute-id", "--bootable", TAG]);
    assert_eq!(reply["imageId"], id.as_str());
    assert_eq!(
        reply["argument"].as_str().unwrap(),
        ours(&daemon, &["oci", "karg", TAG])
    );
}

#[test]
fn a_later_pull_of_the_same_config_keeps_the_bootable_image() {
    let daemon = Daemon::start_initialised(&[]);
    let image = small_bootable(Vec::new());
    ocictl::pull(&daemon, &[&image.archive(None), TAG]);
    let id = ours(&daemon, &["oci", "make-bootable", TAG]);
    // The same layers compressed otherwise: another manifest, the same
    // config, whose stream that pull rewrites.
    let entries = small_bootable_entries(Vec::new());
    let zstd = Image::new(vec![Layer::new(Compression::Zstd, entries)]);
    let zstd = Written::new(&Layout::single(&zstd, None).0);
    ocictl::pull(&daemon, &[&zstd.archive(None), "again"]);
    for tag in [TAG, "again"] {
        let inspected: Value =
            serde_json::from_str(&theirs(&daemon.repo(), &["oci", "inspect", tag])).unwrap();
        assert_eq!(inspected["composefs_boot_erofs"], id.as_str(), "{tag}");
    }
}

#[test]
fn concurrent_make_bootable_calls_link_one_image() {
    let daemon = Daemon::start_initialised(&[]);
    ocictl::pull(&daemon, &[&small_bootable(Vec::new()).archive(None), TAG]);
    let expected = ours(&daemon, &["oci", "compute-id", "--bootable", TAG]);
    let ids: Vec<String> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| ours(&daemon, &["oci", "make-bootable", TAG])))
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    assert_eq!(ids, vec![expected.clone(); 4]);
    let inspected: Value =
        serde_json::from_str(&theirs(&daemon.repo(), &["oci", "inspect", TAG])).unwrap();
    assert_eq!(inspected["composefs_boot_erofs"], expected.as_str());
    let fsck = theirs(&daemon.repo(), &["oci", "fsck"]);
    assert!(fsck.contains("oci images: 1/1 ok"), "{fsck}");
}

#[test]
fn policy_files_that_are_not_regular_files_are_typed_errors() {
    // A file_contexts that is a symlink out of the image (to the host's
    // /etc/shadow) is never followed; nor is a FIFO read.
    let files = "etc/selinux/odd/contexts/files";
    let mut symlinked = policy("odd", Vec::new());
    symlinked.pop();
    symlinked.push(Entry::symlink(
        &format!("{files}/file_contexts"),
        "/etc/shadow",
    ));
    refused_everywhere(&small_bootable(symlinked), "SELinux");
    let mut fifo = policy("odd", Vec::new());
    fifo.pop();
    fifo.push(Entry::fifo(&format!("{files}/file_contexts")));
    refused_everywhere(&small_bootable(fifo), "SELinux");
}
