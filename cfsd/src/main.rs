//! cfsd: serves one composefs repository over varlink.
//!
//! It listens on a socket it creates (`--address`), on sockets handed over
//! by systemd socket activation, or serves the one client already
//! connected on fd 3 (the private daemon that `cfsctl --repo` spawns).

mod access;
mod admission;
mod call_log;
mod connection;
mod dispatch;
mod framing;
mod hangup;
mod journal;
mod listen;
mod methods;
mod owner;
mod registry;
mod server;
mod work;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use cfsd_repo::{Error as RepoError, Owner, Repository, RepositoryDir, VerityPolicy};
use cfsd_varlink::Address;
use clap::Parser;

/// Serve a composefs repository over varlink.
#[derive(Debug, Parser)]
#[command(version = cfsd_varlink::version::VERSION, about)]
struct Args {
    /// The repository directory. It need not exist yet: Init creates it.
    #[arg(long, env = "CFSD_REPO", default_value = "/sysroot/composefs")]
    repo: PathBuf,

    /// Create and listen on this socket (unix:/path) instead of using a
    /// socket from systemd or fd 3. It is made 0660 and removed on exit.
    #[arg(long)]
    address: Option<Address>,

    /// Members of this group may call mutating methods, as root may.
    #[arg(long, value_name = "GROUP")]
    allow_group: Option<String>,

    /// Give the socket that --address creates to this group, so that its
    /// members may connect and call read-only methods.
    #[arg(long, value_name = "GROUP", requires = "address")]
    socket_group: Option<String>,

    /// Exit after this many seconds without any client.
    #[arg(long, value_name = "SECS")]
    idle_exit: Option<u64>,

    /// Refuse a repository that does not enforce fs-verity.
    #[arg(long)]
    require_verity: bool,

    /// The most clients served at once. A client over the limit gets
    /// io.cfsd.Repository.TooManyConnections in reply to its first call
    /// and is disconnected. An eighth of the slots is kept for root, the
    /// daemon's own user and the --allow-group members.
    #[arg(long, default_value_t = 64)]
    max_connections: usize,

    /// The most clients any one other uid may have served at once, so
    /// that one unprivileged user cannot take every slot.
    #[arg(long, value_name = "N", default_value_t = 16)]
    max_connections_per_uid: usize,

