//! Who may call what: peer credentials decide per call.

use rustix::process::{Gid, Uid, geteuid};
use zlink::connection::Credentials;

/// What a connected peer may do.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// The peer's uid, for error messages and logs.
    pub uid: u32,
    /// The uid its connections and threads count against: the owner of
    /// the subordinate range `uid` lies in, else `uid` itself.
    pub account: u32,
    /// The peer's process, whose mount table names the filesystems of
    /// the fds it hands over.
    pub pid: u32,
    /// Whether the peer may call mutating methods.
    pub privileged: bool,
    /// Whether the peer may mount images: root or the daemon's own user
    /// only. A mount reaches the kernel's filesystem code with content
    /// the peer chose, which the admin group is not trusted with.
    pub may_mount: bool,
}

impl Peer {
    /// Judge a peer by its socket credentials. Root, the daemon's own user
    /// (a private daemon's owner, who could do anything the daemon does
    /// anyway), and members of the admin group through their primary or
    /// supplementary groups are privileged.
    pub fn from_credentials(
        creds: &Credentials,
        admin_group: Option<Gid>,
        subuids: &crate::admission::Subuids,
    ) -> Self {
        let uid = creds.unix_user_id();
        let in_group = admin_group.is_some_and(|gid| {
            creds.unix_primary_group_id() == gid
                || creds.unix_supplementary_group_ids().contains(&gid)
        });
        let root_or_self = uid == Uid::ROOT || uid == geteuid();
        Peer {
            uid: uid.as_raw(),
            account: subuids.account(uid.as_raw()),
            pid: creds.process_id().as_raw_nonzero().get() as u32,
            privileged: root_or_self || in_group,
            may_mount: root_or_self,
        }
    }

    /// Whether the peer's work is never held back: root and the daemon's
    /// own user, who could stop the daemon anyway.
    pub fn unlimited(&self) -> bool {
        self.may_mount
    }
}

/// Resolve `--allow-group`: a group name from the group database, or a
/// numeric gid.
pub fn lookup_group(name: &str) -> anyhow::Result<Gid> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(Gid::from_raw(gid));
    }
    let groups = std::fs::read_to_string("/etc/group")?;
    groups
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let group = fields.next()?;
            let gid = fields.nth(1)?.parse::<u32>().ok()?;
            (group == name).then_some(gid)
        })
        .next()
        .map(Gid::from_raw)
        .ok_or_else(|| anyhow::anyhow!("no group named {name:?} in /etc/group"))
}
