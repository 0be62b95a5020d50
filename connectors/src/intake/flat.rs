//! The fast path of decoding: one scan of a flat JSON object, the shape trackers send.
//!
//! [`scan`] reads an object whose values are strings without escapes, numbers, `true`,
//! `false` or `null` into the same [`RawEvent`] `serde_json` would make of it. Anything
//! else (an escape, a nested value, a duplicate field, an exponent, a number out of range,
//! bytes after the object, a syntax error) returns `None`, and the caller decodes the line
//! with `serde_json`: that path stays the definition of every result and every error, and
//! this one only takes the lines whose result it can match exactly (the tests compare the
//! two on generated lines).

use super::{Lenient, RawEvent, RawTs};
use std::borrow::Cow;

/// A scalar JSON value, borrowed from the line.
enum Value<'a> {
    Str(&'a str),
    /// An integer literal that fits `i64`.
    Int(i64),
    /// A literal with a fraction (no exponent).
    Float(f64),
    Bool(bool),
    Null,
}

/// Powers of ten exact in `f64`.
const POWERS: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// The index of a known field (a bit of the fields seen, to catch duplicates, which
/// `serde_json` rejects).
fn field(key: &str) -> Option<usize> {
    Some(match key {
        "vehicle_id" => 0,
        "ts" => 1,
        "lat" => 2,
        "lon" => 3,
        "speed_kmh" => 4,
        "heading_deg" => 5,
        "fuel_level_pct" => 6,
        "fuel_used_l" => 7,
        "odometer_km" => 8,
        "ignition" => 9,
        "tenant" => 10,
        _ => return None,
    })
}

/// Reads `line` as a flat object (see the module docs), or `None` to take the full path.
pub(super) fn scan(line: &[u8]) -> Option<RawEvent<'_>> {
    // Validated once (ASCII goes a word at a time), so strings are sliced, not checked.
    let text = std::str::from_utf8(line).ok()?;
    let mut s = Scanner {
        text,
        b: text.as_bytes(),
        i: 0,
    };
    s.ws();
    s.eat(b'{')?;
    let mut raw = RawEvent::default();
    let mut seen = 0u16;
    s.ws();
    if s.peek()? == b'}' {
        s.i += 1;
        return s.end().then_some(raw);
    }
    loop {
        s.ws();
        let key = s.string()?;
        s.ws();
        s.eat(b':')?;
        s.ws();
        let value = s.value()?;
        if let Some(f) = field(key) {
            if seen & (1 << f) != 0 {
                return None;
            }
            seen |= 1 << f;
            set(&mut raw, f, value)?;
        }
        s.ws();
        match s.next()? {
            b',' => continue,
            b'}' => return s.end().then_some(raw),
            _ => return None,
        }
    }
}

/// Sets field `f` (see [`field`]) as `serde_json` would; `None` for a value
/// whose result or error only the full path gives.
fn set<'a>(raw: &mut RawEvent<'a>, f: usize, v: Value<'a>) -> Option<()> {
    // `null` is absence for every field (they are all `Option`s).
    if matches!(v, Value::Null) {
        return Some(());
    }
    match f {
        0 => match v {
            Value::Str(s) => raw.vehicle_id = Some(Cow::Borrowed(s)),
            _ => return None,
        },
        1 => {
            raw.ts = Some(match v {
                Value::Int(n) => RawTs::Ms(n),
                Value::Float(x) => RawTs::from_f64(x),
                Value::Str(s) => RawTs::from_text(s),
                Value::Bool(_) => RawTs::Bad("ts must be a number or a string"),
                Value::Null => unreachable!("handled above"),
            })
        }
        2 | 3 => {
            let x = match v {
                Value::Int(n) => n as f64,
                Value::Float(x) => x,
                _ => return None,
            };
            if f == 2 {
                raw.lat = Some(x);
            } else {
                raw.lon = Some(x);
            }
        }
        4..=8 => {
            let x = Some(Lenient(match v {
                Value::Int(n) => Some(n as f64),
                Value::Float(x) => Some(x),
                _ => None,
            }));
            match f {
                4 => raw.speed_kmh = x,
                5 => raw.heading_deg = x,
                6 => raw.fuel_level_pct = x,
                7 => raw.fuel_used_l = x,
                _ => raw.odometer_km = x,
            }
        }
        9 => {
            raw.ignition = Some(Lenient(match v {
                Value::Bool(b) => Some(b),
                _ => None,
            }))
        }
        _ => {
            raw.tenant = Some(Lenient(match v {
                Value::Str(s) => Some(Cow::Borrowed(s)),
                _ => None,
            }))
        }
    }
    Some(())
}

