//! Integration tests: each starts the real server on `127.0.0.1:0` and talks
//! to it over real sockets. One test crate with modules, so the suite links
//! once.

mod common;

mod bounds;
mod core;
mod edge;
mod hardening;
mod jwks;
mod openapi;
mod otlp;
mod prometheus;
mod publish_path;
mod redis;
mod request_id;
