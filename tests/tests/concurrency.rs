//! One client cannot hold up another: each connection is served by its
//! own task, and disk work runs on blocking threads.

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    time::Duration,
};

use cfsd_tests::Daemon;
use serde_json::json;

/// A call whose reply is a few KiB, so that unread replies soon fill the
/// socket buffers and the daemon's writes to that client block.
fn large_reply_call() -> Vec<u8> {
    let mut call = json!({
        "method": "org.varlink.service.GetInterfaceDescription",
        "parameters": {"interface": "io.cfsd.Repository"}
    })
    .to_string()
    .into_bytes();
    call.push(0);
    call
}

#[test]
fn a_client_that_never_reads_does_not_stall_others() {
    let daemon = Daemon::start_initialised(&[]);

    // Pipeline far more replies than the kernel buffers hold (several
    // MiB), and never read one.
    let mut hog = UnixStream::connect(daemon.socket()).unwrap();
    hog.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let call = large_reply_call();
    let mut sent = 0;
    for _ in 0..4000 {
        match hog.write_all(&call) {
            Ok(()) => sent += 1,
            // Our own send buffer is full too: the daemon stopped reading
            // because it cannot write. Exactly the state wanted.
            Err(_) => break,
        }
    }
    assert!(sent > 100, "could only send {sent} calls");

    // A slowloris: half a message, never finished.
    let mut partial = UnixStream::connect(daemon.socket()).unwrap();
    partial.write_all(b"{\"method\": \"io.cfsd.Rep").unwrap();

    // Others are answered, over and over, on new and old connections.
    let mut other = daemon.raw();
    for _ in 0..20 {
        let reply = other.call(json!({"method": "io.cfsd.Repository.Info"}));
        assert!(reply["parameters"]["info"].is_object(), "{reply}");
        let mut fresh = daemon.raw();
        let reply = fresh.call(json!({"method": "org.varlink.service.GetInfo"}));
        assert!(reply["parameters"]["interfaces"].is_array(), "{reply}");
    }

    // The hog's replies were kept, in order, not dropped: once it reads,
    // it gets them.
    hog.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut first = vec![0u8; 64];
    hog.read_exact(&mut first).unwrap();
    assert!(
        String::from_utf8_lossy(&first).contains("parameters"),
        "{}",
        String::from_utf8_lossy(&first)
    );
}

#[test]
fn a_long_call_does_not_delay_another_clients_calls() {
    let daemon = Daemon::start_initialised(&[]);
    seed_objects(&daemon, 96, 4 << 20);

    // A full fsck reads and hashes every object: hundreds of MiB here.
    let mut slow = daemon.raw();
    slow.send_bytes(
        json!({"method": "io.cfsd.Repository.Fsck"})
            .to_string()
            .as_bytes(),
    );

    // While it runs, another client makes call after call.
    let mut fast = daemon.raw();
    let mut answered = 0;
    while !slow.has_reply_waiting() {
        let reply = fast.call(json!({"method": "io.cfsd.Repository.Info"}));
        assert_eq!(reply["parameters"]["info"]["objects"]["count"], 96);
        answered += 1;
    }
    assert!(
        answered >= 3,
        "only {answered} calls were answered while fsck ran: the long call held others up"
    );
    let report = slow.receive().expect("fsck reply");
    assert_eq!(report["parameters"]["objectsChecked"], 96, "{report}");
    // The seeded objects are not named after their contents.
    assert_eq!(report["parameters"]["objectsCorrupted"], 96, "{report}");
}

/// Put `count` objects of `size` bytes into the repository's object
/// store, named as objects are but not after their contents.
fn seed_objects(daemon: &Daemon, count: usize, size: usize) {
    let objects = daemon.repo().join("objects");
    let mut data = vec![0u8; size];
    for i in 0..count {
        data[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let shard = objects.join(format!("{:02x}", i));
        std::fs::create_dir_all(&shard).unwrap();
        std::fs::write(shard.join("ab".repeat(63)), &data).unwrap();
    }
}
