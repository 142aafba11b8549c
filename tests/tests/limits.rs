//! What one client can cost the daemon: a message is capped in bytes, the
//! connections in number (in all and per uid), and a client that hangs up
//! in the middle of a call takes its work with it, leaving no fd, file or
//! lock behind.

use std::{
    collections::BTreeSet,
    fs::File,
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use cfsd_tests::{
    Daemon, RawConnection, bin,
    oci::{Compression, Entry, Image, Layer, Layout, Written, noise},
    ocictl::{self, published},
    status_kib, stderr,
};
use cfsd_varlink::oci::{OciError, PullParams, PullReply};
use serde_json::{Value, json};

/// The unprivileged user the refused clients run as.
const NOBODY: u32 = 65534;

/// cfsd's default limit on one message.
const DEFAULT_MESSAGE_LIMIT: u64 = 1 << 20;

fn get_info() -> Value {
    json!({"method": "org.varlink.service.GetInfo"})
}

fn assert_served(reply: &Value) {
    assert!(reply["parameters"]["interfaces"].is_array(), "{reply}");
}

/// Where each of the daemon's open fds points.
fn open_fds(pid: u32) -> Vec<PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .collect()
}

/// The inodes of the sockets connected to clients through `socket`: in
/// `/proc/net/unix`, accepted sockets carry their listener's path.
fn client_sockets(socket: &Path) -> BTreeSet<String> {
    let table = std::fs::read_to_string("/proc/net/unix").unwrap();
    let path = socket.to_string_lossy();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let listening = fields.get(3) == Some(&"00010000");
            (fields.get(7) == Some(&&*path) && !listening)
                .then(|| format!("socket:[{}]", fields[6]))
        })
        .collect()
}

/// Wait until the daemon serves no client, and return what its fds point
/// at then.
fn quiet_fds(daemon: &Daemon) -> Vec<PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let fds = open_fds(daemon.pid());
        let clients = client_sockets(&daemon.socket());
        let serving: Vec<_> = fds
            .iter()
            .filter(|f| clients.contains(&*f.to_string_lossy()))
            .collect();
        if serving.is_empty() {
            return fds;
        }
        assert!(
            Instant::now() < deadline,
            "cfsd still serves clients: {serving:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Wait until the daemon serves no client and has no fd open that it
/// did not have `before` (which may hold some that came and went).
fn wait_for_fds(daemon: &Daemon, before: &[PathBuf]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = quiet_fds(daemon);
        let mut unmatched = before.to_vec();
        let extra: Vec<_> = now
            .iter()
            .filter(|fd| match unmatched.iter().position(|b| b == *fd) {
                Some(i) => {
                    unmatched.swap_remove(i);
                    false
                }
                None => true,
            })
            .collect();
        if extra.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "cfsd keeps fds open that it did not have before: {extra:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Every file (not directory) under `dir`, relative to it.
fn files(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                todo.push(entry.path());
            } else {
                out.insert(entry.path().strip_prefix(dir).unwrap().to_owned());
            }
        }
    }
    out
}

/// Run `cfsctl gc` and insist that it finishes: it takes the lock that an
/// import or delta still running would hold.
fn gc_finishes(daemon: &Daemon) {
    let mut gc = Command::new(bin("cfsctl"))
        .arg("--address")
        .arg(daemon.address())
        .arg("gc")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Some(status) = gc.try_wait().unwrap() {
            assert!(status.success(), "gc failed");
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let _ = gc.kill();
    let _ = gc.wait();
    panic!("gc still waits: the cancelled work holds the repository");
}

#[test]
fn a_message_over_the_limit_is_refused_without_being_buffered() {
    let daemon = Daemon::start_initialised(&[]);
    let mut other = daemon.raw();
    assert_served(&other.call(get_info()));
    let before = status_kib(daemon.pid(), "VmHWM");

    // 8 MiB without a NUL, from a thread: the daemon stops reading long
    // before the end, and then this side's writes fail.
    let stream = UnixStream::connect(daemon.socket()).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        let chunk = vec![b' '; 64 << 10];
        let mut sent = 0usize;
        while sent < 8 << 20 && writer.write_all(&chunk).is_ok() {
            sent += chunk.len();
        }
        sent
    });
    let mut conn = RawConnection::from_stream(stream);
    let reply = conn.receive().expect("an error reply before the close");
    assert_eq!(
        reply["error"], "io.cfsd.Repository.MessageTooLarge",
        "{reply}"
    );
    assert_eq!(reply["parameters"]["limit"], DEFAULT_MESSAGE_LIMIT);
    assert!(conn.receive().is_none(), "the connection stays open");
    let sent = sender.join().unwrap();
    assert!(sent < 8 << 20, "cfsd read all {sent} bytes");

    let grown = status_kib(daemon.pid(), "VmHWM").saturating_sub(before);
    assert!(grown < 4 << 10, "cfsd's peak memory grew by {grown} KiB");
    assert_served(&other.call(get_info()));
    assert_served(&daemon.raw().call(get_info()));
}

