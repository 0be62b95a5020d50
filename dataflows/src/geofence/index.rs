//! The geofence index: a cell covering for small geofences, an R-tree for large ones.
//!
//! A fix costs one cell scan plus an exact test of the few geofences whose box holds it,
//! however many geofences exist elsewhere.

use fleetflow_types::geofence::{circle_contains_near, polygons_contain, Geofence, Shape};
use fleetflow_types::CompactString;
use rstar::primitives::{GeomWithData, Rectangle};
use rstar::RTree;
use std::collections::HashMap;
use std::sync::Arc;

type Entry = GeomWithData<Rectangle<[f64; 2]>, u32>;

/// Grid cell size in degrees (about 220 m of latitude).
const CELL_DEG: f64 = 0.002;
/// Geofences whose box spans more grid cells than this live in the R-tree instead.
const MAX_CELLS: i64 = 256;

/// The geofences listed in one grid cell: each entry's box next to what a lookup needs once
/// the box holds the point (tenant, a circle's parameters or where its ring is, slot), and
/// the rings of the cell's simple polygons, copied into the cell. A lookup thus reads one
/// cell's memory front to back and follows no pointer for the usual shapes: with many
/// geofences, the rings behind pointers were a cache miss for every polygon tested, and
/// boxes kept apart from the entries one more per lookup (a point is in several boxes of
/// its cell, so the entries were read anyway).
/// Ids are not in the cells: a lookup answers slots, and only a vehicle entering a
/// geofence needs its id ([`FenceIndex::id`]).
#[derive(Clone, Debug, Default)]
struct CellList {
    /// The cell's geofences, in the order they were placed.
    entries: Vec<CellEntry>,
    /// The rings of the entries that are [`Exact::Ring`], one after another.
    rings: Vec<geo::Coord<f64>>,
}

/// The exact test of a cell entry, with what it needs at hand.
#[derive(Clone, Copy, Debug)]
enum Exact {
    /// `[lat, lon, radius_m]`.
    Circle([f64; 3]),
    /// One polygon without holes (the usual case): its ring is
    /// `CellList::rings[start..start + len]`.
    Ring { start: u32, len: u32 },
    /// Several polygons or holes: the slot's entry in `FenceIndex::polygons`.
    Polygons,
}

impl CellList {
    /// Removes the entry of `slot`, and its ring.
    fn remove(&mut self, slot: u32) {
        let Some(k) = self.entries.iter().position(|e| e.slot == slot) else {
            return;
        };
        if let Exact::Ring { start, len } = self.entries[k].exact {
            self.rings.drain(start as usize..(start + len) as usize);
            for e in self.entries.iter_mut() {
                if let Exact::Ring { start: s, .. } = &mut e.exact {
                    if *s > start {
                        *s -= len;
                    }
                }
            }
        }
        self.entries.swap_remove(k);
    }
}

/// Whether the closed, simple `ring` (first position = last) holds `c`, its boundary
/// included: an even-odd crossing count along the ray to the east, with every orientation
/// decided by `geo`'s robust kernel, so that points on an edge are found exactly. For a
/// valid (simple) ring this is the same answer as `geo`'s coordinate position, which the
/// tests check; it exists so that the ring can live in a flat slice next to the index
/// entry instead of behind a `Polygon`.
pub(crate) fn ring_holds(ring: &[geo::Coord<f64>], c: geo::Coord<f64>) -> bool {
    use geo::{GeoNum, Kernel, Orientation};
    let orient = <f64 as GeoNum>::Ker::orient2d;
    let mut inside = false;
    for w in ring.windows(2) {
        let (a, b) = (w[0], w[1]);
        let (lo_y, hi_y) = if a.y <= b.y { (a.y, b.y) } else { (b.y, a.y) };
        if c.y < lo_y || c.y > hi_y {
            continue;
        }
        let (lo_x, hi_x) = if a.x <= b.x { (a.x, b.x) } else { (b.x, a.x) };
        if c.x > hi_x {
            // Entirely west of the point: no crossing to the east, not on the edge.
            continue;
        }
        let o = orient(a, b, c);
        if o == Orientation::Collinear && c.x >= lo_x && c.x <= hi_x {
            return true;
        }
        // The edge crosses the ray when it straddles the point's latitude (half-open, so a
        // vertex on the ray counts once) and the point is on its west side.
        if (a.y > c.y) != (b.y > c.y) {
            let west = if b.y > a.y {
                o == Orientation::CounterClockwise
            } else {
                o == Orientation::Clockwise
            };
            if west {
                inside = !inside;
            }
        }
    }
    inside
}

