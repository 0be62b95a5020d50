//! Which blocks of the geofence grid hold any geofence, as a bitmap small enough to stay
//! in the cache.
//!
//! The grid's cells live in a hash map. With many geofences the map is large, and a fix in
//! a cell no geofence touches still paid a cache miss to probe it: a fleet driving among
//! a country's sites is in such a cell most of the time. A cleared bit says for certain
//! that no cell of its block holds a geofence, so the lookup skips the probe; a set bit
//! only says "maybe" (a removal leaves it set), and the probe decides.

/// A grid cell, `(x, y)` in cells of the index's grid.
pub(crate) type Cell = (i32, i32);

/// At most this many bits: 512 KiB, which stays in a core's L2 cache. Blocks grow (by
/// powers of two cells on a side) until the geofences' extent fits.
const MAX_BITS: u64 = 1 << 22;

/// Occupied blocks over a rectangle of cells; cells outside it hold no geofence.
#[derive(Clone, Debug, Default)]
pub(crate) struct OccupiedBlocks {
    /// The rectangle's south-west cell.
    x0: i32,
    y0: i32,
    /// Its size in blocks (0: no geofence anywhere).
    width: u64,
    height: u64,
    /// A block is `2^shift` cells on a side.
    shift: u32,
    bits: Vec<u64>,
}

impl OccupiedBlocks {
    /// The blocks of `cells` (the cells that hold a geofence).
    pub(crate) fn of(cells: impl Iterator<Item = Cell> + Clone) -> OccupiedBlocks {
        let Some((min, max)) = cells.clone().fold(None, |acc: Option<(Cell, Cell)>, c| {
            Some(match acc {
                None => (c, c),
                Some((lo, hi)) => (
                    (lo.0.min(c.0), lo.1.min(c.1)),
                    (hi.0.max(c.0), hi.1.max(c.1)),
                ),
            })
        }) else {
            return OccupiedBlocks::default();
        };
        let span = |lo: i32, hi: i32| (hi as i64 - lo as i64 + 1) as u64;
        let (w, h) = (span(min.0, max.0), span(min.1, max.1));
        let mut shift = 0;
        while ((w >> shift) + 1).saturating_mul((h >> shift) + 1) > MAX_BITS {
            shift += 1;
        }
        let (width, height) = ((w >> shift) + 1, (h >> shift) + 1);
        let mut blocks = OccupiedBlocks {
            x0: min.0,
            y0: min.1,
            width,
            height,
            shift,
            bits: vec![0; (width * height).div_ceil(64) as usize],
        };
        for c in cells {
            blocks.set(c);
        }
        blocks
    }

    /// The bit of the block holding `cell`, if the rectangle holds it.
    fn bit(&self, (x, y): Cell) -> Option<u64> {
        let dx = (x as i64 - self.x0 as i64) >> self.shift;
        let dy = (y as i64 - self.y0 as i64) >> self.shift;
        let inside = (0..self.width as i64).contains(&dx) && (0..self.height as i64).contains(&dy);
        inside.then(|| dy as u64 * self.width + dx as u64)
    }

    /// Marks `cell`'s block occupied; false if the cell is outside the rectangle (the
    /// blocks must then be made again, with [`OccupiedBlocks::of`]).
    pub(crate) fn set(&mut self, cell: Cell) -> bool {
        match self.bit(cell) {
            Some(b) => {
                self.bits[(b / 64) as usize] |= 1 << (b % 64);
                true
            }
            None => false,
        }
    }

    /// Whether a geofence may be listed in `cell` (false: certainly none is).
    pub(crate) fn maybe(&self, cell: Cell) -> bool {
        self.bit(cell)
            .is_some_and(|b| self.bits[(b / 64) as usize] >> (b % 64) & 1 == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cleared_bit_means_no_geofence_in_the_block() {
        let cells = [(10, 20), (11, 20), (500, -300)];
        let b = OccupiedBlocks::of(cells.iter().copied());
        assert_eq!(b.shift, 0, "a small extent has a bit per cell");
        for c in cells {
            assert!(b.maybe(c));
        }
        assert!(!b.maybe((12, 20)));
        assert!(!b.maybe((10, 21)));
        assert!(!b.maybe((9, 20)), "outside the rectangle");
        assert!(!b.maybe((501, -300)), "outside the rectangle");
        assert!(!OccupiedBlocks::default().maybe((0, 0)));
    }

    #[test]
    fn a_wide_extent_takes_coarser_blocks_and_stays_bounded() {
        // Geofences on two continents: 0.002 degree cells far apart.
        let cells = [(-60_000, -20_000), (60_000, 30_000), (0, 0)];
        let mut b = OccupiedBlocks::of(cells.iter().copied());
        assert!(b.shift > 0);
        assert!(b.width * b.height <= MAX_BITS);
        for c in cells {
            assert!(b.maybe(c));
        }
        // A cell in an occupied block may be listed; one far from all three is not.
        assert!(b.maybe((1, 1)));
        assert!(!b.maybe((30_000, 10_000)));
        // Setting inside the rectangle works; outside asks for new blocks.
        assert!(b.set((30_000, 10_000)));
        assert!(b.maybe((30_000, 10_000)));
        assert!(!b.set((70_000, 0)));
    }
}
