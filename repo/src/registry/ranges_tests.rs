use super::*;

fn spans(list: &[(u64, u64)]) -> Vec<Span> {
    list.iter()
        .map(|&(start, end)| Span { start, end })
        .collect()
}

/// Feed `wanted` the blob `blob` as pieces at `pieces` offsets and
/// lengths: the bytes made ready, joined.
fn feed(wanted: &mut Wanted, blob: &[u8], pieces: &[(u64, u64)]) -> Result<Vec<u8>, ()> {
    let mut ready = VecDeque::new();
    for &(at, len) in pieces {
        let bytes = Bytes::copy_from_slice(&blob[at as usize..(at + len) as usize]);
        wanted.take(at, bytes, &mut ready)?;
    }
    Ok(ready.into_iter().flat_map(|b| b.to_vec()).collect())
}

#[test]
fn near_spans_are_merged_and_requests_hold_at_most_the_limit() {
    let gap = MERGE_GAP;
    let wanted = Wanted::new(spans(&[
        (0, 10),
        (10 + gap, 20 + gap),
        (1000, 1001),
        (2000, 2100),
        (5000, 5001),
    ]));
    let (ranges, until) = wanted.ranges(2);
    assert_eq!(ranges, vec![(0, 19 + gap), (1000, 1000)]);
    assert_eq!(until, 1001);
    let (ranges, until) = wanted.ranges(MAX_RANGES);
    assert_eq!(ranges.len(), 4);
    assert_eq!(until, 5001);
    assert_eq!(wanted.ranges(1).0, vec![(0, 19 + gap)]);
}

#[test]
fn only_wanted_bytes_pass_whatever_pieces_the_server_sends() {
    let blob: Vec<u8> = (0..=255u8).cycle().take(4000).collect();
    let list = [(5, 10), (12, 40), (1000, 1003), (3990, 4000)];
    let expected: Vec<u8> = list
        .iter()
        .flat_map(|&(a, b)| blob[a as usize..b as usize].to_vec())
        .collect();
    // The ranges asked for, a whole body in odd pieces, and merged parts
    // that repeat bytes already taken.
    let answers: [Vec<(u64, u64)>; 3] = [
        vec![(5, 5), (12, 28), (1000, 3), (3990, 10)],
        (0..4000).step_by(7).map(|a| (a, 7.min(4000 - a))).collect(),
        vec![(0, 41), (30, 10), (999, 5), (3000, 1000)],
    ];
    for pieces in answers {
        let mut wanted = Wanted::new(spans(&list));
        assert_eq!(feed(&mut wanted, &blob, &pieces).unwrap(), expected);
        assert!(wanted.finished());
    }
}

#[test]
fn a_piece_past_the_next_wanted_byte_is_refused() {
    let blob = vec![7u8; 100];
    let mut wanted = Wanted::new(spans(&[(10, 20), (50, 60)]));
    // The server skipped 15..20.
    assert_eq!(feed(&mut wanted, &blob, &[(10, 5), (50, 10)]), Err(()));
    assert_eq!(wanted.next, 15);
    assert!(!wanted.finished());
    // Asked again from there (the two near spans merged), the rest comes.
    assert_eq!(wanted.ranges(MAX_RANGES).0, vec![(15, 59)]);
    assert_eq!(
        feed(&mut wanted, &blob, &[(15, 5), (50, 10)])
            .unwrap()
            .len(),
        15
    );
    assert!(wanted.finished());
}
