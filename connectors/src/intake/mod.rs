//! Decoding and validation of location events (`event-schema.md`).
//!
//! The hot path: one scan of a flat object (what trackers send; see `intake/flat.rs`) or, for any
//! other line, one `serde_json` pass over the borrowed bytes, into a struct of borrowed
//! strings and plain numbers, then range checks. The vehicle id and tenant become
//! `CompactString`s, which stay inline (no allocation) up to 24 bytes. Errors are
//! `(Reason, detail)` values, never panics.
//!
//! A required field that is missing, of the wrong type or out of range rejects the event
//! (`invalid`). An optional field that is of the wrong type or out of range (a
//! `speed_kmh` of -5, a `heading_deg` of `"N"`) is dropped instead: the fix keeps its
//! position, and the drop is reported per field ([`decode_counted`]). `null` is absence.

use fleetflow_types::fix::Fix;
use fleetflow_types::records::Reason;
use fleetflow_types::registry::VehicleRegistry;
use fleetflow_types::time::{Millis, DAY_MS};
use fleetflow_types::CompactString;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;

mod flat;

/// Earliest accepted event time: 2000-01-01T00:00:00Z.
pub const MIN_TS: Millis = 946_684_800_000;

/// Why a line was rejected, with a human detail.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// `malformed` or `invalid`.
    pub reason: Reason,
    /// What exactly was wrong.
    pub detail: String,
}

impl Rejection {
    /// An `invalid` rejection.
    pub fn invalid(detail: impl Into<String>) -> Self {
        Rejection {
            reason: Reason::Invalid,
            detail: detail.into(),
        }
    }
}

#[derive(Deserialize, Default)]
#[cfg_attr(test, derive(Debug, PartialEq))]
struct RawEvent<'a> {
    #[serde(borrow, default)]
    vehicle_id: Option<Cow<'a, str>>,
    #[serde(default)]
    ts: Option<RawTs>,
    #[serde(default)]
    lat: Option<f64>,
    #[serde(default)]
    lon: Option<f64>,
    #[serde(default)]
    speed_kmh: Option<Lenient<f64>>,
    #[serde(default)]
    heading_deg: Option<Lenient<f64>>,
    #[serde(default)]
    fuel_level_pct: Option<Lenient<f64>>,
    #[serde(default)]
    fuel_used_l: Option<Lenient<f64>>,
    #[serde(default)]
    odometer_km: Option<Lenient<f64>>,
    #[serde(default)]
    ignition: Option<Lenient<bool>>,
    #[serde(borrow, default)]
    tenant: Option<Lenient<Cow<'a, str>>>,
}

/// An optional field's value: `Some` when it has the expected type, `None` when it is
/// present with another type (dropped and counted, the event kept).
#[cfg_attr(test, derive(Debug, PartialEq))]
struct Lenient<T>(Option<T>);

/// Skips the rest of a sequence or map of the wrong type.
fn skip_seq<'de, A: de::SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<de::IgnoredAny>()?.is_some() {}
    Ok(())
}

fn skip_map<'de, A: de::MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map
        .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
        .is_some()
    {}
    Ok(())
}

/// The visitor methods of every kind of value, each answering "wrong type"; a lenient
/// visitor overrides the kind it expects.
macro_rules! wrong_types {
    ($($m:ident: $t:ty),*) => {
        $(fn $m<E: de::Error>(self, _: $t) -> Result<Self::Value, E> { Ok(Lenient(None)) })*
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> { Ok(Lenient(None)) }
        fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            skip_seq(seq)?;
            Ok(Lenient(None))
        }
        fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            skip_map(map)?;
            Ok(Lenient(None))
        }
    };
}

