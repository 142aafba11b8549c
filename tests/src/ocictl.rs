//! Driving `cfsctl oci ...` and reading what it left in the repository.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    process::Output,
};

use cfsd_varlink::{
    CallError,
    oci::{OciError, PullParams, PullReply},
};
use serde_json::Value;
use tempfile::TempDir;

use crate::{Daemon, cfsctl, stderr, stdout};

/// Something `cfsctl` can be pointed at: a running daemon, or a private
/// repository that each command serves through its own daemon.
pub trait Target {
    /// Run `cfsctl <how to reach it> ARGS`.
    fn run(&self, args: &[&str]) -> Output;
    /// The repository directory.
    fn repo_path(&self) -> PathBuf;
}

impl Target for Daemon {
    fn run(&self, args: &[&str]) -> Output {
        self.cfsctl(args)
    }

    fn repo_path(&self) -> PathBuf {
        self.repo()
    }
}

/// A repository used through `cfsctl --repo`.
#[derive(Debug)]
pub struct PrivateRepo {
    dir: TempDir,
}

impl PrivateRepo {
    /// A new repository initialised with `algorithm` (sha256 or sha512).
    pub fn init(algorithm: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cfsd-repo")
            .tempdir()
            .unwrap();
        let repo = PrivateRepo { dir };
        let out = repo.run(&["init", "--algorithm", algorithm]);
        assert!(out.status.success(), "init failed: {}", stderr(&out));
        repo
    }

    /// The scratch directory around the repository.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Target for PrivateRepo {
    fn run(&self, args: &[&str]) -> Output {
        let repo = self.repo_path();
        let mut all = vec!["--repo", repo.to_str().unwrap()];
        all.extend_from_slice(args);
        cfsctl(&all)
    }

    fn repo_path(&self) -> PathBuf {
        self.dir.path().join("repo")
    }
}

/// What `cfsctl --json oci pull` printed.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The `progress` objects, in order.
    pub progress: Vec<Value>,
    /// The final `result` object.
    pub result: Value,
}

impl Pulled {
    /// `result[key]` as a string.
    pub fn str(&self, key: &str) -> &str {
        self.result[key]
            .as_str()
            .unwrap_or_else(|| panic!("result has no string {key}: {}", self.result))
    }

    /// `result[key]` as a number.
    pub fn u64(&self, key: &str) -> u64 {
        self.result[key]
            .as_u64()
            .unwrap_or_else(|| panic!("result has no number {key}: {}", self.result))
    }

    /// `result[key]` as a bool.
    pub fn bool(&self, key: &str) -> bool {
        self.result[key]
            .as_bool()
            .unwrap_or_else(|| panic!("result has no bool {key}: {}", self.result))
    }
}

/// Parse the JSON lines of `cfsctl --json oci pull`: progress events, then
/// exactly one result, last.
pub fn parse_pull(text: &str) -> Pulled {
    let mut progress = Vec::new();
    let mut result = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let value: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}\nall output:\n{text}"));
        assert!(
            result.is_none(),
            "output after the result line: {line}\nall output:\n{text}"
        );
        if let Some(p) = value.get("progress") {
            progress.push(p.clone());
        } else if let Some(r) = value.get("result") {
            result = Some(r.clone());
        } else {
            panic!("neither progress nor result: {line}");
        }
    }
    Pulled {
        progress,
        result: result.unwrap_or_else(|| panic!("no result line in:\n{text}")),
    }
}

/// `cfsctl --json --progress=json oci pull ARGS`, which must succeed.
pub fn pull(target: &impl Target, args: &[&str]) -> Pulled {
    let mut all = vec!["--json", "--progress=json", "oci", "pull"];
    all.extend_from_slice(args);
    let out = target.run(&all);
    assert!(
        out.status.success(),
        "oci pull {args:?} failed ({}): {}",
        out.status,
        stderr(&out)
    );
    parse_pull(&stdout(&out))
}

/// `cfsctl oci pull ARGS`, which must fail with status 1; its stderr,
/// the message alone (progress, which goes to stderr too, is not shown).
pub fn pull_fails(target: &impl Target, args: &[&str]) -> String {
    let mut all = vec!["--progress=none", "oci", "pull"];
    all.extend_from_slice(args);
    fails(target, &all)
}

/// `cfsctl ARGS`, which must fail with exit status 1; its stderr.
pub fn fails(target: &impl Target, args: &[&str]) -> String {
    let out = target.run(args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?} should fail with status 1; stdout: {}; stderr: {}",
        stdout(&out),
        stderr(&out)
    );
    let err = stderr(&out);
    assert!(!err.trim().is_empty(), "{args:?} failed without a message");
    err
}

/// `cfsctl ARGS`, which must succeed; its stdout.
pub fn succeeds(target: &impl Target, args: &[&str]) -> String {
    let out = target.run(args);
    assert!(
        out.status.success(),
        "{args:?} failed ({}): {}",
        out.status,
        stderr(&out)
    );
    stdout(&out)
}

