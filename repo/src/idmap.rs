//! ID maps: which host uid or gid each id of an image's files stands for,
//! as `CONTAINER:HOST:LENGTH` ranges (the form of `/proc/PID/uid_map`,
//! podman's `--uidmap` and containers/storage).
//!
//! A map is checked whole before it is used, for an idmapped mount and
//! for an ID-mapped image alike: a range of length 0, one that runs past
//! uid 4294967294 on either side (4294967295 is `(uid_t)-1`, which the
//! kernel never maps), and two ranges that overlap on either side are
//! refused, as the kernel refuses them in a user namespace's map. An id
//! that no range covers has no owner in the result, and is refused where
//! it is met.

use crate::Error;

/// The most ranges one map may have: the kernel's limit for a user
/// namespace (`UID_GID_MAP_MAX_EXTENTS`).
pub const MAX_RANGES: usize = 340;

/// How much of a refused map its error shows.
const SHOWN: usize = 200;

/// The ids there are: 0 ..= 4294967294.
const IDS: u64 = u32::MAX as u64;

/// One range of a map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// The first id as the image's files carry it.
    pub container: u32,
    /// The first host id it stands for.
    pub host: u32,
    /// How many ids, from those two on.
    pub length: u32,
}

/// A checked map of uids or of gids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMap {
    /// Which ids (`uid` or `gid`), for messages.
    kind: &'static str,
    ranges: Vec<IdRange>,
}

/// A uid map and a gid map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMapping {
    /// The uid map.
    pub uid: IdMap,
    /// The gid map.
    pub gid: IdMap,
}

impl IdMapping {
    /// Parse and check both maps; each is a list of `C:H:L` ranges.
    pub fn parse(uidmap: &[String], gidmap: &[String]) -> Result<Self, Error> {
        Ok(IdMapping {
            uid: IdMap::parse("uid", uidmap)?,
            gid: IdMap::parse("gid", gidmap)?,
        })
    }

    /// Whether some image id stands for host uid 0 or host gid 0.
    pub fn reaches_root(&self) -> bool {
        self.uid.covers_host(0) || self.gid.covers_host(0)
    }
}

impl IdMap {
    /// Parse and check `ranges`, the `C:H:L` ranges of the `kind` map.
    pub fn parse(kind: &'static str, ranges: &[String]) -> Result<Self, Error> {
        let mut whole = ranges.join(",");
        if whole.len() > SHOWN {
            // A peer's list may be long; the message names its start.
            let cut = (0..=SHOWN)
                .rev()
                .find(|&i| whole.is_char_boundary(i))
                .unwrap_or(0);
            whole.truncate(cut);
            whole.push_str("...");
        }
        let invalid = |reason: String| Error::InvalidIdMap {
            map: format!("{kind}map {whole}"),
            reason,
        };
        if ranges.is_empty() {
            return Err(invalid("it has no range".to_owned()));
        }
        if ranges.len() > MAX_RANGES {
            return Err(invalid(format!(
                "it has {} ranges, more than the kernel's {MAX_RANGES}",
                ranges.len()
            )));
        }
        let parsed = ranges
            .iter()
            .map(|r| parse_range(r).map_err(|why| invalid(format!("range {r:?} {why}"))))
            .collect::<Result<Vec<_>, _>>()?;
        check_overlaps(&parsed, |r| r.container, "image")
            .and_then(|()| check_overlaps(&parsed, |r| r.host, "host"))
            .map_err(invalid)?;
        Ok(IdMap {
            kind,
            ranges: parsed,
        })
    }

    /// The host id `id` stands for, if a range covers it.
    pub fn map(&self, id: u32) -> Option<u32> {
        self.ranges.iter().find_map(|r| {
            let offset = id.checked_sub(r.container)?;
            (offset < r.length).then(|| r.host + offset)
        })
    }

    /// Whether some range stands for host id `id`.
    pub fn covers_host(&self, id: u32) -> bool {
        self.ranges
            .iter()
            .any(|r| id >= r.host && u64::from(id - r.host) < u64::from(r.length))
    }

    /// `uid` or `gid`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The ranges, in the order given.
    pub fn ranges(&self) -> &[IdRange] {
        &self.ranges
    }

    /// The map as `/proc/PID/uid_map` takes it: `C H L` lines.
    pub fn proc_text(&self) -> String {
        self.ranges
            .iter()
            .map(|r| format!("{} {} {}\n", r.container, r.host, r.length))
            .collect()
    }

