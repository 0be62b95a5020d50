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
