//! The accept loop: one task per client, idle exit and orderly shutdown.

use std::{os::unix::net::UnixListener as StdListener, sync::Arc, time::Duration};

use cfsd_repo::RepositoryDir;
use rustix::process::Gid;
use tokio::{
    net::{UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
    sync::{Semaphore, watch},
    task::JoinSet,
};

use crate::{
    admission::{Admissions, Limits, Subuids},
    connection::{self, Conn},
    listen::Socket,
    methods,
    work::{Work, WorkLimits},
};

/// How the daemon was asked to run.
#[derive(Debug)]
pub struct Config {
    /// Whose members may change the repository.
    pub admin_group: Option<Gid>,
    /// Exit after this long without clients.
    pub idle_exit: Option<Duration>,
    /// How many clients are served at once, in all and per uid.
    pub limits: Limits,
    /// How long a client may stay silent between calls.
    pub client_timeout: Duration,
    /// The most bytes of one message, not counting its NUL.
    pub max_message: usize,
    /// The subordinate uid ranges, whose uids count against their owner.
    pub subuids: Subuids,
    /// The most calls one account other than root may run at once.
    pub max_blocking_per_uid: usize,
    /// How long in-flight calls may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// The scratch bytes one CreateDelta may write.
    pub max_delta_scratch: u64,
    /// How `docker://` pulls connect and what they may admit.
    pub registry: Arc<cfsd_repo::registry::RegistrySettings>,
    /// Where a delta's source image may be when the repository lacks it
    /// (`--source-repo`).
    pub source_repo: Option<Arc<cfsd_repo::secondary::SecondaryRepository>>,
    /// The most FUSE mounts served at once (`--max-fuse-mounts`).
    pub max_fuse_mounts: usize,
}

/// What every connection shares.
#[derive(Debug)]
pub struct Daemon {
    /// The repository served; shared with the blocking threads that
    /// open it.
    pub dir: Arc<RepositoryDir>,
    /// Whose members may change the repository.
    pub admin_group: Option<Gid>,
    /// How long a client may stay silent between calls.
    pub client_timeout: Duration,
    /// The most bytes of one message, not counting its NUL.
    pub max_message: usize,
    /// The scratch bytes one CreateDelta may write.
    pub max_delta_scratch: u64,
    /// How `docker://` pulls connect and what they may admit.
    pub registry: Arc<cfsd_repo::registry::RegistrySettings>,
    /// Where a delta's source image may be when the repository lacks it.
    pub source_repo: Option<Arc<cfsd_repo::secondary::SecondaryRepository>>,
    /// Turns true when the daemon is shutting down.
    pub shutdown: watch::Receiver<bool>,
    /// The subordinate uid ranges, whose uids count against their owner.
    pub subuids: Subuids,
    /// The calls each account runs, and their blocking threads.
    pub work: Arc<WorkLimits>,
    /// The FUSE mounts served now, and how many may be.
    pub fuse_mounts: Arc<methods::FuseMounts>,
}

/// Serve `socket` until shutdown, idle exit, or (for a connected socket)
/// the client hanging up. With `refusal` (the repository is another
/// process's), a connected client's first call gets it and nothing is
/// served.
pub async fn run(
    dir: RepositoryDir,
    config: Config,
    socket: Socket,
    signals: Signals,
    refusal: Option<cfsd_repo::Error>,
) -> anyhow::Result<()> {
    let (stop, shutdown) = watch::channel(false);
    tokio::spawn(signals.stop(stop));
    let daemon = Arc::new(Daemon {
        dir: Arc::new(dir),
        admin_group: config.admin_group,
        client_timeout: config.client_timeout,
        max_message: config.max_message,
        max_delta_scratch: config.max_delta_scratch,
        registry: config.registry.clone(),
        source_repo: config.source_repo.clone(),
        shutdown,
        subuids: config.subuids.clone(),
        work: WorkLimits::new(config.max_blocking_per_uid),
        fuse_mounts: methods::FuseMounts::new(config.max_fuse_mounts),
    });
    match socket {
        Socket::Connected(stream) => {
            stream.set_nonblocking(true)?;
            // The one client that spawned this daemon needs no slot.
            let Some((conn, peer)) = connection::open(&daemon, UnixStream::from_std(stream)?).await
            else {
                return Ok(());
            };
            if let Some(refusal) = refusal {
                let message = refusal.to_string();
                connection::refuse(conn, methods::repository::wire_error(refusal)).await;
                anyhow::bail!("{message}");
            }
            let mut clients = JoinSet::new();
            let mut shutdown = daemon.shutdown.clone();
            clients.spawn(connection::serve(daemon, conn, peer));
            tokio::select! {
                _ = clients.join_next() => {}
                _ = shutdown.changed() => {}
            }
            finish(clients, config.shutdown_grace).await;
            Ok(())
        }
        Socket::Listening {
            listener,
            owned_path,
        } => {
            let result = accept_loop(daemon, listener, &config).await;
            if let Some(path) = owned_path {
                let _ = std::fs::remove_file(path);
            }
            result
        }
    }
}

async fn accept_loop(
    daemon: Arc<Daemon>,
    listener: StdListener,
    config: &Config,
) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = UnixListener::from_std(listener)?;
    let mut gate = Gate {
        admissions: Admissions::new(config.limits),
        // Clients being turned away cost a task and an fd each for a few
        // seconds; beyond this many, further ones are closed at once.
        refusals: Arc::new(Semaphore::new(config.limits.total)),
        clients: JoinSet::new(),
    };
    let mut shutdown = daemon.shutdown.clone();
    loop {
        // The idle clock runs only while no client is connected, and
        // restarts whenever the last one leaves.
        let idle = config.idle_exit.filter(|_| gate.clients.is_empty());
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tokio::time::sleep(idle.unwrap_or_default()), if idle.is_some() => {
                tracing::info!("no clients for {:?}, exiting", idle.unwrap_or_default());
                break;
            }
            Some(_) = gate.clients.join_next(), if !gate.clients.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if let Some((conn, peer)) = connection::open(&daemon, stream).await {
                        gate.admit(&daemon, conn, peer);
                    }
                }
                Err(e) => tracing::warn!("accept failed: {e}"),
            },
        }
    }
    drop(listener);
    finish(gate.clients, config.shutdown_grace).await;
    Ok(())
}

