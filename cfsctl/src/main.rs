//! cfsctl: the command line of the cfsd composefs repository daemon.
//!
//! It parses arguments, opens the files it hands over, makes varlink
//! calls and renders their replies. The repository itself is only ever
//! touched by the daemon.

mod authfile;
mod connect;
mod copy;
mod export;
mod failure;
mod fuse;
mod index;
mod mount;
mod oci;
mod plain;
mod progress;
mod push;
mod render;
mod repository;
mod source;
mod stage;
mod transaction;
mod writing;

use std::process::ExitCode;

use cfsd_varlink::Address;
use clap::{Parser, Subcommand};

use crate::{failure::Failure, render::ProgressMode};

/// Manage a composefs repository through the cfsd daemon.
#[derive(Debug, Parser)]
#[command(version = cfsd_varlink::version::VERSION, about)]
struct Cli {
    /// The daemon's socket, e.g. unix:/run/cfsd/cfsd.sock. Defaults to
    /// $CFSD_ADDRESS, then the system socket.
    #[arg(long, global = true)]
    address: Option<Address>,

    /// Use the repository at PATH through a private daemon that lives as
    /// long as this command, instead of a running one.
    #[arg(long, global = true, value_name = "PATH", conflicts_with = "address")]
    repo: Option<std::path::PathBuf>,

    /// Use your own repository, $HOME/.var/lib/composefs (where upstream
    /// cfsctl --user keeps it), through a private daemon running as you.
    #[arg(long, global = true, conflicts_with_all = ["address", "repo"])]
    user: bool,

    /// Use the system's repository (/sysroot/composefs) through the
    /// system daemon's socket, whatever $CFSD_ADDRESS says.
    #[arg(long, global = true, conflicts_with_all = ["address", "repo", "user"])]
    system: bool,

    /// Print the result as one JSON line on stdout, or on failure
    /// {"error": NAME, "parameters": {...}}; see docs/cli.md.
    #[arg(long, global = true)]
    json: bool,