/// One geofence of a [`CellList`].
#[derive(Clone, Copy, Debug)]
struct CellEntry {
    /// The geofence's box relative to the cell's corner, in single precision, widened by
    /// [`BOX_SLACK`] so that rounding never excludes a point (a pre-test only: the exact
    /// test follows).
    bbox: [f32; 4],
    /// How to test a point whose box test passed.
    exact: Exact,
    /// Interned tenant, 0 for geofences of every tenant.
    tenant: u32,
    slot: u32,
}

use super::blocks::{Cell, OccupiedBlocks};
use super::fences::FenceKey;

/// A geofence's polygons, the usual single one held inline (one pointer less to follow).
#[derive(Clone, Debug)]
enum Rings {
    None,
    One(geo::Polygon<f64>),
    Many(Vec<geo::Polygon<f64>>),
}

impl Rings {
    fn of(polygons: &[geo::Polygon<f64>]) -> Rings {
        match polygons {
            [] => Rings::None,
            [one] => Rings::One(one.clone()),
            many => Rings::Many(many.to_vec()),
        }
    }

    fn as_slice(&self) -> &[geo::Polygon<f64>] {
        match self {
            Rings::None => &[],
            Rings::One(p) => std::slice::from_ref(p),
            Rings::Many(v) => v,
        }
    }
}

/// Widening of the single-precision cell boxes, degrees (about 1 cm; far above the rounding
/// error of offsets below a degree).
const BOX_SLACK: f32 = 1e-7;

/// The south-west corner of a cell.
fn cell_origin((x, y): Cell) -> (f64, f64) {
    (x as f64 * CELL_DEG, y as f64 * CELL_DEG)
}

/// `b` relative to the corner of `cell`, widened.
fn relative_box(b: &fleetflow_types::geofence::BBox, cell: Cell) -> [f32; 4] {
    let (ox, oy) = cell_origin(cell);
    [
        (b[0] - ox) as f32 - BOX_SLACK,
        (b[1] - oy) as f32 - BOX_SLACK,
        (b[2] - ox) as f32 + BOX_SLACK,
        (b[3] - oy) as f32 + BOX_SLACK,
    ]
}

fn cell_of(lon: f64, lat: f64) -> Cell {
    (
        (lon / CELL_DEG).floor() as i32,
        (lat / CELL_DEG).floor() as i32,
    )
}

/// The grid cells a geofence with box `b` is listed in (`min` to `max` inclusive), or
/// `None` when it spans more than [`MAX_CELLS`] (it goes into the R-tree).
fn grid_of_box(b: &fleetflow_types::geofence::BBox) -> Option<(Cell, Cell)> {
    let (min, max) = (cell_of(b[0], b[1]), cell_of(b[2], b[3]));
    let cells = (max.0 as i64 - min.0 as i64 + 1) * (max.1 as i64 - min.1 as i64 + 1);
    (cells <= MAX_CELLS).then_some((min, max))
}

/// The rectangle of cells `keys` name (`None` if they name [`FenceKey::Wide`] or no cell).
fn grid_of_keys(keys: &[FenceKey]) -> Option<(Cell, Cell)> {
    let mut grid: Option<(Cell, Cell)> = None;
    for k in keys {
        match *k {
            FenceKey::Cell(x, y) => {
                let (min, max) = grid.get_or_insert(((x, y), (x, y)));
                *min = (min.0.min(x), min.1.min(y));
                *max = (max.0.max(x), max.1.max(y));
            }
            FenceKey::Wide => return None,
            FenceKey::Changes => {}
        }
    }
    grid
}

/// The keys the arrangement of the fence set lists `g` under: every grid cell its box
/// touches (row by row), or [`FenceKey::Wide`] for a geofence the R-tree holds.
pub fn covering(g: &Geofence) -> Vec<FenceKey> {
    match grid_of_box(&g.bbox()) {
        Some((min, max)) => (min.0..=max.0)
            .flat_map(|x| (min.1..=max.1).map(move |y| FenceKey::Cell(x, y)))
            .collect(),
        None => vec![FenceKey::Wide],
    }
}

