//! OpenPGP signatures, checked by Debian's `gpgv`: a simple signature is
//! an inline-signed message, and `gpgv` with a keyring of only the
//! scope's keys both proves who made it and yields the payload. Its
//! machine-readable status lines (`--status-fd`) say which key signed,
//! so nothing depends on its human messages.

use std::{
    io::Write,
    process::{Command, Stdio},
};

use base64::Engine;

use super::Refusal;
use crate::Error;

/// Verify `signature` against `keys` (OpenPGP public keys, binary or
/// ASCII-armoured) and return the signed payload.
pub(crate) fn verify(keys: &[Vec<u8>], signature: &[u8]) -> Result<Vec<u8>, Refusal> {
    let run = |e: std::io::Error| {
        Refusal::Broken(Error::internal("checking a GPG signature", e.to_string()))
    };
    let dir = tempfile::tempdir().map_err(run)?;
    let keyring = dir.path().join("keyring.gpg");
    let message = dir.path().join("signature");
    let payload = dir.path().join("payload");
    let mut binary = Vec::new();
    for key in keys {
        binary.extend(dearmor(key).map_err(Refusal::Untrusted)?);
    }
    let written = std::fs::File::create(&keyring)
        .and_then(|mut f| f.write_all(&binary))
        .and_then(|()| std::fs::write(&message, signature));
    written.map_err(run)?;
    let output = Command::new("gpgv")
        .arg("--homedir")
        .arg(dir.path())
        .arg("--keyring")
        .arg(&keyring)
        .args(["--status-fd", "1", "--output"])
        .arg(&payload)
        .arg(&message)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            Refusal::Broken(Error::internal(
                "checking a GPG signature",
                format!("cannot run gpgv (Debian package gpgv): {e}"),
            ))
        })?;
    let status = String::from_utf8_lossy(&output.stdout);
    judge(&status, output.status.success())?;
    std::fs::read(&payload).map_err(run)
}

/// Accept only one good, valid signature by a key of the keyring.
fn judge(status: &str, exited_ok: bool) -> Result<(), Refusal> {
    let lines: Vec<Vec<&str>> = status
        .lines()
        .filter_map(|l| l.strip_prefix("[GNUPG:] "))
        .map(|l| l.split(' ').collect())
        .collect();
    let has = |word: &str| lines.iter().find(|l| l.first() == Some(&word));
    let signatures = lines
        .iter()
        .filter(|l| l.first() == Some(&"NEWSIG"))
        .count();
    if let Some(line) = has("NO_PUBKEY") {
        let key = line.get(1).copied().unwrap_or("?");
        return Err(Refusal::Untrusted(format!(
            "it is signed by key {key}, which the scope does not trust"
        )));
    }
    for (word, what) in [
        ("BADSIG", "it does not verify (BADSIG)"),
        ("EXPKEYSIG", "its key has expired"),
        ("REVKEYSIG", "its key is revoked"),
        ("EXPSIG", "it has expired"),
        ("ERRSIG", "it cannot be checked (ERRSIG)"),
    ] {
        if has(word).is_some() {
            return Err(Refusal::Untrusted(what.to_owned()));
        }
    }
    if signatures == 0 {
        return Err(Refusal::Malformed(
            "it is not an OpenPGP signed message".to_owned(),
        ));
    }
    if signatures > 1 {
        return Err(Refusal::Malformed(format!(
            "it holds {signatures} signatures; a simple signature holds one"
        )));
    }
    match (has("GOODSIG"), has("VALIDSIG"), exited_ok) {
        (Some(_), Some(_), true) => Ok(()),
        _ => Err(Refusal::Untrusted(
            "gpgv did not find a good, valid signature".to_owned(),
        )),
    }
}

/// The binary form of an OpenPGP key file: unchanged unless it is
/// ASCII-armoured, which `gpgv` does not read as a keyring.
fn dearmor(key: &[u8]) -> Result<Vec<u8>, String> {
    let text = match std::str::from_utf8(key) {
        Ok(text) if text.trim_start().starts_with("-----BEGIN PGP") => text,
        _ => return Ok(key.to_vec()),
    };
    let mut binary = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while lines.any(|l| l.starts_with("-----BEGIN PGP")) {
        // Armour headers run up to the first empty line.
        for line in lines.by_ref() {
            if line.is_empty() {
                break;
            }
        }
        let mut body = String::new();
        for line in lines.by_ref() {
            if line.starts_with('=') || line.starts_with("-----END") {
                break;
            }
            body.push_str(line);
        }
        let block = base64::engine::general_purpose::STANDARD
            .decode(&body)
            .map_err(|e| format!("a trusted key is not valid ASCII armour: {e}"))?;
        binary.extend(block);
    }
    Ok(binary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_good_valid_signature_is_accepted() {
        let good = "[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG 9B x\n[GNUPG:] VALIDSIG 8E 2026\n";
        judge(good, true).unwrap();
        assert!(matches!(judge(good, false), Err(Refusal::Untrusted(_))));
        let unknown = "[GNUPG:] NEWSIG\n[GNUPG:] ERRSIG 9B 1\n[GNUPG:] NO_PUBKEY 9B\n";
        assert!(matches!(judge(unknown, false), Err(Refusal::Untrusted(m)) if m.contains("9B")),);
        assert!(matches!(judge("", false), Err(Refusal::Malformed(_))));
        let two = format!("{good}{good}");
        assert!(matches!(judge(&two, true), Err(Refusal::Malformed(_))));
    }

    #[test]
    fn armoured_keys_are_read_as_their_binary_form() {
        let armoured = "-----BEGIN PGP PUBLIC KEY BLOCK-----\nComment: x\n\naGVs\nbG8=\n=abcd\n\
                        -----END PGP PUBLIC KEY BLOCK-----\n";
        assert_eq!(dearmor(armoured.as_bytes()).unwrap(), b"hello");
        assert_eq!(dearmor(b"\x99\x01binary").unwrap(), b"\x99\x01binary");
    }
}
