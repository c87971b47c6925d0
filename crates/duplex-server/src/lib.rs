//! The duplex server: tonic services behind our own HTTP/2 edge.
//!
//! Data flows one way: bytes on the wire → [`edge`] (path aliases, whole-call deadlines)
//! → the services ([`chat`]) → back out through the same edge. [`Server`] owns the
//! listening sockets and the HTTP/2 settings from [`ServeConfig`]; shutdown is a future
//! passed in by the caller, never a global.

pub mod auth;
pub mod chat;
pub mod config;
pub mod edge;
pub mod guard;
pub mod hub_service;
mod server;
mod status;

pub use config::{RuntimeKind, ServeConfig, StoreKind, parse_size};
pub use server::{ServeError, Server};