/// Where a geofence is indexed.
#[derive(Clone, Copy, Debug)]
enum Placement {
    /// In every grid cell its box touches (`min` to `max` inclusive).
    Grid { min: Cell, max: Cell },
    /// In the R-tree of large geofences.
    Tree(Entry),
}

#[derive(Clone)]
struct Slot {
    fence: Arc<Geofence>,
    bbox: fleetflow_types::geofence::BBox,
    placement: Placement,
}

/// Every geofence of the job, indexed by a cell covering and an R-tree.
///
/// Cloning copies the whole index: versions of the fence set share one and layer the
/// changes since it on top ([`super::layers`]), cloning only when they fold them in.
///
/// Small geofences (the usual case: depots, stops, sites) are listed in each cell of a
/// fixed lon/lat grid that their bounding box touches, so a lookup is one hash probe and a
/// scan of the few geofences near the point. Geofences whose box spans more than
/// `MAX_CELLS` cells (districts, regions) go into an R-tree of bounding boxes instead, so
/// that no geofence costs more than a bounded number of cells. Either way, a fix costs
/// nothing for geofences that are not near it.
#[derive(Default, Clone)]
pub struct FenceIndex {
    slots: Vec<Option<Slot>>,
    by_id: HashMap<CompactString, u32>,
    /// The slot of every id ever placed: an id keeps its slot when it is replaced, removed
    /// and added again, so that versions of the index made from one another agree on the
    /// slot of every geofence (a slot is never given to another id).
    slot_of_id: HashMap<CompactString, u32>,
    grid: HashMap<Cell, CellList, ahash::RandomState>,
    /// The blocks of the grid that hold any geofence, so that a lookup in an empty part of
    /// a large grid does not probe the map (a cache miss).
    blocks: OccupiedBlocks,
    pub(crate) tree: RTree<Entry>,
    /// Ids by slot, apart from the geofences for locality.
    ids: Vec<CompactString>,
    /// Polygons by slot (empty for circles), apart from the geofences for locality.
    polygons: Vec<Rings>,
    /// Tenant -> code (from 1).
    tenants: HashMap<CompactString, u32, ahash::RandomState>,
}

