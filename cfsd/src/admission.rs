//! How many clients are served at once: in all, and per unprivileged uid.
//!
//! A client over a limit is still accepted, so that it can be told why it
//! is turned away (see [`crate::connection::refuse`]) instead of waiting
//! in the kernel's backlog for a slot that may never come.
//!
//! A user with a subordinate uid range (`/etc/subuid`) can connect as any
//! uid of it, through a user namespace of their own, so the per-uid limit
//! counts every uid of such a range against the range's owner
//! ([`Subuids::account`]).

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
};

use cfsd_varlink::repository::RepositoryError;

use crate::access::Peer;

/// The limits, as configured.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The most clients served at once.
    pub total: usize,
    /// The most clients one unprivileged uid may have served at once.
    pub per_uid: usize,
}

impl Limits {
    /// Slots that only privileged peers may take, so that root and the
    /// admin group can always reach a daemon that unprivileged clients
    /// have filled: an eighth of them.
    fn reserved(&self) -> usize {
        self.total / 8
    }
}

/// The slots in use.
#[derive(Debug)]
pub struct Admissions {
    limits: Limits,
    used: Mutex<Used>,
}

#[derive(Debug, Default)]
struct Used {
    total: usize,
    by_uid: HashMap<u32, usize>,
}

impl Admissions {
    /// No slot in use yet.
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Admissions {
            limits,
            used: Mutex::default(),
        })
    }

    /// Take a slot for `peer`, or say which limit it is over. The slot is
    /// freed when the returned guard is dropped.
    pub fn admit(self: &Arc<Self>, peer: &Peer) -> Result<Slot, RepositoryError> {
        let limits = self.limits;
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let total = if peer.privileged {
            limits.total
        } else {
            limits.total - limits.reserved()
        };
        let refused = |limit: usize, per_uid: bool| RepositoryError::TooManyConnections {
            limit: limit as u64,
            uid: peer.uid,
            per_uid,
        };
        if used.total >= total {
            return Err(refused(total, false));
        }
        if !peer.privileged {
            let mine = used.by_uid.entry(peer.account).or_default();
            if *mine >= limits.per_uid {
                return Err(refused(limits.per_uid, true));
            }
            *mine += 1;
        }
        used.total += 1;
        Ok(Slot {
            admissions: self.clone(),
            uid: (!peer.privileged).then_some(peer.account),
        })
    }

    fn release(&self, uid: Option<u32>) {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        used.total -= 1;
        if let Some(uid) = uid
            && let Some(mine) = used.by_uid.get_mut(&uid)
        {
            *mine -= 1;
            if *mine == 0 {
                used.by_uid.remove(&uid);
            }
        }
    }
}

/// The subordinate uid ranges of `/etc/subuid` (`subuid(5)`): which user
/// each uid of a range belongs to.
#[derive(Debug, Clone, Default)]
pub struct Subuids {
    /// (first uid, count, owner's uid), one per range.
    ranges: Vec<(u32, u32, u32)>,
}

impl Subuids {
    /// Read `path`, naming owners through `/etc/passwd`. A missing file
    /// means no ranges.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
        };
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        Ok(Self::parse(&text, &passwd))
    }

    /// Parse `owner:first:count` lines; `owner` is a login name from
    /// `passwd` or a uid. Lines that are not ranges are skipped, as the
    /// shadow tools skip them. An owner that names no user still owns its
    /// range: every uid of it counts against the range's first uid.
    pub fn parse(subuid: &str, passwd: &str) -> Self {
        let users: HashMap<&str, u32> = passwd
            .lines()
            .filter_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                Some((name, fields.nth(1)?.parse().ok()?))
            })
            .collect();
        let ranges = subuid
            .lines()
            .filter_map(|line| {
                let mut fields = line.trim().split(':');
                let owner = fields.next()?;
                let first: u32 = fields.next()?.parse().ok()?;
                let count: u32 = fields.next()?.parse().ok()?;
                let owner = users
                    .get(owner)
                    .copied()
                    .or_else(|| owner.parse().ok())
                    .unwrap_or(first);
                (count > 0).then_some((first, count, owner))
            })
            .collect();
        Subuids { ranges }
    }

    /// The account `uid` counts against: the owner of the range it lies
    /// in, else itself.
    pub fn account(&self, uid: u32) -> u32 {
        self.ranges
            .iter()
            .find(|(first, count, _)| uid >= *first && uid - first < *count)
            .map_or(uid, |&(_, _, owner)| owner)
    }
}

