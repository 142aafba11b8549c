//! The wire API of cfsd: what travels over its varlink socket.
//!
//! Each varlink interface has a module here holding its parameter and
//! reply types and its one error enum. The checked-in IDL files under
//! `interfaces/` are the contract; [`idl`] embeds them so that the daemon
//! serves exactly the reviewed text.
//!
//! [`Client`] is a typed proxy over one connection, used by `cfsctl` and by
//! the integration tests.

pub mod address;
pub mod client;
mod export;
mod fuse;
pub mod idl;
pub mod oci;
mod plain;
mod push;
pub mod repository;
pub mod service;
mod stage;
pub mod version;

pub use address::Address;
pub use client::{CallError, Client};
