//! [`Queue`]: the pool's task queue. Callers push from any thread; the
//! supervisor's slots pop, waiting asynchronously while it is empty.
//!
//! A mutex over a `VecDeque`, not a lock-free list of blocks
//! (`async-channel`'s): a block list allocates a block on the caller's thread
//! every few pushes and frees it on the supervisor's, and with glibc's malloc
//! each such free takes the lock of the caller's arena, which the caller
//! holds for every task it allocates. With 10,000 small tasks in flight that
//! contention put both threads to sleep on the arena lock thousands of times
//! a second and made every spawn 2-3× slower. The deque's buffer is
//! allocated and grown by the pushing threads and kept while it is modest,
//! so a steady stream of tasks allocates nothing here. The lock is held for
//! a push or a pop alone.
//!
//! Waiting uses `event-listener` (the primitive under `async-channel`): a
//! push wakes one more waiting consumer, a pop one more waiting producer of
//! a bounded queue, and a listener dropped after its notification passes it
//! on, so a consumer cancelled in a `select!` loses no wake-up.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use event_listener::{Event, EventListener, IntoNotification, Listener};

/// An emptied queue keeps a buffer up to this many items; a larger one (left
/// by a burst) is freed.
const KEEP_ITEMS: usize = 16 * 1024;

/// Why a push failed; the item comes back.
#[derive(Debug)]
pub(crate) enum PushError<T> {
    /// A bounded queue is at its capacity.
    Full(T),
    /// The queue was closed.
    Closed(T),
}

impl<T> PushError<T> {
    /// The item that was not pushed.
    // (Only the Unix direct lane hands a job back this way.)
    #[cfg_attr(windows, allow(dead_code))]
    pub(crate) fn into_inner(self) -> T {
        match self {
            PushError::Full(item) | PushError::Closed(item) => item,
        }
    }
}

/// A multi-producer, multi-consumer FIFO queue, optionally bounded, that can
/// be closed: pushes then fail, and pops drain what is left, then end.
///
/// Aligned to (two) cache lines, so that nothing written by one side alone
/// shares a line with it: callers and the supervisor both write it for
/// every task.
#[repr(align(128))]
pub(crate) struct Queue<T> {
    items: Mutex<VecDeque<T>>,
    /// `items.len()`, readable without the lock (updated under it).
    len: AtomicUsize,
    closed: AtomicBool,
    capacity: Option<usize>,
    /// Consumers waiting for an item (or the close).
    pushed: Event,
    /// Producers waiting for room in a bounded queue (or the close).
    popped: Event,
}