#[test]
fn the_message_limit_is_an_option_and_a_message_of_exactly_it_passes() {
    let daemon = Daemon::start(&["--max-message-size", "4096"]);
    let call = |name_len: usize| {
        let call = json!({
            "method": "org.varlink.service.GetInterfaceDescription",
            "parameters": {"interface": "x".repeat(name_len)}
        });
        call.to_string()
    };
    let overhead = call(0).len();
    let mut conn = daemon.raw();
    conn.send_bytes(call(4096 - overhead).as_bytes());
    let reply = conn.receive().unwrap();
    assert_eq!(
        reply["error"], "org.varlink.service.InterfaceNotFound",
        "{reply}"
    );

    // cfsd answers once it has read one byte too many, and may close the
    // connection before the rest arrives.
    conn.send_refusable(call(4097 - overhead).as_bytes());
    let reply = conn.receive().unwrap();
    assert_eq!(
        reply["error"], "io.cfsd.Repository.MessageTooLarge",
        "{reply}"
    );
    assert_eq!(reply["parameters"]["limit"], 4096);
    assert!(conn.receive().is_none());
    assert_served(&daemon.raw().call(get_info()));
}

/// A connection that was served a call. A slot is freed only once cfsd
/// has seen its last client hang up (`Daemon::start` connects once to see
/// the socket is up), so this tries again for a while.
fn served_connection(daemon: &Daemon) -> RawConnection {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut conn = daemon.raw();
        let reply = conn.call(get_info());
        if reply.get("error").is_none() {
            assert_served(&reply);
            return conn;
        }
        assert_eq!(reply["error"], "io.cfsd.Repository.TooManyConnections");
        assert!(Instant::now() < deadline, "no slot was freed: {reply}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_client_over_max_connections_is_told_and_a_freed_slot_serves_the_next() {
    let daemon = Daemon::start(&["--max-connections", "2"]);
    let mut first = served_connection(&daemon);
    let mut second = served_connection(&daemon);

    let mut third = daemon.raw();
    let reply = third.call(get_info());
    assert_eq!(
        reply["error"], "io.cfsd.Repository.TooManyConnections",
        "{reply}"
    );
    assert_eq!(reply["parameters"]["limit"], 2);
    assert_eq!(reply["parameters"]["uid"], 0);
    assert_eq!(reply["parameters"]["perUid"], false);
    assert!(
        third.receive().is_none(),
        "a refused client stays connected"
    );

    // The clients served are unaffected.
    assert_served(&first.call(get_info()));
    drop(first);
    // The slot is free once cfsd has seen the hang-up.
    served_connection(&daemon);
    assert_served(&second.call(get_info()));
}

#[test]
fn cfsctl_over_the_limit_says_why() {
    let daemon = Daemon::start(&["--max-connections", "1"]);
    let _holder = served_connection(&daemon);
    // Whatever interface the refused call is of.
    for args in [&["info"][..], &["oci", "images"]] {
        let out = daemon.cfsctl(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains("cfsd serves too many connections (1 in all); try again later"),
            "{args:?}: {err}"
        );
    }
}

/// `count` connections made by nobody, each answering one GetInfo call,
/// held open until the returned child's stdin is closed.
fn connections_as_nobody(daemon: &Daemon, count: usize) -> (Child, Vec<Value>) {
    let script = r#"
import json, socket, sys
held = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    s.sendall(b'{"method": "org.varlink.service.GetInfo"}\0')
    buf = b""
    while b"\0" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    print(buf.split(b"\0")[0].decode() or "null", flush=True)
    held.append(s)
sys.stdin.read()
"#;
    let mut child = Command::new("setpriv")
        .arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg("--clear-groups")
        .args(["/usr/bin/python3", "-c", script])
        .arg(daemon.socket())
        .arg(count.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running python3 under setpriv");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let replies = (0..count)
        .map(|_| serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap())
        .collect();
    (child, replies)
}

fn release(mut child: Child) {
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
}

#[test]
fn one_unprivileged_uid_cannot_take_every_slot() {
    let daemon =
        Daemon::start_for_nobody(&["--max-connections", "8", "--max-connections-per-uid", "3"]);
    // No slot may still be taken by the probe that saw the socket up.
    quiet_fds(&daemon);
    let (nobody, replies) = connections_as_nobody(&daemon, 4);
    for reply in &replies[..3] {
        assert_served(reply);
    }
    let refused = &replies[3];
    assert_eq!(refused["error"], "io.cfsd.Repository.TooManyConnections");
    assert_eq!(refused["parameters"]["limit"], 3);
    assert_eq!(refused["parameters"]["uid"], NOBODY);
    assert_eq!(refused["parameters"]["perUid"], true);
    // Root is not counted per uid, and slots remain.
    let mut root: Vec<RawConnection> = (0..4).map(|_| daemon.raw()).collect();
    for conn in &mut root {
        assert_served(&conn.call(get_info()));
    }
    release(nobody);
}

#[test]
fn root_keeps_a_reserve_that_unprivileged_clients_cannot_fill() {
    let daemon =
        Daemon::start_for_nobody(&["--max-connections", "8", "--max-connections-per-uid", "8"]);
    // No slot may still be taken by the probe that saw the socket up.
    quiet_fds(&daemon);
    let (nobody, replies) = connections_as_nobody(&daemon, 8);
    // An eighth of the slots is reserved: nobody gets 7 of 8.
    for reply in &replies[..7] {
        assert_served(reply);
    }
    assert_eq!(replies[7]["error"], "io.cfsd.Repository.TooManyConnections");
    assert_eq!(replies[7]["parameters"]["limit"], 7);
    assert_eq!(replies[7]["parameters"]["perUid"], false);
    let mut root = daemon.raw();
    assert_served(&root.call(get_info()));
    release(nobody);
}

/// An image whose pull takes a while: several layers of data that
/// compresses badly, gzipped.
fn large_image(layers: u64, mib: usize) -> Image {
    Image::new(
        (0..layers)
            .map(|i| {
                Layer::new(
                    Compression::Gzip,
                    vec![
                        Entry::dir("usr"),
                        Entry::file(&format!("usr/big{i}"), noise(100 + i, mib << 20)),
                    ],
                )
            })
            .collect(),
    )
}

#[test]
fn a_client_that_hangs_up_during_a_pull_leaves_nothing_behind() {
    let daemon = Daemon::start_initialised(&[]);
    let (layout, _) = Layout::single(&large_image(4, 8), None);
    let written = Written::new(&layout);
    let archive = written.archive_path();
    // A first pull opens what the repository keeps open from then on (its
    // objects directory), so that it is not taken for a leak.
    let (warm, _) = Layout::single(&large_image(1, 1), None);
    let warm = Written::new(&warm);
    ocictl::pull(&daemon, &[&warm.archive(None), "warm"]);
    // and leaves garbage of its own (the streams finalising rewrites).
    gc_finishes(&daemon);
    let fds_before = quiet_fds(&daemon);
    let files_before = files(&daemon.repo());

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = daemon.client().await;
        let params = PullParams {
            transport: "oci-archive".to_owned(),
            tag: Some("big".to_owned()),
            jobs: Some(1),
            ..Default::default()
        };
        let source = File::open(&archive).unwrap();
        let mut replies = client.pull(&params, source.into()).await.unwrap();
        let (first, _) = replies
            .next::<PullReply, OciError>()
            .await
            .expect("a first reply")
            .expect("progress, not an error");
        assert!(first.progress.is_some(), "{first:?}");
        // Hang up here, with the import under way.
    });
    drop(runtime);

    wait_for_fds(&daemon, &fds_before);
    gc_finishes(&daemon);
    assert_eq!(files(&daemon.repo()), files_before, "the pull left files");
    let tags = published(&daemon.repo()).tags;
    assert_eq!(
        tags.keys().collect::<Vec<_>>(),
        ["warm"],
        "the pull was tagged"
    );

    let pulled = ocictl::pull(
        &daemon,
        &[&format!("oci-archive:{}", archive.display()), "big"],
    );
    assert_eq!(pulled.str("tag"), "big");
    assert!(!pulled.bool("alreadyPresent"));
}

