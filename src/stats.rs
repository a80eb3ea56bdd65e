//! [`PoolStats`]: what a pool has done, for dashboards and alerts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// A snapshot of a pool's counters, from `stats()` on either pool.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// fn id(x: u32) -> u32 { x }
/// let pool = procpool::ProcessPool::new(1)?;
/// pool.apply(id, 1).await?;
/// let stats = pool.stats();
/// assert_eq!(stats.completed, 1);
/// assert_eq!(stats.run_time.count, 1);
/// println!("{stats:#?}");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Tasks waiting in the queue.
    pub queued: usize,
    /// Tasks handed to a worker and not finished (a process worker may hold a
    /// few sent ahead).
    pub running: usize,
    /// Tasks that returned a value.
    pub completed: u64,
    /// Tasks that ended in an error other than cancellation.
    pub failed: u64,
    /// Tasks cancelled (handle dropped or aborted) after they were queued.
    pub cancelled: u64,
    /// Live workers (processes or threads).
    pub workers: usize,
    /// Why worker processes were replaced or stopped (always zero on a
    /// `ThreadPool`).
    pub restarts: Restarts,
    /// How long tasks ran (in the worker).
    pub run_time: Summary,
    /// How long tasks waited between `spawn` and starting.
    pub wait_time: Summary,
    /// The slowest worker's average round trip: from sending a task to an
    /// idle worker to its result, less the run time (zero until measured, and
    /// on a `ThreadPool`). Workers on other machines ([`Remote`](crate::Remote))
    /// make it larger; `map` keeps its chunks long next to it.
    pub round_trip: Duration,
}

/// Worker processes ended, by cause.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// fn quit(code: i32) { std::process::exit(code) }
/// fn id(x: u32) -> u32 { x }
///
/// let pool = procpool::ProcessPool::new(1)?;
/// assert!(pool.apply(quit, 3).await.is_err()); // the worker dies…
/// assert_eq!(pool.apply(id, 1).await?, 1);    // …and a replacement serves
///
/// let restarts = pool.stats().restarts;
/// assert_eq!(restarts.crashed, 1);
/// assert_eq!(restarts.max_tasks + restarts.max_memory + restarts.idle, 0);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Restarts {
    /// Died on their own (crash, abort, exit) while alive.
    pub crashed: u64,
    /// Killed because the task they ran was cancelled.
    pub cancelled: u64,
    /// Recycled after `max_tasks_per_worker` tasks.
    pub max_tasks: u64,
    /// Recycled after exceeding `max_memory_per_worker`.
    pub max_memory: u64,
    /// Stopped after `idle_timeout` with nothing to do.
    pub idle: u64,
    /// Killed for breaking the protocol.
    pub protocol: u64,
    /// Failed to start (spawn, handshake or initializer failure).
    pub start_failed: u64,
}

/// Count, mean and percentiles of a duration. Percentiles are over the most
/// recent 4096 samples; count and mean are over all samples. On a busy
/// `ThreadPool` a sample is skipped when two threads finish at the same
/// instant, so `count` can be a little below the number of tasks.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
///
/// fn nap(ms: u64) { std::thread::sleep(Duration::from_millis(ms)) }
///
/// let pool = procpool::ThreadPool::new(1)?;
/// for ms in [10, 20, 30] {
///     pool.apply(nap, ms).await?;
/// }
/// let run = pool.stats().run_time;
/// assert_eq!(run.count, 3);
/// assert!(run.mean >= Duration::from_millis(20));
/// assert!(run.p50 >= Duration::from_millis(20) && run.p99 >= run.p50);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// Number of samples.
    pub count: u64,
    /// Mean of all samples.
    pub mean: Duration,
    /// Median of recent samples.
    pub p50: Duration,
    /// 99th percentile of recent samples.
    pub p99: Duration,
}

const WINDOW: usize = 4096;

/// Accumulates one duration metric.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    count: u64,
    total_nanos: u128,
    recent: Vec<u64>,
    next: usize,
}

impl Recorder {
    pub(crate) fn record(&mut self, d: Duration) {
        let nanos = d.as_nanos().min(u128::from(u64::MAX)) as u64;
        self.count += 1;
        self.total_nanos += u128::from(nanos);
        if self.recent.len() < WINDOW {
            self.recent.push(nanos);
        } else {
            self.recent[self.next] = nanos;
            self.next = (self.next + 1) % WINDOW;
        }
    }

