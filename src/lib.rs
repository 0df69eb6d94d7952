//! Herald: a real-time notification service over Server-Sent Events.
//!
//! Apps publish events to named channels over HTTP; browsers and services
//! subscribe over SSE and receive every event, in order, even across
//! reconnects. The crate is laid out as:
//!
//! - [`config`]: typed configuration, layered defaults < TOML file < `HERALD_*` env.
//! - [`hub`]: the broadcast core — channels, rings, events, ids, replay. No HTTP types.
//! - [`http`]: router assembly, the SSE subscribe stream, publish, health, errors,
//!   and the connection loop that serves them.
//! - [`auth`]: JWT verification (static keys and JWKS), channel-pattern rights,
//!   and minting.
//! - [`limits`]: rate and connection limits.
//! - [`telemetry`]: metric names, the Prometheus recorder, logs and traces.
//! - [`shutdown`]: the drain signal shared by the listener and every stream.
//! - [`bench`](mod@bench): `herald bench`, the load generator.

pub mod auth;
pub mod bench;
pub mod config;
pub mod http;
pub mod hub;
pub mod limits;
pub mod shutdown;
pub mod telemetry;

pub use http::server::run;
