//! Starting cfsd the ways systemd and cfsctl start it: under socket
//! activation (`systemd-socket-activate` hands it a listening socket on
//! fd 3), and on an already connected socket on fd 3 (the private daemon
//! of `cfsctl --repo`).

use std::{
    fs::File,
    os::{fd::OwnedFd, unix::net::UnixStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use cfsd_tests::{bin, filesystem_has_verity, stderr, stdout};
use cfsd_varlink::{Address, Client, repository::InitParams};
use command_fds::{CommandFdExt, FdMapping};
use tempfile::TempDir;

/// How long cfsd may take to exit once it has no reason to live.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The algorithm a repository gets when Init is not told one.
const DEFAULT_ALGORITHM: &str = "fsverity-sha512-12";

/// A child process that is killed if the test fails before it exits.
struct Guarded {
    child: Child,
}

impl Guarded {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait at most `timeout` for the process to exit by itself.
    async fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("waiting for the child") {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    fn is_running(&mut self) -> bool {
        self.child
            .try_wait()
            .expect("waiting for the child")
            .is_none()
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `systemd-socket-activate`, which these tests need: they fail rather
/// than skip when it is missing.
fn socket_activate() -> PathBuf {
    let name = "systemd-socket-activate";
    let path_dirs = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(["/usr/bin".into(), "/bin".into(), "/lib/systemd".into()])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed, and the socket activation tests need it: \
                 install it (Debian/Ubuntu: `apt-get install systemd`; CI installs it)"
            )
        })
}

/// The executable that process `pid` runs now.
fn exe_of(pid: u32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).expect("reading /proc/PID/exe")
}

/// Wait until systemd-socket-activate listens on `path`, without
/// connecting to it: a connection would activate the daemon. The socket
/// file appears at bind(), before listen(); the "Listening on" line is
/// logged after listen(), so connections are accepted from then on.
fn wait_until_listening(path: &Path, activator: &mut Guarded, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if path.exists() && read_log(log).contains("Listening on") {
            return;
        }
        assert!(
            activator.is_running(),
            "systemd-socket-activate exited before listening:\n{}",
            read_log(log)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "systemd-socket-activate did not listen on {}:\n{}",
        path.display(),
        read_log(log)
    );
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("(no log: {e})"))
}

