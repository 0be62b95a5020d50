//! One worker's dataflow: the source, the per-vehicle timeline, geofencing, publishing
//! to the API's views and the lake sink, wired for one process or a cluster.

use super::Capture;
use differential_dataflow::AsCollection;
use fleetflow_connectors::registry::JobSource;
use fleetflow_connectors::source::{render_source, InputSnapshot, IntakeContext};
use fleetflow_dataflows::cluster::{mirror, Layout};
use fleetflow_dataflows::geofence::fences::{arrange_fences, change_marks};
use fleetflow_dataflows::geofence::{
    render_geofence_input, render_geofences, ChangeReceiver, FenceIndex, ViewBatch, ViewSink,
    ViewUpdate,
};
use fleetflow_dataflows::operator::{render_timeline, CoreConfig};
use fleetflow_dataflows::state::{arrange_state, publish_state, HeldState};
use fleetflow_dataflows::timeline::TimelineConfig;
use fleetflow_query_api::geofences::GeofenceView;
use fleetflow_query_api::view::VehicleView;
use fleetflow_runtime::checkpoint::Hub;
use fleetflow_runtime::metrics::Metrics;
use fleetflow_sinks::lake::Uploader;
use fleetflow_sinks::sink::{render_lake_sink, SinkConfig};
use fleetflow_types::records::{GeofenceEvent, VehicleState, VehicleStateWire};
use fleetflow_types::registry::VehicleRegistry;
use fleetflow_types::time::Millis;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Concat, Inspect, Probe};

/// What every worker of this process builds its dataflow from.
pub(super) struct WorkerPlan {
    /// The global index of this process's first worker.
    pub first: usize,
    /// Whether this is process 0 (it takes geofence changes).
    pub leader: bool,
    /// Whether the job runs on more than one process.
    pub clustered: bool,
    /// Where the workers are.
    pub layout: Layout,
    /// The job's metrics.
    pub metrics: Arc<Metrics>,
    /// The vehicle registry.
    pub registry: Arc<VehicleRegistry>,
    /// Set to stop the sources.
    pub shutdown: Arc<AtomicBool>,
    /// Every input's name.
    pub input_names: Arc<Vec<String>>,
    /// Where the events come from (each worker takes its instance).
    pub source: Arc<dyn JobSource>,
    /// Each local worker's share of the restored state, taken by it.
    pub restores: Mutex<Vec<Option<crate::restore::WorkerRestore>>>,
    /// The inputs' restored positions.
    pub inputs_restored: Arc<Vec<InputSnapshot>>,
    /// The checkpoint hub.
    pub hub: Arc<Hub>,
    /// When a quiet input counts as idle.
    pub idle_timeout: Duration,
    /// Records read per source poll.
    pub batch: usize,
    /// Allowed lateness, ms.
    pub lateness: Millis,
    /// The per-vehicle timeline's settings.
    pub timeline: TimelineConfig,
    /// The API's vehicle view.
    pub vehicles: Arc<VehicleView>,
    /// The API's geofence view.
    pub geofences: Arc<GeofenceView>,
    /// The geofences at the start.
    pub fence_index: Arc<FenceIndex>,
    /// The number of the last runtime geofence change restored.
    pub latest_change: u64,
    /// When a stay becomes a dwell, ms.
    pub dwell_after: Millis,
    /// Runtime geofence changes from the API.
    pub change_rx: ChangeReceiver,
    /// Uploads to the lake.
    pub uploader: Uploader,
    /// What the lake sink writes.
    pub sink: SinkConfig,
    /// Outputs captured for tests.
    pub capture: Option<Capture>,
    /// Checkpoint participants per worker.
    pub ops_per_worker: usize,
    /// The checkpoint this run resumed from.
    pub resumed: u64,
    /// After a bounded input, the dataflow stays alive (taking geofence changes) until
    /// this flag is set (`--serve`).
    pub serve_until: Option<Arc<AtomicBool>>,
}

