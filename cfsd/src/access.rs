//! Who may call what: peer credentials decide per call.

use std::sync::Arc;

use cfsd_varlink::idl::{OCI_INTERFACE as OCI, REPOSITORY_INTERFACE as REPOSITORY};
use rustix::process::{Gid, Uid, geteuid};
use serde_json::Value;
use zlink::connection::Credentials;

/// Who a peer is, as far as the daemon's rights go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// uid 0, whoever the daemon runs as.
    Root,
    /// The daemon's own user, when that is not root: a private daemon's
    /// owner, who could do anything the daemon does anyway.
    DaemonUser,
    /// A member of the admin group (`--allow-group`), through its primary
    /// or supplementary groups.
    Admin,
    /// Anyone else the socket lets in.
    Other,
}

/// What a call asks of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    /// Reading the repository: listing, describing, checking.
    Read,
    /// Reading what the repository's images hold out of it: deltas,
    /// whose new files are whole image files. The repository is private
    /// because its objects are images' files, every image's
    /// `/etc/shadow` among them (see `repo/src/privacy.rs`); this right
    /// is the same gate over the socket.
    ReadContent,
    /// Changing the repository: init, pull (staged or not), tag, untag,
    /// remove, gc, committing and aborting stages (which tag and untag),
    /// making an image's bootable variant (`MakeBootable`) and its
    /// ID-mapped variants (`Idmap`).
    Change,
    /// Mounting an image read-only, `nosuid` and `nodev`, its plain or
    /// its bootable variant alike (`bootable` asks for no more: the
    /// variant is the same files relabelled). A mount reaches the
    /// kernel's filesystem code with content the peer chose, which the
    /// admin group is not trusted with.
    Mount,
    /// Mounting with the image's setuid bits and file capabilities
    /// honoured: whoever runs such a file gets its owner's rights, so
    /// only root, who has them already, may ask.
    MountSetuid,
    /// Mounting with openable device nodes: a node in an image opens the
    /// host's device with the mode the image chose, so root only.
    MountDevices,
    /// Mounting idmapped: the maps choose which host users own the
    /// image's files (root among them, setuid bits or not), and making
    /// them takes a user namespace with any ids mapped, which only root
    /// may write.
    MountIdmapped,
    /// Reading a directory a client passes (a repository to copy from,
    /// a delta's source repository) with the daemon's rights. Without
    /// it, the daemon reads there only what the client could read by
    /// its uid, groups and the files' modes: the daemon is root, and the
    /// client must not get through it what it could not read itself.
    ReadClientFiles,
    /// Having an image served over FUSE on a `/dev/fuse` the peer mounted
    /// itself (`MountFuse`). The peer mounts with its own rights, so the
    /// daemon mounts nothing and the kernel's filesystem code never sees
    /// an image the peer chose: what the peer gets is the image's files,
    /// readable by it, as Dump and Export hand them out. So it goes with
    /// [`Right::ReadContent`], not [`Right::Mount`].
    MountFuse,
}

/// Who has which right: the one place access is decided.
const RIGHTS: &[(Right, &[Role])] = {
    use Role::*;
    &[
        (Right::Read, &[Root, DaemonUser, Admin, Other]),
        (Right::ReadContent, &[Root, DaemonUser, Admin]),
        (Right::Change, &[Root, DaemonUser, Admin]),
        (Right::Mount, &[Root, DaemonUser]),
        // Not the daemon's own user: a daemon given mount capabilities
        // without being root would hand that user root through them.
        (Right::MountSetuid, &[Root]),
        (Right::MountDevices, &[Root]),
        (Right::MountIdmapped, &[Root]),
        // They could read whatever the daemon reads anyway.
        (Right::ReadClientFiles, &[Root, DaemonUser]),
        (Right::MountFuse, &[Root, DaemonUser, Admin]),
    ]
};

