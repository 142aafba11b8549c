//! The `docker://` source of `io.cfsd.Oci.Pull`: the reference from the
//! call and the caller's auth file from its first fd. The daemon reads
//! its own settings and policy; it opens no file the caller names.

use std::{fs::File, os::fd::OwnedFd};

use cfsd_repo::registry::RegistryRequest;
use cfsd_varlink::{
    idl::OCI_INTERFACE,
    oci::{OciError, PullParams},
};
use rustix::fs::FileType;

/// The registry pull `params` ask for; the auth file, if passed, must be
/// a regular file open for reading.
pub(super) fn request(params: &PullParams, fds: Vec<OwnedFd>) -> Result<RegistryRequest, OciError> {
    let reference = params
        .reference
        .clone()
        .ok_or_else(|| OciError::InvalidReference {
            reference: String::new(),
            reason: "a docker pull needs HOST[:PORT]/NAME[:TAG|@DIGEST]".to_owned(),
        })?;
    Ok(RegistryRequest {
        reference,
        tls_verify: params.tls_verify,
        authfile: authfile(fds, "Pull")?,
    })
}

/// The caller's auth file for `method`, if it passed one: it must be a
/// regular file open for reading.
pub(super) fn authfile(fds: Vec<OwnedFd>, method: &str) -> Result<Option<File>, OciError> {
    match fds.into_iter().next() {
        None => Ok(None),
        Some(fd) if super::oci::is_readable(&fd, FileType::RegularFile) => Ok(Some(File::from(fd))),
        Some(_) => Err(OciError::MissingFd {
            method: format!("{OCI_INTERFACE}.{method}"),
            expected: "the auth file as a regular file opened for reading, or no fd".to_owned(),
        }),
    }
}
