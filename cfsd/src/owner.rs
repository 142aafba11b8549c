//! What this daemon tells a second process that tries to open its
//! repository: who it is and where to reach it instead.

use cfsd_repo::Owner;
use cfsd_varlink::Address;

/// This daemon, as the repository's lock file records it.
pub fn describe(address: Option<&Address>) -> Owner {
    if let Some(address) = address {
        return Owner {
            description: format!("cfsd serving {address}"),
            address: Some(address.to_string()),
        };
    }
    if let Some(path) = passed_socket_path() {
        return Owner {
            description: format!("cfsd serving unix:{path} (socket-activated)"),
            address: Some(format!("unix:{path}")),
        };
    }
    Owner {
        description: format!(
            "a private cfsd started by process {}",
            rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get())
        ),
        address: None,
    }
}

/// The path of a listening socket passed on fd 3, from `/proc/net/unix`
/// (a connected socketpair has none).
fn passed_socket_path() -> Option<String> {
    let link = std::fs::read_link("/proc/self/fd/3").ok()?;
    let inode = link
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .to_owned();
    let table = std::fs::read_to_string("/proc/net/unix").ok()?;
    table.lines().skip(1).find_map(|line| {
        // Num RefCount Protocol Flags Type St Inode Path
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(6) == Some(&inode.as_str()))
            .then(|| fields.get(7).map(|p| (*p).to_owned()))
            .flatten()
    })
}

/// Die with the cfsctl that started this private daemon: the kernel sends
/// SIGKILL when it exits, however it exits, so no private daemon runs on
/// for nobody (a collection it was doing finishes at the next open). If
/// that parent is already gone, `parent` no longer matches and the daemon
/// stops at once.
pub fn die_with_parent() -> anyhow::Result<()> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    let expected = std::env::var("CFSD_PARENT_PID")
        .ok()
        .and_then(|p| p.parse::<i32>().ok());
    let parent = rustix::process::getppid().map(|p| p.as_raw_nonzero().get());
    if let Some(expected) = expected
        && parent != Some(expected)
    {
        anyhow::bail!("the cfsctl that started this daemon (pid {expected}) is gone");
    }
    Ok(())
}