/// Builds one worker's dataflow.
pub(super) fn build(worker: &mut timely::worker::Worker, plan: &WorkerPlan) {
    let (first, leader, clustered, layout) = (plan.first, plan.leader, plan.clustered, plan.layout);
    let (idle_timeout, batch, lateness) = (plan.idle_timeout, plan.batch, plan.lateness);
    let (dwell_after, latest_change) = (plan.dwell_after, plan.latest_change);
    let (ops_per_worker, resumed) = (plan.ops_per_worker, plan.resumed);
    crate::slow::log_slow_operators(worker);
    let index = worker.index();
    let peers = worker.peers();
    let local = index - first;
    let (metrics, registry, shutdown, input_names) = (
        plan.metrics.clone(),
        plan.registry.clone(),
        plan.shutdown.clone(),
        plan.input_names.clone(),
    );
    let metrics_w = metrics.clone();
    let probe = timely::dataflow::ProbeHandle::new();
    let source = plan.source.instance(index, peers);
    // This worker's share of the restored state.
    let share = plan.restores.lock().expect("restore lock")[local]
        .take()
        .unwrap_or_default();
    let hub = plan.hub.clone();
    let ctx = IntakeContext {
        metrics: metrics.clone(),
        registry: registry.clone(),
        idle_timeout,
        shutdown,
        input_names: input_names.clone(),
        budget: batch,
        backpressure: Some((probe.clone(), 20)),
        route: fleetflow_dataflows::operator::route,
        checkpoints: Some((hub.clone(), plan.inputs_restored.clone())),
        align_slack: lateness / 4,
    };
    let core_cfg = CoreConfig {
        timeline: plan.timeline.clone(),
        registry,
        metrics,
        input_names,
        publish: Default::default(),
        clock_every: Duration::from_millis(10),
        checkpoints: Some(hub.clone()),
        restore: share.timeline,
    };
    let view = plan.vehicles.clone();
    let geo_view = plan.geofences.clone();
    let fence_index = plan.fence_index.clone();
    let change_rx = plan.change_rx.clone();
    let uploader = plan.uploader.clone();
    let sink_cfg = plan.sink.clone();
    let capture = plan.capture.clone();
    let serve_until = plan.serve_until.clone();
    if clustered {
        crate::cluster::render_checkpoint_transport(worker, hub.clone(), ops_per_worker, resumed);
    }
    worker.dataflow::<u64, _, _>(move |scope| {
        let source = render_source(scope, "locations", source, ctx);
        let clock_now = metrics_w.clone();
        let mut changes = render_geofence_input(
            source.reports.clone(),
            Some(change_rx),
            move || clock_now.clock(),
            serve_until,
        );
        if clustered {
            // A follower's catalogue follows the changes process 0 took. (Every worker
            // builds the same operators: timely matches them across workers by position.)
            let catalog = (!leader && local == 0).then(|| geo_view.clone());
            changes = changes.inspect(move |c| {
                if let Some(catalog) = &catalog {
                    catalog.follow_change(c)
                }
            });
        }
        // The fence set, arranged by cell on every worker: its batches carry the change
        // marks to the timeline and the versions' cells to geofencing.
        let fences = arrange_fences(changes, &fence_index);
        let core = render_timeline(
            source.fixes,
            source.reports,
            change_marks(&fences),
            core_cfg,
        );
        let geo_writers = geo_view.writers();
        let apply_geo = move |worker: usize,
                              updates: &mut Vec<(ViewUpdate, isize)>,
                              events: &[GeofenceEvent]| {
            let (mut occ, mut applied) = (Vec::new(), Vec::new());
            let mut as_of = None;
            for (u, _) in updates.drain(..) {
                match u {
                    ViewUpdate::Occupant(o) => occ.push(o),
                    ViewUpdate::Applied { seq, at } => applied.push((seq, at)),
                    ViewUpdate::AsOf(w) => as_of = Some(w),
                }
            }
            geo_writers[worker].apply(occ, events, applied, as_of);
        };
        let (events, batches) = if clustered {
            render_geofences(
                core.finals,
                fences.stream.clone(),
                (fence_index, latest_change),
                dwell_after,
                Some((hub.clone(), share.geo)),
                ViewSink::<fn(&mut Vec<(ViewUpdate, isize)>, &[GeofenceEvent])>::Stream,
            )
        } else {
            let apply_geo = apply_geo.clone();
            render_geofences(
                core.finals,
                fences.stream.clone(),
                (fence_index, latest_change),
                dwell_after,
                Some((hub.clone(), share.geo)),
                ViewSink::Local(
                    move |updates: &mut Vec<(ViewUpdate, isize)>, events: &[GeofenceEvent]| {
                        apply_geo(index, updates, events)
                    },
                ),
            )
        };
        if clustered {
            // Every worker's geofence results, to one worker of every process.
            let apply_geo = apply_geo;
            mirror(batches, layout).inspect(move |(w, batch): &(u32, ViewBatch)| {
                let mut updates = batch.updates.clone();
                apply_geo(*w as usize, &mut updates, &batch.events);
            });
        }
        let dead = source.dead_letters.concat(core.dead_letters);
        let (mut raw, mut rows, mut dead, mut events) = (core.raw, core.rows, dead, events);
        if let Some(cap) = capture {
            let (c1, c2, c3, c4) = (cap.clone(), cap.clone(), cap.clone(), cap);
            raw = raw.inspect(move |f| c1.lock().expect("capture").raw.push(f.clone()));
            rows = rows.inspect(move |r| c2.lock().expect("capture").rows.push(r.clone()));
            dead = dead.inspect(move |d| c3.lock().expect("capture").dead.push(d.clone()));
            events = events
                .inspect(move |e| c4.lock().expect("capture").geofence_events.push(e.clone()));
        }
        // Vehicle state is arranged where it is made (in a cluster, where it is mirrored to),
        // and the API view applies each batch's net change per vehicle.
        let progress = core.progress.probe_with(&probe);
        let latency_metrics = metrics_w.clone();
        let record_latency = move |fresh: usize, epoch: Option<u64>| {
            // Epoch 0 is the sources' first read, before their clocks started: no
            // processing time to measure from.
            if let Some(e) = epoch.filter(|e| fresh > 0 && *e > 0) {
                let lag = (fleetflow_types::time::now_ms() as u64).saturating_sub(e);
                latency_metrics.visibility_latency.record(lag, fresh as u64);
            }
        };
        if clustered {
            // Every worker's state changes (the exact retract/insert pairs) and progress,
            // to one worker of every process; this worker applies the shards of the
            // workers with its local index.
            let wire = core.state.inner.map(|((id, s), t, r)| {
                ((id, VehicleStateWire::from(Arc::unwrap_or_clone(s))), t, r)
            });
            let state = mirror(wire, layout)
                .map(|(w, ((id, s), t, r))| {
                    (
                        HeldState::keyed(id, w, Arc::new(VehicleState::from(s))),
                        t,
                        r,
                    )
                })
                .as_collection();
            let mirrored_progress = mirror(progress.clone(), layout).map(|(_, p)| p);
            let (writers, geo_writers) = (view.writers(), geo_view.writers());
            publish_state(
                arrange_state(state, mirrored_progress),
                move |mut by_worker, ps, epoch| {
                    let fresh = by_worker.values().flatten().filter(|(_, r)| *r > 0).count();
                    record_latency(fresh, epoch);
                    for w in layout.siblings(index) {
                        let ups = by_worker.remove(&(w as u32)).unwrap_or_default();
                        let clock = ps.iter().find(|p| p.worker == w).and_then(|p| p.clock);
                        if !ups.is_empty() || clock.is_some() {
                            writers[w].apply(ups, clock);
                            geo_writers[w].advance(clock);
                        }
                    }
                },
            );
        } else {
            let writer = view.writers().swap_remove(index);
            let geo_writer = geo_view.writers().swap_remove(index);
            let shard = index as u32;
            publish_state(
                arrange_state(
                    core.state
                        .map(move |(id, s)| HeldState::keyed(id, shard, s)),
                    progress.clone(),
                ),
                move |mut by_shard, ps, epoch| {
                    let updates = by_shard.remove(&shard).unwrap_or_default();
                    record_latency(updates.iter().filter(|(_, r)| *r > 0).count(), epoch);
                    let clock = ps.iter().filter_map(|p| p.clock).max();
                    writer.apply(updates, clock);
                    geo_writer.advance(clock);
                },
            );
        }
        render_lake_sink(
            raw,
            rows,
            dead,
            events,
            progress,
            sink_cfg,
            uploader.fork(),
            hub,
            share.sink,
        );
    });
}
