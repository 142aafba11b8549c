//! The reviewed interface descriptions, byte for byte as checked in.

/// The name of the repository interface.
pub const REPOSITORY_INTERFACE: &str = "io.cfsd.Repository";

/// The name of the OCI image interface.
pub const OCI_INTERFACE: &str = "io.cfsd.Oci";

/// The name of the interface every varlink service provides.
pub const SERVICE_INTERFACE: &str = "org.varlink.service";

/// The description of `io.cfsd.Repository`.
pub const REPOSITORY: &str = include_str!("../../interfaces/io.cfsd.Repository.varlink");

/// The description of `io.cfsd.Oci`.
pub const OCI: &str = include_str!("../../interfaces/io.cfsd.Oci.varlink");

/// The description of `org.varlink.service`.
pub const SERVICE: &str = include_str!("../../interfaces/org.varlink.service.varlink");

/// Every interface the daemon serves, with its description, in the order
/// `GetInfo` lists them.
pub const INTERFACES: &[(&str, &str)] = &[
    (SERVICE_INTERFACE, SERVICE),
    (REPOSITORY_INTERFACE, REPOSITORY),
    (OCI_INTERFACE, OCI),
];

/// The description of `interface`, if the daemon serves it.
pub fn description(interface: &str) -> Option<&'static str> {
    INTERFACES
        .iter()
        .find(|(name, _)| *name == interface)
        .map(|(_, text)| *text)
}

#[cfg(test)]
mod tests;
