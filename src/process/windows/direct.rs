//! Windows: no direct lane. A worker's standard streams are read by tokio's
//! blocking pool, so a caller's thread cannot take them over as on Unix;
//! `apply_blocking` goes through the queue (same results, a few more thread
//! switches per call).

use super::ctx::PoolCtx;
use super::job::Job;

/// Always gives the job back: the caller queues it.
pub(crate) fn run(_ctx: &PoolCtx, job: Job) -> Result<(), Job> {
    Err(job)
}
