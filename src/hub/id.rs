//! Event ids: `<epoch>-<seq>`. The seq is one counter across all channels of
//! a deployment; the epoch changes whenever history is lost (for the
//! in-memory hub, at every start).

use std::fmt;

/// A parsed event id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventId {
    /// Identifies one unbroken history.
    pub epoch: u64,
    /// Position in the deployment-wide sequence; the first event is 1.
    pub seq: u64,
}

/// Why a `Last-Event-ID` could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event id must look like <epoch>-<seq> with decimal numbers")]
pub struct InvalidId;

impl EventId {
    /// Parses `<epoch>-<seq>`; both parts are decimal `u64`.
    pub fn parse(raw: &str) -> Result<Self, InvalidId> {
        let (epoch, seq) = raw.trim().split_once('-').ok_or(InvalidId)?;
        let digits =
            |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(epoch) || !digits(seq) {
            return Err(InvalidId);
        }
        Ok(Self {
            epoch: epoch.parse().map_err(|_| InvalidId)?,
            seq: seq.parse().map_err(|_| InvalidId)?,
        })
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let id = EventId {
            epoch: 1764288000123,
            seq: 42,
        };
        assert_eq!(EventId::parse(&id.to_string()), Ok(id));
    }

    #[test]
    fn rejects_garbage() {
        for raw in [
            "",
            "-",
            "1-",
            "-1",
            "a-1",
            "1-b",
            "1-2-3",
            "1--2",
            "+1-2",
            "99999999999999999999999-1",
        ] {
            assert_eq!(EventId::parse(raw), Err(InvalidId), "{raw:?}");
        }
    }
}
