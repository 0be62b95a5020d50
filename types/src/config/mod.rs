//! The job spec (`job.toml`, see `interface.md`).
//!
//! Parsed with serde (`deny_unknown_fields` everywhere), then checked. Every error is one
//! line naming the field and, where it can be found, the line: `job.toml:7: time.allowed_lateness:
//! invalid duration "soon"`.

use crate::time::HumanDuration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;

mod source;
pub use source::{
    default_start, FileSourceSpec, GeneratorOrder, GeneratorSpec, KafkaSourceSpec, KafkaStart,
};

/// A job spec that could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {message}", line.map(|l| format!("line {l}: ")).unwrap_or_default(), if field.is_empty() { "job spec" } else { field.as_str() })]
pub struct SpecError {
    /// Dotted path of the offending field, e.g. `time.allowed_lateness`.
    pub field: String,
    /// 1-based line in the spec text, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

/// A whole job spec.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Job name, used in logs and object names.
    pub name: String,
    /// Timely worker threads in this process.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Where events come from.
    pub source: SourceSpec,
    /// Event-time settings.
    #[serde(default)]
    pub time: TimeSpec,
    /// Geofences (evaluated by the geofence dataflow).
    #[serde(default)]
    pub geofences: Option<GeofenceSpec>,
    /// The optional vehicle registry.
    #[serde(default)]
    pub vehicles: Option<VehiclesSpec>,
    /// The lake the tiers are written to.
    pub lake: LakeSpec,
    /// Dead-letter output options.
    #[serde(default)]
    pub dead_letter: DeadLetterSpec,
    /// The query API.
    #[serde(default)]
    pub api: ApiSpec,
}

fn default_workers() -> usize {
    1
}

/// The source of location events.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceSpec {
    /// NDJSON files: one file or a directory of them.
    File(FileSourceSpec),
    /// A Kafka topic.
    Kafka(KafkaSourceSpec),
    /// The deterministic synthetic generator.
    Generator(GeneratorSpec),
}

/// `[time]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TimeSpec {
    /// How far behind its own newest fix a vehicle's fixes may arrive: its watermark
    /// trails its newest `ts` by this.
    #[serde(default = "default_lateness")]
    pub allowed_lateness: HumanDuration,
    /// Processing time without a fix after which a vehicle of a live input (Kafka, an
    /// endless generator) stops voting for the job clock; also when a caught-up input is
    /// reported idle.
    #[serde(default = "default_idle")]
    pub idle_timeout: HumanDuration,
    /// Silence after which a vehicle is `offline` (job clock minus its newest fix).
    #[serde(default = "default_offline")]
    pub offline_after: HumanDuration,
    /// On live inputs, how long (in job-clock time) a vehicle may stay silent before its
    /// windows close; a fix it sends later from before the job clock minus this is late.
    #[serde(default = "default_close_silent")]
    pub close_silent_after: HumanDuration,
}

fn default_lateness() -> HumanDuration {
    HumanDuration::from_millis(30_000)
}
fn default_idle() -> HumanDuration {
    HumanDuration::from_millis(30_000)
}
fn default_offline() -> HumanDuration {
    HumanDuration::from_millis(600_000)
}
fn default_close_silent() -> HumanDuration {
    HumanDuration::from_millis(3_600_000)
}

impl Default for TimeSpec {
    fn default() -> Self {
        TimeSpec {
            allowed_lateness: default_lateness(),
            idle_timeout: default_idle(),
            offline_after: default_offline(),
            close_silent_after: default_close_silent(),
        }
    }
}

/// `[geofences]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeofenceSpec {
    /// GeoJSON file of geofences.
    #[serde(default)]
    pub path: Option<String>,
    /// Property used as the id of features that have neither an `id` nor `properties.id`.
    #[serde(default)]
    pub id_property: Option<String>,
    /// Time inside after which a `dwell` event fires.
    #[serde(default = "default_dwell")]
    pub dwell_after: HumanDuration,
}

fn default_dwell() -> HumanDuration {
    HumanDuration::from_millis(600_000)
}

/// `[vehicles]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VehiclesSpec {
    /// CSV or NDJSON registry: `vehicle_id, tenant, tank_capacity_l, class`.
    #[serde(default)]
    pub registry: Option<String>,
}

