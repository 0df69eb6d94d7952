//! Herald: a real-time notification service over Server-Sent Events.
//!
//! Apps publish events to named channels over HTTP; browsers and services
//! subscribe over SSE and receive every event, in order, even across
//! reconnects. Read [`app`] first: it builds and wires everything below.
//!
//! - [`app`]: the composition root — `run(config, listener, shutdown)`.
//! - [`config`]: composes each module's config section; defaults < TOML
//!   file < `HERALD_*` env, validated at start.
//! - [`hub`]: the broadcast core — channels, rings, events, ids, replay,
//!   and the SSE wire encoder. No HTTP types.
//! - [`broker`]: where events are sequenced and carried: in memory, or
//!   across replicas.
//! - [`http`]: routing, the two connection paths, the handlers, and the one
//!   place errors become responses.
//! - [`auth`]: JWT verification (PEM keys, HMAC secret, JWKS), channel-pattern
//!   rights, token minting.
//! - [`limits`]: rate and connection limits.
//! - [`telemetry`]: metric names, the Prometheus recorder, logs and traces.
//! - [`shutdown`]: the drain signal shared by the listener and every stream.

// The connection futures (hyper, axum, the lean paths) nest deeply.
#![recursion_limit = "256"]

pub mod app;
pub mod auth;
pub mod broker;
pub mod config;
pub mod http;
pub mod hub;
pub mod limits;
pub mod shutdown;
pub mod telemetry;

pub use app::run;
pub use http::listener::bind;
