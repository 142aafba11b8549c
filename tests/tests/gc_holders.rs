//! A collection that waits holds up nobody: while GC waits for a mount
//! that is not yet attached, tag changes still go through at once, and
//! GC gives up after `--gc-wait`, naming what it waited for.

use cfsd_tests::{
    Daemon,
    oci::{Layout, Written, everything_image},
    ocictl::{pull, succeeds},
};
use serde_json::json;

/// A detached mount of `image`, or `None` where the kernel refuses it.
fn detached_mount(daemon: &Daemon, image: &str) -> Option<std::os::fd::OwnedFd> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let params = cfsd_varlink::oci::MountParams {
        image: image.to_owned(),
        ..Default::default()
    };
    match runtime.block_on(async { daemon.client().await.mount(&params).await }) {
        Ok(fd) => Some(fd),
        Err(e) => {
            let reason = format!("{e:?}");
            assert!(
                reason.contains("Operation not permitted") || reason.contains("not implemented"),
                "Mount failed: {reason}"
            );
            eprintln!("SKIPPED: the kernel refused the mount: {reason}");
            None
        }
    }
}

#[test]
fn tags_go_through_while_gc_waits_for_an_unattached_mount() {
    let (layout, _) = Layout::single(&everything_image(), None);
    let written = Written::new(&layout);
    let daemon = Daemon::start_initialised(&["--gc-wait", "30"]);
    pull(&daemon, &[&written.archive(None), "everything"]);
    let Some(detached) = detached_mount(&daemon, "everything") else {
        return;
    };
    let mut gc = daemon.raw();
    gc.send_bytes(
        json!({"method": "io.cfsd.Repository.Gc"})
            .to_string()
            .as_bytes(),
    );
    // GC waits for the mount to be attached (up to 10 s). Tag changes made
    // meanwhile do not queue behind it: each one is answered while GC has
    // still not replied.
    for i in 0..5 {
        succeeds(&daemon, &["oci", "tag", "everything", &format!("t{i}")]);
        succeeds(&daemon, &["oci", "untag", &format!("t{i}")]);
        assert!(
            !gc.has_reply_waiting(),
            "GC finished while a mount was unattached"
        );
    }
    let mountpoint = daemon.dir().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    cfsd_tests::attach_mount(&detached, &mountpoint);
    let reply = gc.receive().expect("GC reply");
    let _ = rustix::mount::unmount(&mountpoint, rustix::mount::UnmountFlags::DETACH);
    assert!(reply["parameters"]["objectsRemoved"].is_u64(), "{reply}");
}

#[test]
fn gc_gives_up_after_its_wait_naming_the_mount_it_waited_for() {
    let (layout, _) = Layout::single(&everything_image(), None);
    let written = Written::new(&layout);
    let daemon = Daemon::start_initialised(&["--gc-wait", "1"]);
    pull(&daemon, &[&written.archive(None), "everything"]);
    let Some(_detached) = detached_mount(&daemon, "everything") else {
        return;
    };
    let reply = daemon
        .raw()
        .call(json!({"method": "io.cfsd.Repository.Gc"}));
    assert_eq!(
        reply["error"], "io.cfsd.Repository.RepositoryBusy",
        "{reply}"
    );
    let holders = reply["parameters"]["holders"].to_string();
    assert!(
        holders.contains("a mount of everything not yet attached"),
        "{reply}"
    );
}
