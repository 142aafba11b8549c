//! The tar-diff applier on hand-assembled op streams: every op, both
//! headers, every error, and the same bytes as oci-delta 0.1.1's
//! `tar_patch_apply` where both accept a stream.

use std::{collections::HashMap, io, sync::Arc};

use super::*;

/// A varint as tar-diff writes it.
pub(crate) fn uvarint(mut value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
    out
}

/// The uncompressed op stream of `(op, size, data)` triples.
pub(crate) fn op_stream(ops: &[(u8, u64, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (op, size, data) in ops {
        body.push(*op);
        body.extend(uvarint(*size));
        body.extend_from_slice(data);
    }
    body
}

/// A whole tar-diff: `header` and the compressed op stream.
pub(crate) fn tar_diff(header: &[u8; 8], ops: &[(u8, u64, &[u8])]) -> Vec<u8> {
    let mut out = header.to_vec();
    out.extend(zstd::encode_all(&op_stream(ops)[..], 3).unwrap());
    out
}

/// A ZSTD_DICT frame: `target` compressed against `source`.
fn patch_from(source: &[u8], target: &[u8], window_log: Option<u32>) -> Vec<u8> {
    let mut encoder = zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), 3, source).unwrap();
    if let Some(log) = window_log {
        encoder
            .set_parameter(zstd::stream::raw::CParameter::WindowLog(log))
            .unwrap();
    }
    encoder.write_all(target).unwrap();
    encoder.finish().unwrap()
}

/// Source files held in memory.
#[derive(Default, Clone)]
pub(crate) struct Memory(pub HashMap<String, Arc<Vec<u8>>>);

impl Memory {
    pub(crate) fn with(files: &[(&str, &[u8])]) -> Self {
        Memory(
            files
                .iter()
                .map(|(p, d)| (p.to_string(), Arc::new(d.to_vec())))
                .collect(),
        )
    }
}

struct MemoryFile(Arc<Vec<u8>>);

impl SourceFile for MemoryFile {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = (offset as usize).min(self.0.len());
        let n = buf.len().min(self.0.len() - start);
        buf[..n].copy_from_slice(&self.0[start..start + n]);
        Ok(n)
    }
}

/// A file that claims `size` bytes and holds `data`, or fails to read.
struct Lying {
    size: u64,
    data: Vec<u8>,
    fail: bool,
}

impl SourceFile for Lying {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if self.fail {
            return Err(io::Error::other("disk on fire"));
        }
        MemoryFile(Arc::new(self.data.clone())).read_at(buf, offset)
    }
}

impl SourceFiles for Memory {
    fn open(&self, path: &str) -> Result<Box<dyn SourceFile>, TarDiffError> {
        match path {
            "short" => Ok(Box::new(Lying {
                size: 10,
                data: b"12345".to_vec(),
                fail: false,
            })),
            "huge" => Ok(Box::new(Lying {
                size: MAX_DICT + 1,
                data: Vec::new(),
                fail: false,
            })),
            "broken" => Ok(Box::new(Lying {
                size: 10,
                data: Vec::new(),
                fail: true,
            })),
            _ => self
                .0
                .get(path)
                .map(|d| Box::new(MemoryFile(d.clone())) as Box<dyn SourceFile>)
                .ok_or_else(|| TarDiffError::SourceMissing {
                    path: path.to_owned(),
                }),
        }
    }
}

/// oci-delta's view of the same files, for cross-checking.
pub(crate) struct Reference {
    files: Memory,
    current: Option<io::Cursor<Vec<u8>>>,
}

impl Reference {
    pub(crate) fn new(files: Memory) -> Self {
        Reference {
            files,
            current: None,
        }
    }

    fn file(&mut self) -> anyhow::Result<&mut io::Cursor<Vec<u8>>> {
        self.current
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("no file"))
    }
}