/// Decides, for each accepted client, whether it is served or turned
/// away, and runs both kinds of task.
struct Gate {
    admissions: Arc<Admissions>,
    refusals: Arc<Semaphore>,
    clients: JoinSet<()>,
}

impl Gate {
    /// Serve `conn` if a slot is free for `peer`; otherwise tell it why not.
    fn admit(&mut self, daemon: &Arc<Daemon>, conn: Conn, peer: crate::access::Peer) {
        match self.admissions.admit(&peer) {
            Ok(slot) => {
                let daemon = daemon.clone();
                self.clients.spawn(async move {
                    let work = Work::default();
                    work.scope(connection::serve(daemon, conn, peer)).await;
                    // The slot is free only once the work is gone too.
                    work.stopped().await;
                    drop(slot);
                });
            }
            Err(refusal) => {
                tracing::warn!(uid = peer.uid, "turning a client away: {refusal}");
                if let Ok(permit) = self.refusals.clone().try_acquire_owned() {
                    self.clients.spawn(async move {
                        connection::refuse(conn, refusal).await;
                        drop(permit);
                    });
                }
            }
        }
    }
}

/// Let in-flight calls finish, within the grace period. Calls still
/// running then are dropped; their blocking threads may be stuck in a
/// read that never returns, which is why `main` does not wait for them.
async fn finish(mut clients: JoinSet<()>, grace: Duration) {
    let drained = tokio::time::timeout(grace, async {
        while clients.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "cancelling {} calls still running after {grace:?}",
            clients.len()
        );
        clients.shutdown().await;
    }
}

/// SIGTERM and SIGINT, caught from the moment they are installed.
#[derive(Debug)]
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Catch SIGTERM and SIGINT from now on. Needs the runtime.
    pub fn install() -> anyhow::Result<Self> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Wait for either, then tell everyone to shut down.
    async fn stop(mut self, stop: watch::Sender<bool>) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = self.int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        let _ = stop.send(true);
    }
}
