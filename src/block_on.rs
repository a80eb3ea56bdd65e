//! Waiting for a task on a plain thread: what `apply_blocking` and
//! `map_blocking` do.
//!
//! `futures::executor::block_on` keeps the waker it parks with in a
//! thread-local. While a thread's locals are being destroyed at its exit (a
//! `Drop` of a `thread_local!` value that calls the pool), that local may be
//! gone already, and reaching it panics, which there aborts the process. So
//! the pools wait here instead, with a waker of their own:
//!
//! - The first poll uses a no-op waker: a call the direct lane answered on
//!   this thread is finished by then, and costs no allocation.
//! - Otherwise a fresh [`Signal`] (a flag and a condition variable) is the
//!   waker until the task is done.
//! - Like futures' executor, it marks the thread as inside a blocking executor
//!   for as long as it waits (`futures::executor::enter`, a flag that needs
//!   no destructor): a task spawned meanwhile must not wait on a runtime this
//!   thread cannot run (see `process::async_lane`). Unlike futures' executor,
//!   waiting inside another blocking executor is allowed: it blocks the
//!   thread, as any blocking call does.

use std::future::Future;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// Polls `task` on this thread until it is done.
pub(crate) fn block_on<F: Future>(task: F) -> F::Output {
    // Err: already inside a blocking executor, which is marked already.
    let _entered = futures::executor::enter();
    let mut task = std::pin::pin!(task);
    if let Poll::Ready(out) = task.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        return out;
    }
    let signal = Arc::new(Signal::default());
    let waker = Waker::from(signal.clone());
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(out) = task.as_mut().poll(&mut cx) {
            return out;
        }
        signal.wait();
    }
}

/// A waker that sets a flag and wakes the thread waiting for it.
#[derive(Default)]
struct Signal {
    woken: Mutex<bool>,
    cond: Condvar,
}

impl Signal {
    /// Sleeps until woken (at once if woken since the last call), and
    /// resets the flag.
    fn wait(&self) {
        let mut woken = self.woken.lock().unwrap_or_else(|e| e.into_inner());
        while !*woken {
            woken = self.cond.wait(woken).unwrap_or_else(|e| e.into_inner());
        }
        *woken = false;
    }
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        *self.woken.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cond.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_ready_future_returns_at_once() {
        assert_eq!(block_on(async { 7 }), 7);
    }

    #[test]
    fn a_future_woken_from_another_thread_completes() {
        let (tx, rx) = futures::channel::oneshot::channel();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.send(5).unwrap();
        });
        assert_eq!(block_on(rx), Ok(5));
        sender.join().unwrap();
    }

    #[test]
    fn the_thread_counts_as_inside_a_blocking_executor_while_it_waits() {
        assert!(futures::executor::enter().is_ok());
        let inside = block_on(async { futures::executor::enter().is_err() });
        assert!(inside);
        assert!(futures::executor::enter().is_ok(), "left again");
    }

    #[test]
    fn waiting_inside_another_blocking_executor_works() {
        let got = futures::executor::block_on(async { block_on(async { 3 }) });
        assert_eq!(got, 3);
    }
}