    /// How a pull shows its progress: on stderr, as bars on a terminal
    /// and as plain lines elsewhere (auto); not at all (none); or as
    /// {"progress": {...}} lines on stdout before the result (json).
    #[arg(long, global = true, value_enum, default_value_t = ProgressMode::Auto)]
    progress: ProgressMode,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the repository.
    Init {
        /// sha256 or sha512.
        #[arg(long, default_value = "sha512")]
        algorithm: String,
    },
    /// Describe the repository.
    Info,
    /// Check the repository's consistency.
    Fsck {
        /// Check references only, without reading object contents.
        #[arg(long)]
        metadata_only: bool,
    },
    /// Remove content that nothing refers to.
    Gc {
        /// Only report what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Build the content index (which object holds a file of a given
    /// sha256, for pulls that fetch only what is missing) for the layers
    /// and images stored before it existed, showing progress. Once is
    /// enough; later imports keep it.
    Index,
    /// Hold garbage collection off while COMMAND runs, then exit as it
    /// does; with no COMMAND, until interrupted. The hold ends with
    /// cfsctl, however it ends, and `cfsctl info` shows it meanwhile.
    Transaction {
        /// Why, as `cfsctl info` and a waiting `cfsctl gc` show it
        /// (default: the command line).
        #[arg(long)]
        reason: Option<String>,
        /// The command to run while the hold lasts, and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// Pull, list, name, remove and mount OCI images.
    Oci {
        #[command(subcommand)]
        command: oci::OciCommand,
    },
    /// Store a directory tree and a composefs image of it, named NAME if
    /// given, and print the image's id: upstream cfsctl's create-image.
    /// The daemon reads the tree only through a directory cfsctl opens,
    /// with your own permissions, never following a symlink.
    CreateImage {
        #[command(flatten)]
        tree: plain::TreeArgs,
        /// The name to give the image (a relative path such as
        /// `os/stable`), as upstream's `images` lists it.
        name: Option<String>,
    },
    /// Print the id create-image would give a directory tree, storing
    /// nothing: upstream cfsctl's compute-id.
    ComputeId {
        #[command(flatten)]
        tree: plain::TreeArgs,
    },
    /// List the named plain images: upstream cfsctl's images.
    Images {
        /// Show each whole digest instead of its first 12 digits.
        #[arg(long)]
        no_trunc: bool,
    },
    /// Mount a plain image read-only (nosuid, nodev) on DIR: upstream
    /// cfsctl's mount. Needs the rights of `oci mount`.
    Mount {
        /// An image id or name.
        image: String,
        /// The directory to mount on.
        dir: std::path::PathBuf,
    },
    /// List the objects an image refers to: upstream cfsctl's
    /// image-objects.
    ImageObjects {
        /// An image id or name.
        image: String,
    },
    /// Write cfsctl's man pages under DIR/man and its bash, zsh and fish
    /// completions under DIR/completions; see docs/cli.md.
    #[command(hide = true)]
    GenerateManuals {
        /// Where to write, e.g. target.
        dir: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cfsctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = cli.json;
    // `oci mount --fuse` unmounts on SIGINT and SIGTERM before it exits.
    let own_signals = matches!(
        &cli.command,
        Command::Oci {
            command: oci::OciCommand::Mount { fuse: true, .. }
        }
    );
    let result = match own_signals {
        true => runtime.block_on(run(cli)),
        false => runtime.block_on(until_signalled(run(cli))),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            report(&Failure::of(&e), json);
            if let Some(hint) = hint(&e).or_else(|| failure::hint(&e)) {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Tell people on stderr, and programs on stdout when they asked for
/// JSON, that the command failed and why.
fn report(failure: &Failure, json: bool) {
    eprintln!("cfsctl: {}", failure.message);
    if json {
        println!("{}", failure.wire);
    }
}

/// Run `work` until it ends or SIGINT or SIGTERM arrives; then stop at
/// once with 128 + the signal's number, as a shell reports. Returning
/// drops the connection, and a private cfsd dies with this process.
async fn until_signalled(
    work: impl Future<Output = anyhow::Result<ExitCode>>,
) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        result = work => result,
        _ = term.recv() => {
            eprintln!("cfsctl: terminated");
            Ok(ExitCode::from(128 + 15))
        }
        _ = int.recv() => {
            eprintln!("cfsctl: interrupted");
            Ok(ExitCode::from(128 + 2))
        }
    }
}

/// What to do about an error, when cfsctl knows better than the message.
fn hint(e: &anyhow::Error) -> Option<String> {
    use cfsd_varlink::{CallError, oci::OciError, repository::RepositoryError};
    let in_use = e.chain().find_map(|cause| {
        let connection = cause
            .downcast_ref::<CallError<RepositoryError>>()
            .and_then(|c| match c {
                CallError::Connection(r) | CallError::Interface(r) => Some(r),
                _ => None,
            })
            .or_else(|| match cause.downcast_ref::<CallError<OciError>>() {
                Some(CallError::Connection(r)) => Some(r),
                _ => None,
            });
        match connection {
            Some(RepositoryError::RepositoryInUse { address, .. }) => Some(address.clone()),
            _ => None,
        }
    })?;
    Some(match in_use {
        Some(address) => format!(
            "a daemon already serves this repository; reach it with `cfsctl --address {address}` instead of --repo"
        ),
        None => "another process has this repository open; wait for it to end, or reach its daemon with --address".to_owned(),
    })
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let out = render::Output {
        json: cli.json,
        progress: cli.progress,
    };
    if let Command::GenerateManuals { dir } = &cli.command {
        return write_manuals(dir);
    }
    // Unmounting is this process's own business: no daemon is needed.
    if let Command::Oci {
        command: oci::OciCommand::Umount { dir },
    } = &cli.command
    {
        return mount::umount(out, dir);
    }
    let repo = match cli.user {
        true => Some(connect::user_repository()?),
        false => cli.repo,
    };
    // $CFSD_ADDRESS stands for --address only when no other flag says
    // which repository to use: read here, not by clap, whose conflicts
    // would count it as given.
    let address = match (&cli.address, repo.is_some() || cli.system) {
        (Some(address), _) => Some(address.clone()),
        (None, false) => std::env::var("CFSD_ADDRESS")
            .ok()
            .filter(|a| !a.is_empty())
            .map(|a| a.parse::<Address>())
            .transpose()
            .map_err(|e| anyhow::anyhow!("$CFSD_ADDRESS: {e}"))?,
        (None, true) => None,
    };
    let mut daemon = connect::Daemon::connect(address.as_ref(), repo.as_deref()).await?;
    let client = daemon.client();
    let code = match cli.command {
        Command::Init { algorithm } => repository::init(client, out, algorithm).await?,
        Command::Info => repository::info(client, out).await?,
        Command::Fsck { metadata_only } => repository::fsck(client, out, metadata_only).await?,
        Command::Gc { dry_run } => repository::gc(client, out, dry_run).await?,
        Command::Index => index::index(client, out).await?,
        Command::Transaction { reason, command } => {
            transaction::transaction(client, out, reason, command).await?
        }
        Command::Oci { command } => oci::run(client, out, command).await?,
        Command::CreateImage { tree, name } => plain::create(client, out, &tree, name).await?,
        Command::ComputeId { tree } => plain::compute_id(client, out, &tree).await?,
        Command::Images { no_trunc } => plain::images(client, out, no_trunc).await?,
        Command::Mount { image, dir } => plain::mount(client, out, &image, &dir).await?,
        Command::ImageObjects { image } => plain::objects(client, out, &image).await?,
        Command::GenerateManuals { dir } => write_manuals(&dir)?,
    };
    daemon.close().await?;
    Ok(code)
}

/// Write the man pages and completions of cfsctl, naming each file.
fn write_manuals(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    use clap::CommandFactory;
    for file in cfsd_manuals::write(Cli::command(), cfsd_manuals::Section::Commands, dir)? {
        println!("{}", file.display());
    }
    Ok(ExitCode::SUCCESS)
}
