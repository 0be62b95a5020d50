//! Asking the CPU to load memory ahead of its use.
//!
//! The per-vehicle operators touch the state of a different vehicle with almost every
//! fix, so that state is rarely in the cache. Where the vehicle of a fix a few fixes
//! ahead is known, its state is requested early (the timelines and geofencing do so):
//! the loads then overlap with the work on the fixes before it. A prefetch is a hint: it
//! never changes a result, and on targets without one it does nothing.

/// Asks the CPU to load the cache line holding `at`.
#[inline(always)]
pub(crate) fn line<T>(at: &T) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse"))]
    safe_arch::prefetch_t0(at);
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse")))]
    let _ = at;
}

/// How many items ahead an item's record is fetched.
const RECORD_AHEAD: usize = 4;
/// How many items ahead what a record points to is fetched (the record is in the cache by
/// then, so reading where it points costs no wait).
const POINTED_AHEAD: usize = 2;

/// Takes `items` in order with `each`, after asking for the record of the item
/// [`RECORD_AHEAD`] ahead (`record`) and for what the record of the item [`POINTED_AHEAD`]
/// ahead points to (`pointed`); `keys[i]` is item `i`'s key, handed to all three.
pub(crate) fn in_order<S, K: Copy, T>(
    state: &mut S,
    keys: &[K],
    items: impl IntoIterator<Item = T>,
    record: impl Fn(&S, K),
    pointed: impl Fn(&S, K),
    mut each: impl FnMut(&mut S, K, T),
) {
    for (i, item) in items.into_iter().enumerate() {
        if let Some(&k) = keys.get(i + RECORD_AHEAD) {
            record(state, k);
        }
        if let Some(&k) = keys.get(i + POINTED_AHEAD) {
            pointed(state, k);
        }
        each(state, keys[i], item);
    }
}