impl oci_delta::DeltaDataSource for Reference {
    fn set_current_file(&mut self, path: &str) -> anyhow::Result<()> {
        let path = normalise(path.as_bytes())?;
        let data = self
            .files
            .0
            .get(&path)
            .ok_or_else(|| anyhow::anyhow!("no {path}"))?;
        self.current = Some(io::Cursor::new(data.to_vec()));
        Ok(())
    }

    fn read_exact_current(&mut self, buf: &mut [u8]) -> anyhow::Result<()> {
        Ok(self.file()?.read_exact(buf)?)
    }

    fn seek_current(&mut self, offset: u64) -> anyhow::Result<u64> {
        self.file()?.set_position(offset);
        Ok(offset)
    }

    fn read_current_to_end(&mut self, max_size: u64) -> anyhow::Result<Vec<u8>> {
        let file = self.file()?;
        anyhow::ensure!(file.get_ref().len() as u64 <= max_size, "too large");
        file.set_position(file.get_ref().len() as u64);
        Ok(file.get_ref().clone())
    }

    fn copy_to(&mut self, dst: &mut dyn Write, n: u64) -> anyhow::Result<()> {
        let copied = io::copy(&mut Read::by_ref(self.file()?).take(n), dst)?;
        anyhow::ensure!(copied == n, "short");
        Ok(())
    }
}

/// Apply with ours and with oci-delta's; both must give the same bytes.
pub(crate) fn both(delta: &[u8], files: &Memory) -> Vec<u8> {
    let ours = run(delta, files).expect("our applier accepts it");
    let mut theirs = Vec::new();
    oci_delta::tar_patch_apply(delta, &mut Reference::new(files.clone()), &mut theirs)
        .expect("oci-delta accepts it");
    assert_eq!(ours, theirs, "oci-delta rebuilds other bytes");
    ours
}

fn run(delta: &[u8], files: &Memory) -> Result<Vec<u8>, TarDiffError> {
    let mut out = Vec::new();
    apply(delta, files, &mut out)?;
    Ok(out)
}

fn err(header: &[u8; 8], ops: &[(u8, u64, &[u8])]) -> TarDiffError {
    run(&tar_diff(header, ops), &files()).unwrap_err()
}

fn files() -> Memory {
    Memory::with(&[
        ("usr/bin/tool", b"0123456789abcdef"),
        ("etc/conf", b"key=old\n"),
    ])
}

fn open(path: &str) -> (u8, u64, &[u8]) {
    (OP_OPEN, path.len() as u64, path.as_bytes())
}

#[test]
fn every_v1_op_rebuilds_the_target() {
    let add: Vec<u8> = b"key=new\n"
        .iter()
        .zip(b"key=old\n")
        .map(|(t, s)| t.wrapping_sub(*s))
        .collect();
    let delta = tar_diff(
        HEADER_V1,
        &[
            (OP_DATA, 6, b"header"),
            open("/usr/./bin/../bin/tool"),
            (OP_COPY, 4, b""),
            (OP_SEEK, 10, b""),
            (OP_COPY, 6, b""),
            (OP_SEEK, 0, b""),
            (OP_COPY, 1, b""),
            open("./etc/conf"),
            (OP_ADD_DATA, add.len() as u64, &add),
            (OP_DATA, 0, b""),
            (OP_DATA, 3, b"end"),
        ],
    );
    assert_eq!(both(&delta, &files()), b"header0123abcdef0key=new\nend");
}

