//! Reading a worker's results and settling the jobs they answer.
//!
//! A local Unix worker publishes each result in its result ring
//! ([`crate::ring`]): inline when it fits a slot, else as an entry naming the
//! frame it wrote to the result pipe. Entries are handled in the order the
//! worker ran the jobs, so a worker that dies mid-batch leaves exactly the
//! results it published, each settling its own job. Workers without a ring
//! (remote ones) send every result frame on the pipe.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use super::ctx::PoolCtx;
use super::worker::{InFlight, Worker};
use crate::ring::{Ring, SLOT_BYTES};
use crate::stats::Counters;
use crate::wire::{self, FromWorker};

impl Worker {
    /// Reads whatever the worker has already written, without waiting, and
    /// handles the complete frames.
    pub(crate) fn take_available(
        &mut self,
        ctx: &PoolCtx,
        inflight: &mut VecDeque<InFlight>,
    ) -> Result<(), String> {
        loop {
            self.inbuf.reserve(64 * 1024);
            match self.rx.try_read_buf(&mut self.inbuf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(_) => break, // would block, or an error the next read sees
            }
        }
        self.take_results(ctx, inflight)
    }

    /// Handles every result that is complete: in `inbuf`, and in the ring.
    pub(crate) fn take_results(
        &mut self,
        ctx: &PoolCtx,
        inflight: &mut VecDeque<InFlight>,
    ) -> Result<(), String> {
        let held = self.inbuf.len();
        let (pos, outcome) = match &self.ring {
            Some(ring) => self.take_ringed(ring, ctx, inflight),
            None => self.take_piped(ctx, inflight),
        };
        self.inbuf.drain(..pos);
        // A frame still arriving counts as a large use: its buffer is kept.
        self.keeper.after_use(&mut self.inbuf, held);
        outcome
    }

    /// Handles every complete frame of the pipe; returns the bytes used.
    fn take_piped(
        &self,
        ctx: &PoolCtx,
        inflight: &mut VecDeque<InFlight>,
    ) -> (usize, Result<(), String>) {
        let max = ctx.config.max_frame;
        let mut pos = 0;
        let outcome = loop {
            let (body, used) = match wire::split_frame(&self.inbuf[pos..], max) {
                Ok(Some(frame)) => frame,
                Ok(None) => match wire::check_from_worker_tag(&self.inbuf[pos..]) {
                    Ok(()) => break Ok(()),
                    Err(e) => break Err(e.to_string()),
                },
                Err(e) => break Err(e.to_string()),
            };
            let body = &self.inbuf[pos + body.start..pos + body.end];
            pos += used;
            let message = match FromWorker::decode(body) {
                Ok(m) => m,
                Err(e) => break Err(e.to_string()),
            };
            if let Err(e) = self.settle(ctx, inflight, message) {
                break Err(e);
            }
        };
        (pos, outcome)
    }

    /// Handles the ring's entries in order, each with its frame from the
    /// pipe when it names one; returns the pipe bytes used. Stops at an entry
    /// whose frame has not fully arrived yet.
    fn take_ringed(
        &self,
        ring: &Ring,
        ctx: &PoolCtx,
        inflight: &mut VecDeque<InFlight>,
    ) -> (usize, Result<(), String>) {
        let max = ctx.config.max_frame;
        let mut pos = 0;
        let (first, end) = match ring.pending() {
            Ok(bounds) => bounds,
            Err(e) => return (0, Err(e.into())),
        };
        let mut index = first;
        let outcome = loop {
            let piped = match next_piped(&self.inbuf, &mut pos, max) {
                Ok(piped) => piped,
                Err(e) => break Err(e),
            };
            if index == end {
                break Ok(()); // (a frame on the pipe waits for its entry)
            }
            let slot = ring.read(index);
            let entry = match wire::split_frame(&slot, (SLOT_BYTES - wire::LEN_PREFIX) as u64) {
                Ok(Some((body, _))) => FromWorker::decode(&slot[body]),
                _ => break Err("a result ring entry is not a frame".into()),
            };
            let settled = match (entry, piped) {
                (Ok(message @ FromWorker::Result { seq, .. }), piped) => {
                    match piped.map(|(body, _)| piped_seq(&self.inbuf[body])) {
                        Some(Ok(stale)) if stale <= seq => {
                            Err(format!("result for job {stale}, which it was not running"))
                        }
                        Some(Err(e)) => Err(e),
                        _ => self.settle(ctx, inflight, message),
                    }
                }
                (Ok(FromWorker::OnPipe { .. }), None) => break Ok(()), // still coming
                (Ok(FromWorker::OnPipe { seq }), Some((body, used))) => {
                    let frame = &self.inbuf[body];
                    match FromWorker::decode(frame) {
                        Ok(message @ FromWorker::Result { seq: got, .. }) if got == seq => {
                            pos += used;
                            self.settle(ctx, inflight, message)
                        }
                        _ => Err(format!(
                            "the result ring names job {seq}, the pipe another message"
                        )),
                    }
                }
                (Ok(_), _) => Err("unexpected message in the result ring".into()),
                (Err(e), _) => Err(e.to_string()),
            };
            if let Err(e) = settled {
                break Err(e);
            }
            index += 1;
            ring.consumed(index);
        };
        (pos, outcome)
    }

