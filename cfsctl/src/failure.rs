//! Why a command failed: told to people on stderr, and with `--json` to
//! programs on stdout as `{"error": NAME, "parameters": {...}}`, the same
//! shape a varlink error reply has.
//!
//! The daemon's errors keep their interface names. What goes wrong in
//! cfsctl itself, before or after a call (a source it cannot open, a
//! daemon it cannot reach, a mount it cannot attach), gets a name of its
//! own under `io.cfsd.cfsctl`.

use cfsd_varlink::{CallError, oci::OciError, repository::RepositoryError, service::ServiceError};
use serde::Serialize;
use serde_json::{Value, json};

/// The prefix of the names of cfsctl's own errors.
pub const LOCAL: &str = "io.cfsd.cfsctl";

/// What went wrong in cfsctl itself.
#[derive(Debug, Clone, Serialize, thiserror::Error)]
#[serde(tag = "error", content = "parameters")]
pub enum Local {
    /// SOURCE or the delta's destination is not `TRANSPORT:PATH[:REF]`,
    /// or names a file of the wrong kind for its transport.
    #[serde(rename = "io.cfsd.cfsctl.InvalidSource")]
    #[error("{argument:?}: {reason}")]
    InvalidSource {
        /// The argument as given.
        argument: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file cfsctl opens with the caller's permissions cannot be opened.
    #[serde(rename = "io.cfsd.cfsctl.OpenFailed")]
    #[error("cannot open {path}: {reason}")]
    OpenFailed {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The private daemon for `--repo` cannot be started.
    #[serde(rename = "io.cfsd.cfsctl.DaemonNotStarted")]
    #[error("cannot start {program}: {reason}")]
    DaemonNotStarted {
        /// The program tried.
        program: String,
        /// Why.
        reason: String,
    },
    /// The mount the daemon handed over cannot be attached, or a mount
    /// cannot be detached.
    #[serde(rename = "io.cfsd.cfsctl.MountFailed")]
    #[error("{operation} {dir} failed: {reason}")]
    MountFailed {
        /// "attaching a mount at" or "unmounting".
        operation: String,
        /// The directory.
        dir: String,
        /// Why.
        reason: String,
    },
}

/// A failure ready to be reported.
#[derive(Debug)]
pub struct Failure {
    /// The error's name and parameters, for `--json`.
    pub wire: Value,
    /// The message for people, hints included, escaped for a terminal.
    pub message: String,
}

impl Failure {
    /// Classify `e`: the daemon's typed errors and cfsctl's own keep their
    /// names; anything else is reported as `io.cfsd.cfsctl.Failed`.
    pub fn of(e: &anyhow::Error) -> Self {
        let message = escape(&format!("{e:#}"));
        let wire = if let Some(call) = e.downcast_ref::<CallError<OciError>>() {
            call_wire(call, |e| serde_json::to_value(e))
        } else if let Some(call) = e.downcast_ref::<CallError<RepositoryError>>() {
            call_wire(call, |e| serde_json::to_value(e))
        } else if let Some(call) = e.downcast_ref::<CallError<ServiceError>>() {
            call_wire(call, |e| serde_json::to_value(e))
        } else if let Some(local) = e.downcast_ref::<Local>() {
            serde_json::to_value(local).unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        let wire = match wire {
            Value::Null => {
                json!({"error": format!("{LOCAL}.Failed"), "parameters": {"reason": message}})
            }
            wire => wire,
        };
        Failure { wire, message }
    }

    /// The error's name.
    #[cfg(test)]
    pub fn name(&self) -> &str {
        self.wire["error"].as_str().unwrap_or_default()
    }
}

/// The wire form of a call's failure: the typed error as it came, or a
/// name for how the call failed.
fn call_wire<E>(call: &CallError<E>, typed: impl Fn(&E) -> serde_json::Result<Value>) -> Value {
    let value = match call {
        CallError::Interface(e) => typed(e),
        CallError::Service(e) => serde_json::to_value(e),
        CallError::Connection(e) => serde_json::to_value(e),
        CallError::Unknown(name) => Ok(json!({"error": name, "parameters": {}})),
        CallError::Transport(reason) => Ok(json!({
            "error": format!("{LOCAL}.TransportFailed"),
            "parameters": {"reason": reason},
        })),
    };
    let mut value = value.unwrap_or(Value::Null);
    // An error without parameters serializes without the field.
    if value.is_object() && value.get("parameters").is_none() {
        value["parameters"] = json!({});
    }
    value
}

/// `text` with control characters and other non-printing ones escaped,
/// so that what a hostile file or daemon put in a message cannot drive the
/// terminal; newlines between lines of the message stay.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push('\n'),
            c if c.is_control() || c == '\u{fffd}' => {
                out.extend(c.escape_default());
            }
            c => out.push(c),
        }
    }
    out
}

/// What to do about a daemon error, for people: the daemon's messages
/// describe the problem only, since they reach every client, and which
/// command would fix it is cfsctl's to say.
pub fn hint(e: &anyhow::Error) -> Option<String> {
    e.chain().find_map(|cause| {
        if let Some(CallError::Interface(e)) = cause.downcast_ref::<CallError<OciError>>() {
            return oci_hint(e);
        }
        match cause.downcast_ref::<CallError<RepositoryError>>() {
            Some(CallError::Interface(e) | CallError::Connection(e)) => repository_hint(e),
            _ => None,
        }
    })
}