#[test]
fn zstd_dict_decodes_against_the_whole_source_file() {
    let source: Vec<u8> = (0..50_000u32).map(|i| ((i * 7919) >> 5) as u8).collect();
    let mut target = source.clone();
    target[20_000..20_100].fill(b'z');
    let frame = patch_from(&source, &target, None);
    assert!(
        frame.len() < target.len() / 10,
        "the frame uses the dictionary"
    );
    let files = Memory::with(&[("data/blob", &source)]);
    let delta = tar_diff(
        HEADER_V2,
        &[
            (OP_DATA, 2, b">>"),
            open("data/blob"),
            (OP_SEEK, 7, b""),
            (OP_ZSTD_DICT, frame.len() as u64, &frame),
            (OP_DATA, 2, b"<<"),
        ],
    );
    let mut expected = b">>".to_vec();
    expected.extend(&target);
    expected.extend(b"<<");
    assert_eq!(both(&delta, &files), expected);
    // The dictionary read leaves the position at the end: nothing is left
    // to copy.
    let after = tar_diff(
        HEADER_V2,
        &[
            open("data/blob"),
            (OP_ZSTD_DICT, frame.len() as u64, &frame),
            (OP_COPY, 1, b""),
        ],
    );
    assert!(matches!(
        run(&after, &files).unwrap_err(),
        TarDiffError::BeyondSource {
            op: "COPY",
            at: 50_000,
            ..
        }
    ));
}

#[test]
fn zstd_dict_window_is_capped_as_oci_delta_caps_it() {
    let source = vec![3u8; 4096];
    let files = Memory::with(&[("s", &source)]);
    for (log, accepted) in [
        (MAX_DICT_WINDOW_LOG, true),
        (MAX_DICT_WINDOW_LOG + 1, false),
    ] {
        let frame = patch_from(&source, b"target bytes", Some(log));
        let delta = tar_diff(
            HEADER_V2,
            &[open("s"), (OP_ZSTD_DICT, frame.len() as u64, &frame)],
        );
        match run(&delta, &files) {
            Ok(out) => {
                assert!(accepted, "window log {log} was accepted");
                assert_eq!(out, b"target bytes");
            }
            Err(e) => {
                assert!(!accepted, "window log {log}: {e}");
                assert!(matches!(e, TarDiffError::BadDictFrame { .. }), "{e}");
            }
        }
    }
}

#[test]
fn an_empty_op_stream_is_an_empty_tar() {
    for header in [HEADER_V1, HEADER_V2] {
        assert!(both(&tar_diff(header, &[]), &files()).is_empty());
    }
}

#[test]
fn headers_and_stream_damage_are_refused() {
    let e = run(&tar_diff(b"tardf3\n\0", &[]), &files()).unwrap_err();
    assert!(matches!(e, TarDiffError::BadHeader { .. }), "{e}");
    let e = run(b"tard", &files()).unwrap_err();
    assert!(
        matches!(e, TarDiffError::Truncated { what: "the header" }),
        "{e}"
    );
    let mut garbage = HEADER_V1.to_vec();
    garbage.extend([0x42; 64]);
    let e = run(&garbage, &files()).unwrap_err();
    assert!(matches!(e, TarDiffError::Decompress { .. }), "{e}");
    // The compressed stream cut short.
    let whole = tar_diff(HEADER_V1, &[(OP_DATA, 1000, &[7; 1000])]);
    let e = run(&whole[..whole.len() - 4], &files()).unwrap_err();
    assert!(matches!(e, TarDiffError::Truncated { .. }), "{e}");
}

#[test]
fn ops_cut_short_are_truncated() {
    let cases: [(&[u8], &str); 5] = [
        (&[OP_DATA], "an op size"),
        (&[OP_DATA, 0x80], "an op size"),
        (&[OP_DATA, 5, b'a', b'b'], "DATA"),
        (&[OP_OPEN, 4, b'e', b't'], "an OPEN path"),
        (
            &[
                OP_OPEN,
                8,
                b'e',
                b't',
                b'c',
                b'/',
                b'c',
                b'o',
                b'n',
                b'f',
                OP_ADD_DATA,
                4,
                1,
            ],
            "ADD_DATA",
        ),
    ];
    for (body, what) in cases {
        let mut delta = HEADER_V1.to_vec();
        delta.extend(zstd::encode_all(body, 3).unwrap());
        let e = run(&delta, &files()).unwrap_err();
        assert!(
            matches!(e, TarDiffError::Truncated { what: w } if w == what),
            "{body:?}: {e}"
        );
    }
}

