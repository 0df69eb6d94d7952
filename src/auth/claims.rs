//! [`Claims`]: the part of a verified token Herald uses (`sub`, `exp` and the
//! rights in the `herald` claim), and how long a stream may stay open on it.
//!
//! Rights travel in the `herald` claim:
//!
//! ```json
//! {"sub": "alice", "exp": 1900000000,
//!  "herald": {"subscribe": ["news/*", "user/alice/**"], "publish": ["news/*"]}}
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize};

use super::pattern::matches_any;

/// Longest time [`Claims::expires_in`] reports (ten years).
pub const MAX_EXPIRES_IN: Duration = Duration::from_secs(10 * 365 * 86_400);

/// The rights a token grants, from its `herald` claim.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rights {
    /// Channel patterns the holder may subscribe to.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Channel patterns the holder may publish to.
    #[serde(default)]
    pub publish: Vec<String>,
}

/// The verified claims Herald uses. Other claims are ignored, except that
/// `iss`, when present, must be a single string (see [`Claims::issuer_is_single`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Claims {
    /// The holder, used as the rate-limit key.
    #[serde(default)]
    pub sub: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    #[serde(default, deserialize_with = "numeric_date")]
    pub exp: Option<u64>,
    /// Per-channel rights.
    #[serde(default)]
    pub herald: Rights,
    /// What `iss` looked like; its value is checked against `auth.issuer`
    /// by jsonwebtoken, its shape here.
    #[serde(default, rename = "iss")]
    issuer: Shape,
}

/// The JSON shape of a claim whose value Herald does not keep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Shape {
    /// Not there, or `null` (which serde and jsonwebtoken read as absent).
    #[default]
    Absent,
    /// A string.
    String,
    /// An array, number, object or boolean.
    Other,
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Any value parses, so that a wrong shape is refused as `bad_issuer`
        // rather than as an unreadable token. Tokens are at most 8 KiB, which
        // bounds what this reads.
        Ok(match serde_json::Value::deserialize(d)? {
            serde_json::Value::Null => Shape::Absent,
            serde_json::Value::String(_) => Shape::String,
            _ => Shape::Other,
        })
    }
}

impl Claims {
    /// False when `iss` is present but not a single string. RFC 7519 §4.1.1
    /// makes `iss` one StringOrURI; jsonwebtoken accepts an array that holds
    /// the configured issuer among others, and looks at no `iss` at all when
    /// none is configured. A token whose issuer is a list would mean
    /// different things to different recipients, so it is refused either way.
    pub fn issuer_is_single(&self) -> bool {
        self.issuer != Shape::Other
    }

    /// True when some subscribe pattern matches `channel`.
    pub fn can_subscribe(&self, channel: &str) -> bool {
        matches_any(&self.herald.subscribe, channel)
    }

    /// True when some publish pattern matches `channel`.
    pub fn can_publish(&self, channel: &str) -> bool {
        matches_any(&self.herald.publish, channel)
    }

    /// Time left before `exp`, measured on the system clock; `Some(ZERO)` once
    /// it has passed, `None` when the token has no `exp`. Capped at
    /// [`MAX_EXPIRES_IN`], so adding it to an `Instant` cannot overflow.
    pub fn expires_in(&self) -> Option<Duration> {
        self.expires_in_after(Duration::ZERO)
    }

    /// [`expires_in`](Self::expires_in), counted to `exp` plus `leeway`:
    /// until a fresh verification of the token would start to fail.
    pub fn expires_in_after(&self, leeway: Duration) -> Option<Duration> {
        let left = UNIX_EPOCH
            .checked_add(Duration::from_secs(self.exp?))
            .and_then(|exp| exp.checked_add(leeway))
            .map_or(MAX_EXPIRES_IN, |end| {
                end.duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO)
            });
        Some(left.min(MAX_EXPIRES_IN))
    }
}

/// Accepts a JSON number (integer or float) as a NumericDate.
fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let number = Option::<serde_json::Number>::deserialize(d)?;
    let Some(number) = number else {
        return Ok(None);
    };
    if let Some(v) = number.as_u64() {
        return Ok(Some(v));
    }
    match number.as_f64() {
        Some(f) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => Ok(Some(f.round() as u64)),
        _ => Err(serde::de::Error::custom("exp is not a NumericDate")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    #[test]
    fn expires_in_counts_down() {
        let claims = Claims {
            exp: Some(now() + 100),
            ..Claims::default()
        };
        let left = claims.expires_in().expect("has exp");
        assert!(left > Duration::from_secs(90) && left <= Duration::from_secs(100));
        let past = Claims {
            exp: Some(now() - 1),
            ..Claims::default()
        };
        assert_eq!(past.expires_in(), Some(Duration::ZERO));
        assert_eq!(Claims::default().expires_in(), None);
        let far = Claims {
            exp: Some(u64::MAX),
            ..Claims::default()
        };
        assert_eq!(far.expires_in(), Some(MAX_EXPIRES_IN));
    }

    #[test]
    fn issuer_must_be_one_string_when_present() {
        let parse = |v: serde_json::Value| -> Claims { serde_json::from_value(v).expect("parses") };
        assert!(parse(json!({})).issuer_is_single());
        assert!(parse(json!({"iss": null})).issuer_is_single());
        assert!(parse(json!({"iss": "https://idp.example"})).issuer_is_single());
        for bad in [
            json!(["https://idp.example"]),
            json!(["https://idp.example", "https://evil.example"]),
            json!([]),
            json!(7),
            json!({"iss": "https://idp.example"}),
            json!(true),
        ] {
            assert!(!parse(json!({"iss": bad})).issuer_is_single(), "{bad}");
        }
    }
}