/// One client's slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    admissions: Arc<Admissions>,
    /// The account the slot counts against, for an unprivileged peer.
    uid: Option<u32>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admissions.release(self.uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Role;

    fn peer(uid: u32, privileged: bool) -> Peer {
        Peer {
            uid,
            account: uid,
            pid: 1,
            privileged,
            role: if privileged { Role::Admin } else { Role::Other },
            groups: (uid, std::sync::Arc::from([])),
        }
    }

    fn limit_of(refusal: RepositoryError) -> (u64, bool) {
        match refusal {
            RepositoryError::TooManyConnections { limit, per_uid, .. } => (limit, per_uid),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn one_uid_cannot_take_every_slot_and_privileged_peers_keep_a_reserve() {
        let admissions = Admissions::new(Limits {
            total: 16,
            per_uid: 6,
        });
        let first: Vec<_> = (0..6)
            .map(|_| admissions.admit(&peer(1000, false)).unwrap())
            .collect();
        let over = admissions.admit(&peer(1000, false)).unwrap_err();
        assert_eq!(limit_of(over), (6, true));
        let second: Vec<_> = (0..6)
            .map(|_| admissions.admit(&peer(1001, false)).unwrap())
            .collect();
        // 14 of 16 slots are open to unprivileged peers.
        let _third: Vec<_> = (0..2)
            .map(|_| admissions.admit(&peer(1002, false)).unwrap())
            .collect();
        let over = admissions.admit(&peer(1003, false)).unwrap_err();
        assert_eq!(limit_of(over), (14, false));
        let root = admissions.admit(&peer(0, true)).unwrap();
        let _admin = admissions.admit(&peer(1004, true)).unwrap();
        let over = admissions.admit(&peer(0, true)).unwrap_err();
        assert_eq!(limit_of(over), (16, false));

        drop(root);
        drop(first);
        drop(second);
        assert!(admissions.admit(&peer(1000, false)).is_ok());
        assert!(admissions.admit(&peer(0, true)).is_ok());
    }

    #[test]
    fn every_uid_of_a_subordinate_range_counts_against_its_owner() {
        let passwd = "root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        let subuids = Subuids::parse(
            "alice:100000:65536\n2000:200000:10\n# not a range\nghost:300000:5\nbad:1:x\n",
            passwd,
        );
        assert_eq!(subuids.account(100000), 1000);
        assert_eq!(subuids.account(165535), 1000);
        assert_eq!(subuids.account(165536), 165536, "past the range");
        assert_eq!(subuids.account(200009), 2000, "a numeric owner");
        assert_eq!(subuids.account(300004), 300000, "an owner with no user");
        assert_eq!(subuids.account(1000), 1000);
        assert_eq!(subuids.account(u32::MAX), u32::MAX);

        let admissions = Admissions::new(Limits {
            total: 64,
            per_uid: 3,
        });
        let as_sub = |uid: u32| Peer {
            account: subuids.account(uid),
            ..peer(uid, false)
        };
        let _held: Vec<_> = [1000, 100001, 100002]
            .into_iter()
            .map(|uid| admissions.admit(&as_sub(uid)).unwrap())
            .collect();
        let over = admissions.admit(&as_sub(150000)).unwrap_err();
        assert_eq!(limit_of(over), (3, true));
        assert!(admissions.admit(&as_sub(165536)).is_ok());
    }
}
