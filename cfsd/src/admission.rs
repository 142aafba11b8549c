//! How many clients are served at once: in all, and per unprivileged uid.
//!
//! A client over a limit is still accepted, so that it can be told why it
//! is turned away (see [`crate::connection::refuse`]) instead of waiting
//! in the kernel's backlog for a slot that may never come.

use std::{
    collections::HashMap,
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
            let mine = used.by_uid.entry(peer.uid).or_default();
            if *mine >= limits.per_uid {
                return Err(refused(limits.per_uid, true));
            }
            *mine += 1;
        }
        used.total += 1;
        Ok(Slot {
            admissions: self.clone(),
            uid: (!peer.privileged).then_some(peer.uid),
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

/// One client's slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    admissions: Arc<Admissions>,
    /// The uid the slot counts against, for an unprivileged peer.
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
            privileged,
            role: if privileged { Role::Admin } else { Role::Other },
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
}
