//! What the job produces: vehicle state, tier rows and dead letters.

use crate::fix::Fix;
use crate::time::Millis;
use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// Why an input line was rejected (the `reason` column of the `dead_letter` dataset).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Not JSON, or not an object of the expected shape.
    Malformed,
    /// JSON, but a field is missing or out of range.
    Invalid,
    /// `ts` below its vehicle's watermark when it arrived.
    Late,
    /// Farther than 1 km from the previous accepted fix at more than 300 km/h.
    ImplausibleJump,
}

impl Reason {
    /// Every reason, in metric order.
    pub const ALL: [Reason; 4] = [
        Reason::Malformed,
        Reason::Invalid,
        Reason::Late,
        Reason::ImplausibleJump,
    ];

    /// The snake_case name used in the lake and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::Invalid => "invalid",
            Reason::Late => "late",
            Reason::ImplausibleJump => "implausible_jump",
        }
    }

    /// Index into [`Reason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A rejected input line with its reason and original payload.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Why it was rejected.
    pub reason: Reason,
    /// A human-readable detail, e.g. which field was out of range.
    pub detail: String,
    /// The raw payload as received (lossy UTF-8).
    pub payload: String,
    /// Where it came from: `file:PATH:LINE`, `generator:PARTITION:SEQ`, `kafka:TOPIC/P@OFFSET`.
    pub source: String,
    /// Processing time at which it was received, epoch ms.
    pub received_at: Millis,
    /// The event time of the record when it could be read (partitions the dataset), else
    /// `received_at`.
    pub event_ts: Millis,
    /// Global id of the input it was read from.
    pub input: u32,
    /// Its position within that input (line, sequence number or Kafka offset).
    pub position: u64,
    /// The Kafka message key as received, or for a record rejected after decoding its
    /// vehicle id (which a key must equal); `None` for files and the generator before
    /// decoding.
    pub key: Option<bytes::Bytes>,
    /// The payload's original bytes when they are not valid UTF-8 (`payload` is then a
    /// lossy copy).
    pub raw: Option<bytes::Bytes>,
}

impl DeadLetter {
    /// The payload exactly as received.
    pub fn original_payload(&self) -> &[u8] {
        self.raw.as_deref().unwrap_or(self.payload.as_bytes())
    }
}

/// Somewhere rejected records also go besides the lake's `dead_letter` dataset (a Kafka
/// dead-letter topic). The lake sink hands it every dead letter in time order and flushes
/// it before each checkpoint, so a committed checkpoint never covers a dead letter that was
/// not delivered (at least once: after a crash, the records after the last checkpoint
/// are read and sent again).
pub trait DeadLetterOut: Send + Sync {
    /// Queues one record for delivery; never blocks on the network.
    fn send(&self, record: &DeadLetter);
    /// Waits until everything queued is delivered; an error names what failed.
    fn flush(&self) -> Result<(), String>;
}

impl std::fmt::Debug for dyn DeadLetterOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeadLetterOut")
    }
}

/// Operational status of a vehicle (semantics §3).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Last fix shows speed >= 3 km/h.
    Moving,
    /// Engine on (or unknown) and not moving.
    Idle,
    /// Last fix has ignition off.
    Parked,
    /// No fix for longer than `offline_after` behind the job clock.
    Offline,
}

impl Status {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Moving => "moving",
            Status::Idle => "idle",
            Status::Parked => "parked",
            Status::Offline => "offline",
        }
    }
}

impl std::str::FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "moving" => Ok(Status::Moving),
            "idle" => Ok(Status::Idle),
            "parked" => Ok(Status::Parked),
            "offline" => Ok(Status::Offline),
            other => Err(format!(
                "unknown status {other:?} (moving, idle, parked, offline)"
            )),
        }
    }
}

/// The state of one vehicle (semantics §3): its latest fix, status and today's sums.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VehicleState {
    /// The latest accepted fix (greatest `ts`).
    #[serde(flatten)]
    pub fix: Fix,
    /// Derived status at the job clock.
    pub status: Status,
    /// Distance of the current UTC day's segments, km.
    pub today_distance_km: f64,
    /// Fuel used in the current UTC day's segments, litres.
    pub today_fuel_used_l: f64,
    /// Idle time in the current UTC day's segments, seconds.
    #[serde(default)]
    pub today_idle_s: f64,
}

