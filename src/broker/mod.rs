//! Where events are sequenced and carried. The in-memory broker (the
//! default) keeps everything in this process; the Redis broker lets many
//! replicas behave as one.

mod config;

pub use config::{BrokerConfig, BrokerConfigError, BrokerKind, redact_url};
