//! What cfsd logs under systemd: with stderr the stream `$JOURNAL_STREAM`
//! names, each answered call is one event with its level and fields,
//! sent natively to journald when its socket is there and as a
//! `<N>`-prefixed stderr line when it is not.
//!
//! cfsd runs in a mount namespace of its own with a fresh /run, so that
//! the journal socket is the test's own datagram socket (bound over
//! /run/systemd/journal) or absent, whatever the host runs.

use std::{
    collections::BTreeMap,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    time::Duration,
};

use cfsd_tests::{
    Daemon,
    oci::{Compression, Layout, Written, small_image},
    ocictl::pull,
};

/// Start cfsd with stderr written to `log` and `$JOURNAL_STREAM` naming
/// it, and with `journal` (a directory holding a socket named `socket`)
/// as /run/systemd/journal, or no journal at all.
fn start(log: &Path, journal: Option<&Path>) -> Daemon {
    let bind = match journal {
        Some(dir) => format!(
            "mkdir -p /run/systemd/journal && mount --bind {} /run/systemd/journal && ",
            dir.display()
        ),
        None => String::new(),
    };
    let script = format!(
        "mount -t tmpfs tmpfs /run && {bind}exec 2>{log} && \
         export JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) && exec \"$@\"",
        log = log.display()
    );
    Daemon::start_under(&["unshare", "--mount", "sh", "-c", &script, "sh"], &[])
}

/// Init, one pull, and one call refused (Inspect of an image the
/// repository lacks); the pull's manifest digest and image id.
fn pull_and_refuse(daemon: &Daemon) -> (String, String) {
    let out = daemon.cfsctl(&["init"]);
    assert!(out.status.success());
    let (layout, built) = Layout::single(&small_image(Compression::Gzip, "logged\n"), None);
    let written = Written::new(&layout);
    let pulled = pull(daemon, &[&written.archive(None), "logged"]);
    let digest = pulled.str("manifestDigest").to_owned();
    assert_eq!(digest, format!("sha256:{}", built.manifest_hex()));
    let refused = daemon.cfsctl(&["oci", "inspect", "missing"]);
    assert!(!refused.status.success());
    (digest, pulled.str("imageId").to_owned())
}

#[test]
fn journal_stream_lines_carry_priorities_and_fields() {
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("stderr");
    let mut daemon = start(&log, None);
    let (digest, image_id) = pull_and_refuse(&daemon);
    daemon.kill();
    let text = std::fs::read_to_string(&log).unwrap();
    let answered = text
        .lines()
        .find(|l| l.starts_with("<6>call answered") && l.contains("method=\"io.cfsd.Oci.Pull\""))
        .unwrap_or_else(|| panic!("no <6> line for the pull:\n{text}"));
    for field in [
        "peer_uid=0".to_owned(),
        format!("manifest_digest=\"{digest}\""),
        format!("image_id=\"{image_id}\""),
        "duration_ms=".to_owned(),
        "bytes_new=".to_owned(),
    ] {
        assert!(answered.contains(&field), "{field} missing: {answered}");
    }
    let refused = text
        .lines()
        .find(|l| l.starts_with("<4>call failed") && l.contains("method=\"io.cfsd.Oci.Inspect\""))
        .unwrap_or_else(|| panic!("no <4> line for the refused call:\n{text}"));
    assert!(
        refused.contains("error=\"io.cfsd.Oci.ImageNotFound\""),
        "{refused}"
    );
    assert!(refused.contains("peer_uid=0"), "{refused}");
    assert!(
        text.lines()
            .all(|l| l.starts_with('<') && !l.contains('\x1b')),
        "a line without a priority, or with colours:\n{text}"
    );
}

/// Parse one native journal datagram: `KEY=value` lines, or `KEY`, a
/// little-endian u64 length, the value and a newline for values that hold
/// newlines (systemd's JOURNAL_NATIVE_PROTOCOL).
fn parse_entry(mut data: &[u8]) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    while !data.is_empty() {
        let end = data
            .iter()
            .position(|b| *b == b'\n')
            .expect("a field ends in a newline");
        let line = &data[..end];
        data = &data[end + 1..];
        let (key, value) = match line.iter().position(|b| *b == b'=') {
            Some(eq) => (&line[..eq], line[eq + 1..].to_vec()),
            None => {
                let len = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
                let value = data[8..8 + len].to_vec();
                data = &data[8 + len + 1..];
                (line, value)
            }
        };
        let key = String::from_utf8(key.to_vec()).unwrap();
        fields.insert(key, String::from_utf8(value).unwrap());
    }
    fields
}

#[test]
fn native_journal_gets_structured_fields() {
    let scratch = tempfile::tempdir().unwrap();
    let journal: PathBuf = scratch.path().join("journal");
    std::fs::create_dir(&journal).unwrap();
    let socket = UnixDatagram::bind(journal.join("socket")).unwrap();
    // Drained as journald does: a full queue (net.unix.max_dgram_qlen,
    // often 10) would block the daemon's next log event.
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let receiver = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut entries = Vec::new();
            let mut buf = vec![0; 1 << 16];
            loop {
                match socket.recv(&mut buf) {
                    Ok(n) => entries.push(parse_entry(&buf[..n])),
                    Err(_) if done.load(std::sync::atomic::Ordering::SeqCst) => break entries,
                    Err(_) => {}
                }
            }
        })
    };
    let log = scratch.path().join("stderr");
    let mut daemon = start(&log, Some(&journal));
    let (digest, image_id) = pull_and_refuse(&daemon);
    daemon.kill();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let entries = receiver.join().unwrap();
    let entry = |message: &str, method: &str| {
        entries
            .iter()
            .find(|e| {
                e.get("MESSAGE").is_some_and(|m| m == message)
                    && e.get("METHOD").is_some_and(|m| m == method)
            })
            .unwrap_or_else(|| panic!("no {message:?} entry for {method} in {entries:#?}"))
    };
    let answered = entry("call answered", "io.cfsd.Oci.Pull");
    assert_eq!(answered["PRIORITY"], "6");
    assert_eq!(answered["PEER_UID"], "0");
    assert_eq!(answered["MANIFEST_DIGEST"], digest);
    assert_eq!(answered["IMAGE_ID"], image_id);
    assert!(
        answered["DURATION_MS"].parse::<u64>().is_ok(),
        "{answered:?}"
    );
    assert!(
        answered["BYTES_NEW"].parse::<u64>().unwrap() > 0,
        "{answered:?}"
    );
    let refused = entry("call failed", "io.cfsd.Oci.Inspect");
    assert_eq!(refused["PRIORITY"], "4");
    assert_eq!(refused["ERROR"], "io.cfsd.Oci.ImageNotFound");
    assert_eq!(refused["PEER_UID"], "0");
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(
        !stderr.contains("call answered"),
        "logged to stderr too:\n{stderr}"
    );
}
