//! Reaching Redis: directly (`redis://`, `rediss://` with an optional
//! custom CA) or through Sentinel (the master is looked up again at every
//! reconnect, so a failover is followed), with every connect and command
//! bounded by the configured timeouts.

use std::sync::Mutex;
use std::time::Duration;

use redis::aio::{MultiplexedConnection, PubSub};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, RedisError};

use crate::broker::BrokerConfig;

/// Why Redis could not be reached or answered.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A connect or command did not finish within its timeout.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis or the network refused.
    #[error("Redis: {0}")]
    Redis(#[from] RedisError),
    /// Redis answered something Herald does not understand.
    #[error("unexpected reply from Redis: {0}")]
    Protocol(String),
    /// The configuration cannot be turned into a client.
    #[error("broker configuration: {0}")]
    Config(String),
}

/// How clients for the current master are made.
enum Target {
    Direct(Client),
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

/// Makes connections to the current Redis master.
pub struct Connector {
    target: Target,
    connect_timeout: Duration,
    command_timeout: Duration,
    /// The command connection in use; replaced after a failure.
    commands: Mutex<Option<MultiplexedConnection>>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field(
                "target",
                &match self.target {
                    Target::Direct(_) => "direct",
                    Target::Sentinel(_) => "sentinel",
                },
            )
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// Builds the connector from a validated `[broker]` section (does not
    /// connect yet).
    pub fn new(cfg: &BrokerConfig) -> Result<Self, LinkError> {
        let url = cfg
            .url
            .as_deref()
            .ok_or_else(|| LinkError::Config("broker.url is not set".into()))?;
        let ca = match &cfg.tls_ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                LinkError::Config(format!("cannot read broker.tls_ca_file {path}: {e}"))
            })?),
            None => None,
        };
        let target = if cfg.sentinel_master.is_empty() {
            let client = match ca {
                Some(root) => Client::build_with_tls(
                    url,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root),
                    },
                ),
                None => Client::open(url),
            }
            .map_err(|e| LinkError::Config(e.to_string()))?;
            Target::Direct(client)
        } else {
            let sentinels: Vec<&str> = cfg.urls(url).collect();
            // The master is reached with the credentials and db of the
            // first Sentinel URL (one password for both, the common setup).
            let first = sentinels
                .first()
                .ok_or_else(|| LinkError::Config("no Sentinel URL".into()))?
                .into_connection_info()
                .map_err(|e| LinkError::Config(e.to_string()))?;
            let node = SentinelNodeConnectionInfo::default()
                .set_redis_connection_info(first.redis_settings().clone());
            let client = SentinelClient::build(
                sentinels,
                cfg.sentinel_master.as_str(),
                Some(node),
                SentinelServerType::Master,
            )
            .map_err(|e| LinkError::Config(e.to_string()))?;
            Target::Sentinel(tokio::sync::Mutex::new(client))
        };
        Ok(Self {
            target,
            connect_timeout: Duration::from_millis(cfg.connect_timeout_ms),
            command_timeout: Duration::from_millis(cfg.command_timeout_ms),
            commands: Mutex::new(None),
        })
    }

    /// The bound on one command.
    pub fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    /// A client for the current master.
    async fn client(&self) -> Result<Client, LinkError> {
        match &self.target {
            Target::Direct(client) => Ok(client.clone()),
            Target::Sentinel(sentinel) => {
                let lookup = async { sentinel.lock().await.async_get_client().await };
                Ok(self.bounded(self.connect_timeout, lookup).await??)
            }
        }
    }

    /// The shared command connection, connecting if there is none.
    pub async fn commands(&self) -> Result<MultiplexedConnection, LinkError> {
        if let Some(conn) = self.lock_commands().clone() {
            return Ok(conn);
        }
        let client = self.client().await?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.command_timeout));
        let conn = self
            .bounded(
                self.connect_timeout + self.command_timeout,
                client.get_multiplexed_async_connection_with_config(&config),
            )
            .await??;
        *self.lock_commands() = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets the command connection after a failure, so the next command
    /// reconnects (to the new master, behind Sentinel).
    pub fn reset_commands(&self) {
        *self.lock_commands() = None;
    }

    /// A new pub/sub connection.
    pub async fn pubsub(&self) -> Result<PubSub, LinkError> {
        let client = self.client().await?;
        Ok(self
            .bounded(self.connect_timeout, client.get_async_pubsub())
            .await??)
    }

    /// Runs `fut` within `limit`.
    pub async fn bounded<T>(
        &self,
        limit: Duration,
        fut: impl std::future::Future<Output = T>,
    ) -> Result<T, LinkError> {
        tokio::time::timeout(limit, fut)
            .await
            .map_err(|_| LinkError::Timeout(limit))
    }

    fn lock_commands(&self) -> std::sync::MutexGuard<'_, Option<MultiplexedConnection>> {
        self.commands.lock().unwrap_or_else(|p| p.into_inner())
    }
}
