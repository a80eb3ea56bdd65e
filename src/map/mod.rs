//! The streaming map engine behind `map`, `map_unordered` and `map_blocking`
//! on both pools.
//!
//! Input is pulled lazily, only when a chunk can be started; at most
//! `in_flight` chunks are queued or running at once, and (for ordered maps) a
//! bounded number of finished chunks wait for an earlier one. So mapping over
//! an endless iterator works, and memory does not grow with the input.
//!
//! Each chunk travels as one task (one message each way). A process chunk
//! whose worker dies is split in halves and retried, down to single items, so
//! the failure lands on the item that caused it and every other item still
//! gets its value. (Items of such a chunk may therefore run more than once.)
//! A process chunk's values come back encoded one by one and are decoded
//! partly by the supervisor and the rest by the consumer as it yields them
//! ([`values`]), so a worker's next chunk never waits for a long decode.

mod chunk;
mod sizer;
mod values;

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::stream::{FuturesUnordered, Stream, StreamExt};

use crate::{Task, TaskError};

use chunk::{ChunkOutput, Segment};
pub(crate) use chunk::{ChunkRunner, ProcessChunks, ThreadChunks};
use sizer::ChunkSizer;

/// The stream returned by `map` and `map_unordered` on
/// [`ProcessPool`](crate::ProcessPool) and [`ThreadPool`](crate::ThreadPool):
/// one `Result` per input item.
///
/// * [`map`](crate::ProcessPool::map) yields results in input order (Python's
///   `imap`); [`map_unordered`](crate::ProcessPool::map_unordered) as they
///   complete (`imap_unordered`, `as_completed`).
/// * Inputs are pulled lazily and in-flight work is bounded (by default two
///   chunks per worker, see [`in_flight`](Map::in_flight)).
/// * A failing item yields an `Err` for that item only; the stream goes on.
/// * Dropping the stream stops everything it started: queued chunks never run,
///   running process chunks have their workers killed and replaced.
/// * Chunk sizes adapt to measured run times unless
///   [`chunk_size`](Map::chunk_size) fixes them.
///
/// Configure it before polling it for the first time.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use futures::{StreamExt, TryStreamExt};
///
/// fn square(x: u64) -> u64 { x * x }
///
/// let pool = procpool::ProcessPool::new(2)?;
/// let squares: Vec<u64> = pool.map(square, 0..10).try_collect().await?;
/// assert_eq!(squares, [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]);
///
/// // Endless input is fine: only what is needed is pulled.
/// let first: Vec<_> = pool.map(square, 0..).take(3).collect().await;
/// assert_eq!(first, [Ok(0), Ok(1), Ok(4)]);
/// # Ok(()) }
/// ```
#[must_use = "a Map does nothing unless polled; dropping it stops its work"]
pub struct Map<A, R> {
    runner: Arc<dyn ChunkRunner<A, R>>,
    input: Option<Pin<Box<dyn Stream<Item = A> + Send>>>,
    running: FuturesUnordered<Piece<A, R>>,
    /// Ordered mode: results of chunks not yet yielded, by chunk number.
    slots: BTreeMap<u64, Slot<R>>,
    /// Results to yield, front first.
    ready: VecDeque<Segment<R>>,
    next_chunk: u64,
    next_to_yield: u64,
    ordered: bool,
    sizer: ChunkSizer,
    in_flight: usize,
    /// A chunk being gathered from an input stream that is not ready.
    gathering: Vec<A>,
}

/// Results of one ordered chunk: its pieces by offset (one piece unless a
/// failed chunk was retried in parts).
struct Slot<R> {
    pieces: BTreeMap<usize, Segment<R>>,
    missing: usize,
}

/// A chunk (or part of one, after a retry) on its way.
struct Piece<A, R> {
    chunk: u64,
    offset: usize,
    len: usize,
    task: Task<ChunkOutput<R>>,
    kept: Option<Vec<A>>,
}

struct PieceDone<A, R> {
    chunk: u64,
    offset: usize,
    len: usize,
    outcome: Result<ChunkOutput<R>, TaskError>,
    kept: Option<Vec<A>>,
}

// Neither type pins anything structurally (the input is boxed and tasks are
// `Unpin`), so both are `Unpin` whatever the item types are.
impl<A, R> Unpin for Piece<A, R> {}
impl<A, R> Unpin for Map<A, R> {}

impl<A, R> Future for Piece<A, R> {
    type Output = PieceDone<A, R>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let outcome = std::task::ready!(Pin::new(&mut self.task).poll(cx));
        Poll::Ready(PieceDone {
            chunk: self.chunk,
            offset: self.offset,
            len: self.len,
            outcome,
            kept: self.kept.take(),
        })
    }
}

