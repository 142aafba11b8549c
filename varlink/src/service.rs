//! `org.varlink.service`: the introspection every varlink service offers.

use serde::{Deserialize, Serialize};

/// The reply of `GetInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// Who makes the service.
    pub vendor: String,
    /// What the service is.
    pub product: String,
    /// Its version.
    pub version: String,
    /// Where to learn more.
    pub url: String,
    /// The fully qualified names of the interfaces it serves.
    pub interfaces: Vec<String>,
}

/// The parameters of `GetInterfaceDescription`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DescriptionParams {
    /// The fully qualified interface name.
    pub interface: String,
}

/// The reply of `GetInterfaceDescription`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DescriptionReply {
    /// The interface in varlink IDL.
    pub description: String,
}

/// The errors of `org.varlink.service`, which any call may receive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "error", content = "parameters")]
pub enum ServiceError {
    /// No such interface is served.
    #[serde(rename = "org.varlink.service.InterfaceNotFound")]
    #[error("interface {interface} is not served here")]
    InterfaceNotFound {
        /// The interface asked for.
        interface: String,
    },
    /// No such method exists.
    #[serde(rename = "org.varlink.service.MethodNotFound")]
    #[error("method {method} does not exist")]
    MethodNotFound {
        /// The method asked for.
        method: String,
    },
    /// The method exists but is not implemented.
    #[serde(rename = "org.varlink.service.MethodNotImplemented")]
    #[error("method {method} is not implemented")]
    MethodNotImplemented {
        /// The method asked for.
        method: String,
    },
    /// A parameter is missing, of the wrong type, or unknown.
    #[serde(rename = "org.varlink.service.InvalidParameter")]
    #[error("invalid parameter {parameter:?}")]
    InvalidParameter {
        /// The parameter's name; for a message that is not a call at all,
        /// the part of the message that is wrong.
        parameter: String,
    },
    /// The caller is denied access.
    #[serde(rename = "org.varlink.service.PermissionDenied")]
    #[error("permission denied")]
    PermissionDenied {},
    /// The method must be called with `more`.
    #[serde(rename = "org.varlink.service.ExpectedMore")]
    #[error("this method streams its replies and must be called with more")]
    ExpectedMore {},
}

/// The methods of `org.varlink.service`, by their unqualified names.
pub const METHODS: &[&str] = &["GetInfo", "GetInterfaceDescription"];
