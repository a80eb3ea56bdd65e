//! Reading a worker's results and settling the jobs they answer.
//!
//! A local Unix worker publishes each result in its result ring
//! ([`crate::ring`]): inline when it fits a slot, else as an entry naming the
//! frame it wrote to the result pipe. Entries are handled in the order the
//! worker ran the jobs, so a worker that dies mid-batch leaves exactly the
//! results it published, each settling its own job. A large result lies in
//! the worker's result region instead of the pipe (see [`crate::region`]),
//! announced by its own entry. Workers without a ring
//! (remote ones) send every result frame on the pipe.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use super::ctx::PoolCtx;
use super::worker::{InFlight, RegionCopy, Worker};
use crate::region::Region;
use crate::ring::{Ring, SLOT_BYTES};
use crate::stats::Counters;
use crate::wire::{self, FromWorker};

impl Worker {
    /// Marks the result pipe as being read (see
    /// [`Ring::pipe_has_foreign_bytes`]), until [`pipe_read_done`](Self::pipe_read_done).
    pub(crate) fn pipe_reading(&self) {
        if let Some(ring) = &self.ring {
            ring.pipe_reading();
        }
    }

    /// Publishes how much of the result pipe has been read.
    pub(crate) fn pipe_read_done(&self) {
        if let Some(ring) = &self.ring {
            ring.set_pipe_read(self.pipe_taken + self.inbuf.len() as u64);
        }
    }

    /// Reads what the worker has already written, without waiting, and
    /// handles every result that is complete: in `inbuf`, and in the ring.
    pub(crate) fn take_results(
        &mut self,
        ctx: &PoolCtx,
        inflight: &mut VecDeque<InFlight>,
    ) -> Result<(), String> {
        // The ring's bounds first, then the pipe: every byte the worker wrote
        // to the pipe before publishing those entries is then in `inbuf`
        // (its write returned before its store of `head`), including any a
        // task scribbled there, which must fail that task, not a later one.
        let bounds = self.ring.as_ref().map(|ring| ring.pending());
        self.settled_at.take();
        self.pipe_reading();
        read_available(&self.rx, &mut self.inbuf);
        self.pipe_read_done();
        let held = self.inbuf.len();
        // Results in the result region are read out into this copy (kept
        // while large results keep coming).
        let mut copy = std::mem::take(&mut self.region_copy);
        copy.0.clear();
        let (pos, outcome) = match (&self.ring, bounds) {
            (Some(ring), Some(bounds)) => self.take_ringed(ring, bounds, ctx, inflight, &mut copy),
            _ => self.take_piped(ctx, inflight),
        };
        let used = copy.0.len();
        copy.1.after_use(&mut copy.0, used);
        self.region_copy = copy;
        self.inbuf.drain(..pos);
        self.pipe_taken += pos as u64;
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
        wire::for_each_from_worker(&self.inbuf, ctx.config.max_frame, |message| {
            self.settle(ctx, inflight, message)
        })
    }

