//! Content digests: parsing `sha256:<hex>` and checking content against it.

use std::io::{self, Read, Write};

use openssl::sha::Sha256;

use crate::Error;

/// A `sha256:<64 lowercase hex>` digest, the only algorithm OCI layouts use
/// in practice and the one composefs names OCI content by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Digest {
    hex: String,
}

impl Digest {
    /// Parse a digest; `what` names its holder in the error.
    pub(crate) fn parse(text: &str, what: &str) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::InvalidJson {
            what: what.to_owned(),
            reason: format!("digest {text:?} {reason}"),
        };
        let hex = text
            .strip_prefix("sha256:")
            .ok_or_else(|| invalid("is not sha256:<hex>"))?;
        if !well_formed(hex) {
            return Err(invalid("does not have 64 lowercase hex digits"));
        }
        Ok(Digest {
            hex: hex.to_owned(),
        })
    }

    /// Whether `text` is a digest [`Digest::parse`] takes.
    pub(crate) fn is_sha256(text: &str) -> bool {
        text.strip_prefix("sha256:").is_some_and(well_formed)
    }

    /// The 32 bytes the digest's hex spells.
    pub(crate) fn bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(self.hex.as_bytes().chunks(2)) {
            let nibble = |c: u8| (c as char).to_digit(16).expect("parsed as hex") as u8;
            *byte = nibble(pair[0]) << 4 | nibble(pair[1]);
        }
        out
    }

    /// The digest of `bytes`.
    pub(crate) fn of(bytes: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(bytes);
        Digest::from_hash(hasher.finish())
    }

    /// The digest whose hash is `hash`.
    pub(crate) fn from_hash(hash: [u8; 32]) -> Self {
        let hex = hash.iter().map(|b| format!("{b:02x}")).collect();
        Digest { hex }
    }

    /// The hex part, which names the blob file in a layout.
    pub(crate) fn hex(&self) -> &str {
        &self.hex
    }

    /// Fail unless `actual` equals this digest.
    pub(crate) fn verify(&self, actual: &Digest, what: impl Into<String>) -> Result<(), Error> {
        if self == actual {
            return Ok(());
        }
        Err(Error::DigestMismatch {
            what: what.into(),
            expected: self.to_string(),
            actual: actual.to_string(),
        })
    }

    /// As composefs-oci's digest type.
    pub(crate) fn to_oci(&self) -> composefs_oci::OciDigest {
        self.to_string()
            .parse()
            .expect("a well-formed sha256 digest is an OCI digest")
    }
}

/// 64 lowercase hex digits.
fn well_formed(hex: &str) -> bool {
    hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

/// A reader that hashes and counts everything read through it.
pub(crate) struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> Hashing<R> {
    /// Hash what is read from `inner`.
    pub(crate) fn new(inner: R) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// The digest and length of everything read.
    pub(crate) fn finish(self) -> (Digest, u64) {
        (Digest::from_hash(self.hasher.finish()), self.count)
    }

    /// The wrapped reader.
    pub(crate) fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// A writer that hashes everything written through it.
#[derive(Clone)]
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> HashingWriter<W> {
    /// Hash what is written to `inner`.
    pub(crate) fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// The digest of everything written.
    pub(crate) fn finish(self) -> Digest {
        self.into_parts().0
    }

    /// The digest of everything written, and the wrapped writer.
    pub(crate) fn into_parts(self) -> (Digest, W) {
        (Digest::from_hash(self.hasher.finish()), self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_hashes() {
        let empty = Digest::of(b"");
        assert_eq!(
            empty.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(Digest::parse(&empty.to_string(), "x").unwrap(), empty);
        for bad in [
            "sha512:00",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:../../../etc/passwd",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ] {
            assert!(Digest::parse(bad, "x").is_err(), "{bad}");
        }
        let mut reader = Hashing::new(&b"abc"[..]);
        std::io::copy(&mut reader, &mut std::io::sink()).unwrap();
        let (digest, len) = reader.finish();
        assert_eq!(len, 3);
        assert_eq!(
            digest.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn bytes_are_the_hash_the_hex_spells() {
        let mut hasher = Sha256::new();
        hasher.update(b"abc");
        let hash = hasher.finish();
        let digest = Digest::of(b"abc");
        assert_eq!(digest.bytes(), hash);
        assert_eq!(Digest::from_hash(hash), digest);
        assert!(Digest::is_sha256(&digest.to_string()));
        assert!(!Digest::is_sha256(&digest.to_string().to_uppercase()));
        assert!(!Digest::is_sha256("sha512:00"));
    }
}
