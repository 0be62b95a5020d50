//! Event time: epoch milliseconds in UTC, window arithmetic and human durations.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Milliseconds since the Unix epoch, UTC. Event time and the clocks use this unit.
pub type Millis = i64;

/// One minute in milliseconds.
pub const MINUTE_MS: Millis = 60_000;
/// One hour in milliseconds.
pub const HOUR_MS: Millis = 3_600_000;
/// One day in milliseconds.
pub const DAY_MS: Millis = 86_400_000;

/// Start of the window of size `size` (ms) that contains `ts`, aligned to the Unix epoch.
#[inline]
pub fn window_start(ts: Millis, size: Millis) -> Millis {
    ts.div_euclid(size) * size
}

/// The UTC day number (days since 1970-01-01) of `ts`.
#[inline]
pub fn day_of(ts: Millis) -> i64 {
    ts.div_euclid(DAY_MS)
}

/// Calendar parts of a UTC instant: (year, month 1-12, day 1-31, hour 0-23).
pub fn utc_parts(ts: Millis) -> (i32, u32, u32, u32) {
    let dt = to_datetime(ts);
    (dt.year(), dt.month(), dt.day(), dt.hour())
}

/// `YYYY-MM-DD` of a UTC instant.
pub fn date_string(ts: Millis) -> String {
    let (y, m, d, _) = utc_parts(ts);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The instant as a chrono UTC date-time (saturating outside chrono's range).
pub fn to_datetime(ts: Millis) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_millis(ts).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// RFC 3339 text of an instant with millisecond precision, e.g. `2024-01-02T03:04:05.678Z`.
pub fn rfc3339(ts: Millis) -> String {
    to_datetime(ts).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Parses an RFC 3339 timestamp to epoch milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<Millis> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|dt| dt.timestamp_millis())
}

/// Parses `YYYY-MM-DD` to the epoch milliseconds of its UTC midnight.
pub fn parse_date(s: &str) -> Option<Millis> {
    let d = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    Some(d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis())
}

/// Wall-clock now in epoch milliseconds.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// A duration written as human text in job specs (`"30s"`, `"10m"`, `"7d"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub std::time::Duration);

impl HumanDuration {
    /// Builds a duration from milliseconds.
    pub fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }
    /// The duration in milliseconds.
    pub fn millis(self) -> Millis {
        self.0.as_millis() as Millis
    }
}

impl std::str::FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s.trim())
            .map(HumanDuration)
            .map_err(|e| {
                format!("invalid duration {s:?}: {e} (write e.g. \"30s\", \"10m\", \"7d\")")
            })
    }
}

impl std::fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A signed duration in human text (`"1h"`, `"-30m"`, `"+2h"`): an offset in event time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SignedDuration(pub Millis);

impl std::str::FromStr for SignedDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let (sign, rest) = match t.strip_prefix('-') {
            Some(r) => (-1, r),
            None => (1, t.strip_prefix('+').unwrap_or(t)),
        };
        let d: HumanDuration = rest.parse()?;
        Ok(SignedDuration(sign * d.millis()))
    }
}

impl std::fmt::Display for SignedDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        write!(
            f,
            "{sign}{}",
            HumanDuration::from_millis(self.0.unsigned_abs())
        )
    }
}

impl Serialize for SignedDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SignedDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_align_to_epoch_also_before_1970() {
        assert_eq!(window_start(61_234, MINUTE_MS), 60_000);
        assert_eq!(window_start(-1, MINUTE_MS), -60_000);
        assert_eq!(day_of(DAY_MS - 1), 0);
        assert_eq!(day_of(DAY_MS), 1);
    }

    #[test]
    fn calendar_and_rfc3339_round_trip() {
        let ts = 1_763_893_530_123;
        assert_eq!(date_string(ts), "2025-11-23");
        assert_eq!(parse_rfc3339(&rfc3339(ts)), Some(ts));
        assert_eq!(parse_date("2025-11-23"), Some(window_start(ts, DAY_MS)));
        assert_eq!(parse_date("2025-13-01"), None);
    }

    #[test]
    fn durations_parse_human_text() {
        assert_eq!("30s".parse::<HumanDuration>().unwrap().millis(), 30_000);
        assert_eq!("7d".parse::<HumanDuration>().unwrap().millis(), 7 * DAY_MS);
        assert!("thirty".parse::<HumanDuration>().is_err());
        for (text, ms) in [("1h", HOUR_MS), ("-30m", -30 * MINUTE_MS), ("+2s", 2_000)] {
            let d: SignedDuration = text.parse().unwrap();
            assert_eq!(d.0, ms);
            assert_eq!(d.to_string().parse::<SignedDuration>().unwrap(), d);
        }
        assert!("--1h".parse::<SignedDuration>().is_err());
    }
}