    /// Settles the job a result message answers, and any the worker says it
    /// skipped.
    fn settle(
        &self,
        ctx: &PoolCtx,
        inflight: &mut VecDeque<InFlight>,
        message: FromWorker<'_>,
    ) -> Result<(), String> {
        let counters = &ctx.counters;
        let FromWorker::Result {
            seq,
            next,
            seen,
            nanos,
            status,
            payload,
        } = message
        else {
            return Err("unexpected message after the handshake".into());
        };
        // Jobs before `seq` can only have been skipped, which the worker
        // does only for cancelled ones.
        pop_skipped(ctx, inflight, |s| s < seq)?;
        if inflight.front().map(|e| e.seq) != Some(seq) {
            return Err(format!("result for job {seq}, which it was not running"));
        }
        match inflight.pop_front() {
            Some(entry) => {
                counters.running.fetch_sub(1, Ordering::Relaxed);
                if let Some(sent) = entry.sent_idle {
                    let total = sent.elapsed().as_nanos() as u64;
                    counters.note_round_trip(self.slot, total.saturating_sub(nanos));
                }
                ctx.finished(&entry.job, status, nanos);
                entry.job.slot.deliver(status, payload, self.pid);
            }
            None => unreachable!("checked above"),
        }
        // Now learn which job the worker runs next.
        if next != 0 {
            pop_skipped(ctx, inflight, |s| s < next).and_then(|()| match inflight.front() {
                Some(f) if f.seq == next => Ok(()),
                _ => Err(format!(
                    "worker names job {next} as next, which it was not sent"
                )),
            })
        } else {
            // Idle: every job it has seen is done or skipped; the first one
            // it has not seen starts as soon as it is read.
            pop_skipped(ctx, inflight, |s| s <= seen)
        }
    }
}

/// Skips the doorbells at `*pos` of the pipe's bytes `buf`, and finds the
/// whole frame after them: its body's range in `buf` and its length.
fn next_piped(
    buf: &[u8],
    pos: &mut usize,
    max: u64,
) -> Result<Option<(std::ops::Range<usize>, usize)>, String> {
    loop {
        let rest = &buf[*pos..];
        match wire::split_frame(rest, max) {
            Ok(Some((body, used))) => {
                if rest[body.clone()] == wire::DOORBELL[wire::LEN_PREFIX..] {
                    *pos += used;
                    continue;
                }
                return Ok(Some((*pos + body.start..*pos + body.end, used)));
            }
            Ok(None) => {
                return wire::check_from_worker_tag(rest)
                    .map(|()| None)
                    .map_err(|e| e.to_string())
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// The job a `RESULT` frame from the pipe answers.
fn piped_seq(body: &[u8]) -> Result<u64, String> {
    match FromWorker::decode(body) {
        Ok(FromWorker::Result { seq, .. }) => Ok(seq),
        Ok(_) => Err("unexpected message on the pipe".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Pops leading entries matching `before`; they must all be cancelled.
fn pop_skipped(
    ctx: &PoolCtx,
    inflight: &mut VecDeque<InFlight>,
    before: impl Fn(u64) -> bool,
) -> Result<(), String> {
    while let Some(front) = inflight.front() {
        if !before(front.seq) {
            break;
        }
        if !front.job.slot.is_cancelled() {
            return Err(format!(
                "worker skipped job {}, which was not cancelled",
                front.seq
            ));
        }
        inflight.pop_front();
        ctx.counters.running.fetch_sub(1, Ordering::Relaxed);
        Counters::bump(&ctx.counters.cancelled);
    }
    Ok(())
}