/// The right every method needs, by interface: the one table of who may
/// call what. A method not listed is open to every peer the socket lets
/// in (`org.varlink.service`), or does not exist.
pub const METHODS: &[(&str, &str, Right)] = {
    use Right::*;
    &[
        (REPOSITORY, "Info", Read),
        (REPOSITORY, "Fsck", Read),
        (REPOSITORY, "Init", Change),
        // A collection is a change; a dry run only reads (see PARAMETERS).
        (REPOSITORY, "Gc", Read),
        // Holding GC off changes what the next collection may do.
        (REPOSITORY, "Hold", Change),
        // Writes objects and an image, as a pull does.
        (REPOSITORY, "CreateImage", Change),
        // Stores nothing, and the tree is read with the caller's own
        // rights: it learns nothing it could not compute itself.
        (REPOSITORY, "ComputeImageId", Read),
        (REPOSITORY, "ListNamedImages", Read),
        // Object ids, not their content, as Inspect lists layers.
        (REPOSITORY, "ImageObjects", Read),
        (REPOSITORY, "MountImage", Mount),
        // Writes index files and reads every object: a change, as Gc.
        (REPOSITORY, "IndexContent", Change),
        (OCI, "Pull", Change),
        (OCI, "Copy", Change),
        (OCI, "ListImages", Read),
        (OCI, "Inspect", Read),
        (OCI, "Tag", Change),
        (OCI, "Untag", Change),
        (OCI, "Remove", Change),
        (OCI, "ComputeId", Read),
        (OCI, "Mount", Mount),
        (OCI, "MakeBootable", Change),
        (OCI, "KernelArgument", Read),
        (OCI, "Idmap", Change),
        // It changes nothing, but its delta carries image files out.
        (OCI, "CreateDelta", ReadContent),
        // Sends the repository's content out over the network, which
        // only those who may pull (reach registries) may do.
        (OCI, "Push", Change),
        (OCI, "PushDelta", Change),
        // Image files go out through a pipe or a file, as with
        // CreateDelta.
        (OCI, "Dump", ReadContent),
        (OCI, "ExportLayer", ReadContent),
        (OCI, "Export", ReadContent),
        (OCI, "ListStages", Read),
        // What Tag and Untag need: they publish and drop names.
        (OCI, "Commit", Change),
        (OCI, "Abort", Change),
        (OCI, "MountFuse", MountFuse),
    ]
};

/// When a parameter asks for more than its method's right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asks {
    /// When it is `true`, or a list with an entry.
    WhenSet,
    /// Unless it is `true` (or a list with an entry).
    UnlessSet,
}

/// The parameters that ask for more than their method's right in
/// [`METHODS`], and the right each then needs.
pub const PARAMETERS: &[(&str, &str, &str, Asks, Right)] = {
    use Asks::*;
    use Right::*;
    &[
        (OCI, "Mount", "allowSetuid", WhenSet, MountSetuid),
        (OCI, "Mount", "allowDevices", WhenSet, MountDevices),
        (OCI, "Mount", "uidmap", WhenSet, MountIdmapped),
        (OCI, "Mount", "gidmap", WhenSet, MountIdmapped),
        (REPOSITORY, "Gc", "dryRun", UnlessSet, Change),
    ]
};

/// The first right a call of `interface.method` with `params` needs that
/// `peer` lacks, with the parameter that asked for it when one did.
/// Decided before the parameters are parsed: a value other than `true`
/// or a non-empty list asks for nothing (and a malformed one is refused
/// when they are parsed).
pub fn refused(
    peer: &Peer,
    interface: &str,
    method: &str,
    params: Option<&Value>,
) -> Option<(Right, Option<&'static str>)> {
    let set = |name: &str| match params.and_then(|p| p.get(name)) {
        Some(Value::Bool(flag)) => *flag,
        Some(Value::Array(list)) => !list.is_empty(),
        _ => false,
    };
    let base = METHODS
        .iter()
        .filter(|(i, m, _)| *i == interface && *m == method)
        .map(|(_, _, right)| (*right, None));
    let raised = PARAMETERS
        .iter()
        .filter(|(i, m, _, _, _)| *i == interface && *m == method)
        .filter(|(_, _, name, asks, _)| set(name) == (*asks == Asks::WhenSet))
        .map(|(_, _, name, _, right)| (*right, Some(*name)));
    base.chain(raised).find(|(right, _)| !peer.may(*right))
}

