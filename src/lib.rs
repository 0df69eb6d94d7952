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
//! - [`auth`]: JWT verification and channel-pattern rights.
//! - [`jwks`]: verification keys fetched from a JWKS URL, cached and refreshed.
//! - [`limits`]: rate and connection limits.
//! - [`telemetry`]: metric names, the Prometheus recorder, logs and traces.
//! - [`shutdown`]: the drain signal shared by the listener and every stream.

pub mod auth;
pub mod config;
pub mod http;
pub mod hub;
pub mod jwks;
pub mod limits;
pub mod shutdown;
pub mod telemetry;

pub use http::server::run;
