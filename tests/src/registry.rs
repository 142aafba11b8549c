//! A real registry for the `docker://` tests: Debian's `docker-registry`
//! (CNCF distribution) on 127.0.0.1, on a free port, over HTTPS with a CA
//! made here with `openssl` and htpasswd users, or over plain HTTP; images
//! pushed to it with `skopeo copy`; and a TCP proxy that cuts connections
//! mid-blob. Nothing here reaches beyond 127.0.0.0/8.

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

/// The user the HTTPS registry knows, and its password.
pub const USER: &str = "alice";
/// [`USER`]'s password.
pub const PASSWORD: &str = "wonderland";

/// Return from the test, through [`crate::skip`] (a failure unless
/// skipping is allowed), when [`available`] says the registry tools are
/// missing.
#[macro_export]
macro_rules! need_registry {
    () => {
        if !$crate::registry::available() {
            $crate::skip(
                "docker-registry, htpasswd, skopeo or openssl is missing (scripts/setup-deps)",
            );
            return;
        }
    };
}

/// Whether the tools the registry tests need are installed; they are
/// skipped, saying so, where they are not (scripts/setup-deps installs
/// them).
pub fn available() -> bool {
    crate::installed(&["docker-registry", "htpasswd", "skopeo", "openssl"])
}

/// A running registry; stopped and removed on drop.
#[derive(Debug)]
pub struct Registry {
    dir: tempfile::TempDir,
    port: u16,
    tls: bool,
    child: Option<Child>,
}

impl Registry {
    /// A registry over HTTPS, its certificate signed by a CA of its own,
    /// that admits [`USER`] only.
    pub fn start_https() -> Self {
        Self::start(true)
    }

    /// An anonymous registry over plain HTTP.
    pub fn start_http() -> Self {
        Self::start(false)
    }

