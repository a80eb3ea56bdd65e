//! Windows: the worker's job loop, over its standard input (jobs) and
//! standard output (results).
//!
//! Right at the start the worker takes both handles for the protocol and
//! points the process's standard output at its standard error, and its
//! standard input at nothing, so a task's `println!` cannot corrupt a frame
//! and a task reading stdin cannot steal one. (A task's printed output
//! therefore reaches the parent's stderr on Windows.)
//!
//! Jobs run one at a time, in the order they arrive; the Windows parent sends
//! the next only after the previous result, so the worker blocks in a plain
//! read between jobs. End of file on standard input (the parent closed it, or
//! died) ends the worker.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::windows::io::{FromRawHandle, RawHandle};
use std::sync::OnceLock;

use windows_sys::Win32::Foundation::{SetHandleInformation, HANDLE, HANDLE_FLAG_INHERIT};
use windows_sys::Win32::System::Console::{
    GetStdHandle, SetStdHandle, STD_ERROR_HANDLE, STD_INPUT_HANDLE, STD_OUTPUT_HANDLE,
};

use crate::func_ref;
use crate::panic_info;
use crate::wire::{self, FrameError, Status, ToWorker};

use super::Spec;

/// The result stream (the original standard output), once taken.
static OUTPUT: OnceLock<File> = OnceLock::new();

/// Test hook support: writes `bytes` to the parent's result stream.
pub(super) fn write_to_parent(bytes: &[u8]) {
    if let Some(mut out) = OUTPUT.get() {
        let _ = out.write_all(bytes);
    }
}

/// Runs the worker until its standard input ends. Returns the exit code.
pub(super) fn serve(spec: Spec) -> i32 {
    let (mut input, output) = match take_std_streams() {
        Ok(streams) => streams,
        Err(e) => {
            eprintln!("procpool worker: cannot take its standard streams: {e}");
            return 5;
        }
    };
    let mut output = OUTPUT.get_or_init(|| output);
    panic_info::install(true);

    let mut out = Vec::with_capacity(4096);
    if !super::greet(&mut out, spec.identity) {
        let _ = output.write_all(&out);
        return 2;
    }
    if output.write_all(&out).is_err() {
        return 0;
    }
    match run(&mut input, &mut output, spec.max_frame) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("procpool worker {}: {e}", std::process::id());
            4
        }
    }
}

/// Takes the standard input and output for the protocol (not inherited by
/// processes a task starts), and leaves the process stdout = stderr and no
/// stdin.
fn take_std_streams() -> io::Result<(File, File)> {
    // SAFETY: querying and replacing this process's standard handles, before
    // `main`, with one thread running; the taken handles are owned by the
    // `File`s from here on, and no longer reachable as standard handles.
    unsafe {
        let input = GetStdHandle(STD_INPUT_HANDLE);
        let output = GetStdHandle(STD_OUTPUT_HANDLE);
        let invalid = |h: HANDLE| h.is_null() || h as isize == -1;
        if invalid(input) || invalid(output) {
            return Err(io::Error::other("no standard input or output"));
        }
        for h in [input, output] {
            SetHandleInformation(h, HANDLE_FLAG_INHERIT, 0);
        }
        if SetStdHandle(STD_OUTPUT_HANDLE, GetStdHandle(STD_ERROR_HANDLE)) == 0
            || SetStdHandle(STD_INPUT_HANDLE, std::ptr::null_mut()) == 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok((
            File::from_raw_handle(input as RawHandle),
            File::from_raw_handle(output as RawHandle),
        ))
    }
}

/// A job received and not yet run.
struct JobRef {
    seq: u64,
    func: u64,
    trampoline: u64,
    args: Vec<u8>,
}

/// Reads jobs and writes results until end of file.
fn run(input: &mut File, output: &mut &File, max_frame: u64) -> io::Result<()> {
    let mut inbuf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut jobs = VecDeque::new();
    let mut seen = 0u64;
    let mut out = Vec::with_capacity(4096);
    loop {
        let Some(job) = jobs.pop_front() else {
            let want = wire::missing_bytes(&inbuf)
                .filter(|&n| n as u64 <= max_frame)
                .unwrap_or(0)
                .max(64 * 1024);
            let start = inbuf.len();
            inbuf.resize(start + want, 0);
            let n = match input.read(&mut inbuf[start..]) {
                Ok(n) => n,
                // A broken pipe is the parent gone: end of file too.
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => 0,
                Err(e) => return Err(e),
            };
            inbuf.truncate(start + n);
            if n == 0 {
                return Ok(());
            }
            parse(&mut inbuf, &mut jobs, &mut seen, max_frame)
                .map_err(|e| io::Error::other(e.to_string()))?;
            continue;
        };
        out.clear();
        out.reserve(job.args.len());
        wire::begin_result(&mut out, job.seq, Status::Ok);
        let started = std::time::Instant::now();
        // SAFETY: the handshake established that parent and worker run the
        // same build, and the parent named both offsets with `FnRef::new`.
        unsafe { func_ref::run_job(job.func, job.trampoline, &job.args, &mut out, max_frame) };
        let nanos = started.elapsed().as_nanos() as u64;
        let next = jobs.front().map_or(0, |j: &JobRef| j.seq);
        wire::finish_result(&mut out, next, seen, nanos);
        output.write_all(&out)?;
    }
}

/// Takes every complete frame out of `inbuf`.
fn parse(
    inbuf: &mut Vec<u8>,
    jobs: &mut VecDeque<JobRef>,
    seen: &mut u64,
    max_frame: u64,
) -> Result<(), FrameError> {
    let mut pos = 0;
    while let Some((body, used)) = wire::split_frame(&inbuf[pos..], max_frame)? {
        let body = &inbuf[pos + body.start..pos + body.end];
        match ToWorker::decode(body)? {
            ToWorker::Job {
                seq,
                func,
                trampoline,
                args,
                ..
            } => {
                *seen = (*seen).max(seq);
                jobs.push_back(JobRef {
                    seq,
                    func,
                    trampoline,
                    args: args.to_vec(),
                });
            }
            ToWorker::Cancel { seq } => jobs.retain(|j| j.seq != seq),
            // Windows workers have no regions: every frame is on the pipe.
            ToWorker::InRegion { .. } => return Err(FrameError::Malformed("no job region")),
        }
        pos += used;
    }
    inbuf.drain(..pos);
    Ok(())
}