    /// The longest varlink message accepted, in bytes, not counting the
    /// NUL that ends it. Calls are a few hundred bytes; a client that
    /// sends more gets io.cfsd.Repository.MessageTooLarge and is
    /// disconnected, and cfsd never buffers more than this for it.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20,
          value_parser = clap::value_parser!(u32).range(4096..))]
    max_message_size: u32,

    /// The most bytes of uncompressed tar one layer may have, pulled or
    /// rebuilt from a delta; a larger one gets io.cfsd.Oci.LayerTooLarge
    /// as soon as it shows, so that no pull fills the disk. The default
    /// is 64 GiB.
    #[arg(long, value_name = "BYTES", default_value_t = cfsd_repo::oci::LayerLimits::DEFAULT_MAX_LAYER_SIZE)]
    max_layer_size: u64,

    /// The most bytes of metadata (tar headers, PAX records, files of at
    /// most 64 bytes, paths) one layer may keep in memory while it is
    /// stored; more gets io.cfsd.Oci.LayerTooLarge. The default, 128 MiB,
    /// is a layer of 100,000 to 250,000 entries.
    #[arg(long, value_name = "BYTES", default_value_t = cfsd_repo::oci::LayerLimits::DEFAULT_MAX_LAYER_METADATA)]
    max_layer_metadata: u64,

    /// The most bytes of uncompressed tar all the layers of one pull may
    /// have together; the layer that passes it gets
    /// io.cfsd.Oci.LayerTooLarge. The default is 256 GiB.
    #[arg(long, value_name = "BYTES", default_value_t = cfsd_repo::oci::LayerLimits::DEFAULT_MAX_PULL_SIZE)]
    max_pull_size: u64,

    /// The most bytes one CreateDelta may write to scratch files (in the
    /// repository's directory) in all; past that it fails with
    /// io.cfsd.Oci.NoSpace. With --max-blocking-per-uid this bounds the
    /// disk one peer's deltas take. The default is 64 GiB.
    #[arg(long, value_name = "BYTES", default_value_t = cfsd_repo::CreateOptions::DEFAULT_MAX_SCRATCH)]
    max_delta_scratch: u64,

    /// The most FUSE mounts (io.cfsd.Oci.MountFuse) served at once, each
    /// by a process of its own; one more gets
    /// io.cfsd.Oci.TooManyFuseMounts.
    #[arg(long, value_name = "N", default_value_t = 32)]
    max_fuse_mounts: usize,

    /// The most calls of any one uid other than root and the daemon's
    /// own that run at once, with their disk threads; more calls wait for
    /// their turn. A thread stuck in a read that never returns keeps its
    /// call's turn.
    #[arg(long, value_name = "N", default_value_t = 4)]
    max_blocking_per_uid: usize,

    /// The subordinate uid ranges (subuid(5)): every uid of a range
    /// counts against its owner in the per-uid limits.
    #[arg(long, value_name = "PATH", default_value = "/etc/subuid")]
    subuid_file: PathBuf,

    /// After SIGTERM, let calls in flight finish for this long; then
    /// cfsd exits, even if some thread is stuck in a read.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    shutdown_grace: u64,

    /// Close a client connection that sends no call for this long.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    client_timeout: u64,

    /// How long a garbage collection waits for imports, tag changes and
    /// mounts in flight, and for other processes that have the repository
    /// open, before it answers io.cfsd.Repository.RepositoryBusy. Such
    /// work never waits for a collection that is still waiting.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    gc_wait: u64,

    #[command(flatten)]
    registry: registry::RegistryArgs,

    /// Another composefs repository where a delta's source image may be
    /// (a second partition's, say): when the repository lacks it, it is
    /// copied from there, which is only read. A client's Pull may name
    /// its own instead.
    #[arg(long, value_name = "PATH")]
    source_repo: Option<PathBuf>,

    /// Log level filter (error, warn, info, debug, trace).
    #[arg(long, env = "CFSD_LOG", default_value = "info")]
    log: String,

    /// Write cfsd's man page under DIR/man and its bash, zsh and fish
    /// completions under DIR/completions, then exit; see docs/cli.md.
    #[arg(long, hide = true, value_name = "DIR")]
    generate_manuals: Option<PathBuf>,

    /// Serve one FUSE mount on the fds a daemon passed, then exit: how
    /// cfsd runs each MountFuse (see methods/fuse.rs).
    #[arg(long, hide = true)]
    serve_fuse: bool,
}

/// The admin's `--source-repo`, read with the daemon's rights.
fn open_source_repo(
    path: &std::path::Path,
) -> anyhow::Result<std::sync::Arc<cfsd_repo::secondary::SecondaryRepository>> {
    let dir = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("--source-repo {}: {e}", path.display()))?;
    let repo = cfsd_repo::secondary::SecondaryRepository::open(dir.into(), None)
        .map_err(|e| anyhow::anyhow!("--source-repo {}: {e}", path.display()))?;
    Ok(std::sync::Arc::new(repo))
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(dir) = &args.generate_manuals {
        return write_manuals(dir);
    }
    if args.serve_fuse {
        return methods::fuse::serve_passed();
    }
    journal::install(&args.log);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cfsd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Write the man page and completions of cfsd, naming each file.