    /// The map as `C:H:L,...`, as it was given.
    pub fn text(&self) -> String {
        self.ranges
            .iter()
            .map(|r| format!("{}:{}:{}", r.container, r.host, r.length))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn parse_range(text: &str) -> Result<IdRange, String> {
    let fields: Vec<&str> = text.split(':').collect();
    let [container, host, length] = fields[..] else {
        return Err("is not CONTAINER:HOST:LENGTH".to_owned());
    };
    let number = |field: &str, what: &str| {
        field.parse::<u32>().map_err(|_| {
            format!("has {what} {field:?}, which is not a number from 0 to 4294967295")
        })
    };
    let range = IdRange {
        container: number(container, "container id")?,
        host: number(host, "host id")?,
        length: number(length, "length")?,
    };
    if range.length == 0 {
        return Err("has length 0".to_owned());
    }
    for (side, start) in [("image", range.container), ("host", range.host)] {
        if u64::from(start) + u64::from(range.length) > IDS {
            return Err(format!(
                "runs past id 4294967294 on the {side} side ({start} + {})",
                range.length
            ));
        }
    }
    Ok(range)
}

/// Refuse two ranges whose `side` (image or host ids) overlap.
fn check_overlaps(
    ranges: &[IdRange],
    start: impl Fn(&IdRange) -> u32,
    side: &str,
) -> Result<(), String> {
    let mut spans: Vec<(u64, u64, usize)> = ranges
        .iter()
        .enumerate()
        .map(|(i, r)| {
            (
                u64::from(start(r)),
                u64::from(start(r)) + u64::from(r.length),
                i,
            )
        })
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        let ((_, end, a), (next, _, b)) = (pair[0], pair[1]);
        if next < end {
            let show = |i: usize| {
                let r = ranges[i];
                format!("{}:{}:{}", r.container, r.host, r.length)
            };
            return Err(format!(
                "ranges {} and {} overlap on the {side} side",
                show(a.min(b)),
                show(a.max(b))
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(ranges: &[&str]) -> Result<IdMap, Error> {
        let ranges: Vec<String> = ranges.iter().map(|s| s.to_string()).collect();
        IdMap::parse("uid", &ranges)
    }

    fn reason(ranges: &[&str]) -> String {
        match map(ranges) {
            Err(Error::InvalidIdMap { reason, .. }) => reason,
            other => panic!("{ranges:?}: {other:?}"),
        }
    }

    #[test]
    fn maps_ids_through_their_range_and_no_other() {
        let m = map(&["0:100000:65536", "65536:5000:10"]).unwrap();
        assert_eq!(m.map(0), Some(100000));
        assert_eq!(m.map(65535), Some(165535));
        assert_eq!(m.map(65536), Some(5000));
        assert_eq!(m.map(65545), Some(5009));
        assert_eq!(m.map(65546), None);
        assert!(m.covers_host(100000) && !m.covers_host(0));
        assert_eq!(m.proc_text(), "0 100000 65536\n65536 5000 10\n");
        assert_eq!(m.text(), "0:100000:65536,65536:5000:10");
        let full = map(&["0:0:4294967295"]).unwrap();
        assert_eq!(full.map(4294967294), Some(4294967294));
        assert_eq!(full.map(u32::MAX), None);
    }

    #[test]
    fn overflowing_overlapping_and_malformed_maps_are_refused() {
        assert!(reason(&["0:4294967295:2"]).contains("runs past id 4294967294 on the host side"));
        assert!(reason(&["4294967290:0:10"]).contains("on the image side"));
        assert!(reason(&["0:100000:10", "5:200000:10"]).contains("overlap on the image side"));
        assert!(reason(&["0:100000:10", "10:100005:3"]).contains("overlap on the host side"));
        assert!(reason(&["0:1:0"]).contains("length 0"));
        assert!(reason(&["0:1"]).contains("CONTAINER:HOST:LENGTH"));
        assert!(reason(&["-1:1:1"]).contains("not a number"));
        assert!(reason(&[]).contains("no range"));
        let many: Vec<String> = (0..341).map(|i| format!("{i}:{}:1", i + 1000)).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(reason(&many).contains("more than the kernel's 340"));
        // Touching ranges do not overlap.
        map(&["0:100:10", "10:110:10"]).unwrap();
    }
}
