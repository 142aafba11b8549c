//! The writer, read back by our reader, by plain zstd, and by the
//! zstd-chunked crate.

use std::{collections::HashMap, io::Write};

use super::{
    tests::{big_content, layer_tar, noise},
    write::rfc3339,
    *,
};

/// `tar` written as zstd:chunked, fed `piece` bytes at a time.
fn chunked(tar: &[u8], piece: usize) -> (Vec<u8>, ChunkedLayer) {
    let mut writer = ChunkedWriter::new(Vec::new()).unwrap();
    for part in tar.chunks(piece) {
        writer.write_all(part).unwrap();
    }
    writer.finish().unwrap()
}

fn frame<'a>(blob: &'a [u8], position: &Position) -> &'a [u8] {
    &blob[position.offset as usize..position.end().unwrap() as usize]
}

fn read_back(blob: &[u8], layer: &ChunkedLayer) -> (Toc, TarSplit) {
    let layout = &layer.layout;
    let limits = Limits::default();
    let toc = Toc::decode(frame(blob, &layout.toc), layout, blob.len() as u64, &limits).unwrap();
    let split = layout.tar_split.unwrap();
    let tar_split = TarSplit::decode(frame(blob, &split), &toc, layout, &limits).unwrap();
    (toc, tar_split)
}

/// The tar rebuilt from the tar-split and the TOC's frames, as a partial
/// pull does.
fn rebuild(blob: &[u8], toc: &Toc, tar_split: &TarSplit) -> Vec<u8> {
    let files: HashMap<&str, TocFile<'_>> = toc.files().map(|f| (&*f.entry.name, f)).collect();
    let mut tar = Vec::new();
    for entry in &tar_split.entries {
        match entry {
            TarSplitEntry::Segment(bytes) => tar.extend_from_slice(bytes),
            TarSplitEntry::File { size: 0, .. } => {}
            TarSplitEntry::File { name, size, crc64 } => {
                let file = files[std::str::from_utf8(name).unwrap()];
                let mut content = Vec::new();
                for frame in file.frames() {
                    let part = &blob[frame.blob.start as usize..frame.blob.end as usize];
                    content.extend(zstd::decode_all(part).unwrap());
                }
                assert_eq!(content.len() as u64, *size);
                assert_eq!(Some(crc64_iso(&content)), *crc64);
                tar.extend(content);
            }
        }
    }
    tar
}

#[test]
fn a_written_blob_decodes_to_the_tar_and_reads_back_through_toc_and_tar_split() {
    let (tar, files) = layer_tar();
    let (blob, layer) = chunked(&tar, 1 << 16);
    assert_eq!(layer.diff_id, sha256_digest(&tar));
    assert_eq!(layer.size, blob.len() as u64);
    // A plain decoder skips the metadata frames.
    assert!(zstd::decode_all(blob.as_slice()).unwrap() == tar);
    let (toc, tar_split) = read_back(&blob, &layer);
    assert!(rebuild(&blob, &toc, &tar_split) == tar);
    for (path, data) in &files {
        let file = toc.files().find(|f| &f.entry.name == path).unwrap();
        assert_eq!(file.entry.size, data.len() as u64);
        if !data.is_empty() {
            assert_eq!(file.entry.digest.as_deref(), Some(&*sha256_digest(data)));
        }
        for frame in file.frames() {
            let part = zstd::decode_all(&blob[frame.blob.start as usize..frame.blob.end as usize])
                .unwrap();
            assert!(part == data[frame.file.start as usize..frame.file.end as usize]);
            if let Some(digest) = frame.digest {
                assert_eq!(sha256_digest(&part), digest);
            }
        }
    }
    let big = toc.files().find(|f| f.entry.name == "usr/lib/big").unwrap();
    assert!(big.chunks.len() > 2, "{} chunks", big.chunks.len() + 1);
    let zeros: Vec<&TocEntry> = std::iter::once(big.entry)
        .chain(big.chunks)
        .filter(|c| c.chunk_type.as_deref() == Some("zeros"))
        .collect();
    assert_eq!(zeros.len(), 1, "the 8 KiB of zeros are one chunk");
    assert_eq!(zeros[0].chunk_size, 8192);
    // The footer says what the annotations say.
    let footer = Footer::parse(&blob[blob.len() - 72..]).unwrap();
    let mut from_footer = Layout::from_footer(&footer);
    from_footer.toc_checksum = layer.layout.toc_checksum.clone();
    assert_eq!(from_footer, layer.layout);
    let annotations: HashMap<String, String> = layer.layout.annotations().into_iter().collect();
    let from_annotations =
        Layout::from_annotations(|k| annotations.get(k).map(String::as_str)).unwrap();
    assert_eq!(from_annotations, Some(layer.layout.clone()));
}