impl<'de> Deserialize<'de> for Lenient<f64> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Lenient<f64>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Lenient(Some(v as f64)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Lenient(Some(v as f64)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Lenient(Some(v)))
            }
            wrong_types!(visit_bool: bool, visit_str: &str);
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Lenient<bool> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Lenient<bool>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Lenient(Some(v)))
            }
            wrong_types!(visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);
        }
        d.deserialize_any(V)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Lenient<Cow<'a, str>> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Lenient<Cow<'a, str>>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Lenient(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Lenient(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Lenient(Some(Cow::Owned(v))))
            }
            wrong_types!(visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_bool: bool);
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// Bits of [`decode_counted`]'s mask, one per optional field, in the order of
/// [`fleetflow_runtime::metrics::OPTIONAL_FIELDS`].
mod field {
    pub const SPEED: u8 = 1 << 0;
    pub const HEADING: u8 = 1 << 1;
    pub const LEVEL: u8 = 1 << 2;
    pub const FUEL_USED: u8 = 1 << 3;
    pub const ODOMETER: u8 = 1 << 4;
    pub const IGNITION: u8 = 1 << 5;
    pub const TENANT: u8 = 1 << 6;
}

/// An optional number: kept when it is a finite number in `lo..=hi`, else dropped (its
/// bit set in `dropped`).
fn optional_number(
    v: Option<Lenient<f64>>,
    lo: f64,
    hi: f64,
    bit: u8,
    dropped: &mut u8,
) -> Option<f64> {
    match v? {
        Lenient(Some(x)) if x.is_finite() && x >= lo && x <= hi => Some(x),
        _ => {
            *dropped |= bit;
            None
        }
    }
}

/// `ts` as epoch ms, or an RFC 3339 string, or something wrong (kept to report it).
#[cfg_attr(test, derive(Debug, PartialEq))]
enum RawTs {
    Ms(Millis),
    Bad(&'static str),
}

impl RawTs {
    /// A number with a fraction or an exponent: whole milliseconds only.
    fn from_f64(v: f64) -> RawTs {
        if v.fract() == 0.0 && v.abs() < 9.0e15 {
            RawTs::Ms(v as i64)
        } else {
            RawTs::Bad("ts must be whole epoch milliseconds")
        }
    }

