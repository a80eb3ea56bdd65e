//! Error types: [`TaskError`] for one task, [`Error`] for building a pool.

use std::fmt;

/// Why a task did not produce its value.
///
/// Every way a task can fail maps to exactly one variant; none of them is ever
/// raised as a panic in the caller's process.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use procpool::TaskError;
///
/// fn divide((a, b): (i32, i32)) -> i32 { a / b }
/// fn quit(code: i32) { std::process::exit(code) }
///
/// let pool = procpool::ProcessPool::new(1)?;
/// match pool.apply(divide, (1, 0)).await {
///     Err(TaskError::Panicked { message, .. }) => assert!(message.contains("divide by zero")),
///     other => panic!("unexpected: {other:?}"),
/// }
/// match pool.apply(quit, 3).await {
///     Err(e @ TaskError::WorkerDied { .. }) => {
///         assert!(matches!(e, TaskError::WorkerDied { code: Some(3), signal: None, .. }));
///         assert!(e.to_string().ends_with("exited with code 3"));
///     }
///     other => panic!("unexpected: {other:?}"),
/// }
/// assert_eq!(pool.apply(divide, (6, 3)).await, Ok(2)); // the pool keeps serving
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The task's function panicked. The worker (process or thread) survived and
    /// keeps serving other tasks.
    #[error("task panicked{}: {message}", fmt_where(.location, .pid))]
    Panicked {
        /// The panic message (the `&str`/`String` payload, or a placeholder).
        message: String,
        /// `file:line:column` of the panic, when known.
        location: Option<String>,
        /// Pid of the worker process, `None` on a [`ThreadPool`](crate::ThreadPool).
        pid: Option<u32>,
    },
    /// The worker process running the task died (crash, `abort`, `exit`, or a kill
    /// from outside). The pool has already started a replacement.
    #[error("worker process {pid} died while running the task: {}", fmt_exit(.code, .signal))]
    WorkerDied {
        /// Pid of the process that died.
        pid: u32,
        /// Exit code, if it exited.
        code: Option<i32>,
        /// Signal number, if a signal ended it.
        signal: Option<i32>,
    },
    /// The task was cancelled with [`Task::abort`](crate::Task::abort) before it
    /// finished.
    #[error("task was cancelled")]
    Cancelled,
    /// The pool was closed ([`shutdown`](crate::ProcessPool::shutdown) or
    /// [`terminate`](crate::ProcessPool::terminate)) before the task could finish.
    #[error("the pool is closed")]
    PoolClosed,
    /// The argument or the result could not be (de)serialised.
    #[error("could not {stage}: {message}")]
    Serialization {
        /// Which of the four conversions failed.
        stage: CodecStage,
        /// The serializer's message.
        message: String,
    },
    /// A message would exceed the pool's maximum frame size
    /// ([`ProcessPoolBuilder::max_frame_size`](crate::ProcessPoolBuilder::max_frame_size)).
    #[error("{what} of {size} bytes exceeds the maximum frame size of {max} bytes")]
    TooLarge {
        /// `"argument"` or `"result"`.
        what: &'static str,
        /// Its encoded size.
        size: u64,
        /// The configured maximum.
        max: u64,
    },
    /// The worker broke the wire protocol (sent bytes that are not a valid
    /// frame). It was killed and replaced.
    #[error("worker process {pid} broke the protocol: {message}")]
    Protocol {
        /// Pid of the offending worker.
        pid: u32,
        /// What was wrong.
        message: String,
    },
    /// The worker process running the task on another host (see
    /// [`Remote`](crate::Remote)) died: crash, `abort`, `exit`, or a kill
    /// there. The pool has already started a replacement.
    #[error("worker process {pid} on {host} died while running the task: {}", fmt_exit(.code, .signal))]
    RemoteWorkerDied {
        /// The host, as [`Remote::host`](crate::Remote::host) names it.
        host: String,
        /// The worker's pid on that host.
        pid: u32,
        /// Exit code, if it exited.
        code: Option<i32>,
        /// Signal number, if a signal ended it.
        signal: Option<i32>,
    },
    /// The connection to the remote worker running the task broke (the ssh
    /// client died or was killed, the network dropped), so its fate is
    /// unknown; the far worker ends itself when it notices. Only the tasks on
    /// that worker fail; the pool reconnects.
    #[error("lost the connection to the worker on {host} running the task")]
    Disconnected {
        /// The host, as [`Remote::host`](crate::Remote::host) names it.
        host: String,
    },
    /// No worker process could be started to run the task. A launch the
    /// system refused only for a moment was tried again a few times first
    /// (about a third of a second in all).
    #[error("could not start a worker process: {0}")]
    WorkerStart(String),
    /// The function cannot be sent to a worker process (for example it lives in a
    /// dynamically loaded library rather than the main executable).
    #[error("function cannot run in a worker process: {0}")]
    Unsupported(String),
}

