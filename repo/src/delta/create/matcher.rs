//! The `bsdiff` method's matcher: a rolling-hash block matcher that says
//! which runs of a new file can be copied from an old one, which differ
//! from it in place (and are sent as bytewise differences), and which
//! are new.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
};

/// The length of the blocks of a small old file that are indexed; a match
/// is found only where a whole block recurs. Larger files get longer
/// blocks, up to [`MAX_BLOCK`], so that their index stays near a million
/// entries.
const BLOCK: usize = 32;
const MAX_BLOCK: usize = 4096;

/// The multiplier of the polynomial rolling hash.
const PRIME: u64 = 0x100_0000_01b3;

/// A run of the new file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    /// `len` bytes equal to the old file's at `from`.
    Copy {
        /// Where they start in the old file.
        from: u64,
        /// How many.
        len: u64,
    },
    /// The new bytes `new[at..at + len]`, sent as their bytewise
    /// difference to the old file's at `from`: mostly zeros where an edit
    /// kept the length, which compresses well.
    Add {
        /// Where the run starts in the new file.
        at: usize,
        /// Where the old bytes start.
        from: u64,
        /// How many.
        len: usize,
    },
    /// The new bytes `new[at..at + len]`, sent as they are.
    Data {
        /// Where the run starts in the new file.
        at: usize,
        /// How many.
        len: usize,
    },
}

/// Split `new` into pieces to rebuild it from `old`. Every byte of `new`
/// is in exactly one piece, in order.
pub(crate) fn diff(old: &[u8], new: &[u8]) -> Vec<Piece> {
    let index = Index::new(old);
    let block = index.block;
    let mut pieces = Pieces::default();
    let mut literal = 0; // start of the run not yet matched
    let mut i = 0;
    let mut hash = None;
    while i + block <= new.len() {
        let h = match hash {
            Some(h) => h,
            None => block_hash(&new[i..i + block]),
        };
        if let Some(from) = index.find(h, old, &new[i..i + block]) {
            let (start, from, len) = extend(old, new, from, i, literal);
            pieces.unmatched(old, literal, start, from);
            pieces.push(Piece::Copy {
                from: from as u64,
                len: len as u64,
            });
            i = start + len;
            literal = i;
            hash = None;
            continue;
        }
        hash = (i + block < new.len()).then(|| roll(h, new[i], new[i + block], index.top));
        i += 1;
    }
    pieces.unmatched(old, literal, new.len(), old.len());
    pieces.0
}