#[test]
fn varints_are_bounded() {
    let decode = |bytes: &[u8]| read_uvarint(&mut &bytes[..]);
    assert_eq!(decode(&[0]).unwrap(), 0);
    assert_eq!(decode(&[0xac, 0x02]).unwrap(), 300);
    let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
    assert_eq!(decode(&max).unwrap(), u64::MAX);
    for value in [0, 1, 127, 128, 300, 1 << 35, u64::MAX] {
        assert_eq!(decode(&uvarint(value)).unwrap(), value);
    }
    let mut over = max;
    over[9] = 0x02;
    assert!(matches!(decode(&over), Err(TarDiffError::VarintOverflow)));
    assert!(matches!(
        decode(&[0x80; 11]),
        Err(TarDiffError::VarintOverflow)
    ));
    assert!(matches!(
        decode(&[0x80; 10]),
        Err(TarDiffError::VarintOverflow)
    ));
    // In a stream.
    let mut body = vec![OP_DATA];
    body.extend([0xff; 10]);
    let mut delta = HEADER_V1.to_vec();
    delta.extend(zstd::encode_all(&body[..], 3).unwrap());
    assert!(matches!(
        run(&delta, &files()).unwrap_err(),
        TarDiffError::VarintOverflow
    ));
}

#[test]
fn unknown_ops_and_misplaced_zstd_dict_are_refused() {
    assert!(matches!(
        err(HEADER_V2, &[(6, 0, b"")]),
        TarDiffError::UnknownOp { op: 6 }
    ));
    assert!(matches!(
        err(HEADER_V1, &[open("etc/conf"), (OP_ZSTD_DICT, 0, b"")]),
        TarDiffError::DictNeedsV2
    ));
}

#[test]
fn source_ops_need_an_open_file() {
    for (op, name) in [
        (OP_COPY, "COPY"),
        (OP_ADD_DATA, "ADD_DATA"),
        (OP_SEEK, "SEEK"),
        (OP_ZSTD_DICT, "ZSTD_DICT"),
    ] {
        let data: &[u8] = if op == OP_ADD_DATA { b"x" } else { b"" };
        let e = err(HEADER_V2, &[(op, data.len() as u64, data)]);
        assert!(
            matches!(e, TarDiffError::NoSourceOpen { op } if op == name),
            "{name}: {e}"
        );
    }
}

#[test]
fn reads_past_the_source_are_refused() {
    let e = err(HEADER_V1, &[open("etc/conf"), (OP_COPY, 9, b"")]);
    assert!(
        matches!(
            e,
            TarDiffError::BeyondSource {
                op: "COPY",
                at: 0,
                len: 9,
                size: 8,
                ..
            }
        ),
        "{e}"
    );
    let e = err(
        HEADER_V1,
        &[
            open("etc/conf"),
            (OP_SEEK, 5, b""),
            (OP_ADD_DATA, 4, b"abcd"),
        ],
    );
    assert!(
        matches!(
            e,
            TarDiffError::BeyondSource {
                op: "ADD_DATA",
                at: 5,
                ..
            }
        ),
        "{e}"
    );
    let e = err(HEADER_V1, &[open("etc/conf"), (OP_SEEK, 9, b"")]);
    assert!(
        matches!(e, TarDiffError::SeekBeyondSource { to: 9, size: 8, .. }),
        "{e}"
    );
    // Seeking to the very end is allowed; a copy from there is not.
    let e = err(
        HEADER_V1,
        &[
            open("etc/conf"),
            (OP_SEEK, 8, b""),
            (OP_COPY, u64::MAX, b""),
        ],
    );
    assert!(matches!(e, TarDiffError::BeyondSource { .. }), "{e}");
}