impl VehicleState {
    /// The state of a vehicle at `fix` with nothing summed yet today (its first fix of the
    /// day, or a vehicle just seen).
    pub fn new(fix: Fix, status: Status) -> Self {
        VehicleState {
            fix,
            status,
            today_distance_km: 0.0,
            today_fuel_used_l: 0.0,
            today_idle_s: 0.0,
        }
    }

    fn total_cmp(&self, other: &Self) -> Ordering {
        self.fix
            .canonical_cmp(&other.fix)
            .then(self.status.cmp(&other.status))
            .then(self.today_distance_km.total_cmp(&other.today_distance_km))
            .then(self.today_fuel_used_l.total_cmp(&other.today_fuel_used_l))
            .then(self.today_idle_s.total_cmp(&other.today_idle_s))
    }
}

/// A [`VehicleState`] in a form every serde format can carry: its JSON form flattens the
/// fix into the state's fields, which binary formats (timely's bincode between the
/// processes of a cluster) cannot read back.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VehicleStateWire(pub Fix, pub Status, pub f64, pub f64, pub f64);

impl From<VehicleState> for VehicleStateWire {
    fn from(s: VehicleState) -> Self {
        VehicleStateWire(
            s.fix,
            s.status,
            s.today_distance_km,
            s.today_fuel_used_l,
            s.today_idle_s,
        )
    }
}

impl From<VehicleStateWire> for VehicleState {
    fn from(VehicleStateWire(fix, status, d, f, i): VehicleStateWire) -> Self {
        VehicleState {
            fix,
            status,
            today_distance_km: d,
            today_fuel_used_l: f,
            today_idle_s: i,
        }
    }
}

impl PartialEq for VehicleState {
    fn eq(&self, other: &Self) -> bool {
        self.total_cmp(other) == Ordering::Equal
    }
}
impl Eq for VehicleState {}
impl PartialOrd for VehicleState {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for VehicleState {
    fn cmp(&self, other: &Self) -> Ordering {
        self.total_cmp(other)
    }
}

/// One row of a downsampled tier (semantics §4) for `(vehicle_id, window_start)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TierRow {
    /// Index of the tier in the job's list of window tiers.
    pub tier: u8,
    /// Vehicle.
    pub vehicle_id: CompactString,
    /// Tenant of the vehicle (of the window's last fix).
    pub tenant: CompactString,
    /// Window start, epoch ms (inclusive).
    pub window_start: Millis,
    /// Window end, epoch ms (exclusive).
    pub window_end: Millis,
    /// Accepted fixes with `ts` in the window.
    pub fixes: u32,
    /// Least `ts` of those fixes.
    pub first_ts: Millis,
    /// Greatest `ts` of those fixes.
    pub last_ts: Millis,
    /// Latitude of the last fix.
    pub lat: f64,
    /// Longitude of the last fix.
    pub lon: f64,
    /// Mean reported speed over fixes that report one.
    pub avg_speed_kmh: Option<f64>,
    /// Greatest reported speed.
    pub max_speed_kmh: Option<f64>,
    /// Distance over segments ending in the window, km.
    pub distance_km: f64,
    /// Fuel used over segments ending in the window, litres.
    pub fuel_used_l: f64,
    /// Moving time over segments ending in the window, seconds.
    pub moving_s: f64,
    /// Idle time over segments ending in the window, seconds.
    pub idle_s: f64,
}

impl TierRow {
    /// `distance_km / fuel_used_l` when fuel was used, else `None`.
    pub fn km_per_l(&self) -> Option<f64> {
        (self.fuel_used_l > 0.0).then(|| self.distance_km / self.fuel_used_l)
    }
}

/// Lifecycle of one input (a file, a generator partition, a Kafka partition).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum InputState {
    /// Has not produced data yet.
    Pending,
    /// Producing data.
    Active,
    /// Caught up and without data for `idle_timeout` (a Kafka partition).
    Idle,
    /// Ended (end of file, the end offsets of a bounded Kafka read).
    Finished,
}

/// What one input reports about its progress, broadcast to every worker at an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InputReport {
    /// Globally unique input id.
    pub input: u32,
    /// Where the input is in event time: the median `ts` of its last fixes (robust to a
    /// tracker with a wrong clock), if any.
    pub progress: Option<Millis>,
    /// Its state.
    pub state: InputState,
}

