//! The edge every API request passes before it reaches the core:
//! the `authenticate` layer (token from header, cookie or query; client IP
//! from the socket or a trusted proxy), then, in the handlers, channel
//! rights and rate and connection limits.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use super::AppState;
use super::conn_info::ConnInfo;
use super::error::ApiError;
use crate::auth::{AuthConfig, AuthError, Authenticator, Claims};
use crate::limits::{LimitKey, Limits, LimitsConfig, LimitsConfigError};

/// Who made a request; set by [`authenticate`] for the handlers.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The client address (the socket peer, or the client named by a trusted proxy).
    pub ip: IpAddr,
    /// Verified claims, or `None` when anonymous.
    pub claims: Option<Arc<Claims>>,
}

impl Identity {
    /// The token subject, if any.
    pub fn subject(&self) -> Option<&str> {
        self.claims.as_ref().and_then(|c| c.sub.as_deref())
    }
}

/// Authentication and limits, built once from config.
#[derive(Debug)]
pub struct Edge {
    auth: Authenticator,
    limits: Limits,
}

/// Held for the life of a stream: releases its connection slots on drop.
#[derive(Debug)]
pub struct StreamPermit {
    subject: Option<String>,
    expires_at: Option<Instant>,
    _slots: crate::limits::StreamPermit,
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

/// Why the edge could not be built from config.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// Keys or secrets could not be loaded.
    #[error("auth: {0}")]
    Auth(#[from] AuthError),
    /// The limits section does not work.
    #[error("limits: {0}")]
    Limits(#[from] LimitsConfigError),
}

impl Edge {
    /// Builds the edge from the validated `[auth]` and `[limits]` sections.
    pub fn new(auth: &AuthConfig, limits: &LimitsConfig) -> Result<Self, EdgeError> {
        Ok(Self {
            auth: Authenticator::from_config(auth)?,
            limits: Limits::new(limits)?,
        })
    }

    /// The ceiling on concurrent streams, for the limit gauge.
    pub fn max_connections(&self) -> usize {
        self.limits.max_connections()
    }

    /// The per-IP counts of connections without a first request head, which
    /// the accept loop admits against.
    pub fn pending_connections(&self) -> Arc<crate::limits::PendingConnections> {
        self.limits.pending_connections()
    }

    /// The JWKS key cache, when `auth.jwks_url` is set.
    pub fn jwks(&self) -> Option<Arc<crate::auth::JwksCache>> {
        self.auth.jwks().cloned()
    }

    /// Periodic upkeep: evicts idle limiter keys and remembered tokens that
    /// are no longer valid, so their memory stays bounded.
    pub fn housekeeping(&self) {
        self.limits.retain_recent();
        self.auth.sweep();
    }

    /// Resolves the client IP and verifies any presented token (a token with
    /// an unknown JWKS `kid` may wait for one rate-limited key refresh).
    pub(crate) async fn identify(
        &self,
        conn: &ConnInfo,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Identity, ApiError> {
        let ip = self.limits.client_ip(conn.peer, headers);
        let query_token = crate::auth::query_token(query);
        let claims = self
            .auth
            .authenticate_with_refresh(headers, query_token.as_deref())
            .await?;
        Ok(Identity { ip, claims })
    }

    /// Checks subscribe rights for every channel, then the stream limits.
    pub fn admit_subscriber(
        &self,
        who: &Identity,
        channels: &[String],
    ) -> Result<StreamPermit, ApiError> {
        self.auth.may_subscribe(who.claims.as_deref(), channels)?;
        self.limits.check_new_stream(who.ip)?;
        let slots = self.limits.acquire_stream(who.ip, who.subject())?;
        let expires_at = who
            .claims
            .as_ref()
            .and_then(|c| c.expires_in())
            .map(|left| Instant::now() + left);
        Ok(StreamPermit {
            subject: who.subject().map(str::to_owned),
            expires_at,
            _slots: slots,
        })
    }

    /// Checks the right to read a channel's stats (a subscribe right).
    pub fn may_read(&self, who: &Identity, channel: &str) -> Result<(), ApiError> {
        self.auth
            .may_subscribe(who.claims.as_deref(), &[channel.to_owned()])?;
        Ok(())
    }

    /// Checks the publish right.
    pub fn may_publish(&self, who: &Identity, channel: &str) -> Result<(), ApiError> {
        self.auth.may_publish(who.claims.as_deref(), channel)?;
        Ok(())
    }

    /// Checks the publish rate for `events` events (all or nothing).
    pub fn admit_publish_rate(&self, who: &Identity, events: usize) -> Result<(), ApiError> {
        let n = u32::try_from(events).unwrap_or(u32::MAX);
        self.limits
            .check_publish_n(&LimitKey::new(who.subject(), who.ip), n)?;
        Ok(())
    }
}

/// The authentication layer of the API routes: attaches an [`Identity`] to
/// the request, or answers 401 for a bad token. Rights are checked by the
/// handlers, which know the channels.
pub async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(ConnectInfo(conn)) = req.extensions().get::<ConnectInfo<ConnInfo>>().cloned() else {
        return ApiError::Internal("connection info missing".into()).into_response();
    };
    match state
        .edge
        .identify(&conn, req.headers(), req.uri().query())
        .await
    {
        Ok(identity) => {
            req.extensions_mut().insert(identity);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}