    pub(crate) fn summary(&self) -> Summary {
        if self.count == 0 {
            return Summary::default();
        }
        let mut sorted = self.recent.clone();
        sorted.sort_unstable();
        let at = |q: f64| {
            let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
            Duration::from_nanos(sorted[i])
        };
        Summary {
            count: self.count,
            mean: Duration::from_nanos((self.total_nanos / u128::from(self.count)) as u64),
            p50: at(0.50),
            p99: at(0.99),
        }
    }
}

/// The counters a pool keeps while it runs.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) completed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) running: AtomicU64,
    pub(crate) crashed: AtomicU64,
    pub(crate) killed_for_cancel: AtomicU64,
    pub(crate) max_tasks: AtomicU64,
    pub(crate) max_memory: AtomicU64,
    pub(crate) idle: AtomicU64,
    pub(crate) protocol: AtomicU64,
    pub(crate) start_failed: AtomicU64,
    pub(crate) times: Mutex<Times>,
    /// Per slot: moving average of a job's round trip to its worker (time
    /// from sending a job to an idle worker to its result, less the run
    /// time), in nanoseconds; 0 = not measured. Remote workers make this
    /// large, and `map` sizes its chunks by the largest.
    pub(crate) round_trips: Mutex<Vec<u64>>,
}

/// Run and wait times.
#[derive(Debug, Default)]
pub(crate) struct Times {
    pub(crate) run: Recorder,
    pub(crate) wait: Recorder,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Folds one measured round trip of slot `slot`'s worker into its average.
    // (The Windows serve loop does not measure round trips yet.)
    #[cfg_attr(windows, allow(dead_code))]
    pub(crate) fn note_round_trip(&self, slot: usize, nanos: u64) {
        let mut trips = self.round_trips.lock().unwrap_or_else(|e| e.into_inner());
        if trips.len() <= slot {
            trips.resize(slot + 1, 0);
        }
        let old = trips[slot];
        trips[slot] = if old == 0 {
            nanos
        } else {
            (old * 3 + nanos) / 4
        }
        .max(1);
    }

    /// The largest of the workers' average round trips (0 = none measured).
    pub(crate) fn round_trip_nanos(&self) -> u64 {
        let trips = self.round_trips.lock().unwrap_or_else(|e| e.into_inner());
        trips.iter().copied().max().unwrap_or(0)
    }

    /// A task finished after waiting `wait` and running `run`. Counts are
    /// exact; the timing sample is skipped when another thread is recording
    /// at that moment, so tiny tasks never queue on this lock.
    pub(crate) fn finished(&self, ok: bool, wait: Duration, run: Duration) {
        Counters::bump(if ok { &self.completed } else { &self.failed });
        if let Ok(mut t) = self.times.try_lock() {
            t.wait.record(wait);
            t.run.record(run);
        }
    }

    pub(crate) fn snapshot(&self, queued: usize, workers: usize) -> PoolStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let round_trip = Duration::from_nanos(self.round_trip_nanos());
        let t = self.times.lock().unwrap_or_else(|e| e.into_inner());
        PoolStats {
            round_trip,
            queued,
            running: get(&self.running) as usize,
            completed: get(&self.completed),
            failed: get(&self.failed),
            cancelled: get(&self.cancelled),
            workers,
            restarts: Restarts {
                crashed: get(&self.crashed),
                cancelled: get(&self.killed_for_cancel),
                max_tasks: get(&self.max_tasks),
                max_memory: get(&self.max_memory),
                idle: get(&self.idle),
                protocol: get(&self.protocol),
                start_failed: get(&self.start_failed),
            },
            run_time: t.run.summary(),
            wait_time: t.wait.summary(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_a_known_distribution() {
        let mut r = Recorder::default();
        for ms in 1..=100 {
            r.record(Duration::from_millis(ms));
        }
        let s = r.summary();
        assert_eq!(s.count, 100);
        assert_eq!(s.mean, Duration::from_micros(50_500));
        assert_eq!(s.p50, Duration::from_millis(50));
        assert_eq!(s.p99, Duration::from_millis(99));
    }

    #[test]
    fn the_window_keeps_recent_samples() {
        let mut r = Recorder::default();
        for _ in 0..WINDOW {
            r.record(Duration::from_secs(1));
        }
        for _ in 0..WINDOW {
            r.record(Duration::from_millis(1));
        }
        let s = r.summary();
        assert_eq!(s.count, 2 * WINDOW as u64);
        assert_eq!(s.p99, Duration::from_millis(1));
    }
}