    fn start(tls: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cfsd-registry")
            .tempdir()
            .unwrap();
        let port = free_port();
        let mut registry = Registry {
            dir,
            port,
            tls,
            child: None,
        };
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            registry.storage().display()
        );
        if tls {
            registry.make_certificates();
            let htpasswd = run_output(Command::new("htpasswd").args(["-Bbn", USER, PASSWORD]));
            std::fs::write(registry.path("htpasswd"), htpasswd).unwrap();
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: cfsd-test\n    path: {}\n",
                registry.path("server.crt").display(),
                registry.path("server.key").display(),
                registry.path("htpasswd").display(),
            ));
        }
        std::fs::write(registry.path("config.yml"), config).unwrap();
        registry.spawn();
        registry
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.path("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.path("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting docker-registry");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "the registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop the registry: it vanishes, and its port refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The registry's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A file in the registry's scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Where the registry keeps its blobs and repositories.
    pub fn storage(&self) -> PathBuf {
        self.path("storage")
    }

    /// The blob file the registry serves for `digest` (`sha256:<hex>`).
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The blob files of repository `name` (its layers and config),
    /// largest first.
    pub fn blob_files(&self, name: &str) -> Vec<PathBuf> {
        let links = self
            .storage()
            .join("docker/registry/v2/repositories")
            .join(name)
            .join("_layers/sha256");
        let mut files: Vec<PathBuf> = std::fs::read_dir(links)
            .unwrap()
            .map(|e| {
                self.blob_file(&format!(
                    "sha256:{}",
                    e.unwrap().file_name().to_string_lossy()
                ))
            })
            .collect();
        files.sort_by_key(|f| std::cmp::Reverse(std::fs::metadata(f).unwrap().len()));
        files
    }

    /// A containers-certs.d base directory trusting this registry's CA.
    pub fn certs_dir(&self) -> PathBuf {
        let base = self.path("certs.d");
        let host = base.join(self.host());
        std::fs::create_dir_all(&host).unwrap();
        std::fs::copy(self.path("ca.crt"), host.join("ca.crt")).unwrap();
        base
    }

    /// An auth.json holding `user:password` for this registry.
    pub fn auth_file(&self, user: &str, password: &str) -> PathBuf {
        let encoded = openssl::base64::encode_block(format!("{user}:{password}").as_bytes());
        let path = self.path(&format!("auth-{user}-{password}.json"));
        let body = serde_json::json!({"auths": {self.host(): {"auth": encoded}}});
        std::fs::write(&path, body.to_string()).unwrap();
        path
    }

    /// A policy file with `body` (containers-policy.json).
    pub fn policy(&self, name: &str, body: &serde_json::Value) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, body.to_string()).unwrap();
        path
    }

    /// The cfsd options for pulls from this registry: its CA trusted, a
    /// policy that admits anything, no registries.conf.
    pub fn daemon_args(&self) -> Vec<String> {
        let accept = serde_json::json!({"default": [{"type": "insecureAcceptAnything"}]});
        let mut args = vec![
            "--policy".to_owned(),
            self.policy("accept.json", &accept).display().to_string(),
            "--registries-conf".to_owned(),
            self.path("no-registries.conf").display().to_string(),
        ];
        if self.tls {
            args.push("--certs-dir".to_owned());
            args.push(self.certs_dir().display().to_string());
        }
        args
    }

    /// An initialised daemon with [`Self::daemon_args`] whose socket
    /// nobody may reach, `admins` being its admin group: for calls made
    /// in the shoes of an unprivileged peer or of an admin.
    pub fn daemon_for_nobody(&self, admins: u32) -> crate::Daemon {
        let admins = admins.to_string();
        let args = self.daemon_args();
        let mut all: Vec<&str> = vec!["--allow-group", &admins];
        all.extend(args.iter().map(String::as_str));
        let daemon = crate::Daemon::start_for_nobody(&all);
        assert!(daemon.cfsctl(&["init"]).status.success());
        daemon
    }

    /// `skopeo copy [EXTRA] SOURCE docker://HOST/NAME`, with this
    /// registry's CA and credentials given as flags (no global state).
    pub fn push(&self, source: &str, name: &str, extra: &[&str]) {
        run_output(&mut self.push_command(source, name, extra));
    }

    /// The `skopeo copy` of [`Registry::push`], not yet run, for a caller
    /// that adds to its environment (a GNUPGHOME to sign with).
    pub fn push_command(&self, source: &str, name: &str, extra: &[&str]) -> Command {
        let mut command = Command::new("skopeo");
        command.args(["copy", "--quiet"]).args(extra);
        if self.tls {
            let certs = self.path("skopeo-certs");
            std::fs::create_dir_all(&certs).unwrap();
            std::fs::copy(self.path("ca.crt"), certs.join("ca.crt")).unwrap();
            command
                .arg("--dest-cert-dir")
                .arg(&certs)
                .arg("--dest-creds")
                .arg(format!("{USER}:{PASSWORD}"));
        } else {
            command.arg("--dest-tls-verify=false");
        }
        command
            .arg(source)
            .arg(format!("docker://{}/{name}", self.host()));
        command
    }

    /// The manifest digest the registry's tag `name:tag` points to, read
    /// from its storage.
    pub fn tag_digest(&self, name: &str, tag: &str) -> String {
        let link = self
            .storage()
            .join("docker/registry/v2/repositories")
            .join(name)
            .join("_manifests/tags")
            .join(tag)
            .join("current/link");
        std::fs::read_to_string(link).unwrap().trim().to_owned()
    }

    /// The requests the registry has logged, one line each.
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("registry.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"GET /v2") || l.contains("\"HEAD /v2"))
            .map(str::to_owned)
            .collect()
    }

    fn make_certificates(&self) {
        let p = |name: &str| self.path(name).display().to_string();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        run_output(
            Command::new("openssl")
                .args(["req", "-x509", "-nodes", "-days", "2"])
                .args(ec)
                .args(["-subj", "/CN=cfsd test CA", "-keyout", &p("ca.key")])
                .args(["-out", &p("ca.crt")]),
        );
        run_output(
            Command::new("openssl")
                .args(["req", "-nodes"])
                .args(ec)
                .args(["-subj", "/CN=127.0.0.1", "-keyout", &p("server.key")])
                .args(["-out", &p("server.csr")]),
        );
        std::fs::write(
            self.path("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run_output(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "2", "-in", &p("server.csr")])
                .args([
                    "-CA",
                    &p("ca.crt"),
                    "-CAkey",
                    &p("ca.key"),
                    "-CAcreateserial",
                ])
                .args(["-extfile", &p("server.ext"), "-out", &p("server.crt")]),
        );
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run_output(command: &mut Command) -> Vec<u8> {
    let out = command.output().expect("running a fixture tool");
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// What the proxy does to a connection that asks for the blob it watches.
#[derive(Debug, Clone, Copy)]
pub enum Cut {
    /// Cut this many such connections after `after` bytes of the answer.
    Times {
        /// How many connections to cut.
        count: usize,
        /// Answer bytes passed before the cut.
        after: usize,
    },
    /// Cut the first such connection after `after` bytes, and accept no
    /// connection from then on: the registry is gone.
    Vanish {
        /// Answer bytes passed before the cut.
        after: usize,
    },
    /// Pass `after` bytes of the first such answer, then nothing more,
    /// keeping the connection open: a registry that hangs.
    Stall {
        /// Answer bytes passed before the stall.
        after: usize,
    },
    /// Answer this many such requests with HTTP `status` and an empty
    /// body, instead of passing them on.
    Status {
        /// How many requests to answer so.
        count: usize,
        /// The HTTP status, e.g. 503.
        status: u16,
    },
}

/// What the proxy lets through of the `Range` headers of requests: a
/// registry, or a front end, that does less than docker-registry does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ranges {
    /// Pass every request as it is.
    Pass,
    /// Keep only the first range of a multi-range request: the answer is
    /// a plain 206 of that range.
    FirstOnly,
    /// Drop a multi-range `Range` header: the answer is a 200 with the
    /// whole blob. Single ranges pass.
    WholeForMulti,
    /// Answer a multi-range request with this status and no body.
    RefuseMulti(u16),
    /// Drop every `Range` header: every answer is the whole blob.
    Ignore,
}

/// A TCP proxy in front of a plain-HTTP registry, which cuts connections
/// that fetch one blob, may rewrite their `Range` headers, records every
/// request head it forwards and counts the answer bytes it passes on.
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    heads: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    connections: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    sent: Arc<AtomicUsize>,
}

impl Proxy {
    /// Forward 127.0.0.1:PORT to `upstream`'s port, cutting as `cut` says
    /// the answers to requests naming `blob`.
    pub fn start(upstream: u16, blob: &str, cut: Cut) -> Self {
        Self::start_with(upstream, blob, cut, Ranges::Pass)
    }

    /// Forward 127.0.0.1:PORT to `upstream`'s port, treating `Range`
    /// headers as `ranges` says, and cutting nothing.
    pub fn with_ranges(upstream: u16, ranges: Ranges) -> Self {
        let cut = Cut::Times { count: 0, after: 0 };
        Self::start_with(upstream, "no blob", cut, ranges)
    }

    /// [`Proxy::start`] with `ranges` applied to every request.
    pub fn start_with(upstream: u16, blob: &str, cut: Cut, ranges: Ranges) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (connections, closed): (Arc<AtomicUsize>, Arc<AtomicUsize>) = Default::default();
        let (count, after, vanish, status) = match cut {
            Cut::Times { count, after } => (count, after, false, None),
            Cut::Vanish { after } => (1, after, true, None),
            Cut::Status { count, status } => (count, 0, false, Some(status)),
            Cut::Stall { after } => (1, after, false, None),
        };
        let stall = matches!(cut, Cut::Stall { .. });
        let sent = Arc::new(AtomicUsize::new(0));
        let watch = Watch {
            ranges,
            sent: sent.clone(),
            blob: blob.to_owned(),
            cuts_left: Arc::new(AtomicUsize::new(count)),
            after,
            vanish,
            status,
            stall,
            connections: connections.clone(),
            closed: closed.clone(),
            heads: heads.clone(),
            stop: stop.clone(),
        };
        std::thread::spawn(move || {
            while !watch.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let watch = watch.clone();
                        std::thread::spawn(move || watch.serve(client, upstream));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            // Dropping the listener refuses connections from now on.
        });
        Proxy {
            port,
            heads,
            stop,
            connections,
            closed,
            sent,
        }
    }

    /// Wait until the clients have closed every connection, for 10 s
    /// at most: `what` says what failed to.
    pub fn assert_closes_all(&self, what: &str) {
        until(
            &|| {
                let (opened, closed) = self.connections();
                opened == closed
            },
            what,
        );
    }

    /// Bytes of answers passed on to clients so far, heads included.
    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::SeqCst)
    }

    /// Connections accepted so far, and how many of them the client has
    /// closed.
    pub fn connections(&self) -> (usize, usize) {
        (
            self.connections.load(Ordering::SeqCst),
            self.closed.load(Ordering::SeqCst),
        )
    }

    /// `127.0.0.1:PORT` of the proxy.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Every request head forwarded, in order.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[derive(Debug, Clone)]