/// Assert what this machine and repository promise about fs-verity: when
/// it is not enforced, the daemon says why, naming fs-verity.
fn assert_verity_reported(verity: &cfsd_varlink::repository::Verity) {
    if verity.enforced {
        assert_eq!(verity.reason, None, "enforced verity carries no reason");
    } else {
        let reason = verity
            .reason
            .as_deref()
            .expect("verity is not enforced, so the daemon must say why");
        assert!(
            reason.contains("fs-verity"),
            "the reason should name fs-verity: {reason:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn socket_activated_daemon_serves_clients_then_exits_when_idle() {
    let activate = socket_activate();
    let cfsd = bin("cfsd");
    let dir = TempDir::with_prefix("cfsd-activation").unwrap();
    let socket = dir.path().join("act.sock");
    let repo = dir.path().join("repo");
    let log = dir.path().join("cfsd.log");

    let mut daemon = Guarded {
        child: Command::new(&activate)
            .arg("--listen")
            .arg(&socket)
            .arg("--setenv=CFSD_LOG=debug")
            .arg(&cfsd)
            .arg("--repo")
            .arg(&repo)
            .arg("--idle-exit")
            .arg("2")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("spawning systemd-socket-activate"),
    };
    wait_until_listening(&socket, &mut daemon, &log);
    // Nothing has connected yet, so cfsd has not been started.
    assert_eq!(
        exe_of(daemon.pid()),
        activate.canonicalize().unwrap(),
        "cfsd must only start on the first connection"
    );

    let address = Address::Unix(socket.clone());
    let mut first = Client::connect(&address).await.expect("connecting");
    let init = first
        .init(&InitParams { algorithm: None })
        .await
        .expect("Init");
    assert!(init.created, "a fresh directory is created by Init");
    assert_eq!(init.info.algorithm, DEFAULT_ALGORITHM);

    // The first connection made systemd-socket-activate exec cfsd in place.
    assert_eq!(
        exe_of(daemon.pid()),
        cfsd.canonicalize().unwrap(),
        "systemd-socket-activate should have exec'd cfsd:\n{}",
        read_log(&log)
    );

    let info = first.info().await.expect("Info").info;
    assert_eq!(info.algorithm, DEFAULT_ALGORITHM);
    assert_eq!(info.path, repo.display().to_string());
    assert_verity_reported(&info.verity);
    let supported = filesystem_has_verity(dir.path());
    assert_eq!(
        info.verity.enforced, supported,
        "the daemon's fs-verity claim differs from what the filesystem supports"
    );

    // A second connection, while the first is still open, is served by
    // the same process: it listens on the socket it was handed.
    let mut second = Client::connect(&address).await.expect("connecting again");
    let service = second.service_info().await.expect("GetInfo");
    for interface in ["org.varlink.service", "io.cfsd.Repository"] {
        assert!(
            service.interfaces.iter().any(|i| i == interface),
            "GetInfo does not list {interface}: {:?}",
            service.interfaces
        );
    }
    assert_eq!(second.info().await.expect("Info").info, info);

    // And so is cfsctl.
    let out = Command::new(bin("cfsctl"))
        .arg("--address")
        .arg(address.to_string())
        .args(["--json", "info"])
        .output()
        .expect("running cfsctl");
    assert!(out.status.success(), "cfsctl info: {}", stderr(&out));
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&out)).expect("cfsctl --json prints JSON");
    assert_eq!(json["info"]["algorithm"], DEFAULT_ALGORITHM);
    assert_eq!(json["info"]["verity"]["enforced"], supported);

    assert!(
        daemon.is_running(),
        "cfsd exited while clients were connected"
    );
    assert_eq!(exe_of(daemon.pid()), cfsd.canonicalize().unwrap());
    let connections = read_log(&log).matches("client connected").count();
    assert_eq!(
        connections,
        3,
        "one cfsd process should have served all three connections:\n{}",
        read_log(&log)
    );

    // Once every client is gone, --idle-exit 2 ends the process cleanly.
    drop(first);
    drop(second);
    let status = daemon.wait(EXIT_TIMEOUT).await.unwrap_or_else(|| {
        panic!(
            "cfsd started with --idle-exit 2 was still running {EXIT_TIMEOUT:?} after its \
             last client left:\n{}",
            read_log(&log)
        )
    });
    assert!(
        status.success(),
        "cfsd exited with {status}:\n{}",
        read_log(&log)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn daemon_on_a_connected_socket_serves_it_and_exits_when_it_closes() {
    let dir = TempDir::with_prefix("cfsd-connected").unwrap();
    let repo = dir.path().join("repo");
    let log = dir.path().join("cfsd.log");
    let (ours, theirs) = UnixStream::pair().unwrap();

    let mut command = Command::new(bin("cfsd"));
    command
        .arg("--repo")
        .arg(&repo)
        .env("CFSD_LOG", "debug")
        // Not socket activation: only the connected fd 3 counts.
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap());
    command
        .fd_mappings(vec![FdMapping {
            parent_fd: OwnedFd::from(theirs),
            child_fd: 3,
        }])
        .expect("mapping the socket to fd 3");
    let mut daemon = Guarded {
        child: command.spawn().expect("spawning cfsd"),
    };
    // The command still holds the parent's copy of the daemon's end; close
    // it, or the daemon would never see its client hang up.
    drop(command);

    ours.set_nonblocking(true).unwrap();
    let mut client =
        Client::from_stream(tokio::net::UnixStream::from_std(ours).unwrap()).expect("client");
    let service = client.service_info().await.expect("GetInfo");
    assert!(
        service.interfaces.iter().any(|i| i == "io.cfsd.Repository"),
        "GetInfo does not list io.cfsd.Repository: {:?}",
        service.interfaces
    );
    let init = client
        .init(&InitParams { algorithm: None })
        .await
        .expect("Init");
    assert!(init.created);
    let info = client.info().await.expect("Info").info;
    assert_eq!(info.algorithm, DEFAULT_ALGORITHM);
    assert_eq!(info.path, repo.display().to_string());
    assert_verity_reported(&info.verity);
    assert!(
        daemon.is_running(),
        "cfsd exited while its client was connected"
    );

    drop(client);
    let status = daemon.wait(EXIT_TIMEOUT).await.unwrap_or_else(|| {
        panic!(
            "cfsd on a connected socket still ran {EXIT_TIMEOUT:?} after its client hung up:\n{}",
            read_log(&log)
        )
    });
    assert!(
        status.success(),
        "cfsd exited with {status}:\n{}",
        read_log(&log)
    );
    assert!(repo.is_dir(), "Init created no repository directory");
}