/// A fix on its way into the dataflow, with the raw payload and origin kept until it is
/// final (a fix rejected later, e.g. as an implausible jump, is dead-lettered with them).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IncomingFix {
    /// The decoded fix.
    pub fix: Fix,
    /// The raw payload as received: a slice of the buffer the source read it into (no
    /// allocation per event; the buffer is freed once its last fix is final).
    pub payload: bytes::Bytes,
    /// Global id of the input it was read from.
    pub input: u32,
    /// Its position within that input (line, sequence number or offset).
    pub position: u64,
    /// Processing time it was read at.
    pub received_at: Millis,
    /// Read again after a restore, from before the checkpoint's position of a replayable
    /// input (Kafka): it only rebuilds its vehicle's fixes that were not final at the
    /// checkpoint, and has no other effect (no metric, no dead letter, no clock).
    #[serde(default)]
    pub replayed: bool,
}

impl IncomingFix {
    /// A fix read from `input` at `position` at processing time `received_at`, its payload
    /// not attached yet (the source attaches its slice of the poll's buffer).
    pub fn new(fix: Fix, input: u32, position: u64, received_at: Millis, replayed: bool) -> Self {
        IncomingFix {
            fix,
            payload: bytes::Bytes::new(),
            input,
            position,
            received_at,
            replayed,
        }
    }
}

/// `NAME:POSITION`, the `source` column of a dead letter, from a table of input names.
pub fn source_name(names: &[String], input: u32, position: u64) -> String {
    format!(
        "{}:{}",
        names
            .get(input as usize)
            .map(String::as_str)
            .unwrap_or("input"),
        position
    )
}

/// The job clock a worker of the core dataflow reached at an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Progress {
    /// Worker index.
    pub worker: usize,
    /// The job clock its published results reflect (`as_of`); none before any vehicle
    /// had a valid fix (an input may end without one).
    pub clock: Option<Millis>,
    /// Every row its vehicles will still produce has an event time at or after this
    /// (their fixes not yet final, their open windows): the lake is complete before it for
    /// every vehicle the worker has seen.
    pub complete: Millis,
    /// Whether every input has ended and every window is complete.
    pub end: bool,
}

/// What happened between a vehicle and a geofence (semantics §5).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum GeofenceEventKind {
    /// The vehicle is inside and was not before.
    Enter,
    /// The vehicle is outside and was inside before.
    Exit,
    /// The vehicle has been inside for `dwell_after` since its `enter`.
    Dwell,
}

impl GeofenceEventKind {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            GeofenceEventKind::Enter => "enter",
            GeofenceEventKind::Exit => "exit",
            GeofenceEventKind::Dwell => "dwell",
        }
    }
}

/// Why a geofence event happened.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum GeofenceCause {
    /// A fix of the vehicle.
    Fix,
    /// The geofence was added (or replaced) while the vehicle was inside.
    GeofenceAdded,
    /// The geofence was removed (or replaced) while the vehicle was inside.
    GeofenceRemoved,
}

impl GeofenceCause {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            GeofenceCause::Fix => "fix",
            GeofenceCause::GeofenceAdded => "geofence_added",
            GeofenceCause::GeofenceRemoved => "geofence_removed",
        }
    }
}

/// One row of the `geofence_events` dataset.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
pub struct GeofenceEvent {
    /// The geofence.
    #[schema(value_type = String)]
    pub geofence_id: CompactString,
    /// The vehicle.
    #[schema(value_type = String)]
    pub vehicle_id: CompactString,
    /// The vehicle's tenant.
    #[schema(value_type = String)]
    pub tenant: CompactString,
    /// Enter, exit or dwell.
    pub kind: GeofenceEventKind,
    /// Event time: the fix's `ts`, or the job clock a geofence change took effect at.
    pub ts: Millis,
    /// What caused it.
    pub cause: GeofenceCause,
}

/// A runtime change to the geofence set: `geofence` is the new definition (added or
/// replaced) or `None` (removed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GeofenceChange {
    /// Sequence number, increasing in the order changes were requested.
    pub seq: u64,
    /// The geofence's id.
    pub id: CompactString,
    /// The new definition, or `None` to remove it.
    pub geofence: Option<std::sync::Arc<crate::geofence::Geofence>>,
    /// The job clock it takes effect at, stamped by the dataflow when it takes the change
    /// in (`None` before the job clock began, or not yet stamped).
    #[serde(default)]
    pub at: Option<Millis>,
}

/// A change to the occupancy of a geofence: `vehicle` entered it at `entered_at`
/// (`diff` +1) or that visit ended (-1).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OccupancyChange {
    /// The geofence's id.
    pub geofence: CompactString,
    /// The vehicle's id.
    pub vehicle: CompactString,
    /// The `ts` of the visit's `enter`.
    pub entered_at: Millis,
    /// +1 (entered) or -1 (left).
    pub diff: i8,
}