#[test]
fn a_client_that_hangs_up_during_create_delta_cancels_it() {
    let daemon = Daemon::start_initialised(&[]);
    let base = Layer::new(
        Compression::Gzip,
        vec![
            Entry::dir("usr"),
            Entry::file("usr/base", noise(1, 1 << 20)),
        ],
    );
    let source = Image::new(vec![base.clone()]);
    let mut target_layers = vec![base];
    target_layers.extend(large_image(4, 1).layers);
    let target = Image::new(target_layers);
    let mut written = Vec::new();
    for (image, tag) in [(&source, "src"), (&target, "dst")] {
        let w = Written::new(&Layout::single(image, None).0);
        ocictl::pull(&daemon, &[&w.archive(None), tag]);
        written.push(w);
    }
    let fds_before = quiet_fds(&daemon);
    let out = daemon.dir().join("delta.tar");
    let dest = format!("oci-archive:{}", out.display());

    let mut cfsctl = Command::new(bin("cfsctl"))
        .arg("--address")
        .arg(daemon.address())
        .args(["oci", "delta", "create", "src", "dst", &dest, "--jobs", "1"])
        .spawn()
        .unwrap();
    // The call is under way once the daemon holds the output's fd.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !open_fds(daemon.pid()).contains(&out) {
        assert!(Instant::now() < deadline, "cfsd never got the output fd");
        assert!(cfsctl.try_wait().unwrap().is_none(), "cfsctl ended early");
        thread::sleep(Duration::from_millis(10));
    }
    cfsctl.kill().unwrap();
    cfsctl.wait().unwrap();

    gc_finishes(&daemon);
    wait_for_fds(&daemon, &fds_before);
    // Had the work run on, it would have written the whole archive
    // before releasing the lock that gc waited for.
    assert_eq!(
        std::fs::metadata(&out).unwrap().len(),
        0,
        "the delta ran to the end"
    );

    let again = daemon.dir().join("again.tar");
    let made = ocictl::json(
        &daemon,
        &[
            "oci",
            "delta",
            "create",
            "src",
            "dst",
            &format!("oci-archive:{}", again.display()),
        ],
    );
    assert_eq!(made["layersChanged"], 4, "{made}");
    assert!(std::fs::metadata(&again).unwrap().len() > 0);
}