/// Grow the match of `new[at..]` and `old[from..]` forwards as far as the
/// bytes agree and backwards into the unmatched run that starts at
/// `floor`; return its start in `new`, start in `old` and length.
fn extend(old: &[u8], new: &[u8], from: usize, at: usize, floor: usize) -> (usize, usize, usize) {
    let forward = old[from..]
        .iter()
        .zip(&new[at..])
        .take_while(|(a, b)| a == b)
        .count();
    let backward = old[..from]
        .iter()
        .rev()
        .zip(new[floor..at].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    (at - backward, from - backward, forward + backward)
}

/// The pieces found so far, and where the last copy ended in the old file.
#[derive(Default)]
struct Pieces(Vec<Piece>);

impl Pieces {
    fn push(&mut self, piece: Piece) {
        self.0.push(piece);
    }

    /// The unmatched run `new[start..end]` before a match at `old[next..]`.
    /// When the old file has a run of the same length just before the
    /// match, right after the previous one, it is an in-place edit: send
    /// the difference. Otherwise the run is new data.
    fn unmatched(&mut self, old: &[u8], start: usize, end: usize, next: usize) {
        let len = end - start;
        if len == 0 {
            return;
        }
        let after_last = match self.0.last() {
            Some(Piece::Copy { from, len }) => (from + len) as usize,
            _ => 0,
        };
        if next >= after_last && next - after_last == len && after_last + len <= old.len() {
            self.push(Piece::Add {
                at: start,
                from: after_last as u64,
                len,
            });
        } else {
            self.push(Piece::Data { at: start, len });
        }
    }
}

/// Where each block-aligned block of the old file starts, by hash; the
/// first one wins.
struct Index {
    starts: HashMap<u64, usize, BuildHasherDefault<Passthrough>>,
    /// The block length.
    block: usize,
    /// `PRIME` to the power `block - 1`, to take the leaving byte out.
    top: u64,
}

impl Index {
    fn new(old: &[u8]) -> Self {
        let block = block_length(old.len() as u64);
        let mut starts =
            HashMap::with_capacity_and_hasher(old.len() / block + 1, Default::default());
        for (n, chunk) in old.chunks_exact(block).enumerate() {
            starts.entry(block_hash(chunk)).or_insert(n * block);
        }
        Index {
            starts,
            block,
            top: top(block),
        }
    }

    /// The start of an old block equal to `block`, whose hash is `hash`.
    fn find(&self, hash: u64, old: &[u8], block: &[u8]) -> Option<usize> {
        let from = *self.starts.get(&hash)?;
        (old[from..from + self.block] == *block).then_some(from)
    }
}

/// The length of the blocks indexed in an old file of `len` bytes.
pub(super) fn block_length(len: u64) -> usize {
    (len >> 20).clamp(1, (MAX_BLOCK / BLOCK) as u64) as usize * BLOCK
}

/// `PRIME` to the power `block - 1`, to take the leaving byte out.
pub(super) fn top(block: usize) -> u64 {
    (1..block).fold(1u64, |acc, _| acc.wrapping_mul(PRIME))
}

/// The keys are hashes already: mixing them again only costs time.
#[derive(Default)]
pub(super) struct Passthrough(u64);

impl Hasher for Passthrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The rolling hash of one block.
pub(super) fn block_hash(block: &[u8]) -> u64 {
    block.iter().fold(0u64, |h, &b| {
        h.wrapping_mul(PRIME).wrapping_add(u64::from(b))
    })
}

/// The hash of the window moved on by one byte, for windows whose
/// [`top`] is `top`.
pub(super) fn roll(hash: u64, leaving: u8, entering: u8, top: u64) -> u64 {
    hash.wrapping_sub(u64::from(leaving).wrapping_mul(top))
        .wrapping_mul(PRIME)
        .wrapping_add(u64::from(entering))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rebuild `new` from `old` and the pieces, as the applier would.
    fn rebuild(old: &[u8], new: &[u8], pieces: &[Piece]) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in pieces {
            match *piece {
                Piece::Copy { from, len } => {
                    out.extend_from_slice(&old[from as usize..(from + len) as usize])
                }
                Piece::Add { at, from, len } => {
                    let from = from as usize;
                    let delta = new[at..at + len]
                        .iter()
                        .zip(&old[from..from + len])
                        .map(|(n, o)| n.wrapping_sub(*o));
                    out.extend(
                        delta
                            .zip(&old[from..from + len])
                            .map(|(d, o)| d.wrapping_add(*o)),
                    );
                }
                Piece::Data { at, len } => out.extend_from_slice(&new[at..at + len]),
            }
        }
        out
    }

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn edits_insertions_and_moves_rebuild_the_new_file() {
        let old = noise(100_000, 7);
        let mut edited = old.clone();
        edited[5000..5010].fill(0);
        let mut inserted = old[..40_000].to_vec();
        inserted.extend(noise(777, 9));
        inserted.extend(&old[40_000..]);
        let mut moved = old[60_000..].to_vec();
        moved.extend(&old[..60_000]);
        for new in [
            old.clone(),
            edited,
            inserted,
            moved,
            Vec::new(),
            noise(10, 3),
        ] {
            let pieces = diff(&old, &new);
            assert_eq!(rebuild(&old, &new, &pieces), new);
        }
    }

    #[test]
    fn an_in_place_edit_is_a_difference_not_new_data() {
        let old = noise(10_000, 1);
        let mut new = old.clone();
        new[4000..4020].fill(b'x');
        let pieces = diff(&old, &new);
        let data: usize = pieces
            .iter()
            .map(|p| match p {
                Piece::Data { len, .. } => *len,
                _ => 0,
            })
            .sum();
        assert_eq!(data, 0, "{pieces:?}");
        assert!(pieces.iter().any(|p| matches!(p, Piece::Add { .. })));
    }
}
