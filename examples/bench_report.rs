//! Prints one markdown table comparing procpool with its peers, all measured
//! in this run on this machine, and a second one with Python's map figures.
//!
//! ```text
//! cargo run --release --example bench_report            # two to three minutes
//! cargo run --release --example bench_report -- --quick # smoke test, well under a minute
//! ```
//!
//! Peers are measured interleaved (every repetition runs each peer once, in
//! rotating order) and each figure is the median over the repetitions: on
//! small VMs a wake-up that has to reach an idle vCPU costs a random 10 to
//! 300 µs, so only ratios taken in the same run mean much. The round trip is
//! measured twice, free-running and with everything pinned to one CPU (which
//! leaves the CPU cost alone and is far steadier). Python's pools are measured
//! by `scripts/python_peers.py`, run as a child process after the Rust peers
//! (skipped, with a note, when `python3` is missing). The header says how much
//! CPU other processes took during the run; above 10% the figures are suspect.
//!
//! procspawn re-executes this binary and needs `procspawn::init()` first thing
//! in `main`; procpool needs no setup call.

use std::collections::HashMap;
use std::hint::black_box;
use std::io::{Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_bytes::ByteBuf;

/// Path of the Python peers script.
const PYTHON_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/python_peers.py");
/// Number of tasks in the "many small tasks" workload.
const SMALL_TASKS: u64 = 10_000;

/// The trivial task: cheap enough that only the round trip is measured.
fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

/// Echo task for the bulk-transfer workload.
fn echo(bytes: ByteBuf) -> ByteBuf {
    bytes
}

/// Naive Fibonacci, the skewed workload (same as the Python script's).
fn fib(n: u32) -> u64 {
    if n < 2 {
        u64::from(n)
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

/// Naive trial division, the uniform workload (same as the Python script's).
fn factorize(mut n: u64) -> Vec<u64> {
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

/// Sizes and repetition counts of one run.
struct Config {
    quick: bool,
    /// Time each peer's batch should take in the round-trip measurement.
    batch_target: Duration,
    /// Repetitions of the fast workloads (round trip, many small tasks).
    reps: usize,
    /// Repetitions of the slow ones (bulk transfer, pool start).
    slow_reps: usize,
    /// Payload of the bulk transfer.
    big_bytes: usize,
    /// Largest n of the fib workload (fib(n) down to fib(1)).
    fib_top: u32,
    /// How many numbers the factorisation workload factorises.
    factor_count: u64,
}

impl Config {
    fn new(quick: bool) -> Config {
        if quick {
            Config {
                quick,
                batch_target: Duration::from_millis(5),
                reps: 5,
                slow_reps: 3,
                big_bytes: 16 << 20,
                fib_top: 30,
                factor_count: 2_000,
            }
        } else {
            Config {
                quick,
                batch_target: Duration::from_millis(20),
                reps: 21,
                slow_reps: 9,
                big_bytes: 64 << 20,
                fib_top: 38,
                factor_count: 20_000,
            }
        }
    }
}

/// A contender: runs `n` operations and returns how long they took (it may
/// leave per-operation setup, such as cloning an argument, out of the time).
type Run<'a> = Box<dyn FnMut(u64) -> Duration + 'a>;

/// Times `n` calls of `op`.
fn time_n(n: u64, mut op: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        op();
    }
    start.elapsed()
}

/// Seconds per operation of each peer: the median over `reps` interleaved
/// repetitions. Each peer's batch is first doubled until it takes at least
/// `target` (which also warms the peer up).
fn measure(peers: &mut [Run<'_>], target: Duration, reps: usize) -> Vec<f64> {
    let batches: Vec<u64> = (peers.iter_mut())
        .map(|run| {
            let mut n = 1;
            while run(n) < target && n < 1 << 20 {
                n *= 2;
            }
            n
        })
        .collect();
    let mut samples = vec![Vec::with_capacity(reps); peers.len()];
    for rep in 0..reps {
        for k in 0..peers.len() {
            let i = (rep + k) % peers.len();
            let elapsed = peers[i](batches[i]);
            samples[i].push(elapsed.as_secs_f64() / batches[i] as f64);
        }
    }
    samples.into_iter().map(median).collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// A `cat` child with both ends piped: the cheapest possible "other process
/// that answers", i.e. the floor for any process pool.
struct Cat {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
}

impl Cat {
    fn spawn() -> Cat {
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
    fn ping(&mut self, msg: &[u8], buf: &mut [u8]) {
        self.stdin.write_all(msg).expect("write to cat");
        self.stdout.read_exact(buf).expect("read from cat");
    }

    /// Sends `data` through the child and reads it back into `out`; the write
    /// runs on its own thread because a pipe holds far less than the payload.
    fn copy(&mut self, data: &[u8], out: &mut [u8]) {
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

/// A current-thread tokio runtime whose blocking pool has `threads` threads.
fn tokio_runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(threads)
        .build()
        .expect("tokio runtime")
}

/// A rayon pool of `threads` threads.
fn rayon_pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("rayon pool")
}

/// One line of the comparison table.
struct Row {
    workload: String,
    ours: (String, f64),
    peer: (String, f64),
    show: Show,
}

/// How a row's figures (seconds) are shown.
#[derive(Clone, Copy)]
enum Show {
    Time,
    /// Time and throughput of a round trip carrying this many payload bytes.
    Throughput(usize),
}

impl Show {
    fn cell(self, secs: f64) -> String {
        match self {
            Show::Time => fmt_time(secs),
            Show::Throughput(bytes) => {
                format!("{} ({:.2} GB/s)", fmt_time(secs), bytes as f64 / secs / 1e9)
            }
        }
    }
}

/// Formats seconds with a fitting unit and three significant digits.
fn fmt_time(secs: f64) -> String {
    let (value, unit) = if secs < 1e-6 {
        (secs * 1e9, "ns")
    } else if secs < 1e-3 {
        (secs * 1e6, "µs")
    } else if secs < 1.0 {
        (secs * 1e3, "ms")
    } else {
        (secs, "s")
    };
    let digits = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    format!("{value:.digits$} {unit}")
}

/// While alive, pins the calling thread to one CPU, and with it every thread
/// and process started from it meanwhile (pools built in that window keep the
/// pin for life). With everything on one CPU no wake-up has to reach an idle
/// vCPU, which on small VMs costs a random 10 to 300 µs, so a round trip shows
/// its CPU cost alone.
struct PinnedToOneCpu {
    #[cfg(target_os = "linux")]
    previous: libc::cpu_set_t,
}

impl PinnedToOneCpu {
    /// `None` where pinning is unsupported or refused.
    #[cfg(target_os = "linux")]
    fn new() -> Option<PinnedToOneCpu> {
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
    fn new() -> Option<PinnedToOneCpu> {
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

/// Figures measured for the apply round trip (seconds per call).
struct RoundTrip {
    raw_pipe: f64,
    process: f64,
    thread: f64,
    spawn_blocking: f64,
    rayon: f64,
    procspawn: f64,
}

/// Untimed calls on a fresh peer before its batch is timed.
const WARM_CALLS: u64 = 20;

/// A peer built anew for every batch: `make`, `WARM_CALLS` calls of `op` and
/// `finish` are untimed; only the batch of `op` calls is. On small VMs a round
/// trip costs 10 or 100 µs depending on where the scheduler put the pool's
/// threads, and that placement sticks for the pool's life, so fresh pools let
/// the repetitions sample it rather than all inherit one draw.
fn fresh<'a, P: 'a>(
    make: impl Fn() -> P + 'a,
    op: impl Fn(&mut P) + 'a,
    finish: impl Fn(P) + 'a,
) -> Run<'a> {
    Box::new(move |n| {
        let mut peer = make();
        for _ in 0..WARM_CALLS {
            op(&mut peer);
        }
        let elapsed = time_n(n, || op(&mut peer));
        finish(peer);
        elapsed
    })
}

/// The apply round trip of every peer; `pinned`: all of them on one CPU
/// (`None` if pinning is unavailable).
fn round_trip(cfg: &Config, pinned: bool) -> Option<RoundTrip> {
    let _pin = if pinned {
        eprintln!("measuring: apply round trip, pinned to one CPU");
        Some(PinnedToOneCpu::new()?)
    } else {
        eprintln!("measuring: apply round trip");
        None
    };
    let mut peers: Vec<Run<'_>> = vec![
        fresh(Cat::spawn, |cat| cat.ping(&[7; 16], &mut [0; 16]), drop),
        fresh(
            || procpool::ProcessPool::new(1).expect("process pool"),
            |pool| {
                black_box(pool.apply_blocking(square, black_box(3)).expect("task"));
            },
            |pool| pool.terminate(),
        ),
        fresh(
            || procpool::ThreadPool::new(1).expect("thread pool"),
            |pool| {
                black_box(pool.apply_blocking(square, black_box(3)).expect("task"));
            },
            drop,
        ),
        fresh(
            || tokio_runtime(1),
            |rt| {
                let task = async { tokio::task::spawn_blocking(|| square(black_box(3))).await };
                black_box(rt.block_on(task).expect("task"));
            },
            drop,
        ),
        fresh(
            || (rayon_pool(1), mpsc::channel()),
            |(pool, (tx, rx))| {
                let tx = tx.clone();
                pool.spawn(move || tx.send(square(black_box(3))).expect("send"));
                black_box(rx.recv().expect("recv"));
            },
            drop,
        ),
        fresh(
            || procspawn::Pool::new(1).expect("procspawn pool"),
            |pool| {
                let handle = pool.spawn(black_box(3u64), square);
                black_box(handle.join().expect("task"));
            },
            |pool| pool.kill(),
        ),
    ];
    let t = measure(&mut peers, cfg.batch_target, cfg.reps);
    Some(RoundTrip {
        raw_pipe: t[0],
        process: t[1],
        thread: t[2],
        spawn_blocking: t[3],
        rayon: t[4],
        procspawn: t[5],
    })
}

/// Figures measured for 10,000 small tasks (seconds per task).
struct ManySmall {
    process: f64,
    thread: f64,
    spawn_blocking: f64,
    rayon: f64,
}

fn many_small(cfg: &Config) -> ManySmall {
    eprintln!("measuring: {SMALL_TASKS} small tasks");
    let process = procpool::ProcessPool::new(2).expect("process pool");
    let thread = procpool::ThreadPool::new(2).expect("thread pool");
    let rt = tokio_runtime(2);
    let rayon = rayon_pool(2);

    let mut peers: Vec<Run<'_>> = vec![
        Box::new(|n| {
            time_n(n, || {
                let tasks: Vec<_> = (0..SMALL_TASKS).map(|i| process.spawn(square, i)).collect();
                futures::executor::block_on(async {
                    for t in tasks {
                        black_box(t.await.expect("task"));
                    }
                });
            })
        }),
        Box::new(|n| {
            time_n(n, || {
                let tasks: Vec<_> = (0..SMALL_TASKS).map(|i| thread.spawn(square, i)).collect();
                futures::executor::block_on(async {
                    for t in tasks {
                        black_box(t.await.expect("task"));
                    }
                });
            })
        }),
        Box::new(|n| {
            time_n(n, || {
                rt.block_on(async {
                    let tasks: Vec<_> = (0..SMALL_TASKS)
                        .map(|i| tokio::task::spawn_blocking(move || square(i)))
                        .collect();
                    for t in tasks {
                        black_box(t.await.expect("task"));
                    }
                });
            })
        }),
        Box::new(|n| {
            time_n(n, || {
                let (tx, rx) = mpsc::channel();
                for i in 0..SMALL_TASKS {
                    let tx = tx.clone();
                    rayon.spawn(move || tx.send(square(i)).expect("send"));
                }
                for _ in 0..SMALL_TASKS {
                    black_box(rx.recv().expect("recv"));
                }
            })
        }),
    ];
    let t = measure(&mut peers, cfg.batch_target, cfg.reps);
    drop(peers);
    process.terminate();
    thread.terminate();
    let per_task = |secs: f64| secs / SMALL_TASKS as f64;
    ManySmall {
        process: per_task(t[0]),
        thread: per_task(t[1]),
        spawn_blocking: per_task(t[2]),
        rayon: per_task(t[3]),
    }
}

/// Seconds for one bulk round trip: (raw pipe, ProcessPool).
fn bulk(cfg: &Config) -> (f64, f64) {
    eprintln!("measuring: {} MiB round trip", cfg.big_bytes >> 20);
    let data: Vec<u8> = (0..cfg.big_bytes).map(|i| i as u8).collect();
    let mut cat = Cat::spawn();
    let mut out = vec![0u8; cfg.big_bytes];
    let process = procpool::ProcessPool::new(1).expect("process pool");
    let payload = ByteBuf::from(data.clone());

    let mut peers: Vec<Run<'_>> = vec![
        Box::new(|n| time_n(n, || cat.copy(&data, &mut out))),
        Box::new(|n| {
            // The argument is moved into the task: copy it outside the timing.
            let mut total = Duration::ZERO;
            for _ in 0..n {
                let arg = payload.clone();
                let start = Instant::now();
                let back = process.apply_blocking(echo, arg).expect("task");
                total += start.elapsed();
                assert_eq!(back.len(), payload.len());
            }
            total
        }),
    ];
    let t = measure(&mut peers, Duration::ZERO, cfg.slow_reps);
    drop(peers);
    assert_eq!(out, data, "cat must echo the bytes unchanged");
    process.terminate();
    (t[0], t[1])
}

/// Seconds to start a 2-worker pool and finish its first task: (ProcessPool,
/// procspawn).
fn pool_start(cfg: &Config) -> (f64, f64) {
    eprintln!("measuring: pool start");
    let mut peers: Vec<Run<'_>> = vec![
        Box::new(|n| {
            time_n(n, || {
                let pool = procpool::ProcessPool::new(2).expect("process pool");
                black_box(pool.apply_blocking(square, 3).expect("task"));
                pool.terminate();
            })
        }),
        Box::new(|n| {
            time_n(n, || {
                let pool = procspawn::Pool::new(2).expect("procspawn pool");
                black_box(pool.spawn(3u64, square).join().expect("task"));
                pool.kill();
            })
        }),
    ];
    let t = measure(&mut peers, Duration::ZERO, cfg.slow_reps);
    (t[0], t[1])
}

/// Rust serial reference times for the map workloads, on the sizes the Python
/// run used (so both sides did the same work).
struct Serial {
    fib_top: u32,
    fib_secs: f64,
    factor_start: u64,
    factor_count: u64,
    factor_secs: f64,
    /// Total number of prime factors found, to cross-check with Python.
    factors: usize,
}

impl Serial {
    fn measure(cfg: &Config, py: Option<&Python>) -> Serial {
        eprintln!("measuring: Rust serial references");
        let size =
            |key: &str, default: u64| py.and_then(|p| p.num(key)).map_or(default, |v| v as u64);
        let fib_top = size("fib_top", cfg.fib_top.into()) as u32;
        let factor_start = size("factor_start", 10_000_000);
        let factor_count = size("factor_count", cfg.factor_count);

        let start = Instant::now();
        black_box((1..=fib_top).rev().map(|n| fib(black_box(n))).sum::<u64>());
        let fib_secs = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let factors = (factor_start..factor_start + factor_count)
            .map(|n| factorize(black_box(n)).len())
            .sum();
        Serial {
            fib_top,
            fib_secs,
            factor_start,
            factor_count,
            factor_secs: start.elapsed().as_secs_f64(),
            factors,
        }
    }
}

/// The Python script's output: a flat JSON object. Values are kept as their
/// text (strings unquoted); numbers are parsed on demand.
struct Python(HashMap<String, String>);

impl Python {
    /// Runs the script; `Err` explains why there are no Python figures.
    fn run(quick: bool) -> Result<Python, String> {
        eprintln!("measuring: Python peers ({PYTHON_SCRIPT})");
        let mut cmd = Command::new("python3");
        cmd.arg(PYTHON_SCRIPT).stderr(Stdio::inherit());
        if quick {
            cmd.arg("--quick");
        }
        let out = match cmd.output() {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err("python3 not found: Python peers skipped".into())
            }
            Err(e) => return Err(format!("could not run python3: {e}")),
        };
        if !out.status.success() {
            return Err(format!("python_peers.py failed ({})", out.status));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        parse_flat_json(text.trim())
            .map(Python)
            .ok_or_else(|| "python_peers.py printed no readable JSON".into())
    }

    fn num(&self, key: &str) -> Option<f64> {
        self.0.get(key)?.parse().ok()
    }

    fn text(&self, key: &str) -> &str {
        self.0.get(key).map_or("?", String::as_str)
    }
}

/// Parses `{"key": scalar, ...}` (no nesting), enough for the Python script.
fn parse_flat_json(s: &str) -> Option<HashMap<String, String>> {
    fn string(it: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<String> {
        let mut out = String::new();
        loop {
            match it.next()? {
                '"' => return Some(out),
                '\\' => match it.next()? {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'u' => {
                        let hex: String = it.by_ref().take(4).collect();
                        out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                    }
                    c => out.push(c),
                },
                c => out.push(c),
            }
        }
    }
    let mut map = HashMap::new();
    let mut it = s.strip_prefix('{')?.chars().peekable();
    loop {
        while it.next_if(|c| c.is_whitespace() || *c == ',').is_some() {}
        match it.next()? {
            '}' => return Some(map),
            '"' => {}
            _ => return None,
        }
        let key = string(&mut it)?;
        while it.next_if(|c| c.is_whitespace() || *c == ':').is_some() {}
        let value = if it.next_if_eq(&'"').is_some() {
            string(&mut it)?
        } else {
            let mut raw = String::new();
            while let Some(c) = it.next_if(|c| *c != ',' && *c != '}') {
                raw.push(c);
            }
            raw.trim().to_string()
        };
        map.insert(key, value);
    }
}

/// Today's date and time in UTC, from the system clock.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m) = (rem / 3_600, rem % 3_600 / 60);
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02} UTC")
}

/// CPU model name from /proc/cpuinfo.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn print_table(rows: &[Row]) {
    println!("| Workload | procpool | Peer | procpool / peer |");
    println!("|---|---|---|---:|");
    for r in rows {
        println!(
            "| {} | {} {} | {} {} | {:.2}× |",
            r.workload,
            r.ours.0,
            r.show.cell(r.ours.1),
            r.peer.0,
            r.show.cell(r.peer.1),
            r.ours.1 / r.peer.1,
        );
    }
}

/// Everything the Rust side measured.
struct Measured {
    round_trip: RoundTrip,
    /// The round trip with everything on one CPU, if pinning worked.
    pinned: Option<RoundTrip>,
    small: ManySmall,
    /// Bulk round trip: (raw pipe, ProcessPool) seconds, and the payload size.
    bulk: (f64, f64, usize),
    /// Pool start: (ProcessPool, procspawn) seconds.
    start: (f64, f64),
}

/// Collects the rows of the comparison table.
struct Rows<'a> {
    rows: Vec<Row>,
    py: Option<&'a Python>,
}

impl Rows<'_> {
    /// A row comparing `ours` with `peer` (name, seconds).
    fn add(&mut self, workload: &str, ours: (&str, f64), peer: (&str, f64)) {
        self.rows.push(Row {
            workload: workload.to_string(),
            ours: (ours.0.to_string(), ours.1),
            peer: (peer.0.to_string(), peer.1),
            show: Show::Time,
        });
    }

    /// One row per Python figure (`(label, key)`, in `unit` seconds) found.
    fn add_python(&mut self, workload: &str, ours: (&str, f64), unit: f64, peers: &[(&str, &str)]) {
        for (label, key) in peers {
            if let Some(v) = self.py.and_then(|p| p.num(key)) {
                self.add(workload, ours, (label, v * unit));
            }
        }
    }

    /// The rows of one round-trip measurement; `prefix` selects the matching
    /// Python figures.
    fn add_round_trip(&mut self, w: &str, rt: &RoundTrip, prefix: &str) {
        let (pp, tp) = (("ProcessPool", rt.process), ("ThreadPool", rt.thread));
        self.add(w, pp, ("raw pipe (`cat`)", rt.raw_pipe));
        self.add(w, pp, ("procspawn Pool", rt.procspawn));
        self.add(w, pp, tp);
        self.add(w, tp, ("tokio spawn_blocking", rt.spawn_blocking));
        self.add(w, tp, ("rayon spawn + channel", rt.rayon));
        let keys = [
            format!("{prefix}pool_apply_us"),
            format!("{prefix}pool_apply_async_us"),
            format!("{prefix}executor_submit_us"),
        ];
        self.add_python(
            w,
            pp,
            1e-6,
            &[
                ("Python Pool.apply", &keys[0]),
                ("Python apply_async().get()", &keys[1]),
                ("Python Executor submit().result()", &keys[2]),
            ],
        );
    }
}

