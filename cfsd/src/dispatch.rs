//! Routing a call to its interface, and turning its parameters into
//! typed values or an InvalidParameter error that names the culprit.

use std::os::fd::OwnedFd;

use cfsd_varlink::{
    idl::{OCI_INTERFACE, REPOSITORY_INTERFACE, SERVICE_INTERFACE},
    oci::OciError,
    repository::RepositoryError,
    service::ServiceError,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::{
    access::{self, Peer},
    methods,
    server::Daemon,
};

/// A call as read off the wire, before its method is known.
#[derive(Debug, Deserialize)]
pub struct Incoming {
    /// The fully qualified method name.
    pub method: String,
    /// The parameters; absent and `null` mean the same as `{}`.
    #[serde(default)]
    pub parameters: Option<Value>,
}

/// What to send back for a call.
#[derive(Debug)]
pub enum Outcome {
    /// A reply's parameters and the fds that go with them.
    Reply(Value, Vec<OwnedFd>),
    /// An error reply, `{"error": ..., "parameters": ...}`.
    Error(Value),
    /// Replies produced while the call runs, ending with
    /// [`Streamed::Last`]. Dropping the receiver cancels the call's work.
    Stream(mpsc::Receiver<Streamed>),
}

/// One reply of a call that streams.
#[derive(Debug)]
pub enum Streamed {
    /// A reply that more replies follow, and the fds that go with it;
    /// sent only to a call made with `more`.
    More(Value, Vec<OwnedFd>),
    /// The call's final reply or error.
    Last(Outcome),
}

impl Outcome {
    /// A reply carrying `params` and no fds.
    pub fn reply(params: &impl Serialize) -> Self {
        match serde_json::to_value(params) {
            Ok(value) => Outcome::Reply(value, Vec::new()),
            Err(e) => Outcome::Error(error_value(&ServiceError::InvalidParameter {
                parameter: format!("reply: {e}"),
            })),
        }
    }

    /// An error reply of any interface's error enum.
    pub fn error(error: &impl Serialize) -> Self {
        Outcome::Error(error_value(error))
    }
}

impl<T: Serialize, E: Serialize> From<Result<T, E>> for Outcome {
    fn from(result: Result<T, E>) -> Self {
        match result {
            Ok(reply) => Outcome::reply(&reply),
            Err(error) => Outcome::error(&error),
        }
    }
}

/// An error of any interface's error enum as a whole error message: the
/// enums serialise as `{"error": ..., "parameters": ...}`.
pub fn error_value(error: &impl Serialize) -> Value {
    serde_json::to_value(error).unwrap_or_else(|e| {
        serde_json::json!({"error": "org.varlink.service.InvalidParameter", "parameters": {"parameter": e.to_string()}})
    })
}

/// The methods whose first reply continues and carries what the call is
/// for (a hold in place, a pipe to read): without `more` it would never
/// reach the client, and a oneway call could not notice its client's
/// hang-up while it lasts.
const NEEDS_MORE: &[(&str, &str)] = &[
    (REPOSITORY_INTERFACE, "Hold"),
    (OCI_INTERFACE, "Dump"),
    (OCI_INTERFACE, "ExportLayer"),
    (OCI_INTERFACE, "MountFuse"),
];

/// Route a call to the interface that owns it; `more` says whether the
/// client asked for replies that continue.
pub async fn handle(
    daemon: &Daemon,
    peer: &Peer,
    call: &Incoming,
    fds: Vec<OwnedFd>,
    more: bool,
) -> Outcome {
    let Some((interface, method)) = call.method.rsplit_once('.') else {
        return Outcome::error(&ServiceError::MethodNotFound {
            method: call.method.clone(),
        });
    };
    if let Some(refused) = refuse(peer, interface, method, call.parameters.as_ref()) {
        return refused;
    }
    let params = call.parameters.clone();
    if !more && NEEDS_MORE.contains(&(interface, method)) {
        return Outcome::error(&ServiceError::InvalidParameter {
            parameter: format!(
                "more: {method} answers with replies that continue; call it with more"
            ),
        });
    }
    if interface == REPOSITORY_INTERFACE && method == "Hold" {
        // A hold does no disk work and lasts as long as its connection:
        // it must not take one of its caller's turns for calls.
        return methods::hold(daemon, peer, params).await;
    }
    if interface == OCI_INTERFACE && method == "MountFuse" {
        // Served as long as its mount, by a process of its own, counted
        // by its own limit: it must not keep one of its caller's turns.
        return methods::fuse::mount_fuse(daemon, peer, params, fds).await;
    }
    // The standard interface does no disk work and waits for no turn.
    let limited = !peer.unlimited() && interface != SERVICE_INTERFACE;
    let caller = crate::work::Caller::admit(limited.then_some(peer.account), &daemon.work).await;
    caller
        .serve(route(daemon, peer, interface, method, params, fds))
        .await
}

async fn route(
    daemon: &Daemon,
    peer: &Peer,
    interface: &str,
    method: &str,
    params: Option<Value>,
    fds: Vec<OwnedFd>,
) -> Outcome {
    match interface {
        SERVICE_INTERFACE => methods::service::handle(method, params),
        REPOSITORY_INTERFACE if methods::plain::serves(method) => {
            methods::plain::handle(daemon, peer, method, params, fds).await
        }
        REPOSITORY_INTERFACE => methods::repository::handle(daemon, peer, method, params).await,
        OCI_INTERFACE => methods::oci::handle(daemon, peer, method, params, fds).await,
        _ => {
            drop(fds);
            Outcome::error(&ServiceError::InterfaceNotFound {
                interface: interface.to_owned(),
            })
        }
    }
}

/// Refuse a call the peer lacks a right for, by [`access`]'s table,
/// before its parameters are parsed: with the interface's own typed
/// PermissionDenied.
fn refuse(peer: &Peer, interface: &str, method: &str, params: Option<&Value>) -> Option<Outcome> {
    let (_, option) = access::refused(peer, interface, method, params)?;
    tracing::info!(uid = peer.uid, ?option, "refused {interface}.{method}");
    let method = format!("{interface}.{method}");
    Some(match interface {
        OCI_INTERFACE => Outcome::error(&OciError::PermissionDenied {
            method,
            uid: peer.uid,
            option: option.map(str::to_owned),
        }),
        _ => Outcome::error(&RepositoryError::PermissionDenied {
            method,
            uid: peer.uid,
        }),
    })
}

/// The method was not found in its (known) interface.
pub fn method_not_found(interface: &str, method: &str) -> Outcome {
    Outcome::error(&ServiceError::MethodNotFound {
        method: format!("{interface}.{method}"),
    })
}

/// Parse a call's parameters into `P`. Absent or `null` parameters are
/// read as `{}`, so that methods whose parameters are all optional can be
/// called without any.
pub fn params<P: DeserializeOwned>(parameters: Option<Value>) -> Result<P, ServiceError> {
    let value = match parameters {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(v @ Value::Object(_)) => v,
        Some(_) => {
            return Err(ServiceError::InvalidParameter {
                parameter: "parameters".to_owned(),
            });
        }
    };
    serde_path_to_error::deserialize(value).map_err(|e| ServiceError::InvalidParameter {
        parameter: culprit(&e),
    })
}

/// The name of the parameter a deserialisation error is about.
fn culprit(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = e.path().to_string();
    if path != "." {
        return path;
    }
    // Missing and unknown fields are reported against the enclosing
    // object; their names are in the message, between backticks.
    let message = e.inner().to_string();
    message
        .split('`')
        .nth(1)
        .map(str::to_owned)
        .unwrap_or(message)
}

/// The InvalidParameter error for a message that is not a call at all.
pub fn malformed(e: &serde_json::Error) -> Value {
    let parameter = if e.is_data() {
        // Valid JSON of the wrong shape: most often no "method".
        format!("method: {e}")
    } else {
        format!("message: not JSON ({e})")
    };
    error_value(&ServiceError::InvalidParameter { parameter })
}

/// Parameters of a method that takes none.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}