fn oci_hint(e: &OciError) -> Option<String> {
    Some(match e {
        OciError::NotInitialized { .. } => INIT_HINT.to_owned(),
        OciError::ImageNotFound { .. } => {
            "`cfsctl oci images` lists the images and their tags".to_owned()
        }
        OciError::PlatformNotFound { .. } => {
            "choose one of them with `cfsctl oci pull --platform OS/ARCH`".to_owned()
        }
        OciError::CompressedArchive { compression } => format!(
            "decompress it first (e.g. `{compression} -d`) and pull the tar with oci-archive:FILE"
        ),
        OciError::StageIncomplete { stage } | OciError::StageObjectsMissing { stage, .. } => {
            format!("drop it with `cfsctl oci abort {stage}` and pull the image again")
        }
        OciError::StageNotFound { .. } => "`cfsctl oci staged` lists the stages".to_owned(),
        OciError::DeltaSourceMissing { .. } => {
            "pull that source image first, or pull the full target image".to_owned()
        }
        OciError::PermissionDenied { method, .. } if method.ends_with(".Mount") => {
            "run cfsctl as root".to_owned()
        }
        OciError::PermissionDenied { .. } => PRIVILEGE_HINT.to_owned(),
        OciError::InvalidReference { .. } => {
            "write it as docker://HOST[:PORT]/NAME[:TAG|@sha256:DIGEST]".to_owned()
        }
        OciError::RegistryAuthFailed { .. } => "log in with `podman login` or `skopeo login`, \
             or name an auth file with `--authfile FILE` (or $REGISTRY_AUTH_FILE)"
            .to_owned(),
        OciError::RegistryTlsFailed { registry, .. } => format!(
            "put the registry's CA certificate in the daemon's certs.d \
             (/etc/containers/certs.d/{registry}/ca.crt by default), or, for a registry \
             reached without TLS, pass `--tls-verify=false`"
        ),
        OciError::SignatureMissing { scope, .. } if scope.starts_with("oci") => {
            "a layout carries its signatures in its index (sha256-<hex>.sig); `cfsctl oci \
             delta create` writes those kept with the target, once it was pulled signed"
                .to_owned()
        }
        OciError::SignatureMissing { .. } => "signatures are read from the lookaside store \
             the daemon's registries.d names for the image (/etc/containers/registries.d); \
             sign the image (e.g. `skopeo copy --sign-by`) and publish its signature there"
            .to_owned(),
        OciError::SignatureUntrusted { .. } => "the trusted keys are the keyPath, keyPaths or \
             keyData of that scope in the daemon's policy.json (/etc/containers/policy.json)"
            .to_owned(),
        OciError::SignatureDigestMismatch { .. } => {
            "the registry serves another manifest than was signed: re-sign the image, \
             or pull the signed one by its digest"
                .to_owned()
        }
        OciError::SignatureIdentityMismatch { scope, .. } if scope.starts_with("oci") => {
            "a local image has no registry name: give the scope's signedIdentity as \
             exactReference or exactRepository in policy.json"
                .to_owned()
        }
        OciError::SignatureIdentityMismatch { .. } => "the image was signed under another \
             name: pull it by that name, or set the scope's signedIdentity in policy.json"
            .to_owned(),
        OciError::PinnedDigestMismatch { manifest, .. } => format!(
            "the source holds {manifest}; pull that with `--digest {manifest}` only if you \
             trust it"
        ),
        OciError::RegistryUnreachable { .. } => {
            "the daemon, not cfsctl, connects: check that the registry is up and that the \
             daemon's host can reach it"
                .to_owned()
        }
        _ => return None,
    })
}

fn repository_hint(e: &RepositoryError) -> Option<String> {
    Some(match e {
        RepositoryError::NotInitialized { .. } => INIT_HINT.to_owned(),
        RepositoryError::PermissionDenied { .. } => format!(
            "{PRIVILEGE_HINT}; a daemon started by `cfsctl --repo` runs as you, so only the \
             owner of the repository's files (or root) can change it that way"
        ),
        _ => return None,
    })
}

const INIT_HINT: &str = "create it with `cfsctl init`";

const PRIVILEGE_HINT: &str = "run cfsctl as root or as a member of the daemon's admin group";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape("a\u{1b}[2Jb\tc\nd"), "a\\u{1b}[2Jb\\tc\nd");
        assert_eq!(escape("plain ü"), "plain ü");
    }

    #[test]
    fn typed_errors_keep_their_names() {
        let e = anyhow::Error::new(CallError::Interface(OciError::ImageNotFound {
            image: "x".into(),
        }));
        let failure = Failure::of(&e);
        assert_eq!(failure.name(), "io.cfsd.Oci.ImageNotFound");
        assert_eq!(failure.wire["parameters"]["image"], "x");
        let e = anyhow::Error::new(Local::OpenFailed {
            path: "/p".into(),
            reason: "gone".into(),
        });
        let failure = Failure::of(&e);
        assert_eq!(failure.name(), "io.cfsd.cfsctl.OpenFailed");
        assert_eq!(failure.wire["parameters"]["path"], "/p");
        let failure = Failure::of(&anyhow::anyhow!("odd"));
        assert_eq!(failure.name(), "io.cfsd.cfsctl.Failed");
    }
}