    /// A string: RFC 3339.
    fn from_text(v: &str) -> RawTs {
        fleetflow_types::time::parse_rfc3339(v)
            .map(RawTs::Ms)
            .unwrap_or(RawTs::Bad("ts is not RFC 3339"))
    }
}

impl<'de> Deserialize<'de> for RawTs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawTs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("epoch milliseconds or an RFC 3339 string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawTs, E> {
                Ok(RawTs::Ms(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawTs, E> {
                Ok(i64::try_from(v)
                    .map(RawTs::Ms)
                    .unwrap_or(RawTs::Bad("ts out of range")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawTs, E> {
                Ok(RawTs::from_f64(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawTs, E> {
                Ok(RawTs::from_text(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<RawTs, E> {
                Ok(RawTs::Bad("ts is null"))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<RawTs, E> {
                Ok(RawTs::Bad("ts must be a number or a string"))
            }
        }
        d.deserialize_any(V)
    }
}

fn check_range(name: &str, v: Option<f64>, lo: f64, hi: f64) -> Result<(), Rejection> {
    if let Some(x) = v {
        let ok = x.is_finite() && x >= lo && x <= hi;
        if !ok {
            return Err(Rejection::invalid(format!("{name} {x} out of range")));
        }
    }
    Ok(())
}

/// Decodes and validates one event. `now` is the processing clock (ms) for the
/// "not more than a day in the future" rule; `registry` resolves tenants. Optional fields
/// of the wrong type or out of range are dropped (see [`decode_counted`]).
pub fn decode(
    line: &[u8],
    now: Millis,
    registry: Option<&VehicleRegistry>,
) -> Result<Fix, Rejection> {
    decode_counted(line, now, registry).map(|(fix, _)| fix)
}

/// [`decode`], also returning which optional fields were dropped: bit `i` stands for
/// [`fleetflow_runtime::metrics::OPTIONAL_FIELDS`]`[i]`.
pub fn decode_counted(
    line: &[u8],
    now: Millis,
    registry: Option<&VehicleRegistry>,
) -> Result<(Fix, u8), Rejection> {
    let first = line.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(Rejection {
            reason: Reason::Malformed,
            detail: "not a JSON object".into(),
        });
    }
    let raw = match flat::scan(line) {
        Some(raw) => raw,
        None => full(line)?,
    };
    let vehicle_id = match raw.vehicle_id {
        Some(v) if !v.is_empty() && v.len() <= 64 => v,
        Some(v) if v.is_empty() => return Err(Rejection::invalid("vehicle_id is empty")),
        Some(_) => return Err(Rejection::invalid("vehicle_id longer than 64 bytes")),
        None => return Err(Rejection::invalid("vehicle_id missing")),
    };
    let ts = match raw.ts {
        Some(RawTs::Ms(ts)) => ts,
        Some(RawTs::Bad(why)) => return Err(Rejection::invalid(why)),
        None => return Err(Rejection::invalid("ts missing")),
    };
    if ts < MIN_TS {
        return Err(Rejection::invalid(format!("ts {ts} before 2000-01-01")));
    }
    if ts > now.saturating_add(DAY_MS) {
        return Err(Rejection::invalid(format!(
            "ts {ts} more than 1 day in the future"
        )));
    }
    let lat = raw.lat.ok_or_else(|| Rejection::invalid("lat missing"))?;
    let lon = raw.lon.ok_or_else(|| Rejection::invalid("lon missing"))?;
    check_range("lat", Some(lat), -90.0, 90.0)?;
    check_range("lon", Some(lon), -180.0, 180.0)?;
    let mut dropped = 0u8;
    let speed_kmh = optional_number(raw.speed_kmh, 0.0, f64::MAX, field::SPEED, &mut dropped);
    let heading_deg = optional_number(raw.heading_deg, 0.0, 360.0, field::HEADING, &mut dropped);
    let fuel_level_pct =
        optional_number(raw.fuel_level_pct, 0.0, 100.0, field::LEVEL, &mut dropped);
    let fuel_used_l = optional_number(
        raw.fuel_used_l,
        0.0,
        f64::MAX,
        field::FUEL_USED,
        &mut dropped,
    );
    let odometer_km = optional_number(
        raw.odometer_km,
        0.0,
        f64::MAX,
        field::ODOMETER,
        &mut dropped,
    );
    let ignition = match raw.ignition {
        Some(Lenient(None)) => {
            dropped |= field::IGNITION;
            None
        }
        Some(Lenient(b)) => b,
        None => None,
    };
    let tenant = match raw.tenant {
        Some(Lenient(None)) => {
            dropped |= field::TENANT;
            None
        }
        Some(Lenient(Some(t))) if t.len() > 64 => {
            dropped |= field::TENANT;
            None
        }
        Some(Lenient(t)) => t,
        None => None,
    };
    let tenant = match tenant {
        Some(t) if !t.is_empty() => CompactString::from(t.as_ref()),
        _ => registry
            .and_then(|r| r.get(&vehicle_id))
            .and_then(|info| info.tenant.clone())
            .unwrap_or_else(|| CompactString::const_new("default")),
    };
    let fix = Fix {
        vehicle_id: CompactString::from(vehicle_id.as_ref()),
        tenant,
        ts,
        lat,
        lon,
        speed_kmh,
        heading_deg,
        fuel_level_pct,
        fuel_used_l,
        odometer_km,
        ignition,
    };
    Ok((fix, dropped))
}

/// The full path: `serde_json`, whose results and errors define decoding (the flat scan
/// only takes lines whose result it matches exactly).
fn full(line: &[u8]) -> Result<RawEvent<'_>, Rejection> {
    serde_json::from_slice(line).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => Rejection::invalid(e.to_string()),
        _ => Rejection {
            reason: Reason::Malformed,
            detail: e.to_string(),
        },
    })
}

/// Writes a fix as one NDJSON line in the input format (used by the generator and tests).
pub fn encode(fix: &Fix, out: &mut Vec<u8>) {
    use std::io::Write;
    let _ = write!(
        out,
        "{{\"vehicle_id\":\"{}\",\"ts\":{},\"lat\":{},\"lon\":{}",
        fix.vehicle_id, fix.ts, fix.lat, fix.lon
    );
    let opt = |out: &mut Vec<u8>, k: &str, v: Option<f64>| {
        if let Some(v) = v {
            let _ = write!(out, ",\"{k}\":{v}");
        }
    };
    opt(out, "speed_kmh", fix.speed_kmh);
    opt(out, "heading_deg", fix.heading_deg);
    opt(out, "fuel_level_pct", fix.fuel_level_pct);
    opt(out, "fuel_used_l", fix.fuel_used_l);
    opt(out, "odometer_km", fix.odometer_km);
    if let Some(i) = fix.ignition {
        let _ = write!(out, ",\"ignition\":{i}");
    }
    if fix.tenant != "default" {
        let _ = write!(out, ",\"tenant\":\"{}\"", fix.tenant);
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = 1_763_893_530_123;

    fn dec(s: &str) -> Result<Fix, Rejection> {
        decode(s.as_bytes(), NOW, None)
    }

    #[test]
    fn decodes_the_schema_example() {
        let f = dec(r#"{"vehicle_id":"V00042","ts":1763893530123,"lat":52.52,"lon":13.405,"speed_kmh":42.5,"heading_deg":182.0,"fuel_level_pct":63.2,"fuel_used_l":10234.56,"odometer_km":120345.7,"ignition":true,"tenant":"acme","extra":[1,2]}"#).unwrap();
        assert_eq!(f.vehicle_id, "V00042");
        assert_eq!(f.tenant, "acme");
        assert_eq!(f.ts, 1_763_893_530_123);
        assert_eq!(f.speed_kmh, Some(42.5));
        assert_eq!(f.ignition, Some(true));
    }

    #[test]
    fn rfc3339_timestamps_and_default_tenant() {
        let f = dec(r#"{"vehicle_id":"a\"b","ts":"2025-11-23T10:25:30.123Z","lat":1,"lon":2}"#)
            .unwrap();
        assert_eq!(f.ts, 1_763_893_530_123);
        assert_eq!(f.vehicle_id, "a\"b");
        assert_eq!(f.tenant, "default");
    }

    #[test]
    fn registry_supplies_the_tenant() {
        let reg = VehicleRegistry::parse("vehicle_id,tenant\nV1,acme\n").unwrap();
        let f = decode(
            br#"{"vehicle_id":"V1","ts":1763893530123,"lat":1,"lon":2}"#,
            NOW,
            Some(&reg),
        )
        .unwrap();
        assert_eq!(f.tenant, "acme");
    }

    #[test]
    fn rejections_carry_reasons() {
        let cases: &[(&str, Reason, &str)] = &[
            ("not json", Reason::Malformed, "not a JSON object"),
            ("{\"vehicle_id\":", Reason::Malformed, "EOF"),
            ("[1,2]", Reason::Malformed, "object"),
            (
                r#"{"ts":1763893530123,"lat":1,"lon":2}"#,
                Reason::Invalid,
                "vehicle_id missing",
            ),
            (
                r#"{"vehicle_id":"","ts":1763893530123,"lat":1,"lon":2}"#,
                Reason::Invalid,
                "empty",
            ),
            (
                r#"{"vehicle_id":"v","lat":1,"lon":2}"#,
                Reason::Invalid,
                "ts missing",
            ),
            (
                r#"{"vehicle_id":"v","ts":5,"lat":1,"lon":2}"#,
                Reason::Invalid,
                "before 2000",
            ),
            (
                r#"{"vehicle_id":"v","ts":1863893530123,"lat":1,"lon":2}"#,
                Reason::Invalid,
                "future",
            ),
            (
                r#"{"vehicle_id":"v","ts":"yesterday","lat":1,"lon":2}"#,
                Reason::Invalid,
                "RFC 3339",
            ),
            (
                r#"{"vehicle_id":"v","ts":1763893530123,"lat":91,"lon":2}"#,
                Reason::Invalid,
                "lat 91",
            ),
            (
                r#"{"vehicle_id":"v","ts":1763893530123,"lat":1,"lon":-181}"#,
                Reason::Invalid,
                "lon",
            ),
            (
                r#"{"vehicle_id":"v","ts":1763893530123,"lat":1}"#,
                Reason::Invalid,
                "lon missing",
            ),
            (
                r#"{"vehicle_id":"v","ts":1763893530123,"lat":"x","lon":2}"#,
                Reason::Invalid,
                "invalid type",
            ),
            (
                r#"{"vehicle_id":"v","ts":1763893530123.5,"lat":1,"lon":2}"#,
                Reason::Invalid,
                "whole",
            ),
        ];
        for (line, reason, needle) in cases {
            let r = dec(line).expect_err(line);
            assert_eq!(r.reason, *reason, "{line}: {r:?}");
            assert!(r.detail.contains(needle), "{line}: {r:?}");
        }
        let long = format!(
            r#"{{"vehicle_id":"{}","ts":1763893530123,"lat":1,"lon":2}}"#,
            "x".repeat(65)
        );
        assert_eq!(dec(&long).unwrap_err().reason, Reason::Invalid);
    }

    #[test]
    fn optional_fields_of_the_wrong_type_or_out_of_range_are_dropped_and_the_fix_kept() {
        use fleetflow_runtime::metrics::OPTIONAL_FIELDS;
        let base = r#"{"vehicle_id":"v","ts":1763893530123,"lat":1.5,"lon":2.5"#;
        let bit = |name: &str| 1u8 << OPTIONAL_FIELDS.iter().position(|f| *f == name).unwrap();
        let cases: &[(&str, u8)] = &[
            (r#","heading_deg":0"#, 0),
            (r#","heading_deg":360"#, 0),
            (r#","heading_deg":360.5"#, bit("heading_deg")),
            (r#","heading_deg":"N""#, bit("heading_deg")),
            (r#","speed_kmh":-5"#, bit("speed_kmh")),
            (r#","fuel_level_pct":140"#, bit("fuel_level_pct")),
            (r#","fuel_used_l":[1,2]"#, bit("fuel_used_l")),
            (r#","odometer_km":{"km":3}"#, bit("odometer_km")),
            (r#","ignition":"on""#, bit("ignition")),
            (r#","ignition":1"#, bit("ignition")),
            (r#","tenant":7"#, bit("tenant")),
            (r#","speed_kmh":null,"ignition":null"#, 0),
            (
                r#","speed_kmh":-5,"fuel_level_pct":140,"heading_deg":"N","ignition":true"#,
                bit("speed_kmh") | bit("fuel_level_pct") | bit("heading_deg"),
            ),
        ];
        for (extra, want) in cases {
            let line = format!("{base}{extra}}}");
            let (fix, dropped) = decode_counted(line.as_bytes(), NOW, None).expect(&line);
            assert_eq!(dropped, *want, "{line}");
            assert_eq!(
                (fix.lat, fix.lon, fix.ts),
                (1.5, 2.5, 1_763_893_530_123),
                "{line}"
            );
            assert_eq!(fix.tenant, "default", "{line}");
        }
        let (fix, _) = decode_counted(
            format!(r#"{base},"speed_kmh":-5,"heading_deg":360,"ignition":false}}"#).as_bytes(),
            NOW,
            None,
        )
        .unwrap();
        assert_eq!(
            (fix.speed_kmh, fix.heading_deg, fix.ignition),
            (None, Some(360.0), Some(false))
        );
    }

    proptest::proptest! {
        #[test]
        fn encode_then_decode_round_trips(
            lat in -90.0f64..=90.0, lon in -180.0f64..=180.0, ts in MIN_TS..NOW,
            speed in proptest::option::of(0.0f64..300.0), level in proptest::option::of(0.0f64..=100.0),
            ign in proptest::option::of(proptest::bool::ANY), id in "[A-Za-z0-9_-]{1,64}",
        ) {
            let fix = Fix { vehicle_id: id.as_str().into(), tenant: "t1".into(), ts, lat, lon, speed_kmh: speed,
                heading_deg: None, fuel_level_pct: level, fuel_used_l: None, odometer_km: Some(12.5), ignition: ign };
            let mut buf = Vec::new();
            encode(&fix, &mut buf);
            let back = decode(&buf, NOW, None).unwrap();
            proptest::prop_assert_eq!(back, fix);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = decode(&bytes, NOW, None);
        }
    }
}
