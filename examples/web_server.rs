//! An axum server that computes (naive, deliberately slow) Fibonacci numbers
//! without blocking its async runtime: the CPU work runs in a [`ProcessPool`]
//! kept in axum `State`, bounded by a timeout that kills the worker when it
//! expires.
//!
//! ```text
//! cargo run --release --example web_server                      # short demo against itself, then exits
//! cargo run --release --example web_server -- --serve           # serve until Ctrl-C
//! PORT=8080 cargo run --release --example web_server -- --serve --mode procpool --timeout-ms 2000
//! cargo run --release --example web_server -- --self-test --all-modes   # /health latency table
//! ```
//!
//! Endpoints (on 127.0.0.1 only; port from `PORT`, else an ephemeral one that
//! is printed):
//!
//! * `GET /fib/{n}`: 200 `{"n":..,"fib":..}`; 504 JSON when the timeout
//!   (`--timeout-ms` or `FIB_TIMEOUT_MS`, default 2000) expires; 500 JSON for
//!   any other task error; 400 JSON for a bad `n`.
//! * `GET /health`: answers at once.
//!
//! `--mode` chooses how `/fib` computes:
//!
//! * `procpool` (default): `pool.spawn(fib, n)` under `tokio::time::timeout`;
//!   on expiry the dropped task kills its worker process, which is replaced.
//! * `spawn_blocking`: tokio's blocking thread pool; the timeout answers the
//!   client but cannot stop the thread, which keeps burning a core.
//! * `inline`: on the runtime thread itself, the mistake this crate exists to
//!   avoid; no timeout can fire, and once both runtime threads are computing
//!   every other request (even `/health`) waits for them.
//!
//! `--self-test` starts the server, then re-executes this program as a
//! separate load-generator process (`--load URL`, loopback only) that measures
//! `/health` latency idle and while concurrent `/fib` requests saturate the
//! CPU, and prints a markdown table row (`--all-modes`: one row per mode, each
//! against a fresh server). The server always runs on a multi-thread runtime
//! with 2 worker threads.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use procpool::{ProcessPool, TaskError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// fib(93) is the largest that fits in a u64.
const MAX_N: u32 = 93;

/// Deliberately slow recursive Fibonacci: pure CPU work.
fn fib(n: u32) -> u64 {
    if n < 2 {
        n as u64
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Procpool,
    SpawnBlocking,
    Inline,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Procpool, Mode::SpawnBlocking, Mode::Inline];

    fn as_str(self) -> &'static str {
        match self {
            Mode::Procpool => "procpool",
            Mode::SpawnBlocking => "spawn_blocking",
            Mode::Inline => "inline",
        }
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Mode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("unknown mode {s:?} (procpool|spawn_blocking|inline)"))
    }
}

// ---------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------

/// Everything a handler needs. `ProcessPool` is a cheap `Clone + Send + Sync`
/// handle, so it lives here like a database pool would.
#[derive(Clone)]
struct AppState {
    mode: Mode,
    pool: Option<ProcessPool>,
    timeout: Duration,
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/fib/{n}", get(fib_route))
        .with_state(state)
}

async fn health(State(st): State<AppState>) -> Json<Value> {
    Json(json!({ "status": "ok", "mode": st.mode.as_str() }))
}

type Reply = (StatusCode, Json<Value>);

fn reply(status: StatusCode, body: Value) -> Reply {
    (status, Json(body))
}

