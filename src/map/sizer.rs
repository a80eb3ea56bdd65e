//! Choosing chunk sizes from measured task durations.
//!
//! Chunks amortise the per-task round trip, but large chunks hurt when items
//! differ in cost (a worker left with a long tail) and delay the first
//! results. The sizer therefore:
//!
//! * starts at one item per chunk and grows (at most eightfold per finished
//!   chunk) toward the size whose run time hits a target of about 20 ms, using
//!   a moving average of the measured time per item — like joblib's automatic
//!   batching;
//! * shrinks at once when items turn out slower;
//! * near the end of an input of known length, caps chunks at
//!   `remaining / (2 × workers)` (guided self-scheduling), so the last chunks
//!   are small and no worker is left with a long tail.
//!
//! An explicit chunk size bypasses all of this.

/// Run time a chunk should take, at least.
const TARGET_NANOS: f64 = 20e6;
/// How many round trips to its slowest worker a chunk should last: a worker
/// over a network (see `Remote`) idles for a round trip between two chunks,
/// so with 10 it works at least ~90% of the time.
const ROUND_TRIPS: f64 = 10.0;
/// Most a chunk grows per finished chunk: quick to ramp up, yet one
/// unlucky early measurement cannot jump straight to a huge chunk.
const GROWTH: usize = 8;
/// Largest chunk, whatever the measurements say (bounds memory per chunk).
pub(crate) const MAX_CHUNK: usize = 1 << 14;

#[derive(Debug, Clone)]
pub(crate) struct ChunkSizer {
    fixed: Option<usize>,
    size: usize,
    nanos_per_item: Option<f64>,
    workers: usize,
    /// The pool's slowest measured round trip.
    round_trip_nanos: u64,
}

impl ChunkSizer {
    pub(crate) fn new(workers: usize) -> Self {
        ChunkSizer {
            fixed: None,
            size: 1,
            nanos_per_item: None,
            workers: workers.max(1),
            round_trip_nanos: 0,
        }
    }

    pub(crate) fn fixed(&mut self, size: usize) {
        self.fixed = Some(size.max(1));
    }

    /// Size of the next chunk; `remaining` is the number of input items left,
    /// when known.
    pub(crate) fn next_size(&self, remaining: Option<usize>) -> usize {
        if let Some(size) = self.fixed {
            return size;
        }
        let mut size = self.size;
        if let Some(rem) = remaining {
            size = size.min(rem.div_ceil(2 * self.workers));
        }
        size.max(1)
    }

    /// The pool's slowest worker round trip, as measured now.
    pub(crate) fn round_trip(&mut self, nanos: u64) {
        self.round_trip_nanos = nanos;
    }

    /// A chunk of `items` items ran in `nanos`.
    pub(crate) fn observe(&mut self, items: usize, nanos: u64) {
        if items == 0 || self.fixed.is_some() {
            return;
        }
        let sample = (nanos as f64 / items as f64).max(0.1);
        let per_item = match self.nanos_per_item {
            Some(avg) => 0.7 * avg + 0.3 * sample,
            None => sample,
        };
        self.nanos_per_item = Some(per_item);
        let target = TARGET_NANOS.max(ROUND_TRIPS * self.round_trip_nanos as f64);
        let ideal = (target / per_item) as usize;
        self.size = ideal.clamp(1, (self.size * GROWTH).min(MAX_CHUNK));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_while_chunks_are_fast_but_gradually() {
        let mut s = ChunkSizer::new(2);
        let mut sizes = vec![];
        for _ in 0..20 {
            let n = s.next_size(None);
            sizes.push(n);
            s.observe(n, n as u64 * 100); // 100 ns per item
        }
        assert_eq!(&sizes[..4], &[1, 8, 64, 512]);
        assert!(sizes.windows(2).all(|w| w[1] <= w[0] * GROWTH));
        assert_eq!(*sizes.last().unwrap(), MAX_CHUNK.min(200_000));
    }

    #[test]
    fn a_long_round_trip_makes_chunks_longer() {
        let size_after = |round_trip: u64| {
            let mut s = ChunkSizer::new(2);
            s.round_trip(round_trip);
            for _ in 0..20 {
                let n = s.next_size(None);
                s.observe(n, n as u64 * 10_000); // 10 µs per item
            }
            s.next_size(None)
        };
        // 20 ms of 10 µs items; with a 5 ms round trip, ten of those: 50 ms.
        assert_eq!(size_after(0), 2_000);
        assert_eq!(size_after(100_000), 2_000); // loopback: no change
        assert_eq!(size_after(5_000_000), 5_000);
    }

    #[test]
    fn slow_items_stay_one_per_chunk() {
        let mut s = ChunkSizer::new(2);
        for _ in 0..10 {
            let n = s.next_size(None);
            s.observe(n, n as u64 * 500_000_000);
        }
        assert_eq!(s.next_size(None), 1);
    }

    #[test]
    fn shrinks_at_once_when_items_get_slower() {
        let mut s = ChunkSizer::new(2);
        for _ in 0..30 {
            let n = s.next_size(None);
            s.observe(n, n as u64 * 1_000);
        }
        let big = s.next_size(None);
        s.observe(big, big as u64 * 1_000_000);
        assert!(s.next_size(None) < big / 4);
    }

    #[test]
    fn the_tail_of_a_known_input_gets_small_chunks() {
        let mut s = ChunkSizer::new(4);
        for _ in 0..30 {
            let n = s.next_size(None);
            s.observe(n, n as u64 * 10);
        }
        assert_eq!(s.next_size(Some(1_000_000)), MAX_CHUNK);
        assert_eq!(s.next_size(Some(800)), 100);
        assert_eq!(s.next_size(Some(3)), 1);
    }

    #[test]
    fn a_fixed_size_overrides_everything() {
        let mut s = ChunkSizer::new(4);
        s.fixed(64);
        s.observe(64, 1);
        assert_eq!(s.next_size(Some(10)), 64);
    }
}