/// Which conversion of a [`TaskError::Serialization`] failed.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use procpool::{CodecStage, TaskError};
///
/// /// An even number, checked whenever one is decoded.
/// #[derive(serde::Serialize, serde::Deserialize)]
/// #[serde(try_from = "u32")]
/// struct Even(u32);
///
/// impl TryFrom<u32> for Even {
///     type Error = String;
///     fn try_from(n: u32) -> Result<Even, String> {
///         if n % 2 == 0 { Ok(Even(n)) } else { Err(format!("{n} is odd")) }
///     }
/// }
///
/// fn half(n: Even) -> u32 { n.0 / 2 }
///
/// let pool = procpool::ProcessPool::new(1)?;
/// assert_eq!(pool.apply(half, Even(8)).await?, 4);
/// match pool.apply(half, Even(3)).await {
///     Err(TaskError::Serialization { stage, message }) => {
///         assert_eq!(stage, CodecStage::DecodeArgument); // refused in the worker
///         assert!(message.contains("3 is odd"));
///     }
///     other => panic!("unexpected: {other:?}"),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecStage {
    /// Encoding the argument in the caller.
    EncodeArgument,
    /// Decoding the argument in the worker.
    DecodeArgument,
    /// Encoding the result in the worker.
    EncodeResult,
    /// Decoding the result in the caller.
    DecodeResult,
}

impl fmt::Display for CodecStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CodecStage::EncodeArgument => "encode the argument",
            CodecStage::DecodeArgument => "decode the argument in the worker",
            CodecStage::EncodeResult => "encode the result in the worker",
            CodecStage::DecodeResult => "decode the result",
        })
    }
}

fn fmt_where(location: &Option<String>, pid: &Option<u32>) -> String {
    let mut s = String::new();
    if let Some(l) = location {
        s.push_str(" at ");
        s.push_str(l);
    }
    if let Some(p) = pid {
        s.push_str(&format!(" in worker process {p}"));
    }
    s
}

fn fmt_exit(code: &Option<i32>, signal: &Option<i32>) -> String {
    match (code, signal) {
        (_, Some(sig)) => format!("killed by signal {sig} ({})", signal_name(*sig)),
        (Some(c), None) => format!("exited with code {c}{}", status_name(*c)),
        (None, None) => "unknown exit status".to_string(),
    }
}

/// On Windows a process killed by an exception exits with its NTSTATUS code
/// (say 0xC0000005 for an access violation): named here, as signals are.
#[cfg(windows)]
fn status_name(code: i32) -> String {
    let name = match code as u32 {
        0xC000_0005 => "STATUS_ACCESS_VIOLATION",
        0xC000_001D => "STATUS_ILLEGAL_INSTRUCTION",
        0xC000_0094 => "STATUS_INTEGER_DIVIDE_BY_ZERO",
        0xC000_00FD => "STATUS_STACK_OVERFLOW",
        0xC000_0409 => "STATUS_STACK_BUFFER_OVERRUN (abort)",
        0xC000_013A => "STATUS_CONTROL_C_EXIT",
        0xC000_0017 => "STATUS_NO_MEMORY",
        c if c >= 0xC000_0000 => "an NTSTATUS error",
        _ => return String::new(),
    };
    format!(" ({:#010X}, {name})", code as u32)
}

