//! The methods of each interface cfsd serves.

pub mod oci;
pub mod repository;
pub mod service;