    /// Handles the ring's entries in order: an inline result at once, an
    /// `ON_PIPE` entry with the frame the pipe holds for it; returns the pipe
    /// bytes used. Stops at an `ON_PIPE` entry whose frame has not fully
    /// arrived. Bytes on the pipe that no worker writes fail the job they
    /// stand before: the `ON_PIPE` job whose frame they precede (a worker
    /// that finds its task wrote to the pipe sends that task's result there,
    /// see [`Ring::pipe_has_foreign_bytes`]), else the first job not yet
    /// answered.
    fn take_ringed(
        &self,
        ring: &Ring,
        bounds: Result<(u64, u64), &'static str>,
        ctx: &PoolCtx,
        inflight: &mut VecDeque<InFlight>,
        copy: &mut RegionCopy,
    ) -> (usize, Result<(), String>) {
        let max = ctx.config.max_frame;
        let mut pos = 0;
        let (first, end) = match bounds {
            Ok(bounds) => bounds,
            Err(e) => return (0, Err(e.into())),
        };
        let mut index = first;
        let outcome = loop {
            if index == end {
                // Doorbells go; a frame whose entry is still to come stays.
                break next_piped(&self.inbuf, &mut pos, max).map(|_| ());
            }
            let slot = ring.read(index);
            let settled = match decode_entry(&slot) {
                Ok(message @ FromWorker::Result { .. }) => self.settle(ctx, inflight, message),
                Ok(FromWorker::OnPipe { seq }) => match next_piped(&self.inbuf, &mut pos, max) {
                    Ok(None) => break Ok(()), // still coming
                    Ok(Some((body, used))) => match FromWorker::decode(&self.inbuf[body]) {
                        Ok(message @ FromWorker::Result { seq: got, .. }) if got == seq => {
                            pos += used;
                            self.settle(ctx, inflight, message)
                        }
                        _ => Err(format!(
                            "the result ring names job {seq}, the pipe another message"
                        )),
                    },
                    Err(e) => Err(e),
                }
                .inspect_err(|_| {
                    // Blame `seq`: jobs before it can only have been skipped.
                    let _ = pop_skipped(ctx, inflight, |s| s < seq);
                }),
                Ok(FromWorker::InRegion { seq, len }) => {
                    let region = self.result_region.as_ref();
                    Self::from_region(region, (seq, len), ctx, &mut copy.0)
                        .and_then(|message| self.settle(ctx, inflight, message))
                        .inspect_err(|_| {
                            let _ = pop_skipped(ctx, inflight, |s| s < seq);
                        })
                }
                Ok(_) => Err("unexpected message in the result ring".into()),
                Err(e) => Err(e),
            };
            if let Err(e) = settled {
                break Err(e);
            }
            index += 1;
            ring.consumed(index);
        };
        (pos, outcome)
    }

    /// The result of job `seq` that a `RESULT_IN_REGION` entry announces:
    /// the result region's first `len` bytes, which must be exactly that
    /// result's frame.
    fn from_region<'b>(
        region: Option<&Region>,
        (seq, len): (u64, u64),
        ctx: &PoolCtx,
        copy: &'b mut Vec<u8>,
    ) -> Result<FromWorker<'b>, String> {
        let region = region.ok_or("a result region this worker lacks")?;
        region.read_into(len, copy)?;
        let bytes = &copy[..];
        match wire::split_frame(bytes, ctx.config.max_frame) {
            Ok(Some((body, used))) if used == bytes.len() => {
                match FromWorker::decode(&bytes[body]) {
                    Ok(message @ FromWorker::Result { seq: got, .. }) if got == seq => Ok(message),
                    _ => Err(format!(
                        "the result ring names job {seq}, the result region another message"
                    )),
                }
            }
            Ok(_) => Err("the result region does not hold one whole frame".into()),
            Err(e) => Err(e.to_string()),
        }
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
                // One clock read for all results taken together: a wait a
                // few microseconds long matters less than a read per task.
                let now = || *self.settled_at.get_or_init(super::job::now_nanos);
                ctx.finished(&entry.job, (status, nanos), now);
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

/// Most bytes [`read_available`] takes in one call: a worker (or a task)
/// writing without end cannot keep the supervisor reading.
const READ_AVAILABLE_MAX: usize = 4 << 20;

/// Appends what the pipe holds right now to `buf` (up to
/// [`READ_AVAILABLE_MAX`]), without waiting. A read of its own, not tokio's
/// `try_read`, which trusts a readiness flag that may not have caught up
/// with bytes written a moment ago. (End of file and errors are left for the
/// event loop's next read.)
fn read_available(rx: &tokio::net::unix::pipe::Receiver, buf: &mut Vec<u8>) {
    let start = buf.len();
    while buf.len() - start < READ_AVAILABLE_MAX {
        buf.reserve(64 * 1024);
        let room = buf.capacity() - buf.len();
        match rustix::io::read(rx, rustix::buffer::spare_capacity(buf)) {
            Ok(n) if n == room => continue,
            Err(rustix::io::Errno::INTR) => continue,
            _ => return,
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

/// The message in a ring slot.
fn decode_entry(slot: &[u8; SLOT_BYTES]) -> Result<FromWorker<'_>, String> {
    match wire::split_frame(slot, (SLOT_BYTES - wire::LEN_PREFIX) as u64) {
        Ok(Some((body, _))) => FromWorker::decode(&slot[body]).map_err(|e| e.to_string()),
        _ => Err("a result ring entry is not a frame".into()),
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
