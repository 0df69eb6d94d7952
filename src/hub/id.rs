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

impl EventId {
    /// Longest text form: two 20-digit numbers and the dash.
    pub const MAX_LEN: usize = 41;

    /// Writes the text form into `out`; returns its length. On the publish
    /// path (every frame's `id:` line and every 202 body) this avoids the
    /// formatting machinery.
    pub fn write_into(&self, out: &mut [u8; Self::MAX_LEN]) -> usize {
        let mut digits = itoa::Buffer::new();
        let epoch = digits.format(self.epoch).as_bytes();
        out[..epoch.len()].copy_from_slice(epoch);
        out[epoch.len()] = b'-';
        let at = epoch.len() + 1;
        let seq = digits.format(self.seq).as_bytes();
        out[at..at + seq.len()].copy_from_slice(seq);
        at + seq.len()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; Self::MAX_LEN];
        let len = self.write_into(&mut buf);
        // Digits and a dash: always UTF-8.
        f.write_str(std::str::from_utf8(&buf[..len]).map_err(|_| fmt::Error)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_form_is_epoch_dash_seq() {
        for (epoch, seq) in [(0, 0), (7, 12345), (u64::MAX, u64::MAX), (1795824689565, 1)] {
            let id = EventId { epoch, seq };
            assert_eq!(id.to_string(), format!("{epoch}-{seq}"));
        }
    }

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
