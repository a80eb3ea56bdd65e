//! [`ProcessPool`]: run functions in worker processes.
//!
//! # How a task travels
//!
//! 1. [`pool`]: `spawn` (and every method built on it) serialises the call
//!    into a [`job::Job`] and puts it on the pool's queue
//!    ([`crate::queue`]), which all slots share through the
//!    [`ctx::PoolCtx`]. (The pool was made by the
//!    [`builder`], which had [`start`] run the supervisor thread.)
//! 2. [`slot`]: each worker slot, a task on the supervisor thread, keeps one
//!    [`worker::Worker`] running: it starts it, lets it serve, and replaces
//!    it when it dies or is recycled.
//! 3. [`serve`]: the worker's event loop takes the job from the queue, writes
//!    it to the worker's pipe (through the [`outbox`]; a large one goes into
//!    the worker's job region, see [`crate::region`]), and waits for the
//!    result, which [`results`] reads (from the worker's result ring, its
//!    result region, or the pipe), matches to the job and delivers to its
//!    task; [`ending`] decides what happens when the worker goes away.
//! 4. The worker process itself is `crate::worker`, re-executed by the
//!    [`launcher`]; the [`init`]ialiser runs in it before the first job.
//!
//! `apply_blocking` may skip the queue: [`direct`] borrows an idle worker
//! through its [`lane`] (a small state machine) and talks to its pipes from
//! the caller's thread, while the slot's supervisor waits in [`lend`].
//! `spawn` and `apply` inside a tokio runtime do the same through
//! [`async_lane`], whose task waits for the reply on the caller's reactor.
//!
//! # Module dependencies
//!
//! The modules import each other only downwards (`a -> b`: `a` uses `b`):
//!
//! ```text
//! builder -> pool, start, ctx, init, job, launcher
//! pool    -> async_lane, direct, ctx, job
//! start   -> slot, ctx
//! slot    -> serve, ending, worker, ctx, job
//! serve   -> async_lane, lend, ending, worker, outbox, ctx, lane, job
//! lend    -> worker, ctx, lane, job
//! ending  -> worker, ctx, launcher, job
//! results -> worker, ctx
//! worker  -> exit_watch, relaunch, ctx, init, launcher, job
//! exit_watch -> launcher
//! async_lane -> direct, ctx, lane, job
//! direct  -> ctx, lane, job
//! ctx     -> lane, init, launcher, job
//! lane    -> job
//! outbox  -> job
//! ```
//!
//! `job`, `launcher` and `relaunch` import no other module of this one; `init` uses `job`.
//! `crate::remote` (workers on other machines) sits beside them: `builder`,
//! `worker` and `ending` use it, and it uses only `launcher`. `results`
//! calls methods of `worker::Worker` that it defines itself (an `impl` block
//! of its own); `serve` and `ending` call them through the worker. The
//! result ring, `crate::ring`, is used by `launcher` (which creates it),
//! `worker` (which holds it) and `results` (which reads it); so are the
//! regions for large frames, `crate::region`, which `serve` also writes.
//! The task queue, `crate::queue`, imports nothing of this crate; `ctx`
//! holds it, and `builder`, `pool`, `serve` and `lend` use it.

//!
//! # Windows
//!
//! `direct`, `launcher`, `serve` and `worker` have Windows counterparts in
//! `windows/` (same names, same roles): workers talk over their standard
//! input and output, one job at a time, with no direct lane (`lend` and
//! `outbox` are Unix only; `lane` compiles but is never opened).

#[cfg(unix)]
mod async_lane;
mod builder;
// Parts of these serve only the Unix pipelining and direct lane.
#[cfg_attr(windows, allow(dead_code))]
mod ctx;
#[cfg_attr(windows, path = "windows/direct.rs")]
mod direct;
mod ending;
#[cfg(unix)]
mod exit_watch;
mod init;
#[cfg_attr(windows, allow(dead_code))]
mod job;
#[cfg_attr(windows, allow(dead_code))]
mod lane;
#[cfg_attr(windows, path = "windows/launcher.rs")]
pub(crate) mod launcher;
#[cfg(unix)]
mod lend;
#[cfg(unix)]
mod outbox;
mod pool;
mod relaunch;
#[cfg(unix)]
mod results;
#[cfg_attr(windows, path = "windows/serve.rs")]
mod serve;
mod slot;
mod start;
#[cfg(unix)]
mod unpolled;
#[cfg_attr(windows, path = "windows/worker.rs")]
mod worker;

pub use builder::ProcessPoolBuilder;
pub use pool::ProcessPool;