async fn fib_route(State(st): State<AppState>, Path(raw): Path<String>) -> Reply {
    // Parse by hand so that a bad `n` gets a JSON error like everything else.
    let n = match raw.parse::<u32>() {
        Ok(n) if n <= MAX_N => n,
        _ => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({ "error": "bad_request", "detail": format!("n must be an integer from 0 to {MAX_N}") }),
            )
        }
    };
    let timeout_ms = st.timeout.as_millis() as u64;
    match st.mode {
        Mode::Procpool => {
            let pool = st.pool.as_ref().expect("procpool mode has a pool");
            // The task is a future; when the timeout drops it, procpool kills the
            // worker process running it, so a runaway request stops costing CPU.
            match tokio::time::timeout(st.timeout, pool.spawn(fib, n)).await {
                Ok(Ok(value)) => reply(StatusCode::OK, json!({ "n": n, "fib": value })),
                Ok(Err(e)) => task_error(n, e),
                Err(_elapsed) => reply(
                    StatusCode::GATEWAY_TIMEOUT,
                    json!({
                        "error": "timeout",
                        "n": n,
                        "timeout_ms": timeout_ms,
                        "worker_killed": true,
                        "detail": format!("fib({n}) did not finish within {timeout_ms} ms; \
                                           the worker process computing it was killed and replaced"),
                    }),
                ),
            }
        }
        Mode::SpawnBlocking => {
            match tokio::time::timeout(st.timeout, tokio::task::spawn_blocking(move || fib(n)))
                .await
            {
                Ok(Ok(value)) => reply(StatusCode::OK, json!({ "n": n, "fib": value })),
                Ok(Err(join)) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({ "error": "join", "n": n, "detail": join.to_string() }),
                ),
                Err(_elapsed) => reply(
                    StatusCode::GATEWAY_TIMEOUT,
                    json!({
                        "error": "timeout",
                        "n": n,
                        "timeout_ms": timeout_ms,
                        "worker_killed": false,
                        "detail": format!("fib({n}) did not finish within {timeout_ms} ms; \
                                           a blocking thread cannot be stopped, it is still computing"),
                    }),
                ),
            }
        }
        // No timeout here: the handler never yields while computing, so a timer
        // could not fire until the work is done anyway.
        Mode::Inline => reply(StatusCode::OK, json!({ "n": n, "fib": fib(n) })),
    }
}

fn task_error(n: u32, e: TaskError) -> Reply {
    let kind = match &e {
        TaskError::Panicked { .. } => "panicked",
        TaskError::WorkerDied { .. } => "worker_died",
        TaskError::Cancelled => "cancelled",
        TaskError::PoolClosed => "pool_closed",
        TaskError::Serialization { .. } => "serialization",
        TaskError::TooLarge { .. } => "too_large",
        TaskError::Protocol { .. } => "protocol",
        TaskError::WorkerStart(_) => "worker_start",
        TaskError::Unsupported(_) => "unsupported",
        _ => "task_error",
    };
    reply(
        StatusCode::INTERNAL_SERVER_ERROR,
        json!({ "error": kind, "n": n, "detail": e.to_string() }),
    )
}

/// A running server: its own runtime (2 worker threads), its address, and the
/// handles needed to stop it.
struct Server {
    addr: SocketAddr,
    pool: Option<ProcessPool>,
    runtime: tokio::runtime::Runtime,
    shutdown: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<io::Result<()>>,
}

fn start_server(mode: Mode, timeout: Duration, port: u16) -> Result<Server, BoxError> {
    // One worker process per core; created before the runtime, no setup needed.
    let pool = match mode {
        // Lower-priority workers: when they saturate the CPU, the runtime's
        // threads still get it at once, which keeps /health fast.
        Mode::Procpool => Some(ProcessPool::builder().worker_niceness(10).build()?),
        _ => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("server")
        .enable_all()
        .build()?;
    let listener = runtime.block_on(TcpListener::bind((Ipv4Addr::LOCALHOST, port)))?;
    let addr = listener.local_addr()?;
    let app = router(AppState {
        mode,
        pool: pool.clone(),
        timeout,
    });
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = runtime.spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    Ok(Server {
        addr,
        pool,
        runtime,
        shutdown,
        serving,
    })
}

impl Server {
    fn stop(self) {
        let Server {
            pool,
            runtime,
            shutdown,
            serving,
            ..
        } = self;
        let _ = shutdown.send(());
        // Graceful shutdown waits for open connections; never wait forever.
        let _ =
            runtime.block_on(async { tokio::time::timeout(Duration::from_secs(5), serving).await });
        // A plain drop would wait for every spawn_blocking thread still computing.
        runtime.shutdown_timeout(Duration::from_secs(2));
        if let Some(pool) = pool {
            pool.terminate();
        }
    }
}

// ---------------------------------------------------------------------------
// A tiny HTTP/1.1 client (one connection per request, loopback only)
// ---------------------------------------------------------------------------

async fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    // `Connection: close` makes the server end the stream after the response.
    let mut raw = Vec::new();
    (&mut stream).take(1 << 20).read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed HTTP response");
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, body.to_string()))
}

