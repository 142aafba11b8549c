//! `org.varlink.service`: what this service is and what it speaks.

use cfsd_varlink::{
    idl::{self, SERVICE_INTERFACE},
    service::{DescriptionParams, DescriptionReply, ServiceError, ServiceInfo},
};
use serde_json::Value;

use crate::dispatch::{self, NoParams, Outcome};

/// Handle `method` of `org.varlink.service`.
pub fn handle(method: &str, params: Option<Value>) -> Outcome {
    match method {
        "GetInfo" => dispatch::params::<NoParams>(params).map(|_| info()).into(),
        "GetInterfaceDescription" => dispatch::params::<DescriptionParams>(params)
            .and_then(|p| describe(&p.interface))
            .into(),
        _ => dispatch::method_not_found(SERVICE_INTERFACE, method),
    }
}

fn info() -> ServiceInfo {
    ServiceInfo {
        vendor: "cfsd".to_owned(),
        product: "cfsd composefs repository daemon".to_owned(),
        version: cfsd_varlink::version::VERSION.to_owned(),
        url: String::new(),
        interfaces: idl::INTERFACES
            .iter()
            .map(|(name, _)| (*name).to_owned())
            .collect(),
    }
}

fn describe(interface: &str) -> Result<DescriptionReply, ServiceError> {
    idl::description(interface)
        .map(|text| DescriptionReply {
            description: text.to_owned(),
        })
        .ok_or_else(|| ServiceError::InterfaceNotFound {
            interface: interface.to_owned(),
        })
}
