//! Which image of a multi-platform index to pull.

use std::{fmt, str::FromStr};

use crate::Error;

/// An operating system and CPU architecture, as OCI names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `linux`, ...
    pub os: String,
    /// `amd64`, `arm64`, ...
    pub architecture: String,
    /// `v7`, `v8`, ...; `None` matches any variant.
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this daemon runs on.
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            "s390x" => "s390x",
            "riscv64" => "riscv64",
            "arm" => "arm",
            other => other,
        };
        Platform {
            os: std::env::consts::OS.to_owned(),
            architecture: architecture.to_owned(),
            variant: None,
        }
    }

    /// Whether an index entry for `os`/`architecture`/`variant` is this
    /// platform.
    pub fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        self.os == os
            && self.architecture == architecture
            && (self.variant.is_none() || self.variant.as_deref() == variant)
    }
}

impl Platform {
    /// Check that the image `config` (its JSON, already verified) is for
    /// this platform: an index entry's platform is only a claim, and a
    /// single manifest makes none, so the config decides. A mismatch is
    /// [`Error::PlatformNotFound`], naming the platform the image is for.
    pub(crate) fn check_config(&self, config: &[u8]) -> Result<(), Error> {
        #[derive(serde::Deserialize)]
        struct Config {
            #[serde(default)]
            os: String,
            #[serde(default)]
            architecture: String,
            variant: Option<String>,
        }
        let config: Config = serde_json::from_slice(config).map_err(|e| Error::InvalidJson {
            what: "the image config".to_owned(),
            reason: e.to_string(),
        })?;
        if self.matches(&config.os, &config.architecture, config.variant.as_deref()) {
            return Ok(());
        }
        let has = Platform {
            os: config.os,
            architecture: config.architecture,
            variant: config.variant,
        };
        Err(Error::PlatformNotFound {
            platform: self.to_string(),
            available: vec![has.to_string()],
        })
    }
}

impl FromStr for Platform {
    type Err = Error;

    /// `os/arch` or `os/arch/variant`.
    fn from_str(s: &str) -> Result<Self, Error> {
        let parts: Vec<&str> = s.split('/').collect();
        let invalid = || Error::InvalidPlatform {
            platform: s.to_owned(),
        };
        if parts.iter().any(|p| p.is_empty()) {
            return Err(invalid());
        }
        match parts[..] {
            [os, architecture] => Ok(Platform {
                os: os.to_owned(),
                architecture: architecture.to_owned(),
                variant: None,
            }),
            [os, architecture, variant] => Ok(Platform {
                os: os.to_owned(),
                architecture: architecture.to_owned(),
                variant: Some(variant.to_owned()),
            }),
            _ => Err(invalid()),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches() {
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!(p.matches("linux", "arm64", Some("v8")));
        assert!(!p.matches("linux", "arm64", Some("v7")));
        let any: Platform = "linux/amd64".parse().unwrap();
        assert!(any.matches("linux", "amd64", Some("v3")));
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_config_decides_the_platform() {
        let amd64 = br#"{"os":"linux","architecture":"amd64","rootfs":{}}"#;
        let arm: Platform = "linux/arm64".parse().unwrap();
        match arm.check_config(amd64) {
            Err(Error::PlatformNotFound {
                platform,
                available,
            }) => {
                assert_eq!(platform, "linux/arm64");
                assert_eq!(available, ["linux/amd64"]);
            }
            other => panic!("{other:?}"),
        }
        let any_amd64: Platform = "linux/amd64".parse().unwrap();
        assert!(any_amd64.check_config(amd64).is_ok());
        let v8 = br#"{"os":"linux","architecture":"arm64","variant":"v8"}"#;
        assert!(arm.check_config(v8).is_ok());
        let v7: Platform = "linux/arm64/v7".parse().unwrap();
        assert!(v7.check_config(v8).is_err());
    }
}
