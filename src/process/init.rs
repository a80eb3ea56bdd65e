//! Worker initializers: a function run once in each new worker process before
//! its first task (Python's `initializer=` / `initargs=`).

use std::fmt::Display;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::func_ref::{self, FnRef};
use crate::wire::FromWorker;
use crate::Error;

/// What the initializer's answer frame (`body`) from worker `pid` says: `Ok`
/// when it ran, else the error `build` (or the replacement's start) reports.
pub(crate) fn outcome(body: &[u8], pid: u32) -> Result<(), Error> {
    let failed = |message: String| Error::Initializer { pid, message };
    match FromWorker::decode(body) {
        Ok(FromWorker::Result {
            status, payload, ..
        }) => match super::job::decode::<Result<(), String>>(status, payload, pid) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(failed(message)),
            Err(e) => Err(failed(e.to_string())),
        },
        Ok(_) => Err(Error::Handshake {
            pid,
            message: "unexpected message instead of the initializer's result".into(),
        }),
        Err(e) => Err(Error::Handshake {
            pid,
            message: e.to_string(),
        }),
    }
}

/// An initializer ready to send: the job that runs it and its argument.
#[derive(Debug, Clone)]
pub(crate) struct InitJob {
    pub(crate) fn_ref: FnRef,
    pub(crate) args: Vec<u8>,
}

impl InitJob {
    /// For `fn(A)`: a panic is a failure.
    pub(crate) fn new<A>(f: fn(A), args: A) -> Result<InitJob, String>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
    {
        Self::build(run_init::<A>, f as usize, args)
    }

    /// For `fn(A) -> Result<(), E>`: an `Err` or a panic is a failure.
    pub(crate) fn new_fallible<A, E>(f: fn(A) -> Result<(), E>, args: A) -> Result<InitJob, String>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        E: Display + 'static,
    {
        Self::build(run_try_init::<A, E>, f as usize, args)
    }

    fn build<A: Serialize + DeserializeOwned>(
        runner: fn((u64, A)) -> Result<(), String>,
        func: usize,
        args: A,
    ) -> Result<InitJob, String> {
        let func = func_ref::offset_of(func)?;
        let fn_ref = FnRef::new(runner)?;
        let args = rmp_serde::to_vec(&(func, args))
            .map_err(|e| format!("could not encode the initializer's argument: {e}"))?;
        Ok(InitJob { fn_ref, args })
    }
}

fn run_init<A>((func, args): (u64, A)) -> Result<(), String> {
    // SAFETY: `func` was named by `InitJob::new::<A>` from a `fn(A)` of this
    // same build (checked by the handshake), paired with this instantiation.
    let f = unsafe { std::mem::transmute::<usize, fn(A)>(func_ref::to_address(func)) };
    f(args);
    Ok(())
}

fn run_try_init<A, E: Display>((func, args): (u64, A)) -> Result<(), String> {
    // SAFETY: as in `run_init`, for a `fn(A) -> Result<(), E>` named by
    // `InitJob::new_fallible::<A, E>`.
    let f =
        unsafe { std::mem::transmute::<usize, fn(A) -> Result<(), E>>(func_ref::to_address(func)) };
    f(args).map_err(|e| e.to_string())
}
