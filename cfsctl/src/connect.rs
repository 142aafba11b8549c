//! Finding the daemon: a running one at an address, or a private one
//! spawned on a socketpair for `--repo`.

use std::{
    os::{fd::OwnedFd, unix::net::UnixStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::Context;
use cfsd_varlink::{Address, Client, address::SYSTEM_SOCKET};
use command_fds::{CommandFdExt, FdMapping};

/// A connection to a daemon, and the private daemon process if this
/// command started one.
#[derive(Debug)]
pub struct Daemon {
    client: Client,
    private: Option<Child>,
}

impl Daemon {
    /// Connect to `address`, or spawn a private daemon for `repo`, or
    /// connect to the system socket.
    pub async fn connect(address: Option<&Address>, repo: Option<&Path>) -> anyhow::Result<Self> {
        if let Some(repo) = repo {
            return Self::spawn_private(repo);
        }
        let system = Address::Unix(PathBuf::from(SYSTEM_SOCKET));
        let address = address.unwrap_or(&system);
        let client = Client::connect(address).await.with_context(|| {
            format!("cannot reach cfsd at {address} (is cfsd.socket running? or use --repo PATH)")
        })?;
        Ok(Daemon {
            client,
            private: None,
        })
    }

    /// Start `cfsd --repo PATH` with one end of a socketpair as its fd 3:
    /// it serves this one connection and exits when it is closed.
    fn spawn_private(repo: &Path) -> anyhow::Result<Self> {
        let (ours, theirs) = UnixStream::pair().context("creating a socketpair")?;
        let mut command = Command::new(cfsd_binary());
        command
            .arg("--repo")
            .arg(repo)
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDS")
            .env(
                "CFSD_LOG",
                std::env::var("CFSD_LOG").unwrap_or_else(|_| "error".into()),
            )
            // It dies with this process (see cfsd's owner.rs), and it never
            // holds our stdout: `out=$(cfsctl --repo R gc)` returns when
            // cfsctl does.
            .env("CFSD_PARENT_PID", std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .fd_mappings(vec![FdMapping {
                parent_fd: OwnedFd::from(theirs),
                child_fd: 3,
            }])
            .context("passing the socket to cfsd")?;
        let child = command.spawn().map_err(not_started)?;
        ours.set_nonblocking(true)?;
        let client = Client::from_stream(tokio::net::UnixStream::from_std(ours)?)?;
        Ok(Daemon {
            client,
            private: Some(child),
        })
    }

    /// The typed client.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Hang up, and wait for a private daemon to exit.
    pub async fn close(self) -> anyhow::Result<()> {
        drop(self.client);
        if let Some(mut child) = self.private {
            let status = tokio::task::spawn_blocking(move || child.wait()).await??;
            if !status.success() {
                anyhow::bail!("the private cfsd exited with {status}");
            }
        }
        Ok(())
    }
}

/// The cfsd next to this cfsctl, as installed together; else from $PATH.
/// `$CFSD_BIN` overrides both.
fn cfsd_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("CFSD_BIN") {
        return bin.into();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("cfsd")))
        .filter(|candidate| candidate.exists())
        .unwrap_or_else(|| PathBuf::from("cfsd"))
}

/// Why the private daemon did not start, and where cfsctl looked for it.
fn not_started(e: std::io::Error) -> crate::failure::Local {
    let program = cfsd_binary();
    let reason = if e.kind() == std::io::ErrorKind::NotFound {
        let beside = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.join("cfsd")));
        let beside = beside.map_or_else(|| "beside cfsctl".to_owned(), |p| p.display().to_string());
        match std::env::var_os("CFSD_BIN") {
            Some(_) => "it does not exist ($CFSD_BIN names it)".to_owned(),
            None => format!(
                "cfsd is neither installed beside cfsctl ({beside}) nor on $PATH; \
                 install it there, or set $CFSD_BIN to its path"
            ),
        }
    } else {
        e.to_string()
    };
    crate::failure::Local::DaemonNotStarted {
        program: program.display().to_string(),
        reason,
    }
}

/// Where `--user` keeps the caller's repository: `$HOME/.var/lib/composefs`,
/// as upstream cfsctl does, created (private) by `cfsctl --user init`.
pub fn user_repository() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("--user needs $HOME to find your repository")?;
    Ok(PathBuf::from(home).join(".var/lib/composefs"))
}