struct Watch {
    ranges: Ranges,
    sent: Arc<AtomicUsize>,
    blob: String,
    cuts_left: Arc<AtomicUsize>,
    after: usize,
    vanish: bool,
    status: Option<u16>,
    stall: bool,
    connections: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Watch {
    fn serve(self, client: TcpStream, upstream: u16) {
        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
            return;
        };
        self.connections.fetch_add(1, Ordering::SeqCst);
        let armed = Arc::new(AtomicBool::new(false));
        let (mut from_client, mut to_server) =
            (client.try_clone().unwrap(), server.try_clone().unwrap());
        let forward = self.clone();
        let arming = armed.clone();
        std::thread::spawn(move || forward.requests(&mut from_client, &mut to_server, &arming));
        self.answer(client, server, &armed);
    }

    /// Pass the client's requests on, recording their heads; arm the cut
    /// or answer with the injected status when one names the blob.
    fn requests(&self, client: &mut TcpStream, server: &mut TcpStream, armed: &AtomicBool) {
        let mut buf = vec![0u8; 16 << 10];
        while let Ok(n @ 1..) = client.read(&mut buf) {
            if self.vanish && self.stop.load(Ordering::SeqCst) {
                // Gone: pooled connections answer nothing more either.
                break;
            }
            // Requests here are GETs and HEADs: each read is heads.
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let mut answered = false;
            let mut forward = Vec::new();
            for head in text.split("\r\n\r\n") {
                if !head.is_empty() {
                    // As the client sent it.
                    self.heads.lock().unwrap().push(head.to_owned());
                }
                let head = match self.rewrite(head) {
                    Ok(head) => head,
                    Err(status) => {
                        let answer =
                            format!("HTTP/1.1 {status} Refused\r\nContent-Length: 0\r\n\r\n");
                        let _ = client.write_all(answer.as_bytes());
                        answered = true;
                        continue;
                    }
                };
                forward.push(head.clone());
                if head.is_empty() || !head.contains(&self.blob) || !take(&self.cuts_left) {
                    continue;
                }
                match self.status {
                    Some(status) => {
                        let answer =
                            format!("HTTP/1.1 {status} Injected\r\nContent-Length: 0\r\n\r\n");
                        let _ = client.write_all(answer.as_bytes());
                        answered = true;
                    }
                    None => armed.store(true, Ordering::SeqCst),
                }
            }
            let bytes = match self.ranges {
                Ranges::Pass => buf[..n].to_vec(),
                _ => forward.join("\r\n\r\n").into_bytes(),
            };
            if !answered && server.write_all(&bytes).is_err() {
                break;
            }
        }
        self.closed.fetch_add(1, Ordering::SeqCst);
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
    }