#[test]
fn source_files_that_fail_are_typed() {
    let e = err(HEADER_V1, &[open("short"), (OP_COPY, 10, b"")]);
    assert!(
        matches!(
            e,
            TarDiffError::ShortSourceRead {
                at: 5,
                size: 10,
                ..
            }
        ),
        "{e}"
    );
    let e = err(HEADER_V1, &[open("broken"), (OP_COPY, 1, b"")]);
    assert!(matches!(e, TarDiffError::SourceRead { .. }), "{e}");
    let e = err(HEADER_V1, &[open("no/such/file")]);
    assert!(matches!(e, TarDiffError::SourceMissing { .. }), "{e}");
    let e = err(HEADER_V2, &[open("huge"), (OP_ZSTD_DICT, 0, b"")]);
    assert!(matches!(e, TarDiffError::DictTooLarge { .. }), "{e}");
}

/// The limits are oci-delta 0.1.1's, written out here as literals so
/// that a change of the module's constants is caught, not followed.
#[test]
fn limits_equal_the_reference_implementations() {
    // MAX_FILENAME_SIZE: 4 KiB; a path of 4097 bytes is refused.
    let long = "x".repeat(4097);
    let e = err(HEADER_V1, &[open(&long)]);
    assert!(matches!(e, TarDiffError::PathTooLong { len: 4097 }), "{e}");
    // A path of exactly 4096 bytes is read (and then not found).
    let edge = "x".repeat(4096);
    assert!(matches!(
        err(HEADER_V1, &[open(&edge)]),
        TarDiffError::SourceMissing { .. }
    ));
    // MAX_ADD_DATA_SIZE: 100 MiB.
    let e = err(
        HEADER_V1,
        &[open("etc/conf"), (OP_ADD_DATA, 100 * 1024 * 1024 + 1, b"")],
    );
    assert!(matches!(e, TarDiffError::AddDataTooLarge { .. }), "{e}");
    // MAX_ZSTD_DICT_WINDOW_LOG: 29, so a dictionary of at most 512 MiB.
    assert_eq!((MAX_DICT_WINDOW_LOG, MAX_DICT), (29, 512 << 20));
}

#[test]
fn paths_are_normalised_and_kept_inside_the_root() {
    for (raw, normal) in [
        ("usr/bin/tool", "usr/bin/tool"),
        ("/usr/bin/tool", "usr/bin/tool"),
        ("./usr//bin/./tool", "usr/bin/tool"),
        ("usr/lib/../bin/tool", "usr/bin/tool"),
        ("a/b/../../c", "c"),
    ] {
        assert_eq!(normalise(raw.as_bytes()).unwrap(), normal, "{raw}");
    }
    for raw in [
        &b"../etc/passwd"[..],
        b"/..",
        b"a/../../b",
        b"",
        b"/",
        b"./.",
        b"a\0b",
        b"\xff",
    ] {
        let e = normalise(raw).unwrap_err();
        assert!(
            matches!(e, TarDiffError::InvalidPath { .. }),
            "{raw:?}: {e}"
        );
        assert!(matches!(
            err(HEADER_V1, &[(OP_OPEN, raw.len() as u64, raw)]),
            TarDiffError::InvalidPath { .. }
        ));
    }
}

#[test]
fn output_failures_are_reported_as_such() {
    struct Closed;
    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    for ops in [
        &[(OP_DATA, 1, &b"x"[..])][..],
        &[open("etc/conf"), (OP_COPY, 1, b"")],
        &[open("etc/conf"), (OP_ADD_DATA, 1, b"\0")],
    ] {
        let e = apply(
            &tar_diff(HEADER_V1, ops)[..],
            &files(),
            &mut BytesOnly(Closed),
        )
        .unwrap_err();
        assert!(matches!(e, TarDiffError::Output(_)), "{e}");
    }
}

#[test]
fn large_ops_stream_in_chunks() {
    let source: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let data = vec![9u8; 200_000];
    let add = vec![1u8; 150_000];
    let files = Memory::with(&[("big", &source)]);
    let delta = tar_diff(
        HEADER_V1,
        &[
            (OP_DATA, data.len() as u64, &data),
            open("big"),
            (OP_COPY, 140_000, b""),
            (OP_ADD_DATA, add.len() as u64, &add),
        ],
    );
    let out = both(&delta, &files);
    assert_eq!(out.len(), 490_000);
    assert_eq!(&out[..200_000], &data[..]);
    assert_eq!(&out[200_000..340_000], &source[..140_000]);
    let added: Vec<u8> = source[140_000..290_000].iter().map(|b| b + 1).collect();
    assert_eq!(&out[340_000..], &added[..]);
}