impl<T> Queue<T> {
    /// A queue holding at most `capacity` items (`None`: unbounded).
    pub(crate) fn new(capacity: Option<usize>) -> Self {
        Queue {
            items: Mutex::new(VecDeque::new()),
            len: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            capacity: capacity.map(|c| c.max(1)),
            pushed: Event::new(),
            popped: Event::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<T>> {
        // Nothing panics while the lock is held but an allocation failure,
        // which aborts: a poisoned queue is still consistent.
        self.items.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `item` unless the queue is closed or full.
    pub(crate) fn try_push(&self, item: T) -> Result<(), PushError<T>> {
        {
            let mut items = self.lock();
            // Checked under the lock: `close` takes it too, so no item can
            // slip in after the last consumer saw the queue closed and empty.
            if self.closed.load(Ordering::Relaxed) {
                return Err(PushError::Closed(item));
            }
            if self.capacity.is_some_and(|c| items.len() >= c) {
                return Err(PushError::Full(item));
            }
            items.push_back(item);
            self.len.store(items.len(), Ordering::Release);
        }
        self.pushed.notify(1.additional());
        Ok(())
    }

    /// Appends `item`, blocking the thread while a bounded queue is full.
    /// Fails (giving it back) once the queue is closed.
    pub(crate) fn push_blocking(&self, mut item: T) -> Result<(), T> {
        let mut listener: Option<EventListener> = None;
        loop {
            match self.try_push(item) {
                Ok(()) => return Ok(()),
                Err(PushError::Closed(back)) => return Err(back),
                Err(PushError::Full(back)) => item = back,
            }
            match listener.take() {
                Some(waiting) => waiting.wait(),
                None => listener = Some(self.popped.listen()),
            }
        }
    }

    /// Appends `item`, waiting asynchronously while a bounded queue is full.
    /// Fails (giving it back) once the queue is closed.
    pub(crate) async fn push(&self, mut item: T) -> Result<(), T> {
        let mut listener: Option<EventListener> = None;
        loop {
            match self.try_push(item) {
                Ok(()) => return Ok(()),
                Err(PushError::Closed(back)) => return Err(back),
                Err(PushError::Full(back)) => item = back,
            }
            match listener.take() {
                Some(waiting) => waiting.await,
                None => listener = Some(self.popped.listen()),
            }
        }
    }

    /// Takes the oldest item, if any.
    pub(crate) fn try_pop(&self) -> Option<T> {
        if self.is_empty() {
            return None; // (no lock for a look at an empty queue)
        }
        let (item, spare) = {
            let mut items = self.lock();
            let item = items.pop_front();
            self.len.store(items.len(), Ordering::Release);
            // A burst's large buffer goes once the burst is over; it is freed
            // after the lock is released.
            let spare = (items.is_empty() && items.capacity() > KEEP_ITEMS)
                .then(|| std::mem::take(&mut *items));
            (item, spare)
        };
        drop(spare);
        if item.is_some() && self.capacity.is_some() {
            self.popped.notify(1.additional());
        }
        item
    }

    /// The oldest item, once there is one; `None` once the queue is closed
    /// and empty. Cancel-safe: an item is taken only when this returns it.
    /// Not fused: polled again after `Ready(Some)`, it takes the next item.
    pub(crate) fn pop(&self) -> Pop<'_, T> {
        Pop {
            queue: self,
            listener: None,
        }
    }

    /// Closes the queue: pushes fail from now on, and waiting consumers and
    /// producers wake. Items already queued stay, for consumers to drain.
    /// Returns `false` if it was already closed.
    pub(crate) fn close(&self) -> bool {
        let was_closed = {
            let _items = self.lock();
            self.closed.swap(true, Ordering::AcqRel)
        };
        self.pushed.notify(usize::MAX);
        self.popped.notify(usize::MAX);
        !was_closed
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Closed and empty: no item will ever come out again. (Closed is read
    /// first: `close` comes after every push, so a closed queue found empty
    /// stays empty.)
    pub(crate) fn is_done(&self) -> bool {
        self.is_closed() && self.is_empty()
    }

    /// Items waiting (a snapshot: other threads may change it at once).
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The future of [`Queue::pop`].
pub(crate) struct Pop<'a, T> {
    queue: &'a Queue<T>,
    listener: Option<EventListener>,
}

impl<T> Future for Pop<'_, T> {
    type Output = Option<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        loop {
            if let Some(item) = self.queue.try_pop() {
                return Poll::Ready(Some(item));
            }
            if self.queue.is_done() {
                return Poll::Ready(None);
            }
            match &mut self.listener {
                // Listening since before the look above: a push after it
                // notifies this listener (or one that passes it on).
                Some(listener) => {
                    std::task::ready!(Pin::new(listener).poll(cx));
                    self.listener = None;
                }
                None => self.listener = Some(self.queue.pushed.listen()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::sync::Arc;
    use std::time::Duration;

    /// Runs `f` on a thread of its own and returns what it returns; fails
    /// (instead of hanging the test) if that takes longer than 20 s.
    fn within<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || tx.send(f()));
        rx.recv_timeout(Duration::from_secs(20))
            .expect("a wake-up was lost: still waiting after 20 s")
    }

    /// A waker that records that it was woken.
    #[derive(Default)]
    struct Flag(AtomicBool);

    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn flag_waker() -> (Arc<Flag>, std::task::Waker) {
        let flag = Arc::new(Flag::default());
        (flag.clone(), std::task::Waker::from(flag))
    }

    #[test]
    fn items_come_out_in_order_and_a_closed_queue_drains_then_ends() {
        let queue = Queue::new(None);
        for i in 0..5 {
            queue.try_push(i).unwrap();
        }
        assert_eq!(queue.len(), 5);
        assert_eq!(queue.try_pop(), Some(0));
        assert!(queue.close());
        assert!(!queue.close());
        assert!(matches!(queue.try_push(9), Err(PushError::Closed(9))));
        let rest: Vec<_> =
            std::iter::from_fn(|| futures::executor::block_on(queue.pop())).collect();
        assert_eq!(rest, [1, 2, 3, 4]);
        assert!(queue.is_empty());
    }

    #[test]
    fn a_bounded_queue_refuses_when_full_and_a_blocked_push_resumes_after_a_pop() {
        let queue = Arc::new(Queue::new(Some(2)));
        queue.try_push(1).unwrap();
        queue.try_push(2).unwrap();
        assert!(matches!(queue.try_push(3), Err(PushError::Full(3))));
        let (tx, rx) = mpsc::channel();
        {
            let queue = queue.clone();
            std::thread::spawn(move || tx.send(queue.push_blocking(3)));
        }
        let waited = rx.recv_timeout(Duration::from_millis(100));
        assert!(waited.is_err(), "the push waits for room");
        assert_eq!(queue.try_pop(), Some(1));
        let pushed = rx.recv_timeout(Duration::from_secs(20));
        assert_eq!(pushed, Ok(Ok(())), "the pop woke the waiting push");
        assert_eq!(queue.try_pop(), Some(2));
        assert_eq!(queue.try_pop(), Some(3));
    }

    #[test]
    fn an_async_push_waits_for_room_and_wakes_at_a_pop() {
        let queue = Queue::new(Some(1));
        queue.try_push(1).unwrap();
        let (flag, waker) = flag_waker();
        let mut cx = Context::from_waker(&waker);
        let mut push = Box::pin(queue.push(2));
        assert!(push.as_mut().poll(&mut cx).is_pending());
        assert_eq!(queue.try_pop(), Some(1));
        assert!(flag.0.load(Ordering::SeqCst), "the pop woke the push");
        assert_eq!(push.as_mut().poll(&mut cx), Poll::Ready(Ok(())));
        assert_eq!(queue.try_pop(), Some(2));
    }

    #[test]
    fn closing_wakes_a_blocked_producer_and_a_waiting_consumer() {
        let full = Arc::new(Queue::new(Some(1)));
        full.try_push(0).unwrap();
        let empty = Arc::new(Queue::<u32>::new(None));
        let pusher = {
            let full = full.clone();
            std::thread::spawn(move || full.push_blocking(1))
        };
        let popper = {
            let empty = empty.clone();
            std::thread::spawn(move || futures::executor::block_on(empty.pop()))
        };
        std::thread::sleep(Duration::from_millis(50));
        full.close();
        empty.close();
        let (pushed, popped) = within(move || (pusher.join().unwrap(), popper.join().unwrap()));
        assert_eq!(pushed, Err(1));
        assert_eq!(popped, None);
    }

    #[test]
    fn each_push_wakes_one_more_waiting_consumer() {
        // Two idle consumers, two pushes: both must wake (else one item
        // waits for a consumer that is busy with the other).
        let queue = Queue::new(None);
        let (first_flag, first_waker) = flag_waker();
        let (second_flag, second_waker) = flag_waker();
        let mut first = Box::pin(queue.pop());
        let mut second = Box::pin(queue.pop());
        assert!(first
            .as_mut()
            .poll(&mut Context::from_waker(&first_waker))
            .is_pending());
        assert!(second
            .as_mut()
            .poll(&mut Context::from_waker(&second_waker))
            .is_pending());
        queue.try_push(1).unwrap();
        queue.try_push(2).unwrap();
        assert!(first_flag.0.load(Ordering::SeqCst));
        assert!(second_flag.0.load(Ordering::SeqCst));
    }

    #[test]
    fn a_consumer_dropped_after_its_wake_up_passes_it_on() {
        let queue = Arc::new(Queue::new(None));
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        // Two consumers wait; one push wakes one of them, which is then
        // dropped unpolled (as a `select!` drops a losing branch).
        let mut first = Box::pin(queue.pop());
        let mut second = Box::pin(queue.pop());
        assert!(first.as_mut().poll(&mut cx).is_pending());
        assert!(second.as_mut().poll(&mut cx).is_pending());
        let (flag, woken) = flag_waker();
        let mut cx2 = Context::from_waker(&woken);
        assert!(second.as_mut().poll(&mut cx2).is_pending());
        queue.try_push(7).unwrap();
        assert!(
            !flag.0.load(Ordering::SeqCst),
            "the first waiter is woken first"
        );
        drop(first);
        assert!(
            flag.0.load(Ordering::SeqCst),
            "the dropped consumer's wake-up reached the other"
        );
        assert_eq!(second.as_mut().poll(&mut cx2), Poll::Ready(Some(7)));
    }

    #[test]
    fn a_consumer_that_sleeps_is_woken_by_every_single_push() {
        // One item at a time, each acknowledged before the next: a push
        // that slips between a consumer's look and its sleep would leave it
        // asleep with the item queued.
        let queue = Arc::new(Queue::new(None));
        let (ack_tx, ack_rx) = mpsc::channel();
        let consumer = {
            let queue = queue.clone();
            std::thread::spawn(move || {
                while let Some(item) = futures::executor::block_on(queue.pop()) {
                    ack_tx.send(item).unwrap();
                }
            })
        };
        for i in 0..20_000u32 {
            queue.try_push(i).unwrap();
            let got = ack_rx.recv_timeout(Duration::from_secs(20));
            assert_eq!(got, Ok(i), "the consumer missed the push of item {i}");
        }
        queue.close();
        within(move || consumer.join().unwrap());
    }

    #[test]
    fn a_drained_queue_gives_back_a_burst_s_large_buffer() {
        let queue = Queue::new(None);
        for i in 0..2 * KEEP_ITEMS {
            queue.try_push(i).unwrap();
        }
        while queue.try_pop().is_some() {}
        assert!(queue.lock().capacity() <= KEEP_ITEMS);
        for i in 0..100 {
            queue.try_push(i).unwrap();
        }
        while queue.try_pop().is_some() {}
        assert!(queue.lock().capacity() >= 100, "a modest buffer is kept");
    }

    #[test]
    fn many_threads_push_and_every_item_is_popped_once() {
        let queue = Arc::new(Queue::new(Some(64)));
        let producers: Vec<_> = (0..4u64)
            .map(|p| {
                let queue = queue.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        queue.push_blocking(p * 100_000 + i).unwrap();
                    }
                })
            })
            .collect();
        let consumers: Vec<_> = (0..2)
            .map(|_| {
                let queue = queue.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    while let Some(item) = futures::executor::block_on(queue.pop()) {
                        got.push(item);
                    }
                    got
                })
            })
            .collect();
        let mut all: Vec<u64> = within(move || {
            for p in producers {
                p.join().unwrap();
            }
            queue.close();
            consumers
                .into_iter()
                .flat_map(|c| c.join().unwrap())
                .collect()
        });
        all.sort_unstable();
        let expected: Vec<u64> = (0..4u64)
            .flat_map(|p| (0..10_000).map(move |i| p * 100_000 + i))
            .collect();
        assert_eq!(all, expected);
    }
}