struct Scanner<'a> {
    text: &'a str,
    /// `text`'s bytes (what the scan reads; `text` is what it slices).
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    /// JSON whitespace.
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// Only whitespace is left.
    fn end(&mut self) -> bool {
        self.ws();
        self.i == self.b.len()
    }

    /// A string without escapes or control characters.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        let len = self.b[start..]
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
        self.i = start + len + 1;
        // Quotes are ASCII: both ends are character boundaries.
        (self.b[start + len] == b'"').then(|| &self.text[start..start + len])
    }

    fn value(&mut self) -> Option<Value<'a>> {
        match self.peek()? {
            b'"' => self.string().map(Value::Str),
            b't' => self.word(b"true", Value::Bool(true)),
            b'f' => self.word(b"false", Value::Bool(false)),
            b'n' => self.word(b"null", Value::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn word(&mut self, w: &[u8], v: Value<'a>) -> Option<Value<'a>> {
        let end = self.i + w.len();
        (self.b.get(self.i..end)? == w).then(|| {
            self.i = end;
            v
        })
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?`, not followed by an exponent.
    fn number(&mut self) -> Option<Value<'a>> {
        let start = self.i;
        let negative = self.peek() == Some(b'-');
        self.i += usize::from(negative);
        // The digits as one integer (wrapping: only used when `significant` is small),
        // how many of them count (from the first non-zero one) and how many follow the point.
        let (mut mantissa, mut significant) = (0u64, 0u32);
        let int_start = self.i;
        self.digits(&mut mantissa, &mut significant);
        let int_digits = self.i - int_start;
        if int_digits == 0 || (int_digits > 1 && self.b[int_start] == b'0') {
            return None;
        }
        let mut scale = 0;
        let fraction = self.peek() == Some(b'.');
        if fraction {
            self.i += 1;
            let frac_start = self.i;
            self.digits(&mut mantissa, &mut significant);
            scale = self.i - frac_start;
            if scale == 0 {
                return None;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            return None;
        }
        if !fraction {
            if significant <= 18 {
                let n = mantissa as i64;
                return Some(match (negative, n) {
                    // `serde_json` reads `-0` as the float -0.0.
                    (true, 0) => Value::Float(-0.0),
                    (true, n) => Value::Int(-n),
                    (false, n) => Value::Int(n),
                });
            }
            return self.text[start..self.i].parse().ok().map(Value::Int);
        }
        // Correctly rounded, as `serde_json` (with `float_roundtrip`) rounds: exactly one
        // rounding when the digits make an integer below 2^53 and the scale is a power of
        // ten below 10^23 (both exact in f64); the library's parse otherwise.
        if significant <= 15 && scale <= 22 {
            let x = mantissa as f64 / POWERS[scale];
            return Some(Value::Float(if negative { -x } else { x }));
        }
        self.text[start..self.i].parse().ok().map(Value::Float)
    }

    /// Reads digits into `mantissa`, counting the significant ones.
    fn digits(&mut self, mantissa: &mut u64, significant: &mut u32) {
        while let Some(&c) = self.b.get(self.i) {
            if !c.is_ascii_digit() {
                break;
            }
            *significant += u32::from(*significant > 0 || c != b'0');
            *mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(c - b'0'));
            self.i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::full;
    use super::*;
    use proptest::prelude::*;

    const FIELDS: [&str; 11] = [
        "vehicle_id",
        "ts",
        "lat",
        "lon",
        "speed_kmh",
        "heading_deg",
        "fuel_level_pct",
        "fuel_used_l",
        "odometer_km",
        "ignition",
        "tenant",
    ];

    /// What both paths make of a line, `-0.0` and `0.0` told apart.
    fn both(line: &str) -> Option<(String, String)> {
        let fast = scan(line.as_bytes())?;
        Some((
            format!("{:?}", Ok::<_, super::super::Rejection>(fast)),
            format!("{:?}", full(line.as_bytes())),
        ))
    }

    #[test]
    fn a_trackers_line_takes_the_fast_path_with_the_full_paths_result() {
        let line = r#"{"vehicle_id":"V00000","ts":1736143200000,"lat":52.531228,"lon":13.592807,"speed_kmh":0,"heading_deg":117.4,"fuel_level_pct":53.09,"fuel_used_l":20390.347,"odometer_km":143962.252,"ignition":false,"tenant":"acme"}"#;
        let (fast, full) = both(line).expect("the fast path takes it");
        assert_eq!(fast, full);
        assert!(fast.contains("52.531228"), "{fast}");
    }

    #[test]
    fn lines_the_fast_path_leaves_to_the_full_path() {
        for line in [
            r#"{"vehicle_id":"V\"1","ts":1,"lat":1.0,"lon":2.0}"#,
            r#"{"vehicle_id":"V1","ts":1,"lat":1.0,"lon":2.0,"x":[1]}"#,
            r#"{"vehicle_id":"V1","ts":1,"lat":1.0,"lat":2.0}"#,
            r#"{"vehicle_id":"V1","ts":1e3,"lat":1.0,"lon":2.0}"#,
            r#"{"vehicle_id":"V1","ts":1,"lat":1.0,"lon":2.0} x"#,
            r#"{"vehicle_id":"V1","ts":99999999999999999999,"lat":1.0,"lon":2.0}"#,
            r#"{"vehicle_id":"V1","ts":01,"lat":1.0,"lon":2.0}"#,
            r#"{"vehicle_id":1,"ts":1,"lat":1.0,"lon":2.0}"#,
            r#"{"vehicle_id":"V1","ts":1,"lat":"1.0","lon":2.0}"#,
        ] {
            assert!(scan(line.as_bytes()).is_none(), "{line}");
        }
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            Just("-0".to_string()),
            Just("-0.0".to_string()),
            Just("\"2025-01-06T07:29:56.760Z\"".to_string()),
            Just("\"caf\u{e9}\"".to_string()),
            Just("\"a\\\"b\"".to_string()),
            Just("[1,{\"a\":2}]".to_string()),
            Just("{\"a\":1}".to_string()),
            Just("1e3".to_string()),
            Just("1.5E-3".to_string()),
            Just("99999999999999999999".to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            (-1_000_000i64..1_000_000, 0u32..1_000_000).prop_map(|(a, b)| format!("{a}.{b:06}")),
            any::<f64>()
                .prop_filter("finite", |x| x.is_finite())
                .prop_map(|x| format!("{x:?}")),
            // Coordinates with every digit a double has (16 or 17 significant ones).
            (-200.0f64..200.0).prop_map(|x| format!("{x:?}")),
            (-1.0f64..1.0).prop_map(|x| format!("{x:?}")),
            "[a-zA-Z0-9 ]{0,12}".prop_map(|s| format!("\"{s}\"")),
        ]
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            (0..FIELDS.len()).prop_map(|i| FIELDS[i].to_string()),
            Just("extra".to_string()),
            Just("t\\u0073".to_string()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]
        /// Whatever the fast path takes, it makes exactly what `serde_json` makes of it.
        #[test]
        fn the_fast_path_agrees_with_serde_json(
            fields in prop::collection::vec((key(), value()), 0..14),
            spaces in prop::collection::vec(prop_oneof![Just(""), Just(" "), Just("\t"), Just(" \r\n")], 6),
            tail in prop_oneof![Just(""), Just(" "), Just("\n"), Just(" x"), Just("}")],
        ) {
            let body: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("{}\"{k}\"{}:{}{v}{}", spaces[0], spaces[1], spaces[2], spaces[3]))
                .collect();
            let line = format!("{}{{{}}}{tail}", spaces[4], body.join(","));
            // What the fast path must take: scalars without escapes or exponents, no known
            // field twice, nothing after the object.
            let plain = |v: &str| match v.strip_prefix('"') {
                Some(_) => !v.contains('\\'),
                None => !v.contains(['[', '{', 'e', 'E']) && v.len() < 20,
            };
            let mut known: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).filter(|k| *k != "extra").collect();
            let n = known.len();
            known.sort_unstable();
            known.dedup();
            // And the types whose mismatch is an error (the full path words it).
            let typed = |k: &str, v: &str| match k {
                "lat" | "lon" => v == "null" || v.starts_with(['-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9']),
                "vehicle_id" => v == "null" || v.starts_with('"'),
                _ => true,
            };
            let takes = fields.iter().all(|(k, v)| !k.contains('\\') && plain(v) && typed(k, v))
                && known.len() == n
                && tail.trim().is_empty();
            match both(&line) {
                Some((fast, full)) => prop_assert_eq!(fast, full, "{}", line),
                None => prop_assert!(!takes, "the fast path left {} to the full path", line),
            }
        }
    }
}
