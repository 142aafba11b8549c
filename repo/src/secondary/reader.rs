//! Whose rights bound what the daemon reads of a client's repository.

/// A peer's identity, as file permissions judge it: the daemon reads a
/// client's secondary repository only where this peer could itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reader {
    /// Its uid.
    pub uid: u32,
    /// Its primary and supplementary groups.
    pub gids: Vec<u32>,
}

impl Reader {
    /// The peer of `uid` in `gids`.
    pub fn new(uid: u32, gids: Vec<u32>) -> Self {
        Reader { uid, gids }
    }

    /// The peer process `pid` of `uid`, with the groups its
    /// `/proc/PID/status` lists; only `uid`'s own rights (no group's)
    /// when that process is gone or is another user's now.
    pub fn of_process(uid: u32, pid: u32) -> Self {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| -> Vec<u32> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|rest| {
                    rest.split_whitespace()
                        .filter_map(|n| n.parse().ok())
                        .collect()
                })
                .unwrap_or_default()
        };
        let uids = field("Uid:");
        if uids.first() != Some(&uid) {
            return Reader::new(uid, Vec::new());
        }
        let mut gids = field("Gid:").into_iter().take(1).collect::<Vec<_>>();
        gids.extend(field("Groups:"));
        Reader::new(uid, gids)
    }

    /// Whether this peer has the permission `bit` (4 read, 1 search) on
    /// a file of owner `uid`, group `gid` and `mode`, by the mode bits.
    /// ACLs are not consulted: a file only an ACL opens is refused.
    pub(crate) fn may(&self, uid: u32, gid: u32, mode: u32, bit: u32) -> bool {
        if self.uid == 0 {
            return true;
        }
        let class = if uid == self.uid {
            mode >> 6
        } else if self.gids.contains(&gid) {
            mode >> 3
        } else {
            mode
        };
        class & bit != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_class_decides() {
        let peer = Reader::new(1000, vec![100]);
        assert!(peer.may(1000, 0, 0o400, 4));
        // The owner class decides for the owner, even if others may.
        assert!(!peer.may(1000, 0, 0o044, 4));
        assert!(peer.may(0, 100, 0o040, 4));
        assert!(!peer.may(0, 100, 0o404, 4));
        assert!(peer.may(0, 0, 0o004, 4));
        assert!(!peer.may(0, 0, 0o700, 1));
        assert!(Reader::new(0, vec![]).may(5, 5, 0, 4));
    }
}
