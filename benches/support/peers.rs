//! Peers and workloads shared by the criterion benches and
//! `examples/bench_report.rs` (each includes this file with `#[path]`), so
//! every measurement of a peer is the same code.
// Each includer uses a different subset.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_bytes::ByteBuf;

/// The trivial task: cheap enough that only the round trip is measured.
pub fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

/// Echo task for the bulk-transfer workload.
pub fn echo(bytes: ByteBuf) -> ByteBuf {
    bytes
}

/// Naive Fibonacci, the skewed workload (same as the Python script's).
pub fn fib(n: u32) -> u64 {
    if n < 2 {
        u64::from(n)
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

/// Naive trial division, the uniform workload (same as the Python script's).
pub fn factorize(mut n: u64) -> Vec<u64> {
    let mut factors = Vec::new();
    let mut d = 2;
    while d * d <= n {
        while n % d == 0 {
            factors.push(d);
            n /= d;
        }
        d += 1;
    }
    if n > 1 {
        factors.push(n);
    }
    factors
}

/// A `cat` child with both ends piped: the cheapest possible "other process
/// that answers".
pub struct Cat {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
}

impl Cat {
    pub fn spawn() -> Cat {
        let mut child = Command::new("cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn cat");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        Cat {
            child,
            stdin,
            stdout,
        }
    }

    /// Writes `msg` and reads the same number of bytes back.
    pub fn ping(&mut self, msg: &[u8], buf: &mut [u8]) {
        self.stdin.write_all(msg).expect("write to cat");
        self.stdout.read_exact(buf).expect("read from cat");
    }

    /// Sends `data` through the child and reads it back into `out`; the write
    /// runs on its own thread because the pipes hold far less than 64 MiB.
    pub fn copy(&mut self, data: &[u8], out: &mut [u8]) {
        let stdin = &mut self.stdin;
        let stdout = &mut self.stdout;
        std::thread::scope(|s| {
            s.spawn(|| stdin.write_all(data).expect("write to cat"));
            stdout.read_exact(out).expect("read from cat");
        });
    }
}

impl Drop for Cat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The same ping-pong through `cat`, awaited on a current-thread tokio
/// runtime as a service would: what waiting on tokio's reactor adds to a raw
/// pipe round trip (the async lane's own floor).
pub struct AsyncCat {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::process::ChildStdout,
    rt: tokio::runtime::Runtime,
}

impl AsyncCat {
    pub fn spawn() -> AsyncCat {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let mut child = {
            let _in_runtime = rt.enter();
            tokio::process::Command::new("cat")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn cat")
        };
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        AsyncCat {
            child,
            stdin,
            stdout,
            rt,
        }
    }

    /// Writes `msg` and awaits the same number of bytes back.
    pub fn ping(&mut self, msg: &[u8], buf: &mut [u8]) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (stdin, stdout) = (&mut self.stdin, &mut self.stdout);
        self.rt.block_on(async {
            stdin.write_all(msg).await.expect("write to cat");
            stdout.read_exact(buf).await.expect("read from cat");
        });
    }
}

impl Drop for AsyncCat {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.rt.block_on(self.child.wait());
    }
}

/// A current-thread tokio runtime whose blocking pool has `threads` threads.
pub fn tokio_runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(threads)
        .build()
        .expect("tokio runtime")
}

/// A rayon pool of `threads` threads.
pub fn rayon_pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("rayon pool")
}

/// While alive, pins the calling thread to one CPU, and with it every thread
/// and process started from it meanwhile (pools built in that window keep the
/// pin for life). With everything on one CPU no wake-up has to reach an idle
/// vCPU, which on small VMs costs a random 10 to 300 µs, so a round trip shows
/// its CPU cost alone.
pub struct PinnedToOneCpu {
    #[cfg(target_os = "linux")]
    previous: libc::cpu_set_t,
}

impl PinnedToOneCpu {
    /// `None` where pinning is unsupported or refused.
    #[cfg(target_os = "linux")]
    pub fn new() -> Option<PinnedToOneCpu> {
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: cpu_set_t is plain data (all-zero is the empty set), and
        // each call gets a set of exactly `size` bytes to read or write.
        unsafe {
            let mut previous: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, size, &mut previous) != 0 {
                return None;
            }
            let cpu = (0..libc::CPU_SETSIZE as usize).find(|&c| libc::CPU_ISSET(c, &previous))?;
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut one);
            if libc::sched_setaffinity(0, size, &one) != 0 {
                return None;
            }
            Some(PinnedToOneCpu { previous })
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub fn new() -> Option<PinnedToOneCpu> {
        None
    }
}

#[cfg(target_os = "linux")]
impl Drop for PinnedToOneCpu {
    fn drop(&mut self) {
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: restores the set read in `new`, passed with its true size.
        unsafe { libc::sched_setaffinity(0, size, &self.previous) };
    }
}

/// Tasks in the "many small tasks" workload.
pub const SMALL_TASKS: u64 = 10_000;

/// The "many small tasks" workload on a procpool pool: spawn them all, then
/// await them all.
pub fn many_small_on(pool: &impl procpool::Pool) {
    let tasks: Vec<_> = (0..SMALL_TASKS).map(|i| pool.spawn(square, i)).collect();
    futures::executor::block_on(async {
        for t in tasks {
            std::hint::black_box(t.await.expect("task"));
        }
    });
}

/// The same workload on tokio's blocking pool.
pub fn many_small_spawn_blocking(rt: &tokio::runtime::Runtime) {
    rt.block_on(async {
        let tasks: Vec<_> = (0..SMALL_TASKS)
            .map(|i| tokio::task::spawn_blocking(move || square(i)))
            .collect();
        for t in tasks {
            std::hint::black_box(t.await.expect("task"));
        }
    });
}
