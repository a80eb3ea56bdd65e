//! Starting a pool's supervisors: the pool's own thread, the small tokio
//! runtime it drives, one [`supervise`] task per slot on it, and the wait
//! until the eager slots' first workers are ready. Called by
//! [`build`](super::ProcessPoolBuilder::build); the slots themselves are in
//! [`super::slot`].

use std::sync::mpsc;
use std::sync::Arc;

use super::ctx::PoolCtx;
use super::slot::supervise;
use crate::Error;

/// Starts the supervisor thread and waits until every slot reported its first
/// start. Returns the channel that closes once the thread is done; on a failed
/// start the pool is stopped and the thread joined before the error returns.
pub(super) fn supervisors(
    ctx: &Arc<PoolCtx>,
    stop: &async_channel::Sender<()>,
) -> Result<async_channel::Receiver<()>, Error> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (done_tx, done_rx) = async_channel::bounded(1);
    let thread_ctx = ctx.clone();
    // The runtime is made, and always dropped, on the supervisor thread:
    // dropping a runtime in the caller's async context would panic in tokio
    // if the thread could not be started.
    let thread = std::thread::Builder::new()
        .name("procpool-supervisor".into())
        .spawn(move || match supervisor_runtime() {
            Ok(runtime) => run_slots(runtime, thread_ctx, ready_tx, done_tx),
            Err(e) => drop(ready_tx.send(Err(e))),
        })
        .map_err(Error::Thread)?;
    if let Some(e) = first_failure(&ready_rx, ctx.config.workers) {
        stop.close();
        ctx.queue.close();
        let _ = thread.join();
        return Err(e);
    }
    Ok(done_rx)
}

/// The supervisor thread: runs every slot to its end on `runtime`.
fn run_slots(
    runtime: tokio::runtime::Runtime,
    ctx: Arc<PoolCtx>,
    ready_tx: mpsc::Sender<Result<(), Error>>,
    done_tx: async_channel::Sender<()>,
) {
    // `done` closes only after the runtime is dropped, so when
    // `shutdown` or `terminate` returns, the pool's own descriptors
    // (epoll, timers, the reaping threads) are gone too.
    let done = done_tx.clone();
    let workers = ctx.config.workers;
    runtime.block_on(async move {
        let slots: Vec<_> = (0..workers)
            .map(|idx| {
                tokio::spawn(supervise(
                    ctx.clone(),
                    idx,
                    ready_tx.clone(),
                    done_tx.clone(),
                ))
            })
            .collect();
        drop((ready_tx, done_tx, ctx));
        for slot in slots {
            let _ = slot.await;
        }
    });
    drop(runtime);
    drop(done);
}

/// Waits for each of the `workers` slots to report its first start; the first
/// error, if any (a slot that ends without a report ends the wait too).
fn first_failure(ready: &mpsc::Receiver<Result<(), Error>>, workers: usize) -> Option<Error> {
    for _ in 0..workers {
        match ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Some(e),
            Err(_) => break,
        }
    }
    None
}

/// The small runtime the supervisor thread drives: I/O and timers only.
///
/// When the application enables tokio's `signal` feature, building any I/O
/// driver also creates tokio's process-wide signal pipe the first time, and
/// tokio panics (rather than returning an error) if that fails — which it does
/// when the process is out of file descriptors. That panic is caught here and
/// becomes the `Error` the caller of `build` expects.
fn supervisor_runtime() -> Result<tokio::runtime::Runtime, Error> {
    let built = crate::panic_info::catch(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
    });
    let failed = |why: String| {
        Error::Io(std::io::Error::other(format!(
            "the pool's I/O runtime could not start: {why}"
        )))
    };
    match built {
        Ok(Ok(runtime)) => Ok(runtime),
        Ok(Err(e)) => Err(failed(e.to_string())),
        Err(caught) => Err(failed(caught.message)),
    }
}