impl FenceIndex {
    /// The geofences in force, by slot.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Geofence>> {
        self.slots.iter().flatten().map(|s| &s.fence)
    }

    /// The geofences in force with their slots.
    pub fn iter_slots(&self) -> impl Iterator<Item = (u32, &Arc<Geofence>)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(k, s)| s.as_ref().map(|s| (k as u32, &s.fence)))
    }

    /// The slot the next id never placed here would get.
    pub(crate) fn next_slot(&self) -> u32 {
        self.slots.len().max(self.ids.len()) as u32
    }

    /// The slot `id` has or had here (it keeps it when removed).
    pub(crate) fn assigned_slot(&self, id: &str) -> Option<u32> {
        self.slot_of_id.get(id).copied()
    }

    /// Gives `id` slot `slot` (which no other id has) before it is placed, so that an index
    /// made from layers keeps the slots they gave.
    pub(crate) fn reserve_slot(&mut self, id: CompactString, slot: u32) {
        debug_assert!(self
            .ids
            .get(slot as usize)
            .is_none_or(|i| i.is_empty() || *i == id));
        if self.ids.len() <= slot as usize {
            self.polygons.resize_with(slot as usize + 1, || Rings::None);
            self.ids
                .resize_with(slot as usize + 1, CompactString::default);
        }
        self.ids[slot as usize] = id.clone();
        self.slot_of_id.insert(id, slot);
    }

    /// An index over `fences` (the R-tree bulk loaded).
    pub fn new(fences: impl IntoIterator<Item = Arc<Geofence>>) -> FenceIndex {
        let mut idx = FenceIndex::default();
        let mut large = Vec::new();
        for g in fences {
            if idx.by_id.contains_key(&g.id) {
                continue; // ids are unique once loaded; keep the first
            }
            let grid = grid_of_box(&g.bbox());
            if let (_, Placement::Tree(e)) = idx.place(g, grid) {
                large.push(e);
            }
        }
        idx.tree = RTree::bulk_load(large);
        idx.blocks = OccupiedBlocks::of(idx.grid.keys().copied());
        idx
    }

    /// Puts `g` in a slot and in the cells `grid` (`None`: not in the tree either, the
    /// caller puts it there).
    fn place(&mut self, g: Arc<Geofence>, grid: Option<(Cell, Cell)>) -> (u32, Placement) {
        let next = self.slots.len().max(self.ids.len()) as u32;
        let slot = *self.slot_of_id.entry(g.id.clone()).or_insert(next);
        let b = g.bbox();
        let next_code = self.tenants.len() as u32 + 1;
        let tenant = match &g.tenant {
            None => 0,
            Some(t) => *self.tenants.entry(t.clone()).or_insert(next_code),
        };
        // The ring of a simple polygon goes into each of its cells.
        let mut ring: &[geo::Coord<f64>] = &[];
        let (exact, polygons) = match &g.shape {
            Shape::Circle { lat, lon, radius_m } => {
                (Exact::Circle([*lat, *lon, *radius_m]), Rings::None)
            }
            Shape::Polygons(mp) => match mp.0.as_slice() {
                [one] if one.interiors().is_empty() => {
                    ring = one.exterior().0.as_slice();
                    let len = u32::try_from(ring.len()).expect("a ring of under 2^32 points");
                    (Exact::Ring { start: 0, len }, Rings::None)
                }
                many => (Exact::Polygons, Rings::of(many)),
            },
        };
        if self.polygons.len() <= slot as usize {
            self.polygons.resize_with(slot as usize + 1, || Rings::None);
            self.ids
                .resize_with(slot as usize + 1, CompactString::default);
        }
        self.polygons[slot as usize] = polygons;
        self.ids[slot as usize] = g.id.clone();
        let placement = if let Some((min, max)) = grid {
            for x in min.0..=max.0 {
                for y in min.1..=max.1 {
                    let list = self.grid.entry((x, y)).or_default();
                    let mut exact = exact;
                    if let Exact::Ring { start, .. } = &mut exact {
                        *start = u32::try_from(list.rings.len())
                            .expect("a cell's rings under 2^32 points");
                        list.rings.extend_from_slice(ring);
                    }
                    list.entries.push(CellEntry {
                        bbox: relative_box(&b, (x, y)),
                        exact,
                        tenant,
                        slot,
                    });
                }
            }
            Placement::Grid { min, max }
        } else {
            Placement::Tree(GeomWithData::new(
                Rectangle::from_corners([b[0], b[1]], [b[2], b[3]]),
                slot,
            ))
        };
        self.by_id.insert(g.id.clone(), slot);
        let s = Some(Slot {
            fence: g,
            bbox: b,
            placement,
        });
        if self.slots.len() <= slot as usize {
            self.slots.resize_with(slot as usize + 1, || None);
        }
        self.slots[slot as usize] = s;
        (slot, placement)
    }

    /// Number of geofences.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The geofence in `slot`.
    pub fn get(&self, slot: u32) -> Option<&Arc<Geofence>> {
        self.slots
            .get(slot as usize)
            .and_then(|s| s.as_ref().map(|s| &s.fence))
    }

    /// The id of the geofence in `slot` (or of the last one there).
    pub fn id(&self, slot: u32) -> &CompactString {
        &self.ids[slot as usize]
    }

    /// Asks for the id of the geofence in `slot` (to be read by [`FenceIndex::id`] soon).
    pub(crate) fn fetch_id(&self, slot: u32) {
        if let Some(id) = self.ids.get(slot as usize) {
            crate::prefetch::line(id);
        }
    }

    /// The slot of geofence `id`.
    pub fn slot_of(&self, id: &str) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    /// Adds a geofence (its id must not be present) and returns its slot.
    pub fn insert(&mut self, g: Arc<Geofence>) -> u32 {
        let grid = grid_of_box(&g.bbox());
        self.insert_placed(g, grid)
    }

    /// Adds a geofence (its id must not be present) under the keys the arrangement of the
    /// fence set lists it under ([`covering`]: its grid cells, or [`FenceKey::Wide`]), and
    /// returns its slot.
    pub fn insert_listed(&mut self, g: Arc<Geofence>, keys: &[FenceKey]) -> u32 {
        let grid = grid_of_keys(keys);
        debug_assert_eq!(grid, grid_of_box(&g.bbox()), "listed as covered");
        self.insert_placed(g, grid)
    }

    fn insert_placed(&mut self, g: Arc<Geofence>, grid: Option<(Cell, Cell)>) -> u32 {
        debug_assert!(!self.by_id.contains_key(&g.id));
        let (slot, placement) = self.place(g, grid);
        match placement {
            Placement::Tree(e) => self.tree.insert(e),
            Placement::Grid { min, max } => {
                let cells = (min.0..=max.0).flat_map(|x| (min.1..=max.1).map(move |y| (x, y)));
                let mut outside = false;
                for c in cells {
                    outside |= !self.blocks.set(c);
                }
                if outside {
                    self.blocks = OccupiedBlocks::of(self.grid.keys().copied());
                }
            }
        }
        slot
    }

    /// Removes geofence `id`, returning its former slot.
    pub fn remove(&mut self, id: &str) -> Option<u32> {
        let slot = self.by_id.remove(id)?;
        if let Some(s) = self.slots[slot as usize].take() {
            match s.placement {
                Placement::Tree(e) => {
                    self.tree.remove(&e);
                }
                Placement::Grid { min, max } => {
                    for x in min.0..=max.0 {
                        for y in min.1..=max.1 {
                            if let Some(list) = self.grid.get_mut(&(x, y)) {
                                list.remove(slot);
                                if list.entries.is_empty() {
                                    self.grid.remove(&(x, y));
                                }
                            }
                        }
                    }
                }
            }
        }
        self.polygons[slot as usize] = Rings::None;
        Some(slot)
    }

    /// The slots of the geofences containing the point that apply to `tenant`, in order
    /// ([`FenceIndex::id`] names them).
    pub fn containing(&self, lat: f64, lon: f64, tenant: &str, out: &mut Vec<u32>) {
        out.clear();
        self.append_containing(lat, lon, tenant, out);
        out.sort_unstable();
    }

    /// [`FenceIndex::containing`], appended to `out` in no particular order.
    pub(crate) fn append_containing(&self, lat: f64, lon: f64, tenant: &str, out: &mut Vec<u32>) {
        let in_box = |b: &fleetflow_types::geofence::BBox| {
            lon >= b[0] && lon <= b[2] && lat >= b[1] && lat <= b[3]
        };
        let test = |slot: u32, out: &mut Vec<u32>| {
            let s = self.slots[slot as usize].as_ref().expect("indexed");
            if in_box(&s.bbox) && s.fence.applies_to(tenant) && s.fence.contains(lat, lon) {
                out.push(slot);
            }
        };
        let cell = cell_of(lon, lat);
        let listed = if self.blocks.maybe(cell) {
            self.grid.get(&cell)
        } else {
            None
        };
        if let Some(cands) = listed {
            // Tenants no geofence names match only geofences of every tenant.
            let code = self.tenants.get(tenant).copied().unwrap_or(u32::MAX);
            let cos_lat = lat.to_radians().cos();
            let (ox, oy) = cell_origin(cell);
            let (x, y) = ((lon - ox) as f32, (lat - oy) as f32);
            for e in cands.entries.iter() {
                let b = &e.bbox;
                if x < b[0] || x > b[2] || y < b[1] || y > b[3] {
                    continue;
                }
                if e.tenant != 0 && e.tenant != code {
                    continue;
                }
                let inside = match e.exact {
                    Exact::Circle([clat, clon, r]) => {
                        circle_contains_near(clat, clon, r, lat, lon, cos_lat)
                    }
                    Exact::Ring { start, len } => ring_holds(
                        &cands.rings[start as usize..(start + len) as usize],
                        geo::Coord { x: lon, y: lat },
                    ),
                    Exact::Polygons => {
                        polygons_contain(self.polygons[e.slot as usize].as_slice(), lat, lon)
                    }
                };
                if inside {
                    out.push(e.slot);
                }
            }
        }
        if self.tree.size() > 0 {
            for e in self.tree.locate_all_at_point(&[lon, lat]) {
                test(e.data, out);
            }
        }
    }
}