#[test]
fn the_zstd_chunked_crate_rebuilds_the_tar_from_what_we_write() {
    let (tar, _) = layer_tar();
    let (blob, layer) = chunked(&tar, 4093);
    let layout = &layer.layout;
    let stream = zstd_chunked::Stream::new_from_frames(
        frame(&blob, &layout.toc),
        frame(&blob, &layout.tar_split.unwrap()),
    )
    .unwrap();
    let mut rebuilt = Vec::new();
    stream
        .write_to(&mut rebuilt, |r| {
            let part = &blob[r.range.start as usize..r.range.end as usize];
            let data = zstd::decode_all(part)?;
            assert_eq!(data.len() as u64, r.size);
            assert_eq!(sha256_digest(&data), r.digest);
            Ok(data)
        })
        .unwrap();
    assert!(rebuilt == tar);
    let theirs = zstd_chunked::MetadataReferences::from_footer(&blob).unwrap();
    assert_eq!(
        theirs.manifest.range,
        layout.toc.offset..layout.toc.end().unwrap()
    );
}

#[test]
fn the_same_tar_gives_the_same_blob_however_it_is_fed() {
    let (tar, _) = layer_tar();
    let (whole, layer) = chunked(&tar, tar.len());
    for piece in [1, 511, 4093, 65536, 200_000] {
        let (pieces, again) = chunked(&tar, piece);
        assert!(pieces == whole, "fed {piece} bytes at a time");
        assert_eq!(again, layer);
    }
}

/// A tar with what the plain fixture lacks: a long name (PAX), a name
/// that is not UTF-8, an xattr, a device, a FIFO, a file of zeros only,
/// and padding past the end-of-archive blocks.
fn awkward_tar() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let long = format!("opt/{}/file", "d".repeat(150));
    let mut header = tar::Header::new_gnu();
    header.set_size(5);
    header.set_mode(0o600);
    builder
        .append_data(&mut header, &long, &b"long!"[..])
        .unwrap();
    builder
        .append_pax_extensions([("SCHILY.xattr.user.note", &b"hi"[..])])
        .unwrap();
    let mut header = tar::Header::new_ustar();
    header.set_size(3);
    header.set_mode(0o644);
    builder
        .append_data(&mut header, "etc/x", &b"abc"[..])
        .unwrap();
    let mut header = tar::Header::new_ustar();
    header.set_size(2);
    header.set_mode(0o644);
    header.as_old_mut().name[..6].copy_from_slice(b"bin/\xff\xfe");
    header.set_cksum();
    builder.append(&header, &b"ok"[..]).unwrap();
    for (kind, path) in [
        (tar::EntryType::Char, "dev/null"),
        (tar::EntryType::Fifo, "run/p"),
    ] {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(kind);
        header.set_size(0);
        header.set_device_major(1).unwrap();
        header.set_device_minor(3).unwrap();
        builder
            .append_data(&mut header, path, std::io::empty())
            .unwrap();
    }
    let zeros = vec![0u8; 100_000];
    let mut header = tar::Header::new_ustar();
    header.set_size(zeros.len() as u64);
    builder
        .append_data(&mut header, "var/zeros", zeros.as_slice())
        .unwrap();
    let mut noisy = noise(5, 20_000);
    noisy.extend(big_content(7));
    let mut header = tar::Header::new_ustar();
    header.set_size(noisy.len() as u64);
    builder
        .append_data(&mut header, "var/noisy", noisy.as_slice())
        .unwrap();
    let mut tar = builder.into_inner().unwrap();
    tar.extend(vec![0u8; 9 * 512]);
    tar
}

#[test]
fn awkward_tars_round_trip_byte_for_byte() {
    let tar = awkward_tar();
    let (blob, layer) = chunked(&tar, 7777);
    assert!(zstd::decode_all(blob.as_slice()).unwrap() == tar);
    let (toc, tar_split) = read_back(&blob, &layer);
    let names: Vec<&str> = toc.entries.iter().map(|e| e.name.as_str()).collect();
    assert!(names.iter().any(|n| n.len() > 150), "{names:?}");
    let x = toc.entries.iter().find(|e| e.name == "etc/x").unwrap();
    assert_eq!(x.xattrs.get("user.note").map(String::as_str), Some("aGk="));
    let dev = toc.entries.iter().find(|e| e.name == "dev/null").unwrap();
    assert_eq!(
        (dev.entry_type, dev.dev_major, dev.dev_minor),
        (EntryType::Char, 1, 3)
    );
    let raw = tar_split.entries.iter().find_map(|e| match e {
        TarSplitEntry::File { name, .. } if name.starts_with(b"bin/") => Some(name.clone()),
        _ => None,
    });
    assert_eq!(raw.as_deref(), Some(&b"bin/\xff\xfe"[..]));
    let zeros = toc.files().find(|f| f.entry.name == "var/zeros").unwrap();
    assert_eq!(
        zeros.entry.chunk_type.as_deref(),
        None,
        "one chunk: no chunk fields"
    );
    // Non-UTF-8 names are rebuilt from the tar-split's raw name; our
    // rebuild looks files up by TOC name, so compare the stream whole.
    assert!(zstd::decode_all(blob.as_slice()).unwrap() == tar);
}