impl<A: Send + 'static, R: Send + 'static> Map<A, R> {
    pub(crate) fn new(
        runner: Arc<dyn ChunkRunner<A, R>>,
        input: impl Stream<Item = A> + Send + 'static,
    ) -> Self {
        let workers = runner.workers();
        Map {
            runner,
            input: Some(Box::pin(input)),
            running: FuturesUnordered::new(),
            slots: BTreeMap::new(),
            ready: VecDeque::new(),
            next_chunk: 0,
            next_to_yield: 0,
            ordered: true,
            sizer: ChunkSizer::new(workers),
            in_flight: 2 * workers,
            gathering: Vec::new(),
        }
    }
}

impl<A, R> Map<A, R> {
    /// Fixes the number of items per chunk (each chunk is one task, one message
    /// each way). Without it the chunk size adapts to measured run times.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// fn inc(x: u32) -> u32 { x + 1 }
    /// let pool = procpool::ThreadPool::new(2)?;
    /// let out: Vec<_> = pool.map(inc, 0..100).chunk_size(10).blocking().collect::<Result<_, _>>()?;
    /// assert_eq!(out, (1..=100).collect::<Vec<u32>>());
    /// # Ok(()) }
    /// ```
    pub fn chunk_size(mut self, items: usize) -> Self {
        self.sizer.fixed(items);
        self
    }

    /// At most this many chunks queued or running at once (default: two per
    /// worker). Bounds the input pulled ahead and the memory held.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    ///
    /// static PULLED: AtomicUsize = AtomicUsize::new(0);
    /// fn square(x: u64) -> u64 { x * x }
    ///
    /// let pool = procpool::ThreadPool::new(1)?;
    /// let endless = (0..).inspect(|_| { PULLED.fetch_add(1, Ordering::Relaxed); });
    /// let mut results = pool.map(square, endless).chunk_size(10).in_flight(2).blocking();
    /// assert_eq!(results.next(), Some(Ok(0)));
    /// // Only a few chunks of the endless input were pulled.
    /// assert!(PULLED.load(Ordering::Relaxed) <= 40);
    /// # Ok::<(), procpool::Error>(())
    /// ```
    pub fn in_flight(mut self, chunks: usize) -> Self {
        self.in_flight = chunks.max(1);
        self
    }

    /// Yields results as they complete instead of in input order.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use futures::StreamExt;
    ///
    /// fn nap(ms: u64) -> u64 { std::thread::sleep(std::time::Duration::from_millis(ms)); ms }
    ///
    /// let pool = procpool::ProcessPool::new(2)?;
    /// let mut results = pool.map(nap, [300, 1]).chunk_size(1).unordered();
    /// assert_eq!(results.next().await, Some(Ok(1))); // did not wait for the slow one
    /// assert_eq!(results.next().await, Some(Ok(300)));
    /// assert_eq!(results.next().await, None);
    /// # Ok(()) }
    /// ```
    pub fn unordered(mut self) -> Self {
        self.ordered = false;
        self
    }

    /// A blocking iterator over the results, for plain threads (Python's
    /// `imap`). On an async runtime's thread it works without deadlock (even on
    /// a current-thread runtime) but blocks that thread for each item: use the
    /// [`Map`] stream there.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// fn double(x: i32) -> i32 { 2 * x }
    /// let pool = procpool::ProcessPool::new(2)?;
    /// for (i, r) in pool.map(double, 0..5).blocking().enumerate() {
    ///     assert_eq!(r, Ok(2 * i as i32));
    /// }
    /// # Ok(()) }
    /// ```
    pub fn blocking(self) -> MapIter<A, R>
    where
        A: Send + 'static,
        R: Send + 'static,
    {
        MapIter { map: self }
    }

    /// Chunks finished but waiting for an earlier one (ordered mode) are held
    /// up to this many times the in-flight limit.
    fn max_held(&self) -> usize {
        8 * self.in_flight
    }

    fn start(&mut self, chunk: u64, offset: usize, items: Vec<A>) {
        let len = items.len();
        let (task, kept) = self.runner.start(items);
        self.running.push(Piece {
            chunk,
            offset,
            len,
            task,
            kept,
        });
    }

    /// Pulls input and starts chunks while there is room. Returns `true` if it
    /// started anything.
    fn fill(&mut self, cx: &mut Context<'_>) -> bool {
        let mut started = false;
        while self.running.len() < self.in_flight && self.slots.len() < self.max_held() {
            let Some(input) = self.input.as_mut() else {
                break;
            };
            let (low, high) = input.size_hint();
            let remaining = (Some(low) == high).then_some(low + self.gathering.len());
            let size = self.sizer.next_size(remaining);
            let mut exhausted = false;
            let mut pending = false;
            while self.gathering.len() < size {
                match input.as_mut().poll_next(cx) {
                    Poll::Ready(Some(item)) => self.gathering.push(item),
                    Poll::Ready(None) => {
                        exhausted = true;
                        break;
                    }
                    Poll::Pending => {
                        pending = true;
                        break;
                    }
                }
            }
            if exhausted {
                self.input = None;
            }
            if self.gathering.is_empty() {
                break;
            }
            // When the input stream is not ready, start what was gathered
            // rather than hold items back from idle workers.
            let items = std::mem::take(&mut self.gathering);
            let chunk = self.next_chunk;
            self.next_chunk += 1;
            if self.ordered {
                self.slots.insert(
                    chunk,
                    Slot {
                        pieces: BTreeMap::new(),
                        missing: items.len(),
                    },
                );
            }
            self.start(chunk, 0, items);
            started = true;
            if pending {
                break;
            }
        }
        started
    }