impl Role {
    /// Whether this role has `right`, by [`RIGHTS`].
    pub fn may(self, right: Right) -> bool {
        RIGHTS
            .iter()
            .any(|(r, roles)| *r == right && roles.contains(&self))
    }
}

/// What a connected peer may do.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The peer's uid, for error messages and logs.
    pub uid: u32,
    /// The uid its connections and threads count against: the owner of
    /// the subordinate range `uid` lies in, else `uid` itself.
    pub account: u32,
    /// The peer's process, whose mount table names the filesystems of
    /// the fds it hands over.
    pub pid: u32,
    /// Whether the peer may call mutating methods: its role's
    /// [`Right::Change`], kept at hand because admission asks per call.
    pub privileged: bool,
    /// Who the peer is.
    pub role: Role,
    /// The peer's primary gid and supplementary groups, as its socket
    /// reported them: the rights a tree it hands over is read with.
    pub groups: (u32, Arc<[u32]>),
}

impl Peer {
    /// Judge a peer by its socket credentials; its connections and work
    /// count against the owner of the subordinate uid range it is in.
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
        let role = if uid == Uid::ROOT {
            Role::Root
        } else if uid == geteuid() {
            Role::DaemonUser
        } else if in_group {
            Role::Admin
        } else {
            Role::Other
        };
        let groups = creds.unix_supplementary_group_ids().iter();
        Peer {
            account: subuids.account(uid.as_raw()),
            pid: creds.process_id().as_raw_nonzero().get() as u32,
            groups: (
                creds.unix_primary_group_id().as_raw(),
                groups.map(|g| g.as_raw()).collect(),
            ),
            ..Peer::new(uid.as_raw(), role)
        }
    }

    /// A peer of `uid` in `role`, counted against itself, of no known
    /// process.
    pub fn new(uid: u32, role: Role) -> Self {
        Peer {
            uid,
            account: uid,
            pid: 0,
            privileged: role.may(Right::Change),
            role,
            groups: (uid, Arc::from([])),
        }
    }

    /// Whether the peer has `right`.
    pub fn may(&self, right: Right) -> bool {
        self.role.may(right)
    }

    /// The credentials a tree the peer hands over is read with: the
    /// peer's own, or `None` when they are the daemon's already. A root
    /// daemon reading as itself would read for the peer what the peer
    /// may not (see `cfsd_repo::plain::credentials`).
    pub fn tree_reader(&self) -> Option<cfsd_repo::plain::Credentials> {
        if self.uid == geteuid().as_raw() {
            return None;
        }
        Some(cfsd_repo::plain::Credentials {
            uid: self.uid,
            gid: self.groups.0,
            groups: self.groups.1.to_vec(),
        })
    }

    /// Whether the peer's work is never held back: root and the daemon's
    /// own user, who could stop the daemon anyway.
    pub fn unlimited(&self) -> bool {
        matches!(self.role, Role::Root | Role::DaemonUser)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_may_mount_with_setuid_or_devices() {
        use Role::*;
        let table: Vec<(Role, [bool; 6])> = [Root, DaemonUser, Admin, Other]
            .into_iter()
            .map(|role| {
                let rights = [
                    Right::Read,
                    Right::Change,
                    Right::Mount,
                    Right::MountSetuid,
                    Right::MountDevices,
                    Right::ReadClientFiles,
                ];
                (role, rights.map(|right| role.may(right)))
            })
            .collect();
        assert_eq!(
            table,
            [
                (Root, [true, true, true, true, true, true]),
                (DaemonUser, [true, true, true, false, false, true]),
                (Admin, [true, true, false, false, false, false]),
                (Other, [true, false, false, false, false, false]),
            ]
        );
        assert!(Peer::new(0, Root).privileged);
        assert!(!Peer::new(65534, Other).privileged);
    }

    #[test]
    fn only_root_may_ask_for_an_idmapped_mount() {
        use Role::*;
        let may = [Root, DaemonUser, Admin, Other].map(|role| role.may(Right::MountIdmapped));
        assert_eq!(may, [true, false, false, false]);
        let mapped = serde_json::json!({"image": "i", "uidmap": ["0:1:1"], "gidmap": []});
        let refused = |uid, role| refused(&Peer::new(uid, role), OCI, "Mount", Some(&mapped));
        assert_eq!(refused(0, Root), None);
        assert_eq!(
            refused(1000, DaemonUser),
            Some((Right::MountIdmapped, Some("uidmap")))
        );
        // An empty map asks for nothing more than a mount.
        let plain = serde_json::json!({"image": "i", "uidmap": []});
        let plain = refused_mount_of(&plain);
        assert_eq!(plain, [None, None, Some(Right::Mount), Some(Right::Mount)]);
    }

    fn refused_mount_of(params: &Value) -> Vec<Option<Right>> {
        use Role::*;
        [(0, Root), (1000, DaemonUser), (42, Admin), (65534, Other)]
            .into_iter()
            .map(|(uid, role)| refused(&Peer::new(uid, role), OCI, "Mount", Some(params)))
            .map(|r| r.map(|(right, _)| right))
            .collect()
    }

    #[test]
    fn a_fuse_mount_goes_with_reading_content_not_with_mounting() {
        use Role::*;
        let roles = [(0, Root), (1000, DaemonUser), (42, Admin), (65534, Other)];
        let params = serde_json::json!({"image": "i"});
        let refused: Vec<_> = roles
            .into_iter()
            .map(|(uid, role)| refused(&Peer::new(uid, role), OCI, "MountFuse", Some(&params)))
            .map(|r| r.map(|(right, _)| right))
            .collect();
        assert_eq!(refused, [None, None, None, Some(Right::MountFuse)]);
        for role in [Root, DaemonUser, Admin, Other] {
            assert_eq!(role.may(Right::MountFuse), role.may(Right::ReadContent));
        }
    }

    #[test]
    fn a_collection_is_a_change_and_a_dry_run_a_read() {
        let other = Peer::new(65534, Role::Other);
        let gc = |params: Value| refused(&other, REPOSITORY, "Gc", Some(&params));
        assert_eq!(
            gc(serde_json::json!({})),
            Some((Right::Change, Some("dryRun")))
        );
        assert_eq!(
            gc(serde_json::json!({"dryRun": false})).map(|r| r.0),
            Some(Right::Change)
        );
        assert_eq!(gc(serde_json::json!({"dryRun": true})), None);
    }

    #[test]
    fn every_method_of_the_daemons_interfaces_has_its_right() {
        let listed = |interface: &str, method: &str| {
            METHODS
                .iter()
                .any(|(i, m, _)| *i == interface && *m == method)
        };
        for method in cfsd_varlink::oci::METHODS {
            assert!(listed(OCI, method), "{OCI}.{method} has no right");
        }
        for method in cfsd_varlink::repository::METHODS {
            assert!(
                listed(REPOSITORY, method),
                "{REPOSITORY}.{method} has no right"
            );
        }
        for (interface, method, _) in METHODS {
            let served = match *interface {
                OCI => cfsd_varlink::oci::METHODS.contains(method),
                _ => cfsd_varlink::repository::METHODS.contains(method),
            };
            assert!(served, "{interface}.{method} is not served");
        }
    }

    #[test]
    fn plain_images_are_made_by_those_who_may_change_and_mounted_by_those_who_may_mount() {
        use Role::*;
        let may = |role: Role, method: &str| {
            let uid = if role == Root { 0 } else { 1000 };
            refused(&Peer::new(uid, role), REPOSITORY, method, None).is_none()
        };
        let methods = [
            "CreateImage",
            "ComputeImageId",
            "ListNamedImages",
            "ImageObjects",
            "MountImage",
        ];
        let table: Vec<(Role, [bool; 5])> = [Root, DaemonUser, Admin, Other]
            .into_iter()
            .map(|role| (role, methods.map(|m| may(role, m))))
            .collect();
        assert_eq!(
            table,
            [
                (Root, [true; 5]),
                (DaemonUser, [true; 5]),
                (Admin, [true, true, true, true, false]),
                (Other, [false, true, true, true, false]),
            ]
        );
    }
}