/// `cfsctl --json ARGS`, which must succeed; its one JSON reply.
pub fn json(target: &impl Target, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let text = succeeds(target, &all);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {text}"))
}

/// What a repository publishes: tags, EROFS images and named streams.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Published {
    /// `streams/refs/oci/<name>` → its symlink target.
    pub tags: BTreeMap<String, String>,
    /// The names under `images/` (not `images/refs`).
    pub images: BTreeSet<String>,
    /// `streams/<name>` (not `streams/refs`) → its symlink target.
    pub streams: BTreeMap<String, String>,
}

impl Published {
    /// The same without the targets of `oci-manifest-*` streams, which
    /// may legitimately differ: composefs-rs writes a manifest's split
    /// stream with its layer references in hash-map order, so one manifest
    /// can be stored as different objects.
    pub fn stable(mut self) -> Self {
        for (name, target) in &mut self.streams {
            if name.starts_with("oci-manifest-") {
                target.clear();
            }
        }
        self
    }

    /// Stream names starting with `prefix`.
    pub fn streams_starting(&self, prefix: &str) -> BTreeSet<String> {
        self.streams
            .keys()
            .filter(|n| n.starts_with(prefix))
            .cloned()
            .collect()
    }
}

/// Read what `repo` publishes.
pub fn published(repo: &Path) -> Published {
    Published {
        tags: links(&repo.join("streams/refs/oci")),
        images: links(&repo.join("images")).into_keys().collect(),
        streams: links(&repo.join("streams")),
    }
}

/// The symlinks (and files) directly in `dir`, with their targets.
fn links(dir: &Path) -> BTreeMap<String, String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    for entry in entries {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            continue;
        }
        let target = std::fs::read_link(entry.path())
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        out.insert(entry.file_name().to_string_lossy().into_owned(), target);
    }
    out
}

/// How upstream composefs-rs encodes a tag as a file name under
/// `streams/refs/oci/`: `%` → `%25`, `/` → `%2F`.
pub fn encode_tag(tag: &str) -> String {
    tag.replace('%', "%25").replace('/', "%2F")
}

/// The number of files under `repo/objects`.
pub fn object_count(repo: &Path) -> usize {
    let Ok(dirs) = std::fs::read_dir(repo.join("objects")) else {
        return 0;
    };
    let mut n = 0;
    for dir in dirs {
        let dir = dir.unwrap();
        if dir.file_type().unwrap().is_dir() {
            n += std::fs::read_dir(dir.path()).unwrap().count();
        }
    }
    n
}

/// The typed error of `Pull` of `source` (`transport`) to `tag`, called
/// over the daemon's socket without cfsctl. Panics if the pull succeeds or
/// fails with anything but an `io.cfsd.Oci` error.
pub fn typed_pull_refusal(
    daemon: &Daemon,
    transport: &str,
    source: OwnedFd,
    tag: &str,
) -> OciError {
    let params = PullParams {
        transport: transport.to_owned(),
        tag: Some(tag.to_owned()),
        ..PullParams::default()
    };
    typed_refusal_of(daemon, &params, source)
}

/// The typed error of `Pull` of `source`, written as cfsctl takes it
/// (`oci-archive:PATH[:REF]` or `oci:DIR[:REF]`), opened here as cfsctl
/// would and sent over the daemon's socket. Panics as
/// [`typed_pull_refusal`] does.
pub fn typed_source_refusal(daemon: &Daemon, source: &str, tag: &str) -> OciError {
    let (transport, rest) = source.split_once(':').expect("TRANSPORT:PATH");
    let (path, reference) = match rest.split_once(':') {
        Some((path, reference)) => (path, Some(reference)),
        None => (rest, None),
    };
    let fd = OwnedFd::from(std::fs::File::open(path).expect("opening the source"));
    let params = PullParams {
        transport: transport.to_owned(),
        reference: reference.map(str::to_owned),
        tag: Some(tag.to_owned()),
        ..PullParams::default()
    };
    typed_refusal_of(daemon, &params, fd)
}

/// The typed error of `Pull` with `params` of `source`, as
/// [`typed_pull_refusal`] gets it.
pub fn typed_refusal_of(daemon: &Daemon, params: &PullParams, source: OwnedFd) -> OciError {
    typed_refusal_with(daemon, params, vec![source])
}

/// The typed error of `Pull` with `params` and `fds` (none, for a
/// registry pull without an auth file), as [`typed_pull_refusal`] gets it.
pub fn typed_refusal_with(daemon: &Daemon, params: &PullParams, fds: Vec<OwnedFd>) -> OciError {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut client = daemon.client().await;
        let mut replies = client.pull_with(params, fds).await.expect("Pull was sent");
        while let Some(reply) = replies.next::<PullReply, OciError>().await {
            match reply {
                Ok((reply, _)) => assert!(reply.result.is_none(), "it succeeded: {reply:?}"),
                Err(CallError::Interface(e)) => return e,
                Err(e) => panic!("not an io.cfsd.Oci error: {e}"),
            }
        }
        panic!("Pull ended without a result or an error")
    })
}