fn write_manuals(dir: &std::path::Path) -> ExitCode {
    use clap::CommandFactory;
    match cfsd_manuals::write(Args::command(), cfsd_manuals::Section::Administration, dir) {
        Ok(files) => {
            for file in files {
                println!("{}", file.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cfsd: writing manuals under {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let policy = if args.require_verity {
        VerityPolicy::Required
    } else {
        VerityPolicy::BestEffort
    };
    // A private daemon (cfsctl's, on fd 3) never outlives its cfsctl.
    if std::env::var_os("CFSD_PARENT_PID").is_some() {
        owner::die_with_parent()?;
    }
    cfsd_repo::coordination::set_default_gc_wait(Duration::from_secs(args.gc_wait));
    let owner = owner::describe(args.address.as_ref());
    let (dir, refusal) = match open_repository(&args, policy, &owner)? {
        Ok(dir) => (dir, None),
        // Only the one client of a private daemon can be told why, typed.
        Err(in_use) if owner.address.is_none() => {
            (RepositoryDir::new(args.repo.clone(), policy), Some(in_use))
        }
        Err(in_use) => return Err(anyhow::anyhow!("{in_use}; refusing to serve it too")),
    };
    cfsd_repo::oci::LayerLimits {
        max_layer_size: args.max_layer_size,
        max_layer_metadata: args.max_layer_metadata,
        max_pull_size: args.max_pull_size,
    }
    .install();
    let admin_group = args
        .allow_group
        .as_deref()
        .map(access::lookup_group)
        .transpose()?;
    let socket_group = args
        .socket_group
        .as_deref()
        .map(access::lookup_group)
        .transpose()?;
    let config = server::Config {
        admin_group,
        idle_exit: args.idle_exit.map(Duration::from_secs),
        limits: admission::Limits {
            total: args.max_connections.max(1),
            per_uid: args.max_connections_per_uid.max(1),
        },
        client_timeout: Duration::from_secs(args.client_timeout),
        max_message: args.max_message_size as usize,
        subuids: admission::Subuids::load(&args.subuid_file)?,
        max_blocking_per_uid: args.max_blocking_per_uid,
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        max_delta_scratch: args.max_delta_scratch,
        registry: std::sync::Arc::new(args.registry.settings()),
        source_repo: args
            .source_repo
            .as_deref()
            .map(open_source_repo)
            .transpose()?,
        max_fuse_mounts: args.max_fuse_mounts,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(work::BLOCKING_THREADS)
        .enable_all()
        .build()?;
    let served = runtime.block_on(async move {
        // Handlers first: once the socket exists a client may connect and
        // signal us, and SIGTERM must then stop cfsd cleanly, not kill it.
        let signals = server::Signals::install()?;
        // Binding changes the process umask for a moment; the runtime's
        // threads exist but create no files yet.
        let socket = listen::acquire(args.address.as_ref(), socket_group)?;
        server::run(dir, config, socket, signals, refusal).await
    });
    // Dropping the runtime would wait for every blocking thread, and one
    // stuck in a read that never returns would keep cfsd from exiting.
    // The calls they served were dropped already; the process's exit
    // ends the threads.
    runtime.shutdown_timeout(EXIT_WAIT);
    served
}

/// How long exit waits for blocking threads once every call has ended.
const EXIT_WAIT: Duration = Duration::from_millis(500);

/// Open the repository, refusing one the policy forbids and saying plainly
/// when it runs without fs-verity. The daemon keeps it open, so this is
/// the only open; a directory without a repository yet is opened when
/// Init creates it.
///
/// A repository another process serves is the inner error: only that
/// process may serve it.
fn open_repository(
    args: &Args,
    policy: VerityPolicy,
    owner: &Owner,
) -> anyhow::Result<Result<RepositoryDir, RepoError>> {
    match Repository::open_as(&args.repo, policy, owner) {
        Ok(repo) => {
            if let cfsd_repo::VerityStatus::Insecure(reason) = repo.verity() {
                tracing::warn!(
                    "repository {} is INSECURE: fs-verity is not enforced ({reason})",
                    args.repo.display()
                );
            }
            Ok(Ok(RepositoryDir::from_open(repo, policy)))
        }
        Err(e @ RepoError::RepositoryInUse { .. }) => Ok(Err(e)),
        Err(e @ RepoError::VerityRequired { .. }) => Err(anyhow::anyhow!(
            "{e}; refusing to serve it (--require-verity)"
        )),
        // Init creates a missing repository; other problems are reported
        // to each caller as typed errors.
        Err(_) => Ok(Ok(
            RepositoryDir::new(args.repo.clone(), policy).owned_by(owner.clone())
        )),
    }
}