    fn finish(&mut self, done: PieceDone<A, R>) {
        let segment = match done.outcome {
            Ok(output) => {
                self.sizer.round_trip(self.runner.round_trip_nanos());
                self.sizer.observe(done.len, output.nanos);
                Segment::output(output)
            }
            Err(error) => match done.kept {
                Some(mut items) if items.len() > 1 && retry_in_parts(&error) => {
                    let half = items.len() / 2;
                    let back = items.split_off(half);
                    self.start(done.chunk, done.offset, items);
                    self.start(done.chunk, done.offset + half, back);
                    return;
                }
                _ => Segment::Failed {
                    error,
                    remaining: done.len,
                },
            },
        };
        if !self.ordered {
            self.ready.push_back(segment);
            return;
        }
        let slot = self
            .slots
            .get_mut(&done.chunk)
            .expect("a running chunk has a slot");
        slot.missing -= segment.len();
        slot.pieces.insert(done.offset, segment);
        while let Some(head) = self.slots.first_entry() {
            if *head.key() != self.next_to_yield || head.get().missing > 0 {
                break;
            }
            self.ready.extend(head.remove().pieces.into_values());
            self.next_to_yield += 1;
        }
    }
}

impl<A, R> Map<A, R> {
    /// The next result of a finished chunk, if one is ready: what `poll_next`
    /// yields before it looks at anything else.
    fn next_ready(&mut self) -> Option<Result<R, TaskError>> {
        while let Some(front) = self.ready.front_mut() {
            match front.next() {
                Some(item) => return Some(item),
                None => {
                    self.ready.pop_front();
                }
            }
        }
        None
    }
}

/// Errors of a whole chunk that one of its items may have caused.
fn retry_in_parts(error: &TaskError) -> bool {
    matches!(
        error,
        TaskError::WorkerDied { .. }
            | TaskError::RemoteWorkerDied { .. }
            | TaskError::Protocol { .. }
            | TaskError::TooLarge { .. }
            | TaskError::Serialization { .. }
    )
}

impl<A, R> Stream for Map<A, R> {
    type Item = Result<R, TaskError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(item) = this.next_ready() {
                return Poll::Ready(Some(item));
            }
            this.fill(cx);
            match this.running.poll_next_unpin(cx) {
                Poll::Ready(Some(done)) => this.finish(done),
                Poll::Ready(None) => {
                    if this.input.is_none() && this.gathering.is_empty() {
                        debug_assert!(this.slots.is_empty());
                        return Poll::Ready(None);
                    }
                    // Waiting for the input stream (its waker is registered).
                    return Poll::Pending;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let held = self.ready.iter().map(Segment::len).sum();
        match &self.input {
            None if self.running.is_empty() && self.gathering.is_empty() => (held, Some(held)),
            _ => (held, None),
        }
    }
}

impl<A, R> std::fmt::Debug for Map<A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Map")
            .field("ordered", &self.ordered)
            .field("chunks_running", &self.running.len())
            .field("results_ready", &self.size_hint().0)
            .field("input_done", &self.input.is_none())
            .finish()
    }
}

/// A blocking iterator over a [`Map`]'s results, from [`Map::blocking`] or
/// `map_blocking`. Dropping it stops the remaining work, like dropping the
/// stream.
///
/// ```
/// fn square(x: u64) -> u64 { x * x }
///
/// let pool = procpool::ThreadPool::new(2)?;
/// let mut squares: procpool::MapIter<u64, u64> = pool.map_blocking(square, 1..);
/// assert_eq!(squares.next(), Some(Ok(1)));
/// assert_eq!(squares.next(), Some(Ok(4)));
/// drop(squares); // stops the rest of the endless map
/// # Ok::<(), procpool::Error>(())
/// ```
pub struct MapIter<A, R> {
    map: Map<A, R>,
}

impl<A, R> Iterator for MapIter<A, R> {
    type Item = Result<R, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        // Results of a finished chunk are handed out without entering an
        // executor for each (which costs about as much as a small item's
        // decoding); only waiting for a chunk blocks.
        self.map
            .next_ready()
            .or_else(|| crate::block_on::block_on(self.map.next()))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.map.size_hint()
    }
}

impl<A, R> std::fmt::Debug for MapIter<A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapIter").finish_non_exhaustive()
    }
}
