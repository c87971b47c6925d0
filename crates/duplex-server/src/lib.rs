//! The duplex server: the gRPC services over the engine in `duplex-hub`, behind our own
//! connection handling.
//!
//! Two halves. [`App`] assembles what every transport serves: the store (the log), token
//! verification and the hub. [`Server`] puts sockets in front of it. Bytes flow one way
//! through it, each step in its own module:
//!
//! socket → admission (`guard.rs` `ConnectionGate`: connections in total and per IP) → the
//! connection guard (`guard.rs` `GuardedStream`: TLS, preface timeout, PING policy, DATA
//! merging) → HTTP/2 (hyper, settings from [`ServeConfig`]) → request layers (`edge.rs`:
//! gRPC content-type and method, the `/Chat/Chat` alias, whole-call deadlines) → auth
//! ([`auth`], bearer tokens, in the Hub service) → the services ([`chat`], `hub_service.rs`)
//! → the hub.
//!
//! Each accepted connection gets one tracing span (`connection`: number, peer, local
//! address, TLS): the handshake, the guard and HTTP/2's connection task run in it; spans a
//! service opens (a session's) name the peer from `ConnectionInfo` (`guard.rs`). Shutdown is a
//! future passed in by the caller, never a global.

mod app;
pub mod auth;
pub mod chat;
pub mod config;
mod edge;
mod grpc_web;
mod guard;
mod health;
mod hub_service;
mod metrics;
mod page;
mod server;
mod status;
mod web;
mod websocket;

pub use app::{App, AppError};
pub use config::{RuntimeKind, ServeConfig, StoreKind, parse_size};
pub use server::{ServeError, Server};