async fn http_get_within(
    addr: SocketAddr,
    path: &str,
    limit: Duration,
) -> io::Result<(u16, String)> {
    tokio::time::timeout(limit, http_get(addr, path))
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "request timed out")))
}

// ---------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------

struct Opts {
    mode: Mode,
    timeout: Duration,
    serve: bool,
    self_test: bool,
    all_modes: bool,
    load: Option<String>,
    fib_n: Option<u32>,
    concurrency: usize,
    load_secs: f64,
}

fn parse_args() -> Result<Opts, BoxError> {
    let env_timeout = std::env::var("FIB_TIMEOUT_MS").ok();
    let mut opts = Opts {
        mode: Mode::Procpool,
        timeout: Duration::from_millis(env_timeout.as_deref().unwrap_or("2000").parse()?),
        serve: false,
        self_test: false,
        all_modes: false,
        load: None,
        fib_n: None,
        concurrency: 2 * cores(),
        load_secs: 3.0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--mode" => opts.mode = value()?.parse()?,
            "--timeout-ms" => opts.timeout = Duration::from_millis(value()?.parse()?),
            "--serve" => opts.serve = true,
            "--self-test" => opts.self_test = true,
            "--all-modes" => opts.all_modes = true,
            "--load" => opts.load = Some(value()?),
            "--fib-n" => opts.fib_n = Some(value()?.parse()?),
            "--concurrency" => opts.concurrency = value()?.parse::<usize>()?.clamp(1, 64),
            "--load-secs" => opts.load_secs = value()?.parse::<f64>()?.clamp(0.5, 20.0),
            "-h" | "--help" => {
                println!(
                    "usage: web_server [--serve | --self-test [--all-modes]] \
                     [--mode procpool|spawn_blocking|inline] [--timeout-ms MS] \
                     [--fib-n N] [--concurrency C] [--load-secs S]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)").into()),
        }
    }
    Ok(opts)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn port_from_env() -> Result<u16, BoxError> {
    Ok(match std::env::var("PORT") {
        Ok(p) => p.parse()?,
        Err(_) => 0,
    })
}

fn main() -> Result<(), BoxError> {
    let opts = parse_args()?;
    if let Some(url) = &opts.load {
        load_generator(url, &opts)
    } else if opts.self_test {
        self_test(&opts)
    } else if opts.serve {
        serve(&opts)
    } else {
        demo(&opts)
    }
}

// ---------------------------------------------------------------------------
// --serve and the default demo
// ---------------------------------------------------------------------------

fn serve(opts: &Opts) -> Result<(), BoxError> {
    let server = start_server(opts.mode, opts.timeout, port_from_env()?)?;
    let addr = server.addr;
    println!(
        "listening on http://{addr} (mode {}, timeout {:?}); try\n  curl http://{addr}/fib/30\n  curl http://{addr}/fib/60    # times out\n  curl http://{addr}/health\nCtrl-C to stop",
        opts.mode.as_str(),
        opts.timeout
    );
    server.runtime.block_on(tokio::signal::ctrl_c())?;
    println!("stopping");
    server.stop();
    Ok(())
}

/// Without flags: start the server, make a few requests against it, stop.
fn demo(opts: &Opts) -> Result<(), BoxError> {
    let server = start_server(Mode::Procpool, opts.timeout, port_from_env()?)?;
    let addr = server.addr;
    let pool = server.pool.clone().expect("procpool mode");
    println!(
        "listening on http://{addr} (mode procpool, timeout {:?})",
        opts.timeout
    );

    // The client runs on its own runtime, as a separate program would.
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    client.block_on(async {
        let limit = opts.timeout + Duration::from_secs(10);
        for path in ["/health", "/fib/30"] {
            show(addr, path, limit).await;
        }
        let before = pool.worker_pids();
        println!("worker pids: {before:?}");
        show(addr, "/fib/90", limit).await;
        // The killed worker's replacement takes a moment to start.
        let mut after = pool.worker_pids();
        for _ in 0..100 {
            if after.len() == pool.workers() && after != before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            after = pool.worker_pids();
        }
        println!("worker pids: {after:?} (one was killed and replaced)");
        show(addr, "/fib/31", limit).await;
        show(addr, "/fib/abc", limit).await;
    });
    server.stop();
    println!("\nrun with `-- --serve` to keep it up, or `-- --self-test --all-modes` for the latency table");
    Ok(())
}