/// `[lake]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LakeSpec {
    /// `file://DIR` or `s3://bucket/prefix`.
    pub url: String,
    /// Datasets to write: `raw` and window tiers named by their size (`1m`, `1h`, `1d`, ...).
    #[serde(default = "default_tiers")]
    pub tiers: Vec<String>,
    /// Retention per tier (by event time, behind the watermark).
    #[serde(default)]
    pub retention: BTreeMap<String, HumanDuration>,
    /// Roll a file at this size (e.g. `"128MB"`).
    #[serde(default = "default_file_size")]
    pub target_file_size: bytesize::ByteSize,
    /// Roll a file at this age (processing time).
    #[serde(default = "default_file_age")]
    pub max_file_age: HumanDuration,
    /// Extra S3 options (endpoint, region, ...), overriding `AWS_*` variables.
    #[serde(default)]
    pub s3: BTreeMap<String, String>,
    /// How often the job takes an exactly-once checkpoint (processing time).
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: HumanDuration,
    /// How long a file that a commit removed (compacted or expired) stays in the store for
    /// queries that planned on an older table version, before it is vacuumed.
    #[serde(default = "default_vacuum_grace")]
    pub vacuum_grace: HumanDuration,
}

fn default_vacuum_grace() -> HumanDuration {
    HumanDuration::from_millis(3_600_000)
}

fn default_checkpoint_interval() -> HumanDuration {
    HumanDuration::from_millis(10_000)
}

fn default_tiers() -> Vec<String> {
    vec!["raw".into(), "1m".into(), "1h".into(), "1d".into()]
}
fn default_file_size() -> bytesize::ByteSize {
    bytesize::ByteSize::mb(128)
}
fn default_file_age() -> HumanDuration {
    HumanDuration::from_millis(300_000)
}

/// `[dead_letter]`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterSpec {
    /// Kafka topic that also receives rejected messages.
    #[serde(default)]
    pub topic: Option<String>,
}

/// `[api]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSpec {
    /// Address the HTTP API binds.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Bearer token -> tenant (`*` sees all).
    #[serde(default)]
    pub tokens: BTreeMap<String, String>,
    /// Requests per second each token may make (a burst of as many); none when unset.
    #[serde(default)]
    pub rate_limit: Option<u32>,
    /// Live streams (SSE and WebSocket) open at once; more are answered 503.
    #[serde(default = "default_max_streams")]
    pub max_streams: usize,
    /// Changes kept for streams to resume from (`Last-Event-ID`).
    #[serde(default = "default_replay_buffer")]
    pub replay_buffer: usize,
    /// Messages a stream client may fall behind before it is told it lagged and cut off.
    #[serde(default = "default_stream_queue")]
    pub stream_queue: usize,
    /// Base-map raster tiles for the live map at `/`, as a URL template with `{z}`, `{x}`
    /// and `{y}` (e.g. OpenStreetMap's); none by default, so the page fetches nothing
    /// from outside the job.
    #[serde(default)]
    pub map_tiles: Option<String>,
}

fn default_max_streams() -> usize {
    10_000
}

fn default_replay_buffer() -> usize {
    100_000
}

fn default_stream_queue() -> usize {
    4096
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

impl Default for ApiSpec {
    fn default() -> Self {
        ApiSpec {
            listen: default_listen(),
            tokens: BTreeMap::new(),
            rate_limit: None,
            max_streams: default_max_streams(),
            replay_buffer: default_replay_buffer(),
            stream_queue: default_stream_queue(),
            map_tiles: None,
        }
    }
}

/// A window tier: its dataset name and window size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowTier {
    /// Dataset name (`1m`).
    pub name: String,
    /// Window size in ms.
    pub size_ms: i64,
}

impl LakeSpec {
    /// Whether the raw tier is written.
    pub fn has_raw(&self) -> bool {
        self.tiers.iter().any(|t| t == "raw")
    }

    /// The window tiers in the order given (sizes parsed from their names).
    pub fn window_tiers(&self) -> Vec<WindowTier> {
        self.tiers
            .iter()
            .filter(|t| *t != "raw")
            .filter_map(|t| {
                parse_tier_name(t).map(|size_ms| WindowTier {
                    name: t.clone(),
                    size_ms,
                })
            })
            .collect()
    }

    /// `target_file_size` in bytes.
    pub fn target_file_bytes(&self) -> u64 {
        self.target_file_size.as_u64()
    }
}

