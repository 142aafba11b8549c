//! The zstd:chunked reader and writer (`cfsd_repo::chunked`).
//!
//! An even first byte: the rest is a layer tar, which the writer writes
//! as zstd:chunked. If it is written, plain zstd must decode the blob to
//! the tar, and our reader must find the metadata both through the
//! annotations and through the footer and rebuild the tar byte for byte
//! from the tar-split and the files' frames. If it is refused, the error
//! says the data is invalid.
//!
//! An odd first byte: the rest is a blob from a registry, read through
//! its footer with small limits. Whatever the reader accepts must keep
//! its promises: every file's frames inside the files' region, in order
//! and apart, the tar-split within its declared size.

#![no_main]

use std::{collections::HashMap, io::Write};

use cfsd_repo::chunked::{
    ChunkedWriter, Footer, Layout, Limits, TarSplit, TarSplitEntry, Toc, TocFault,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        write_and_read_back(rest);
    } else {
        let _ = read(rest, &small_limits());
    }
});

fn small_limits() -> Limits {
    Limits {
        toc: 1 << 20,
        tar_split: 1 << 20,
        tar_split_line: 64 << 10,
    }
}

fn range(blob: &[u8], start: u64, end: u64) -> Option<&[u8]> {
    blob.get(usize::try_from(start).ok()?..usize::try_from(end).ok()?)
}

/// Read `blob` through its footer; check what was accepted.
fn read(blob: &[u8], limits: &Limits) -> Result<(Toc, Option<TarSplit>), TocFault> {
    let tail = &blob[blob.len().saturating_sub(72)..];
    let layout = Layout::from_footer(&Footer::parse(tail)?);
    read_layout(blob, &layout, limits)
}

fn read_layout(
    blob: &[u8],
    layout: &Layout,
    limits: &Limits,
) -> Result<(Toc, Option<TarSplit>), TocFault> {
    layout.check(blob.len() as u64)?;
    let toc_frame = range(blob, layout.toc.offset, layout.toc.end().unwrap()).unwrap();
    let toc = Toc::decode(toc_frame, layout, blob.len() as u64, limits)?;
    let mut end = 0;
    for file in toc.files() {
        for frame in file.frames() {
            assert!(frame.blob.start >= end && frame.blob.start < frame.blob.end);
            assert!(frame.blob.end <= layout.data_end());
            end = frame.blob.end;
        }
    }
    let split = match layout.tar_split {
        Some(position) => {
            let frame = range(blob, position.offset, position.end().unwrap()).unwrap();
            let split = TarSplit::decode(frame, &toc, layout, limits)?;
            // The bytes decoded from base64 are fewer than its text.
            let size: usize = split.entries.iter().map(decoded_size).sum();
            assert!(size as u64 <= position.uncompressed);
            Some(split)
        }
        None => None,
    };
    Ok((toc, split))
}

fn decoded_size(entry: &TarSplitEntry) -> usize {
    match entry {
        TarSplitEntry::Segment(bytes) => bytes.len(),
        TarSplitEntry::File { name, .. } => name.len(),
    }
}

fn write_and_read_back(tar: &[u8]) {
    let mut writer = ChunkedWriter::new(Vec::new()).expect("a writer");
    let written = writer.write_all(tar).and_then(|()| writer.finish());
    let (blob, layer) = match written {
        Ok(done) => done,
        Err(e) => {
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
            return;
        }
    };
    assert_eq!(layer.size, blob.len() as u64);
    let decoded = zstd::decode_all(blob.as_slice()).expect("plain zstd reads the blob");
    assert!(decoded == tar, "plain zstd gives the tar back");
    let annotations: HashMap<String, String> = layer.layout.annotations().into_iter().collect();
    let layout = Layout::from_annotations(|k| annotations.get(k).map(String::as_str))
        .expect("our annotations read")
        .expect("a zstd:chunked layout");
    assert_eq!(layout, layer.layout);
    let limits = Limits::default();
    let (toc, split) = read_layout(&blob, &layout, &limits).expect("our blob reads back");
    let (footer_toc, _) = read(&blob, &limits).expect("our footer reads back");
    assert_eq!(footer_toc, toc);
    assert!(rebuild(&blob, &toc, &split.expect("a tar-split")) == tar);
}

/// The tar from the tar-split's segments and the files' frames, the
/// tar-split's non-empty files matched to the TOC's in order.
fn rebuild(blob: &[u8], toc: &Toc, split: &TarSplit) -> Vec<u8> {
    let mut files = toc.files().filter(|f| f.entry.size > 0);
    let mut tar = Vec::new();
    for entry in &split.entries {
        match entry {
            TarSplitEntry::Segment(bytes) => tar.extend_from_slice(bytes),
            TarSplitEntry::File { size: 0, .. } => {}
            TarSplitEntry::File { size, .. } => {
                let file = files.next().expect("a TOC file for each tar-split file");
                assert_eq!(file.entry.size, *size);
                for frame in file.frames() {
                    let part = range(blob, frame.blob.start, frame.blob.end).unwrap();
                    tar.extend(zstd::decode_all(part).expect("a file frame decodes"));
                }
            }
        }
    }
    assert!(files.next().is_none());
    tar
}
