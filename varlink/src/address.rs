//! Where a cfsd daemon listens.

use std::{fmt, path::PathBuf, str::FromStr};

/// The socket of the system-wide daemon, as `cfsd.socket` creates it.
pub const SYSTEM_SOCKET: &str = "/run/cfsd/cfsd.sock";

/// A varlink address. Only `unix:PATH` is meaningful for cfsd: peer
/// credentials, which decide access, exist only on Unix sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A Unix socket at a filesystem path.
    Unix(PathBuf),
}

/// An address that is not of the form `unix:PATH`.
#[derive(Debug, thiserror::Error)]
#[error("unsupported address {0:?}: expected unix:/path/to/socket")]
pub struct AddressError(String);

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Varlink addresses may carry ";mode=0660" style options; cfsd sets
        // the mode itself, so anything after the path is rejected.
        match s.strip_prefix("unix:") {
            Some(path) if path.starts_with('/') && !path.contains(';') => {
                Ok(Address::Unix(PathBuf::from(path)))
            }
            _ => Err(AddressError(s.to_owned())),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_unix_paths_only() {
        let addr: Address = "unix:/run/cfsd/cfsd.sock".parse().unwrap();
        assert_eq!(addr, Address::Unix("/run/cfsd/cfsd.sock".into()));
        assert_eq!(addr.to_string(), "unix:/run/cfsd/cfsd.sock");
        for bad in [
            "tcp:127.0.0.1:1",
            "unix:relative",
            "unix:/x;mode=0600",
            "/run/x",
        ] {
            assert!(bad.parse::<Address>().is_err(), "{bad} accepted");
        }
    }
}