/// The rows of the comparison table.
fn comparison_rows(m: &Measured, py: Option<&Python>) -> Vec<Row> {
    let mut rows = Rows {
        rows: Vec::new(),
        py,
    };
    rows.add_round_trip("apply round trip", &m.round_trip, "");
    if let Some(rt) = &m.pinned {
        rows.add_round_trip("apply round trip, one CPU", rt, "pinned_");
    }

    let w = &format!("{SMALL_TASKS} small tasks, per task");
    let s = &m.small;
    let (pp, tp) = (("ProcessPool", s.process), ("ThreadPool", s.thread));
    rows.add(w, pp, tp);
    rows.add(w, tp, ("tokio spawn_blocking", s.spawn_blocking));
    rows.add(w, tp, ("rayon spawn + channel", s.rayon));
    rows.add_python(
        w,
        pp,
        1e-6,
        &[
            ("Python apply_async ×N, get", "pool_apply_async_10k_us"),
            (
                "Python Executor submit ×N, result",
                "executor_submit_10k_us",
            ),
            ("Python Executor.map", "executor_map_10k_us"),
        ],
    );

    let (pipe, process, bytes) = m.bulk;
    rows.rows.push(Row {
        workload: format!("{} MiB `ByteBuf` round trip", bytes >> 20),
        ours: ("ProcessPool".into(), process),
        peer: ("raw pipe (`cat`)".into(), pipe),
        show: Show::Throughput(bytes),
    });

    let w = "pool start (2 workers + first task)";
    let pp = ("ProcessPool", m.start.0);
    rows.add(w, pp, ("procspawn Pool", m.start.1));
    rows.add_python(
        w,
        pp,
        1e-3,
        &[
            ("Python Pool (fork)", "pool_start_ms"),
            ("Python Pool (spawn)", "pool_start_spawn_ms"),
            ("Python ProcessPoolExecutor (fork)", "executor_start_ms"),
        ],
    );
    rows.rows
}

