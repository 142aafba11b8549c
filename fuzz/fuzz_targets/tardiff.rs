//! The streaming tar-diff decoder against a fixed set of source files.
//!
//! The first input byte picks the header (bit 0: `tardf1`/`tardf2`) and
//! whether the rest is the whole zstd part of the delta (bit 1 set) or an
//! uncompressed op stream that this target compresses (so that the fuzzer
//! works on ops, not on zstd). When cfsd rebuilds a tar, oci-delta 0.1.1's
//! reference applier must accept the same delta and rebuild the same
//! bytes, and the output must stay within 64 KiB per byte of op stream: no
//! op amplifies without bound.

#![no_main]

use std::{
    collections::HashMap,
    io::{self, Read, Write},
    sync::{Arc, LazyLock},
};

use cfsd_repo::fuzzing::{self, MemoryFiles};
use libfuzzer_sys::fuzz_target;

/// The source image's regular files.
static FILES: LazyLock<MemoryFiles> = LazyLock::new(|| {
    let big: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    let files: [(&str, Vec<u8>); 5] = [
        ("usr/bin/tool", b"0123456789abcdef".to_vec()),
        ("etc/conf", b"key=old\n".to_vec()),
        ("usr/lib/big", big),
        ("empty", Vec::new()),
        ("a/b/c", b"c".to_vec()),
    ];
    MemoryFiles(
        files
            .into_iter()
            .map(|(p, d)| (p.to_owned(), Arc::new(d)))
            .collect(),
    )
});

/// The largest output per byte of op stream.
const AMPLIFICATION: u64 = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let header: &[u8; 8] = if mode & 1 == 0 {
        b"tardf1\n\0"
    } else {
        b"tardf2\n\0"
    };
    let mut delta = header.to_vec();
    if mode & 2 == 0 {
        delta.extend(zstd::encode_all(rest, 1).expect("compressing"));
    } else {
        delta.extend_from_slice(rest);
    }
    let mut ours = Vec::new();
    if fuzzing::apply_tardiff(&delta, &FILES, &mut ours).is_err() {
        return;
    }
    if mode & 2 == 0 {
        let bound = (rest.len() as u64).max(1) * AMPLIFICATION;
        assert!(
            ours.len() as u64 <= bound,
            "{} bytes from {} of ops",
            ours.len(),
            rest.len()
        );
    }
    let mut theirs = Vec::new();
    let mut reference = Reference { current: None };
    if let Err(e) = oci_delta::tar_patch_apply(&delta[..], &mut reference, &mut theirs) {
        panic!("cfsd applied a tar-diff that oci-delta refuses: {e:#}");
    }
    assert!(ours == theirs, "oci-delta rebuilds other bytes");
});

/// oci-delta's view of [`FILES`], with paths normalised as cfsd does.
struct Reference {
    current: Option<io::Cursor<Vec<u8>>>,
}

impl Reference {
    fn file(&mut self) -> anyhow::Result<&mut io::Cursor<Vec<u8>>> {
        self.current
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("no file"))
    }
}

impl oci_delta::DeltaDataSource for Reference {
    fn set_current_file(&mut self, path: &str) -> anyhow::Result<()> {
        let files: &HashMap<_, _> = &FILES.0;
        let data = fuzzing::normalise_tardiff_path(path.as_bytes())
            .and_then(|p| files.get(&p))
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