    /// The request head `head` with its `Range` header as the proxy's
    /// policy has it, or the status to refuse it with.
    fn rewrite(&self, head: &str) -> Result<String, u16> {
        if self.ranges == Ranges::Pass {
            return Ok(head.to_owned());
        }
        let mut lines = Vec::new();
        for line in head.split("\r\n") {
            let Some(value) = line
                .split_once(':')
                .filter(|(name, _)| name.trim().eq_ignore_ascii_case("range"))
                .map(|(_, value)| value.trim())
            else {
                lines.push(line.to_owned());
                continue;
            };
            let multi = value.contains(',');
            match self.ranges {
                Ranges::Ignore => {}
                Ranges::WholeForMulti if multi => {}
                Ranges::RefuseMulti(status) if multi => return Err(status),
                Ranges::FirstOnly if multi => {
                    let first = value.split(',').next().unwrap_or_default();
                    lines.push(format!("Range: {first}"));
                }
                _ => lines.push(line.to_owned()),
            }
        }
        Ok(lines.join("\r\n"))
    }

    /// Pass the server's answers to the client, cutting once armed.
    fn answer(&self, mut client: TcpStream, mut server: TcpStream, armed: &AtomicBool) {
        let mut buf = vec![0u8; 4096];
        let mut left: Option<usize> = None;
        while let Ok(n @ 1..) = server.read(&mut buf) {
            if left.is_none() && armed.load(Ordering::SeqCst) {
                left = Some(self.after);
            }
            let pass = left.map_or(n, |l| l.min(n));
            if client.write_all(&buf[..pass]).is_err() {
                break;
            }
            self.sent.fetch_add(pass, Ordering::SeqCst);
            if let Some(l) = left.as_mut() {
                *l -= pass;
                if *l == 0 {
                    if self.vanish {
                        self.stop.store(true, Ordering::SeqCst);
                    }
                    if self.stall {
                        // The connection stays open until the client
                        // closes it (see `requests`).
                        return;
                    }
                    break;
                }
            }
        }
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
    }
}

/// Wait up to 10 s for `done`, failing with `what`.
pub fn until(done: &dyn Fn() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Take one from `counter` if it is not zero.
fn take(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}
