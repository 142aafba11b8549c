//! The methods of each interface cfsd serves.

pub mod repository;
pub mod service;