/// Parses a tier name such as `1m`, `15m`, `1h`, `1d` into its window size in ms.
pub fn parse_tier_name(name: &str) -> Option<i64> {
    let ms = humantime::parse_duration(name).ok()?.as_millis() as i64;
    (ms >= 1_000 && crate::time::DAY_MS % ms == 0 || ms % crate::time::DAY_MS == 0 && ms > 0)
        .then_some(ms)
}

/// Finds the 1-based line of `key` inside `[section]` of a TOML text (top level when
/// `section` is empty). Used to point semantic errors at their line.
pub fn locate(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if let Some(h) = l.strip_prefix('[') {
            current = h.trim_end_matches(']').trim().to_string();
            if key.is_empty() && current == section {
                return Some(i + 1);
            }
            continue;
        }
        if current == section && !key.is_empty() {
            if let Some(rest) = l.strip_prefix(key) {
                if rest.trim_start().starts_with('=') {
                    return Some(i + 1);
                }
            }
        }
    }
    None
}

fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

impl JobSpec {
    /// Parses and checks a job spec. Semantic checks that touch the file system (does the
    /// input exist?) are in [`JobSpec::check_paths`].
    pub fn parse(text: &str) -> Result<JobSpec, SpecError> {
        let de = toml::de::Deserializer::parse(text).map_err(|e| SpecError {
            field: String::new(),
            line: e.span().map(|s| line_of_offset(text, s.start)),
            message: e.message().to_string(),
        })?;
        let spec: JobSpec = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let field = if path == "." { String::new() } else { path };
            SpecError {
                line: inner.span().map(|s| line_of_offset(text, s.start)),
                field,
                message: inner.message().to_string(),
            }
        })?;
        spec.check(text)?;
        Ok(spec)
    }

    fn check(&self, text: &str) -> Result<(), SpecError> {
        let err = |section: &str, key: &str, message: String| {
            let field = if section.is_empty() {
                key.to_string()
            } else {
                format!("{section}.{key}")
            };
            Err(SpecError {
                field,
                line: locate(text, section, key),
                message,
            })
        };
        if self.name.trim().is_empty() {
            return err("", "name", "must not be empty".into());
        }
        if self.workers == 0 || self.workers > 256 {
            return err(
                "",
                "workers",
                format!("must be between 1 and 256, got {}", self.workers),
            );
        }
        match &self.source {
            SourceSpec::File(f) if f.path.trim().is_empty() => {
                return err("source", "path", "must not be empty".into())
            }
            SourceSpec::Generator(g) => {
                if g.vehicles == 0 {
                    return err("source", "vehicles", "must be at least 1".into());
                }
                if g.interval.millis() < 1 {
                    return err("source", "interval", "must be at least 1ms".into());
                }
                if g.rate == Some(0) {
                    return err(
                        "source",
                        "rate",
                        "must be at least 1 event/s (leave it out for as fast as possible)".into(),
                    );
                }
                if crate::time::parse_rfc3339(&g.start).is_none() {
                    return err(
                        "source",
                        "start",
                        format!("invalid RFC 3339 timestamp {:?}", g.start),
                    );
                }
                for (k, v) in [
                    ("duplicates", g.duplicates),
                    ("bad_lines", g.bad_lines),
                    ("level_only", g.level_only),
                ] {
                    if !(0.0..=1.0).contains(&v) {
                        return err(
                            "source",
                            k,
                            format!("must be a fraction between 0 and 1, got {v}"),
                        );
                    }
                }
                if g.order == GeneratorOrder::Vehicle && g.duration.is_none() {
                    return err(
                        "source",
                        "order",
                        "\"vehicle\" needs a duration (an endless fleet has no last fix)".into(),
                    );
                }
                if g.outage.is_some_and(|o| o.millis() == 0) {
                    return err("source", "outage", "must be longer than 0s".into());
                }
            }
            SourceSpec::Kafka(k) => {
                if k.brokers.trim().is_empty() {
                    return err("source", "brokers", "must not be empty".into());
                }
                if k.topic.trim().is_empty() {
                    return err("source", "topic", "must not be empty".into());
                }
                if self.dead_letter.topic.as_deref() == Some(k.topic.as_str()) {
                    return err(
                        "dead_letter",
                        "topic",
                        "must not be the source topic".into(),
                    );
                }
            }
            _ => {}
        }
        if self.dead_letter.topic.is_some() && !matches!(self.source, SourceSpec::Kafka(_)) {
            return err(
                "dead_letter",
                "topic",
                "needs a kafka source (it is produced to the source's brokers)".into(),
            );
        }
        if self.time.allowed_lateness.millis() > crate::time::DAY_MS {
            return err("time", "allowed_lateness", "must be at most 1d".into());
        }
        if self.time.close_silent_after < self.time.allowed_lateness {
            return err(
                "time",
                "close_silent_after",
                format!(
                    "must be at least allowed_lateness ({})",
                    self.time.allowed_lateness
                ),
            );
        }
        if !(self.lake.url.starts_with("file://") || self.lake.url.starts_with("s3://")) {
            return err(
                "lake",
                "url",
                format!("must start with file:// or s3://, got {:?}", self.lake.url),
            );
        }
        if self.lake.tiers.is_empty() {
            return err("lake", "tiers", "must name at least one tier".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for t in &self.lake.tiers {
            if t != "raw" && parse_tier_name(t).is_none() {
                return err("lake", "tiers", format!("unknown tier {t:?}: use \"raw\" or a window size that divides a day, like \"1m\", \"1h\", \"1d\""));
            }
            if !seen.insert(t) {
                return err("lake", "tiers", format!("tier {t:?} is listed twice"));
            }
        }
        if self.lake.window_tiers().len() > 16 {
            return err("lake", "tiers", "at most 16 window tiers".into());
        }
        for k in self.lake.retention.keys() {
            if !self.lake.tiers.contains(k) && k != "dead_letter" && k != "geofence_events" {
                return err(
                    "lake",
                    "retention",
                    format!("retention for {k:?}, which is neither in lake.tiers nor dead_letter or geofence_events"),
                );
            }
        }
        if self.lake.checkpoint_interval.millis() < 10 {
            return err(
                "lake",
                "checkpoint_interval",
                "must be at least 10ms".into(),
            );
        }

        if self.lake.target_file_bytes() < 1024 {
            return err(
                "lake",
                "target_file_size",
                format!("must be at least 1KiB, got {}", self.lake.target_file_size),
            );
        }
        if self.api.listen.parse::<SocketAddr>().is_err() {
            return err(
                "api",
                "listen",
                format!(
                    "not a socket address: {:?} (write e.g. \"127.0.0.1:8080\")",
                    self.api.listen
                ),
            );
        }
        if self.api.rate_limit == Some(0) {
            return err(
                "api",
                "rate_limit",
                "must be at least 1 request/s per token (leave it out for no limit)".into(),
            );
        }
        if self.api.rate_limit.is_some() && self.api.tokens.is_empty() {
            return err(
                "api",
                "rate_limit",
                "is per token: it needs api.tokens".into(),
            );
        }
        for (k, v, min) in [
            ("max_streams", self.api.max_streams, 1),
            ("replay_buffer", self.api.replay_buffer, 1),
            ("stream_queue", self.api.stream_queue, 2),
        ] {
            if v < min {
                return err("api", k, format!("must be at least {min}, got {v}"));
            }
        }
        if let Some(t) = &self.api.map_tiles {
            let web = t.starts_with("https://") || t.starts_with("http://");
            if !web || !["{z}", "{x}", "{y}"].iter().all(|p| t.contains(p)) {
                return err(
                    "api",
                    "map_tiles",
                    format!(
                        "must be an http(s) URL template with {{z}}, {{x}} and {{y}}, got {t:?}"
                    ),
                );
            }
        }
        for (token, tenant) in &self.api.tokens {
            if token.trim().is_empty() || token.contains(char::is_whitespace) {
                return err(
                    "api",
                    "tokens",
                    "a token must be non-empty, without spaces".into(),
                );
            }
            if tenant.trim().is_empty() {
                return err(
                    "api",
                    "tokens",
                    format!("token {token:?} maps to an empty tenant (use \"*\" for all)"),
                );
            }
        }
        Ok(())
    }

    /// Checks that the files the spec names exist (`validate` and `run` call this).
    pub fn check_paths(&self, text: &str) -> Result<(), SpecError> {
        let missing = |section: &str, key: &str, path: &str| SpecError {
            field: format!("{section}.{key}"),
            line: locate(text, section, key),
            message: format!("{path:?} does not exist"),
        };
        if let SourceSpec::File(f) = &self.source {
            if !std::path::Path::new(&f.path).exists() {
                return Err(missing("source", "path", &f.path));
            }
        }
        if let Some(VehiclesSpec { registry: Some(r) }) = &self.vehicles {
            if !std::path::Path::new(r).exists() {
                return Err(missing("vehicles", "registry", r));
            }
        }
        if let Some(GeofenceSpec { path: Some(p), .. }) = &self.geofences {
            if !std::path::Path::new(p).exists() {
                return Err(missing("geofences", "path", p));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "berlin"
workers = 2

[source]
kind = "generator"
vehicles = 10

[time]
allowed_lateness = "30s"

[lake]
url = "file://./lake"
tiers = ["raw", "1m", "1h", "1d"]
retention = { raw = "7d", "1m" = "90d" }
"#;

    #[test]
    fn a_good_spec_parses_with_defaults() {
        let spec = JobSpec::parse(GOOD).unwrap();
        assert_eq!(spec.workers, 2);
        assert_eq!(spec.time.offline_after.millis(), 600_000);
        assert_eq!(spec.api.listen, "127.0.0.1:8080");
        let tiers = spec.lake.window_tiers();
        assert_eq!(
            tiers.iter().map(|t| t.size_ms).collect::<Vec<_>>(),
            vec![60_000, 3_600_000, 86_400_000]
        );
        assert!(matches!(
            spec.source,
            SourceSpec::Generator(GeneratorSpec { vehicles: 10, .. })
        ));
    }

    #[test]
    fn a_bad_duration_names_field_and_line() {
        let text = GOOD.replace("allowed_lateness = \"30s\"", "allowed_lateness = \"soon\"");
        let e = JobSpec::parse(&text).unwrap_err();
        assert_eq!(e.field, "time.allowed_lateness");
        assert_eq!(e.line, Some(10));
        assert!(
            e.to_string()
                .starts_with("line 10: time.allowed_lateness: invalid duration"),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_field_is_named() {
        let text = GOOD.replace("vehicles = 10", "vehicles = 10\nspeed = 3");
        let e = JobSpec::parse(&text).unwrap_err();
        assert!(e.to_string().contains("unknown field `speed`"), "{e}");
        assert!(e.field.starts_with("source"), "{e:?}");
    }

    #[test]
    fn semantic_errors_name_field_and_line() {
        let text = GOOD.replace("workers = 2", "workers = 0");
        let e = JobSpec::parse(&text).unwrap_err();
        assert_eq!((e.field.as_str(), e.line), ("workers", Some(3)));
        let text = GOOD.replace("\"1h\", \"1d\"", "\"1h\", \"7x\"");
        let e = JobSpec::parse(&text).unwrap_err();
        assert_eq!((e.field.as_str(), e.line), ("lake.tiers", Some(14)));
        let text = GOOD.replace("[time]", "[api]\nlisten = \"localhost\"\n[time]");
        let e = JobSpec::parse(&text).unwrap_err();
        assert_eq!(e.field, "api.listen");
    }

    #[test]
    fn missing_required_field_is_named() {
        let e =
            JobSpec::parse("name = \"x\"\n[source]\nkind = \"file\"\n[lake]\nurl = \"file://l\"\n")
                .unwrap_err();
        assert!(e.to_string().contains("path"), "{e}");
        let e =
            JobSpec::parse("name = \"x\"\n[source]\nkind = \"ftp\"\n[lake]\nurl = \"file://l\"\n")
                .unwrap_err();
        assert!(e.to_string().contains("source"), "{e}");
    }

    #[test]
    fn sizes_are_typed_and_human() {
        let with = |size: &str| {
            JobSpec::parse(&format!(
                "name = \"j\"\n[source]\nkind = \"file\"\npath = \"x\"\n[lake]\nurl = \"file://l\"\ntarget_file_size = \"{size}\"\n"
            ))
        };
        assert_eq!(with("128MB").unwrap().lake.target_file_bytes(), 128_000_000);
        assert_eq!(with("64 KiB").unwrap().lake.target_file_bytes(), 65_536);
        let e = with("lots").unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.line),
            ("lake.target_file_size", Some(7)),
            "{e}"
        );
        assert!(with("12B").unwrap_err().message.contains("at least"));
    }

    #[test]
    fn tier_names_must_divide_a_day() {
        assert_eq!(parse_tier_name("15m"), Some(900_000));
        assert_eq!(parse_tier_name("7m"), None);
        assert_eq!(parse_tier_name("1d"), Some(86_400_000));
    }
}