#[cfg(not(windows))]
fn status_name(_code: i32) -> &'static str {
    ""
}

#[cfg(not(unix))]
fn signal_name(_sig: i32) -> &'static str {
    "signal"
}

#[cfg(unix)]
fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGABRT => "SIGABRT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGKILL => "SIGKILL",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGPIPE => "SIGPIPE",
        _ => "signal",
    }
}

/// Why [`try_spawn`](crate::ProcessPool::try_spawn) did not queue a task.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use procpool::TrySpawnError;
///
/// fn id(x: u8) -> u8 { x }
///
/// let pool = procpool::ThreadPool::builder().workers(1).max_queue(10).build()?;
/// let task = pool.try_spawn(id, 1)?;
/// assert_eq!(futures::executor::block_on(task)?, 1);
///
/// pool.terminate();
/// match pool.try_spawn(id, 2) {
///     Err(TrySpawnError::Closed) => {}                      // shutting down: stop submitting
///     Err(TrySpawnError::Full) => panic!("shed load, retry later"),
///     Ok(_) => panic!("a terminated pool takes no work"),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TrySpawnError {
    /// The queue holds `max_queue` tasks already; try again later, or use
    /// `spawn_async` to wait for room.
    #[error("the pool's queue is full")]
    Full,
    /// The pool was shut down or terminated.
    #[error("the pool is closed")]
    Closed,
}

/// Failure to build or start a pool.
///
/// ```
/// fn init(_: ()) { panic!("no model file") }
///
/// match procpool::ProcessPool::builder().workers(1).initializer(init, ()).build() {
///     Err(procpool::Error::Initializer { message, .. }) => assert!(message.contains("no model file")),
///     other => panic!("unexpected: {other:?}"),
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// This process is itself a procpool worker. Creating a process pool here
    /// would fork-bomb the machine, so it is refused.
    #[error("cannot create a ProcessPool inside a procpool worker process")]
    InsideWorker,
    /// A worker process could not be started.
    #[error("could not start a worker process: {0}")]
    Spawn(#[source] std::io::Error),
    /// A worker started but failed its handshake (it crashed, timed out, or spoke
    /// garbage).
    #[error("worker process {pid} failed its handshake: {message}")]
    Handshake {
        /// Pid of the worker.
        pid: u32,
        /// What went wrong.
        message: String,
    },
    /// The worker is a different build of the program than the parent, so
    /// functions cannot be named across the two.
    #[error("worker process {pid} refused work: {message}")]
    BuildMismatch {
        /// Pid of the worker.
        pid: u32,
        /// The worker's explanation (both build identities).
        message: String,
    },
    /// The pool's initializer failed (returned an error or panicked) in a new
    /// worker.
    #[error("the initializer failed in worker process {pid}: {message}")]
    Initializer {
        /// Pid of the worker.
        pid: u32,
        /// The initializer's error or panic message.
        message: String,
    },
    /// A [`Remote`](crate::Remote) host could not be prepared or its worker
    /// could not start there: ssh failed, the executable could not be copied,
    /// or it cannot run there (another architecture or C library).
    #[error("remote host {host}: {message}")]
    Remote {
        /// The host, as [`Remote::host`](crate::Remote::host) names it.
        host: String,
        /// What went wrong, with the far side's messages.
        message: String,
    },
    /// A thread could not be started.
    #[error("could not start a thread: {0}")]
    Thread(#[source] std::io::Error),
    /// Any other I/O failure while setting up.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
