//! The daemon's registry options: which files say how `docker://` pulls
//! connect, which images they may admit, and the admin's credentials.

use std::path::PathBuf;

use cfsd_repo::registry::RegistrySettings;

/// Registry settings, read by the daemon with its own rights; the files a
/// caller names are never opened here.
#[derive(Debug, clap::Args)]
pub struct RegistryArgs {
    /// The containers-certs.d base directory: DIR/HOST:PORT/*.crt are CA
    /// certificates trusted for that registry besides the system ones.
    #[arg(long, value_name = "DIR", default_value = "/etc/containers/certs.d")]
    certs_dir: PathBuf,

    /// The containers registries.conf: a [[registry]] with insecure = true
    /// may be reached over plain HTTP or unverified TLS.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/etc/containers/registries.conf"
    )]
    registries_conf: PathBuf,

    /// The containers signature policy (policy.json) that decides which
    /// images may be pulled, from registries and from oci: and
    /// oci-archive: sources; a missing one refuses every pull.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/etc/containers/policy.json"
    )]
    policy: PathBuf,

    /// The containers-registries.d directory: its *.yaml files name the
    /// lookaside stores that signatures are read from, per registry,
    /// namespace or repository.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/etc/containers/registries.d"
    )]
    registries_d: PathBuf,

    /// An admin-owned containers auth.json, used for pulls whose caller
    /// passes no auth file.
    #[arg(long, value_name = "PATH")]
    authfile: Option<PathBuf>,
}

impl RegistryArgs {
    /// The settings the repository library takes.
    pub fn settings(&self) -> RegistrySettings {
        RegistrySettings {
            certs_dir: self.certs_dir.clone(),
            registries_conf: self.registries_conf.clone(),
            policy: self.policy.clone(),
            registries_d: self.registries_d.clone(),
            authfile: self.authfile.clone(),
        }
    }
}