/// SEEK and COPY expand a few bytes of delta into any amount of output:
/// the applier must stop at the first write the consumer refuses (the
/// splitter does, at a layer limit) rather than run through every op.
#[test]
fn an_expanding_delta_stops_at_the_first_refused_write() {
    struct Upto(usize);
    impl Write for Upto {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.0 < buf.len() {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            self.0 -= buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let files = Memory::with(&[("block", &[7u8; 512][..])]);
    let mut ops = vec![open("block")];
    for _ in 0..200_000 {
        ops.extend([(OP_SEEK, 0, &b""[..]), (OP_COPY, 512, b"")]);
    }
    let delta = tar_diff(HEADER_V1, &ops);
    assert!(
        delta.len() < 16 << 10,
        "{} bytes expand to 100 MiB",
        delta.len()
    );
    let mut out = BytesOnly(Upto(1 << 20));
    let e = apply(&delta[..], &files, &mut out).unwrap_err();
    assert!(matches!(e, TarDiffError::Output(_)), "{e}");
    let out = out.0;
    assert!(out.0 < 512, "stopped with {} bytes of room left", out.0);
}

/// The memory files as objects: each file's id is its path.
struct Stored(Memory);

/// A memory file that is an object.
struct StoredFile(MemoryFile, String);

impl SourceFile<String> for StoredFile {
    fn size(&self) -> u64 {
        self.0.size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }

    fn object(&self) -> Option<&String> {
        Some(&self.1)
    }
}

impl SourceFiles<String> for Stored {
    fn open(&self, path: &str) -> Result<Box<dyn SourceFile<String>>, TarDiffError> {
        let data = self
            .0
            .0
            .get(path)
            .ok_or_else(|| TarDiffError::SourceMissing {
                path: path.to_owned(),
            })?;
        Ok(Box::new(StoredFile(
            MemoryFile(data.clone()),
            path.to_owned(),
        )))
    }
}

/// The tar, and each object announced: where, which, how long.
#[derive(Default)]
struct Announced {
    tar: Vec<u8>,
    objects: Vec<(usize, String, u64)>,
}

impl Write for Announced {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tar.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TarOut<String> for Announced {
    fn object_follows(&mut self, id: &String, size: u64) {
        self.objects.push((self.tar.len(), id.clone(), size));
    }
}

#[test]
fn only_a_copy_of_a_whole_object_from_its_start_is_announced() {
    let add = [0u8; 8];
    let delta = tar_diff(
        HEADER_V1,
        &[
            (OP_DATA, 2, b"h1"),
            open("usr/bin/tool"),
            (OP_COPY, 16, b""), // announced
            (OP_SEEK, 0, b""),
            (OP_COPY, 15, b""), // not all of it
            (OP_SEEK, 1, b""),
            (OP_COPY, 15, b""), // not from the start
            (OP_SEEK, 0, b""),
            (OP_COPY, 16, b""), // again whole, after other reads
            open("etc/conf"),
            (OP_ADD_DATA, 8, &add), // the same bytes, but not a COPY
            open("etc/conf"),
            (OP_COPY, 4, b""),
            (OP_COPY, 4, b""), // whole in two COPYs: not announced
        ],
    );
    let mut out = Announced::default();
    apply(&delta[..], &Stored(files()), &mut out).unwrap();
    let tool = "usr/bin/tool".to_owned();
    assert_eq!(out.objects, [(2, tool.clone(), 16), (48, tool, 16)]);
    let copied = |at: usize| &out.tar[at..at + 16];
    assert_eq!(copied(2), b"0123456789abcdef");
    assert_eq!(copied(48), b"0123456789abcdef");
    assert_eq!(run(&delta, &files()).unwrap(), out.tar, "the same bytes");
}