async fn show(addr: SocketAddr, path: &str, limit: Duration) {
    let started = Instant::now();
    match http_get_within(addr, path, limit).await {
        Ok((status, body)) => println!(
            "GET {path:<9} -> {status} in {:>7.1} ms  {body}",
            ms(started.elapsed())
        ),
        Err(e) => println!("GET {path:<9} -> failed: {e}"),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---------------------------------------------------------------------------
// --self-test: server here, load generator in a second process
// ---------------------------------------------------------------------------

/// What the load generator measured, sent back as one JSON line on stdout.
#[derive(Serialize, Deserialize, Debug, Default)]
struct LoadReport {
    idle: Latency,
    loaded: Latency,
    fib_ok: u64,
    fib_timed_out: u64,
    fib_failed: u64,
    probe_failures: u64,
}

#[derive(Serialize, Deserialize, Debug, Default)]
struct Latency {
    samples: usize,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
}

const REPORT_TAG: &str = "LOAD-REPORT ";

fn self_test(opts: &Opts) -> Result<(), BoxError> {
    let modes: Vec<Mode> = if opts.all_modes {
        Mode::ALL.to_vec()
    } else {
        vec![opts.mode]
    };
    let n = match opts.fib_n {
        Some(n) => n.min(45),
        None => calibrate_fib(),
    };
    let t = Instant::now();
    std::hint::black_box(fib(std::hint::black_box(n)));
    println!(
        "{} cores; fib({n}) takes {:.0} ms here; load: {} concurrent /fib/{n} clients for {} s; \
         server runtime: 2 worker threads; timeout {:?}",
        cores(),
        ms(t.elapsed()),
        opts.concurrency,
        opts.load_secs,
        opts.timeout
    );

    let mut rows = Vec::new();
    for mode in modes {
        eprintln!("-- {}: starting a fresh server", mode.as_str());
        let server = start_server(mode, opts.timeout, 0)?;
        let url = format!("http://{}", server.addr);
        let report = run_load_process(&url, n, opts);
        server.stop();
        match report {
            Ok(r) => rows.push(table_row(mode, &r)),
            Err(e) => rows.push(format!(
                "| {} | load generator failed: {e} | | | | | |",
                mode.as_str()
            )),
        }
        // Let the CPU settle before the next server.
        std::thread::sleep(Duration::from_millis(300));
    }
    println!();
    println!("| mode | health p50 idle | p99 idle | p50 loaded | p99 loaded | p99 ratio | fib requests done |");
    println!("|---|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    Ok(())
}

fn table_row(mode: Mode, r: &LoadReport) -> String {
    let f = |us: u64| format!("{:.2} ms", us as f64 / 1e3);
    let ratio = r.loaded.p99_us as f64 / r.idle.p99_us.max(1) as f64;
    let mut done = r.fib_ok.to_string();
    if r.fib_timed_out > 0 {
        done += &format!(" (+{} timed out)", r.fib_timed_out);
    }
    if r.fib_failed > 0 {
        done += &format!(" (+{} failed)", r.fib_failed);
    }
    format!(
        "| {} | {} | {} | {} | {} | {:.1}x | {} |",
        mode.as_str(),
        f(r.idle.p50_us),
        f(r.idle.p99_us),
        f(r.loaded.p50_us),
        f(r.loaded.p99_us),
        ratio,
        done
    )
}

/// Smallest `n` whose `fib(n)` takes at least ~80 ms on this machine, so one
/// request is 50-200 ms of CPU.
fn calibrate_fib() -> u32 {
    let mut n = 20;
    loop {
        let t = Instant::now();
        std::hint::black_box(fib(std::hint::black_box(n)));
        if t.elapsed() >= Duration::from_millis(80) || n >= 45 {
            return n;
        }
        n += 1;
    }
}

/// Runs this program again as `--load URL` and reads its report. Bounded: the
/// child is killed if it has not finished well after its own deadline.
fn run_load_process(url: &str, n: u32, opts: &Opts) -> Result<LoadReport, BoxError> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--load", url])
        .args(["--fib-n", &n.to_string()])
        .args(["--concurrency", &opts.concurrency.to_string()])
        .args(["--load-secs", &opts.load_secs.to_string()])
        .args(["--timeout-ms", &opts.timeout.as_millis().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let deadline =
        Instant::now() + Duration::from_secs_f64(opts.load_secs) + Duration::from_secs(40);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("load generator did not finish in time; killed".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = reader.join().map_err(|_| "reader thread panicked")?;
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix(REPORT_TAG))
        .ok_or_else(|| format!("load generator exited with {status} and no report"))?;
    Ok(serde_json::from_str(line)?)
}

/// `--load URL`: the load generator process.
fn load_generator(url: &str, opts: &Opts) -> Result<(), BoxError> {
    let addr: SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()?;
    if !addr.ip().is_loopback() {
        return Err(format!("refusing to load-test {addr}: loopback addresses only").into());
    }
    let n = opts.fib_n.unwrap_or(30).min(45);
    // A light single-threaded client: it mostly waits on sockets.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(generate_load(addr, n, opts));
    println!("{REPORT_TAG}{}", serde_json::to_string(&report)?);
    Ok(())
}

async fn generate_load(addr: SocketAddr, n: u32, opts: &Opts) -> LoadReport {
    let mut report = LoadReport::default();
    let probe_limit = Duration::from_secs(10);

    // Warm up the server and this client (first connections are slower).
    for _ in 0..20 {
        let _ = http_get_within(addr, "/health", probe_limit).await;
    }

    // Idle: /health alone, bounded by count and time.
    let idle_until = Instant::now() + Duration::from_secs(3);
    let (idle, failures) = probe_health(addr, 500, idle_until).await;
    report.idle = idle;
    report.probe_failures += failures;

    // Loaded: fib clients keep the CPU busy until the deadline.
    let load_until = Instant::now() + Duration::from_secs_f64(opts.load_secs);
    let fib_limit = opts.timeout + Duration::from_secs(15);
    let ok = Arc::new(AtomicU64::new(0));
    let timed_out = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..opts.concurrency)
        .map(|_| {
            let (ok, timed_out, failed) = (ok.clone(), timed_out.clone(), failed.clone());
            let path = format!("/fib/{n}");
            tokio::spawn(async move {
                let mut sent = 0;
                while Instant::now() < load_until && sent < 10_000 {
                    sent += 1;
                    let counter = match http_get_within(addr, &path, fib_limit).await {
                        Ok((200, _)) => &ok,
                        Ok((504, _)) => &timed_out,
                        _ => &failed,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Give the load a moment to fill the CPU before probing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (loaded, failures) = probe_health(addr, 5_000, load_until).await;
    report.loaded = loaded;
    report.probe_failures += failures;
    for client in clients {
        let _ = tokio::time::timeout(fib_limit, client).await;
    }
    report.fib_ok = ok.load(Ordering::Relaxed);
    report.fib_timed_out = timed_out.load(Ordering::Relaxed);
    report.fib_failed = failed.load(Ordering::Relaxed);
    report
}

/// Sequential `/health` probes a few ms apart until `max` samples or `until`.
async fn probe_health(addr: SocketAddr, max: usize, until: Instant) -> (Latency, u64) {
    let mut samples = Vec::with_capacity(max);
    let mut failures = 0;
    while samples.len() < max && Instant::now() < until {
        let started = Instant::now();
        match http_get_within(addr, "/health", Duration::from_secs(10)).await {
            Ok((200, _)) => samples.push(started.elapsed().as_micros() as u64),
            _ => failures += 1,
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    samples.sort_unstable();
    let pct = |p: usize| {
        if samples.is_empty() {
            0
        } else {
            // Nearest-rank percentile.
            samples[(samples.len() * p).div_ceil(100).max(1) - 1]
        }
    };
    let latency = Latency {
        samples: samples.len(),
        p50_us: pct(50),
        p99_us: pct(99),
        max_us: samples.last().copied().unwrap_or(0),
    };
    (latency, failures)
}