/// CPU time counters, to tell how much of the machine other processes (or
/// the hypervisor) took while this report ran.
#[derive(Clone, Copy)]
struct CpuClock {
    at: Instant,
    /// Busy and stolen seconds of all CPUs, from /proc/stat.
    busy: f64,
    steal: f64,
    /// CPU seconds of this process and its reaped descendants.
    ours: f64,
}

impl CpuClock {
    #[cfg(target_os = "linux")]
    fn now() -> Option<CpuClock> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let ticks: Vec<f64> = (stat.lines().next()?.split_whitespace().skip(1))
            .map(|v| v.parse().unwrap_or(0.0))
            .collect();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let field = |i: usize| ticks.get(i).copied().unwrap_or(0.0) / hz;
        // user, nice, system, (idle, iowait,) irq, softirq; guest time is in user.
        let busy = field(0) + field(1) + field(2) + field(5) + field(6);
        let mut ours = 0.0;
        for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
            // SAFETY: getrusage fills the zeroed plain-data struct it is given.
            let usage = unsafe {
                let mut usage: libc::rusage = std::mem::zeroed();
                libc::getrusage(who, &mut usage);
                usage
            };
            for t in [usage.ru_utime, usage.ru_stime] {
                ours += t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
            }
        }
        Some(CpuClock {
            at: Instant::now(),
            busy,
            steal: field(7),
            ours,
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn now() -> Option<CpuClock> {
        None
    }

    /// Shares of the machine's CPU capacity since `self` taken by other
    /// processes and by the hypervisor (steal).
    fn others_since(&self, nproc: usize) -> Option<(f64, f64)> {
        let now = CpuClock::now()?;
        let capacity = now.at.duration_since(self.at).as_secs_f64() * nproc as f64;
        let others = (now.busy - self.busy) - (now.ours - self.ours);
        Some((
            (others / capacity).max(0.0),
            (now.steal - self.steal) / capacity,
        ))
    }
}

/// Header lines: the machine, and how much of it other work took since
/// `began`.
fn print_header(cfg: &Config, python: &Result<Python, String>, began: Option<CpuClock>) {
    println!("# procpool vs peers\n");
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("- date: {}", utc_now());
    println!("- cpu: {} ({nproc} logical cores)", cpu_model());
    println!("- kernel: Linux {}", kernel.trim());
    if let Some((others, steal)) = began.and_then(|c| c.others_since(nproc)) {
        println!(
            "- CPU taken by other processes during the run: {:.0}%, stolen by the hypervisor: {:.0}%",
            others * 100.0,
            steal * 100.0
        );
        if others + steal > 0.1 {
            println!("- **warning**: the machine was busy with other work; figures are inflated");
        }
    }
    match python {
        Ok(p) => println!(
            "- python: {} {} (start method `{}`, {} workers)",
            p.text("implementation"),
            p.text("python"),
            p.text("start_method"),
            p.text("workers"),
        ),
        Err(why) => println!("- python: {why}"),
    }
    if cfg!(debug_assertions) {
        println!("- **debug build**: run with `--release` for meaningful figures");
    }
    if cfg.quick {
        println!("- `--quick`: smaller workloads and fewer repetitions; figures are rough");
    }
    println!();
}

/// The second table: Python's map figures, with Rust serial times for scale.
fn print_python_maps(py: &Python, serial: &Serial) {
    println!("\n## Python map baselines\n");
    println!(
        "procpool figures follow once `pool.map` exists; the Rust serial times show \
         how much of each figure is the work itself.\n"
    );
    println!("| Workload | Python | Time | Rust serial (reference) |");
    println!("|---|---|---:|---:|");
    let items = py.text("map_items");
    let fibs = format!("fib(n), n = {} down to 1 (skewed)", serial.fib_top);
    let factor = format!(
        "factorise {} numbers from {} (uniform)",
        serial.factor_count, serial.factor_start
    );
    let (fib_s, factor_s) = (Some(serial.fib_secs), Some(serial.factor_secs));
    let lines = [
        (
            format!("x*x over {items} items"),
            "Pool.map, default chunksize",
            "pool_map_1m_s",
            None,
        ),
        (
            fibs.clone(),
            "Pool.map, default chunksize",
            "fib_pool_map_s",
            fib_s,
        ),
        (
            fibs.clone(),
            "Pool.map, chunksize=1",
            "fib_pool_map_chunksize1_s",
            fib_s,
        ),
        (fibs, "ProcessPoolExecutor.map", "fib_executor_map_s", fib_s),
        (
            factor.clone(),
            "Pool.map, default chunksize",
            "factor_pool_map_s",
            factor_s,
        ),
        (factor, "serial loop", "factor_serial_s", factor_s),
    ];
    for (workload, how, key, rust) in lines {
        if let Some(secs) = py.num(key) {
            let rust = rust.map_or_else(|| "–".to_string(), fmt_time);
            println!("| {workload} | {how} | {} | {rust} |", fmt_time(secs));
        }
    }
    if let (Some(pool), Some(alone)) = (py.num("factor_pool_map_s"), py.num("factor_serial_s")) {
        println!(
            "\nPython's factorisation speedup on 2 workers over its serial loop: {:.2}×.",
            alone / pool
        );
    }
    if py.num("factor_total_factors") != Some(serial.factors as f64) {
        println!("\n**warning**: the Rust and Python factorisations disagree.");
    }
}

/// What the table's figures are, and a gauge of the Python run's conditions.
fn print_notes(m: &Measured, py: Option<&Python>) {
    println!(
        "\nMedians of interleaved repetitions; procpool / peer < 1 means procpool is faster. \
         \"One CPU\" rows pin this process, its pools and Python's to a single CPU: no \
         wake-up has to cross CPUs, so they show a round trip's CPU cost and vary far less \
         between runs. The Rust round-trip pools have 1 worker (thread) and are built afresh \
         for every repetition; the {SMALL_TASKS}-task pools have 2 workers, as do all of \
         Python's pools."
    );
    if let Some(py) = py {
        let py_us = |key: &str| {
            py.num(key)
                .map_or_else(|| "n/a".into(), |v| fmt_time(v * 1e-6))
        };
        let pinned = (m.pinned.as_ref()).map_or_else(|| "n/a".into(), |rt| fmt_time(rt.raw_pipe));
        println!(
            "\nPython's figures come from a separate run of `scripts/python_peers.py` right \
             after. Its raw pipe round trip took {} ({} on one CPU), against {} ({}) here: \
             the closer these agree, the more the Python ratios can be trusted.",
            py_us("raw_pipe_us"),
            py_us("pinned_raw_pipe_us"),
            fmt_time(m.round_trip.raw_pipe),
            pinned,
        );
    }
}

fn main() {
    // Must come first: procspawn's children re-enter `main` and are taken over
    // here.
    procspawn::init();
    let cfg = Config::new(std::env::args().skip(1).any(|a| a == "--quick"));
    let began = Instant::now();
    let cpu_clock = CpuClock::now();

    let free = round_trip(&cfg, false).expect("unpinned round trip");
    let pinned = round_trip(&cfg, true);
    let small = many_small(&cfg);
    let (pipe, process) = bulk(&cfg);
    let start = pool_start(&cfg);
    let measured = Measured {
        round_trip: free,
        pinned,
        small,
        bulk: (pipe, process, cfg.big_bytes),
        start,
    };
    let python = Python::run(cfg.quick);
    let py = python.as_ref().ok();
    let serial = Serial::measure(&cfg, py);

    print_header(&cfg, &python, cpu_clock);
    print_table(&comparison_rows(&measured, py));
    print_notes(&measured, py);
    if let Some(py) = py {
        print_python_maps(py, &serial);
    }
    eprintln!("done in {:.1} s", began.elapsed().as_secs_f64());
}