/// Wait for `conn` to be closed by the daemon, with nothing sent first.
/// The test's own read timeout is 60 s: ending well before it means the
/// daemon closed the connection.
fn closed_without_reply(conn: &mut RawConnection, what: &str) {
    let start = Instant::now();
    assert_eq!(conn.receive(), None, "{what}: a reply came");
    assert!(
        start.elapsed() < Duration::from_secs(40),
        "{what}: only the test's read timeout ended the wait"
    );
}

#[test]
fn a_silent_client_is_closed_after_the_client_timeout_and_a_calling_one_is_not() {
    let daemon = Daemon::start(&["--client-timeout", "2"]);
    let mut calling = served_connection(&daemon);
    let mut silent = served_connection(&daemon);
    // Calls every half second for longer than the timeout in all.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        assert_served(&calling.call(get_info()));
        thread::sleep(Duration::from_millis(500));
    }
    closed_without_reply(&mut silent, "the silent client");
    assert_served(&calling.call(get_info()));
}

#[test]
fn a_turned_away_client_that_never_calls_is_closed_and_such_clients_are_bounded() {
    // One slot, so at most one client is kept waiting to be told.
    let daemon = Daemon::start(&["--max-connections", "1"]);
    let mut holder = served_connection(&daemon);
    let mut mute = daemon.raw();
    // While the mute client holds the one refusal, the next is closed at
    // once, unanswered, even though it calls.
    let mut next = daemon.raw();
    next.send_refusable(get_info().to_string().as_bytes());
    closed_without_reply(&mut next, "a client beyond the refusals");
    closed_without_reply(&mut mute, "the mute client");
    // The refusal is free again: the next client over the limit is told.
    let mut told = daemon.raw();
    let reply = told.call(get_info());
    assert_eq!(
        reply["error"], "io.cfsd.Repository.TooManyConnections",
        "{reply}"
    );
    assert_served(&holder.call(get_info()));
}