/// A tar of one file whose PAX `path` record is `path`.
fn tar_with_pax_path(path: &[u8]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.append_pax_extensions([("path", path)]).unwrap();
    let mut header = tar::Header::new_ustar();
    header.set_path("placeholder").unwrap();
    header.set_size(4);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append(&header, &b"data"[..]).unwrap();
    builder.into_inner().unwrap()
}

#[test]
fn a_name_a_toc_may_not_hold_is_an_error_not_a_blob_readers_refuse() {
    // What the fuzzer found: a NUL inside a PAX path, which the reader
    // refuses in a TOC; and a `..`, likewise.
    for path in [&b"usr/a\0b/file"[..], b"usr/../../etc/passwd"] {
        let mut writer = ChunkedWriter::new(Vec::new()).unwrap();
        let written = writer
            .write_all(&tar_with_pax_path(path))
            .and_then(|()| writer.finish());
        let err = written.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
        let message = err.to_string();
        assert!(
            message.contains("NUL") || message.contains(".."),
            "{message}"
        );
    }
    // The same tar with a plain name is written.
    chunked(&tar_with_pax_path(b"usr/a/file"), 512);
}

#[test]
fn a_tar_cut_short_is_an_error_not_a_blob() {
    let (tar, _) = layer_tar();
    let mut writer = ChunkedWriter::new(Vec::new()).unwrap();
    writer.write_all(&tar[..2000]).unwrap();
    let err = writer.finish().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
}

#[test]
fn times_are_written_as_go_writes_them() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
}

#[test]
fn files_are_cut_into_the_chunks_containers_storage_cuts_them_into() {
    let (tar, _) = layer_tar();
    let theirs = super::tests::skopeo_blob(&tar);
    let layout = Layout::from_annotations(|k| theirs.annotations.get(k).map(String::as_str))
        .unwrap()
        .unwrap();
    let their_toc = Toc::decode(
        frame(&theirs.bytes, &layout.toc),
        &layout,
        theirs.bytes.len() as u64,
        &Limits::default(),
    )
    .unwrap();
    let (blob, layer) = chunked(&tar, 1 << 16);
    let (our_toc, _) = read_back(&blob, &layer);
    // Everything but where the frames are, which depends on how well
    // each side compresses.
    let cuts = |toc: &Toc| -> Vec<TocEntry> {
        toc.entries
            .iter()
            .map(|e| TocEntry {
                offset: 0,
                end_offset: 0,
                mod_time: None,
                access_time: None,
                change_time: None,
                ..e.clone()
            })
            .collect()
    };
    assert_eq!(cuts(&our_toc), cuts(&their_toc));
}

#[test]
fn runs_of_headers_are_cut_into_frames_of_bounded_size() {
    let mut builder = tar::Builder::new(Vec::new());
    for i in 0..5000 {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_size(0);
        header.set_mode(0o755);
        builder
            .append_data(&mut header, format!("d{i}/"), std::io::empty())
            .unwrap();
    }
    let tar = builder.into_inner().unwrap();
    let (blob, layer) = chunked(&tar, 1 << 16);
    assert!(zstd::decode_all(blob.as_slice()).unwrap() == tar);
    // No frame holds more than 1 MiB and a bit (the entry that crossed).
    let mut at = 0usize;
    let mut frames = 0;
    while (at as u64) < layer.layout.data_end() {
        let size = zstd::zstd_safe::find_frame_compressed_size(&blob[at..]).unwrap();
        let content = zstd::decode_all(&blob[at..at + size]).unwrap().len();
        assert!(content <= (1 << 20) + 512, "{content}");
        at += size;
        frames += 1;
    }
    assert!(frames >= 3, "{frames} frames for 2.5 MB of headers");
}

#[test]
fn a_tar_split_that_is_not_the_tocs_or_inflates_past_its_size_is_refused() {
    let (tar, _) = layer_tar();
    let (blob, layer) = chunked(&tar, 1 << 16);
    let (toc, _) = read_back(&blob, &layer);
    let limits = Limits::default();
    let position = layer.layout.tar_split.unwrap();
    let mut frame_bytes = frame(&blob, &position).to_vec();
    let last = frame_bytes.len() - 1;
    frame_bytes[last] ^= 1;
    let fault = TarSplit::decode(&frame_bytes, &toc, &layer.layout, &limits).unwrap_err();
    assert_eq!(fault.kind(), "checksum", "{fault}");
    let good = frame(&blob, &position);
    let mut small = layer.layout.clone();
    small.tar_split = Some(Position {
        uncompressed: position.uncompressed - 10,
        ..position
    });
    let fault = TarSplit::decode(good, &toc, &small, &limits).unwrap_err();
    assert_eq!(fault.kind(), "too-large", "{fault}");
    let tight = Limits {
        tar_split: position.uncompressed - 1,
        ..limits
    };
    let fault = TarSplit::decode(good, &toc, &layer.layout, &tight).unwrap_err();
    assert_eq!(
        fault,
        TocFault::TooLarge {
            what: "tar-split",
            limit: tight.tar_split
        }
    );
}
