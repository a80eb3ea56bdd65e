//! Production hazards: Ctrl-C, deploys, drops inside async code, blocking
//! calls on a runtime, misbehaving tasks, and many pools in one process.
//!
//! `harness = false`: several checks need the whole process (exact thread and
//! descriptor counts, signals to a process group, a copy of this binary run as
//! a separate program), so the tests run one after another in `main`, and
//! some re-execute this binary in a role.

//!
//! Unix only: every scenario here is about signals, process groups,
//! descriptors or replacing a running executable, which Windows does not have
//! (or forbids). On Windows `main` says so and runs nothing.
#![cfg_attr(not(unix), allow(dead_code, unused_imports))]

#[path = "common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
#[cfg(unix)]
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{is_reaped, is_running, temp_dir, wait_until};
use procpool::{ProcessPool, TaskError, ThreadPool};

// ---------------------------------------------------------------- tasks

fn pid(_: ()) -> u32 {
    std::process::id()
}

fn nap_then_pid(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

fn hang(_: ()) {
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn square(x: u64) -> u64 {
    x * x
}

fn exit_zero(_: ()) -> u32 {
    std::process::exit(0)
}

#[cfg(unix)]
fn stop_myself(_: ()) -> u32 {
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::STOP);
    std::process::id()
}

fn leave_a_thread_running(_: ()) -> u32 {
    std::thread::spawn(|| loop {
        std::thread::sleep(Duration::from_millis(5));
    });
    std::process::id()
}

#[cfg(unix)]
fn close_every_descriptor(_: ()) -> u32 {
    for fd in 0..1024 {
        // SAFETY: deliberately misbehaving task: it closes descriptors it does
        // not own, which is exactly the hazard under test.
        unsafe { libc::close(fd) };
    }
    std::process::id()
}

fn bytes_of(n: usize) -> Vec<u8> {
    vec![7; n]
}

fn echo_bytes(bytes: Vec<u8>) -> Vec<u8> {
    bytes
}

#[cfg(unix)]
fn make_every_descriptor_non_blocking(_: ()) -> u32 {
    // (Not the standard streams: they may share their open file with the
    // test harness.)
    for fd in 3..1024 {
        // SAFETY: deliberately misbehaving task: it changes the flags of
        // descriptors it does not own (invalid ones just fail).
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
            }
        }
    }
    std::process::id()
}

fn print_ten_megabytes(_: ()) -> u64 {
    let line = [b'x'; 1023];
    let mut out = std::io::stdout().lock();
    let mut written = 0u64;
    while written < 10 << 20 {
        out.write_all(&line).unwrap();
        out.write_all(b"\n").unwrap();
        written += 1024;
    }
    out.flush().unwrap();
    written
}

fn panic_with_a_number(_: ()) -> u32 {
    std::panic::panic_any(42u32)
}

fn panic_with_ten_megabytes(_: ()) -> u32 {
    panic!("{}", "y".repeat(10 << 20))
}

// ---------------------------------------------------------------- roles

#[cfg(unix)]
fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--role=ctrlc-handled") => role_ctrlc_handled(),
        Some("--role=ctrlc-unhandled") => role_ctrlc_unhandled(),
        Some("--role=deploy") => role_deploy(),
        Some("--role=print") => role_print(),
        _ => run_tests(),
    }
}

fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

fn join(pids: &[u32]) -> String {
    pids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Catches Ctrl-C, then shuts the pool down: running tasks must finish.
fn role_ctrlc_handled() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut ctrl_c = Box::pin(tokio::signal::ctrl_c());
        // Install the handler before saying we are ready.
        futures::FutureExt::now_or_never(ctrl_c.as_mut());
        let pool = ProcessPool::new(2).unwrap();
        let tasks: Vec<_> = (0..2).map(|_| pool.spawn(nap_then_pid, 1500)).collect();
        tokio::time::sleep(Duration::from_millis(300)).await; // let them start
        print_line(&format!("ready {}", join(&pool.worker_pids())));
        ctrl_c.await.unwrap();
        print_line("caught");
        pool.shutdown().await;
        let results: Vec<String> = futures::future::join_all(tasks)
            .await
            .into_iter()
            .map(|r| format!("{r:?}"))
            .collect();
        print_line(&format!("results {}", results.join(";")));
    });
}

/// Does not handle SIGINT: the program dies, and its workers with it.
fn role_ctrlc_unhandled() {
    let pool = ProcessPool::new(2).unwrap();
    let _tasks: Vec<_> = (0..2).map(|_| pool.spawn(hang, ())).collect();
    std::thread::sleep(Duration::from_millis(300));
    print_line(&format!("ready {}", join(&pool.worker_pids())));
    std::thread::sleep(Duration::from_secs(120));
}

#[cfg(unix)]
/// A long-running service across a deploy: answers one request per stdin
/// line. `pid` runs a task; `kill` SIGKILLs the worker; `chdir` moves away.
fn role_deploy() {
    let pool = ProcessPool::builder()
        .workers(1)
        .max_tasks_per_worker(3)
        .build()
        .unwrap();
    print_line(&format!("ready {}", pool.apply_blocking(pid, ()).unwrap()));
    for line in std::io::stdin().lock().lines() {
        let reply = match line.unwrap().as_str() {
            "pid" => match pool.apply_blocking(pid, ()) {
                Ok(p) => format!("ok {p}"),
                Err(e) => format!("err {e}"),
            },
            "kill" => {
                let old = pool.worker_pids();
                for &p in &old {
                    let _ = rustix::process::kill_process(
                        rustix::process::Pid::from_raw(p as i32).unwrap(),
                        rustix::process::Signal::KILL,
                    );
                }
                // Wait for the replacement (or the failure to start one).
                let deadline = Instant::now() + Duration::from_secs(10);
                while pool.worker_pids() == old && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                "killed".to_string()
            }
            "chdir" => {
                std::env::set_current_dir("/").unwrap();
                "moved".to_string()
            }
            other => format!("unknown {other}"),
        };
        print_line(&reply);
    }
}

/// Runs a task that prints 10 MB to this program's stdout.
fn role_print() {
    let pool = ProcessPool::new(1).unwrap();
    let r = pool.apply_blocking(print_ten_megabytes, ());
    let next = pool.apply_blocking(square, 12);
    eprintln!("procpool-test-result {r:?} {next:?}");
}

fn role(exe: &Path, name: &str) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg(format!("--role={name}")).stdout(Stdio::piped());
    cmd
}

fn this_exe() -> std::path::PathBuf {
    std::env::current_exe().unwrap()
}

#[cfg(unix)]
/// Starts `cmd` as the leader of its own session and process group, as a
/// shell does with a foreground job.
fn spawn_in_own_session(cmd: &mut Command) -> Child {
    // SAFETY: setsid is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()?;
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

fn read_line(out: &mut impl BufRead) -> String {
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    line.trim_end().to_string()
}

fn pids_after(line: &str, prefix: &str) -> Vec<u32> {
    line.strip_prefix(prefix)
        .unwrap_or_else(|| panic!("expected {prefix:?}, got {line:?}"))
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

#[cfg(unix)]
fn interrupt_group(leader: &Child) {
    let pgid = rustix::process::Pid::from_raw(leader.id() as i32).unwrap();
    rustix::process::kill_process_group(pgid, rustix::process::Signal::INT).unwrap();
}

// ---------------------------------------------------------------- 1. Ctrl-C

#[cfg(unix)]
fn ctrl_c_to_the_group_lets_a_handling_program_finish_its_tasks() {
    let mut child = spawn_in_own_session(&mut role(&this_exe(), "ctrlc-handled"));
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let workers = pids_after(&read_line(&mut out), "ready ");
    assert_eq!(workers.len(), 2);
    interrupt_group(&child); // what a terminal's Ctrl-C does
    assert_eq!(read_line(&mut out), "caught");
    let results = read_line(&mut out);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let expected: Vec<String> = workers.iter().map(|p| format!("Ok({p})")).collect();
    let mut got: Vec<&str> = results
        .strip_prefix("results ")
        .unwrap()
        .split(';')
        .collect();
    got.sort();
    let mut expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(got, expected, "a running task did not survive Ctrl-C");
    assert!(wait_until(Duration::from_secs(5), || workers
        .iter()
        .all(|&p| !is_running(p))));
}

#[cfg(unix)]
fn ctrl_c_ends_a_program_that_does_not_handle_it_and_its_workers() {
    let mut child = spawn_in_own_session(&mut role(&this_exe(), "ctrlc-unhandled"));
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let workers = pids_after(&read_line(&mut out), "ready ");
    assert_eq!(workers.len(), 2);
    interrupt_group(&child);
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status:?}");
    assert!(
        wait_until(Duration::from_secs(5), || workers
            .iter()
            .all(|&p| !is_running(p))),
        "workers {workers:?} outlived their interrupted parent"
    );
}

// ---------------------------------------------------------------- 2. deploys

/// A copy of this binary in a fresh directory, to be replaced or deleted.
fn deployed_copy(tag: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = temp_dir(tag);
    let app = dir.join("app");
    std::fs::copy(this_exe(), &app).unwrap();
    (dir, app)
}

#[cfg(unix)]
/// Writes a different build over `app` the way a deploy does: a new file,
/// then `mv` over the old name.
fn deploy_new_build(app: &Path) {
    let new = app.with_extension("new");
    let mut bytes = std::fs::read(app).unwrap();
    bytes.extend_from_slice(&[0x5a; 4096]); // another build: other contents
    std::fs::write(&new, bytes).unwrap();
    std::fs::set_permissions(&new, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&new, app).unwrap();
}

struct Service {
    child: Child,
    input: std::process::ChildStdin,
    output: BufReader<std::process::ChildStdout>,
}

impl Service {
    fn start(mut cmd: Command) -> (Service, u32) {
        let mut child = cmd.stdin(Stdio::piped()).spawn().unwrap();
        let input = child.stdin.take().unwrap();
        let mut output = BufReader::new(child.stdout.take().unwrap());
        let first = pids_after(&read_line(&mut output), "ready ")[0];
        (
            Service {
                child,
                input,
                output,
            },
            first,
        )
    }

    fn ask(&mut self, request: &str) -> String {
        writeln!(self.input, "{request}").unwrap();
        self.input.flush().unwrap();
        read_line(&mut self.output)
    }

    /// After a deploy: a killed worker is replaced, and recycled ones too
    /// (three tasks per worker), all still serving.
    fn keeps_serving(&mut self, what: &str) {
        assert_eq!(self.ask("kill"), "killed");
        let mut workers = std::collections::HashSet::new();
        for _ in 0..7 {
            let reply = self.ask("pid");
            let p = reply
                .strip_prefix("ok ")
                .unwrap_or_else(|| panic!("{what}: the pool stopped serving: {reply}"));
            workers.insert(p.to_string());
        }
        assert!(workers.len() >= 3, "{what}: workers were not recycled");
    }

    fn stop(mut self) {
        drop(self.input);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status:?}");
    }
}

#[cfg(unix)]
fn a_deploy_over_the_executable_does_not_stop_the_pool() {
    let (_dir, app) = deployed_copy("deploy-mv");
    let (mut service, _) = Service::start(role(&app, "deploy"));
    deploy_new_build(&app);
    service.keeps_serving("replaced with mv");
    std::fs::remove_file(&app).unwrap();
    service.keeps_serving("then deleted");
    service.stop();
}

#[cfg(unix)]
fn a_program_started_through_a_symlink_survives_its_target_changing() {
    let (dir, app) = deployed_copy("deploy-link");
    let link = dir.join("current");
    std::os::unix::fs::symlink(&app, &link).unwrap();
    let (mut service, _) = Service::start(role(&link, "deploy"));
    // A release directory switch: the link now names another build.
    let other = dir.join("app2");
    std::fs::copy(&app, &other).unwrap();
    deploy_new_build(&other);
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&other, &link).unwrap();
    service.keeps_serving("symlink switched");
    service.stop();
}

fn a_program_started_by_a_relative_path_survives_chdir_and_deletion() {
    let (dir, _app) = deployed_copy("deploy-rel");
    let mut cmd = role(Path::new("./app"), "deploy");
    cmd.current_dir(&dir);
    let (mut service, _) = Service::start(cmd);
    assert_eq!(service.ask("chdir"), "moved");
    service.keeps_serving("after chdir");
    std::fs::remove_file(dir.join("app")).unwrap();
    service.keeps_serving("after chdir and deletion");
    service.stop();
}

// ---------------------------------------------------------------- 3. drops in async code

/// The process's thread count, from /proc.
fn threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}

/// Waits until threads and descriptors are back to the counts of `baseline`.
fn back_to(baseline: (usize, usize), what: &str) {
    let ok = wait_until(Duration::from_secs(15), || {
        (threads(), open_fds()) == baseline
    });
    assert!(
        ok,
        "{what}: threads/fds {:?}, expected {baseline:?}",
        (threads(), open_fds())
    );
}

const FLAVORS: [&str; 2] = ["current-thread", "multi-thread"];

fn runtime(flavor: &str) -> tokio::runtime::Runtime {
    let mut builder = if flavor == "current-thread" {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    };
    builder.enable_all().build().unwrap()
}

/// The longest a drop may hold the runtime: far above a non-blocking signal,
/// far below any wait for a task or a process.
const DROP_BOUND: Duration = Duration::from_millis(250);

fn dropping_the_last_process_pool_handle_inside_a_task() {
    for name in FLAVORS {
        // The first I/O driver in a process also makes tokio's process-wide
        // signal pipe, which lives on: make it before counting.
        drop(runtime(name));
        let baseline = (threads(), open_fds());
        let rt = runtime(name);
        let workers = rt.block_on(async {
            tokio::spawn(async {
                let pool = ProcessPool::new(2).unwrap();
                assert_eq!(pool.apply(square, 7).await, Ok(49));
                let running = pool.spawn(hang, ());
                let queued = pool.spawn(square, 3);
                tokio::time::sleep(Duration::from_millis(100)).await;
                let workers = pool.worker_pids();
                let clone = pool.clone();
                let started = Instant::now();
                drop(pool);
                drop(clone); // the last handle
                drop(running); // kills its worker
                assert!(
                    started.elapsed() < DROP_BOUND,
                    "drop held the runtime {:?}",
                    started.elapsed()
                );
                assert_eq!(queued.await, Ok(9), "queued work still runs after the drop");
                workers
            })
            .await
            .unwrap()
        });
        drop(rt);
        assert!(
            wait_until(Duration::from_secs(10), || workers
                .iter()
                .all(|&p| is_reaped(p))),
            "{name}: workers {workers:?} left behind"
        );
        back_to(baseline, name);
    }
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn dropping_the_last_thread_pool_handle_inside_a_task() {
    for name in FLAVORS {
        // The first I/O driver in a process also makes tokio's process-wide
        // signal pipe, which lives on: make it before counting.
        drop(runtime(name));
        let baseline = (threads(), open_fds());
        let rt = runtime(name);
        rt.block_on(async {
            tokio::spawn(async {
                let pool = ThreadPool::new(2).unwrap();
                assert_eq!(pool.apply(square, 5).await, Ok(25));
                let running = pool.spawn(nap, 600);
                tokio::time::sleep(Duration::from_millis(50)).await;
                let started = Instant::now();
                drop(pool);
                assert!(
                    started.elapsed() < DROP_BOUND,
                    "drop held the runtime {:?}",
                    started.elapsed()
                );
                assert_eq!(running.await, Ok(600));
            })
            .await
            .unwrap()
        });
        drop(rt);
        back_to(baseline, name);
    }
}

/// Tasks dropped, and calls made, while a thread's locals are being
/// destroyed at its exit (a `thread_local!` holding a task, or a value whose
/// `Drop` spawns): the pool's own per-thread buffers may be gone by then,
/// which must neither panic there (an abort of the whole process) nor lose
/// the call.
fn tasks_dropped_and_spawned_while_a_thread_exits() {
    use std::cell::RefCell;

    /// Spawns a task, and sends it to be awaited elsewhere, when dropped.
    struct SpawnsOnDrop(ProcessPool, std::sync::mpsc::Sender<procpool::Task<u64>>);
    impl Drop for SpawnsOnDrop {
        fn drop(&mut self) {
            let _ = self.1.send(self.0.spawn(square, 7));
        }
    }
    /// Calls both pools and waits, as a plain thread does, when dropped:
    /// `apply_blocking` on each, and a `map_blocking`.
    struct WaitsOnDrop(ProcessPool, ThreadPool, std::sync::mpsc::Sender<Vec<u64>>);
    impl Drop for WaitsOnDrop {
        fn drop(&mut self) {
            let mut got = vec![
                self.0.apply_blocking(square, 5).unwrap_or(0),
                self.1.apply_blocking(square, 6).unwrap_or(0),
            ];
            got.extend(self.0.map_blocking(square, 1..4).map(|r| r.unwrap_or(0)));
            let _ = self.2.send(got);
        }
    }
    thread_local! {
        static HELD: RefCell<Option<procpool::Task<u64>>> = const { RefCell::new(None) };
        static ON_EXIT: RefCell<Option<SpawnsOnDrop>> = const { RefCell::new(None) };
        static WAITS_ON_EXIT: RefCell<Option<WaitsOnDrop>> = const { RefCell::new(None) };
    }

    let pool = ProcessPool::new(1).unwrap();
    let threads = ThreadPool::new(1).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (waited_tx, waited) = std::sync::mpsc::channel();
    let thread = {
        let pool = pool.clone();
        std::thread::spawn(move || {
            // Registered first, so destroyed last: after the pool's own
            // locals and futures' executor's, and after `HELD`'s task has
            // been dropped (so its worker is free again).
            WAITS_ON_EXIT.with(|on_exit| {
                *on_exit.borrow_mut() = Some(WaitsOnDrop(pool.clone(), threads, waited_tx))
            });
            // Registered before the pool's own locals, so destroyed after.
            HELD.with(|held| drop(held.borrow()));
            ON_EXIT.with(|on_exit| *on_exit.borrow_mut() = Some(SpawnsOnDrop(pool.clone(), tx)));
            // The blocking path's locals exist too.
            assert_eq!(futures::executor::block_on(pool.spawn(square, 1)), Ok(1));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            // Calls through both lanes and the queue set up the pool's
            // locals on this thread.
            assert_eq!(pool.apply_blocking(square, 2), Ok(4));
            assert_eq!(rt.block_on(pool.apply(square, 3)), Ok(9));
            // A call on the async lane, left running when the thread ends.
            let running = {
                let _in_runtime = rt.enter();
                pool.spawn(nap, 30_000)
            };
            HELD.with(|held| *held.borrow_mut() = Some(running));
        })
    };
    thread.join().expect("the exiting thread panicked");
    let got = waited.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(
        got,
        [25, 36, 1, 4, 9],
        "blocking calls from a thread's exit"
    );
    let spawned = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(futures::executor::block_on(spawned), Ok(49));
    // The dropped task's worker was killed and replaced.
    assert_eq!(pool.apply_blocking(square, 8), Ok(64));
    assert!(
        wait_until(Duration::from_secs(20), || pool.stats().restarts.cancelled
            == 1),
        "{:?}",
        pool.stats().restarts
    );
}

// ---------------------------------------------------------------- 4. blocking calls on a runtime

/// Runs `f` on a thread of its own and fails (instead of hanging the suite) if
/// it does not finish within a minute.
fn within_a_minute<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{what} hung"))
}

fn blocking_calls_inside_a_current_thread_runtime_do_not_deadlock() {
    // The same body for both pools (they share method names, not a trait
    // for `map_blocking`).
    macro_rules! check {
        ($what:literal, $pool:expr) => {
            within_a_minute($what, move || {
                let pool = $pool;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    // An async task on the same runtime, alive across the
                    // blocking calls.
                    let ticker = tokio::spawn(async {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        1
                    });
                    assert_eq!(pool.apply_blocking(square, 9), Ok(81));
                    let squares: Vec<u64> = pool
                        .map_blocking(square, 0..200u64)
                        .collect::<Result<_, _>>()
                        .unwrap();
                    assert_eq!(squares, (0..200u64).map(|x| x * x).collect::<Vec<_>>());
                    assert_eq!(ticker.await.unwrap(), 1);
                });
            })
        };
    }
    check!("ProcessPool", ProcessPool::new(2).unwrap());
    check!("ThreadPool", ThreadPool::new(2).unwrap());
}

/// A task spawned on a current-thread runtime and then waited for with
/// `futures::executor::block_on` on that runtime's thread: the runtime's
/// reactor cannot run meanwhile, so the task must not wait for it. Each step
/// used to hang whenever the call found an idle worker and nothing else was
/// queued to make the supervisor step in (always for the first two, at the
/// end of a map for the last).
fn waiting_with_block_on_inside_a_current_thread_runtime_does_not_deadlock() {
    on_a_current_thread_runtime("block_on inside a runtime", |pool| async move {
        for i in 0..20u64 {
            // Spawned from the runtime (the worker is idle), awaited
            // from a blocking executor.
            let task = pool.spawn(square, i);
            assert_eq!(futures::executor::block_on(task), Ok(i * i));
            // Spawned and awaited inside the blocking executor.
            let generic = futures::executor::block_on(async { pool.spawn(square, i).await });
            assert_eq!(generic, Ok(i * i));
            assert_eq!(procpool::Pool::apply_blocking(&pool, square, i), Ok(i * i));
            let squares: Vec<u64> = pool
                .map_blocking(square, 0..50u64)
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(squares.len(), 50);
        }
        // The runtime's own await still works after all that.
        assert_eq!(pool.apply(square, 7).await, Ok(49));
    });
}

/// Runs `f` on `pool` from a thread of its own, failing if it hangs.
fn apply_within_a_minute(
    pool: &ProcessPool,
    what: &str,
    f: fn(()) -> u32,
) -> Result<u32, TaskError> {
    let pool = pool.clone();
    within_a_minute(what, move || pool.apply_blocking(f, ()))
}

/// Runs `body` with a 2-worker pool inside a current-thread runtime, on a
/// thread of its own, and fails if it does not finish within a minute.
fn on_a_current_thread_runtime<F>(what: &str, body: fn(ProcessPool) -> F)
where
    F: std::future::Future<Output = ()> + 'static,
{
    within_a_minute(what, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(body(ProcessPool::new(2).unwrap()));
    });
}

/// A task polled once on a current-thread runtime (its wake-up left with
/// that runtime's reactor), then waited for inside `block_on` on the same
/// thread through a combinator that only polls what was woken: nobody polls
/// it again, so the pool must finish it without being polled.
fn a_task_polled_on_the_runtime_then_waited_for_in_block_on_does_not_hang() {
    use futures::StreamExt;
    on_a_current_thread_runtime("a task left unpolled", |pool| async move {
        for i in 0..5u64 {
            let mut set = futures::stream::FuturesUnordered::new();
            // A task that takes a while: its first poll cannot find the
            // result yet, and leaves its wake-up with the reactor.
            set.push(pool.spawn(nap, 20 + i));
            assert!(futures::poll!(set.next()).is_pending());
            assert_eq!(futures::executor::block_on(set.next()), Some(Ok(20 + i)));
            // The map's own set: one result awaited here, the rest there.
            let mut squares = pool.map(square, 0..4u64).chunk_size(1);
            assert_eq!(squares.next().await, Some(Ok(0)));
            let rest: Vec<_> = futures::executor::block_on(squares.collect::<Vec<_>>());
            assert_eq!(rest, vec![Ok(1), Ok(4), Ok(9)]);
        }
    });
}

// ---------------------------------------------------------------- 5. misbehaving tasks

fn exit_zero_inside_a_task_is_a_worker_death_not_a_success() {
    let pool = ProcessPool::new(1).unwrap();
    match pool.apply_blocking(exit_zero, ()) {
        Err(TaskError::WorkerDied {
            code: Some(0),
            signal: None,
            ..
        }) => {}
        other => panic!("unexpected {other:?}"),
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = rt.block_on(pool.spawn(exit_zero, ()));
    assert!(
        matches!(r, Err(TaskError::WorkerDied { code: Some(0), .. })),
        "{r:?}"
    );
    assert_eq!(pool.apply_blocking(square, 4), Ok(16));
}

#[cfg(unix)]
fn a_task_that_stops_itself_is_still_killed_by_a_timeout() {
    let pool = ProcessPool::new(1).unwrap();
    let worker = pool.worker_pids()[0];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = rt.block_on(async {
        tokio::time::timeout(Duration::from_millis(500), pool.spawn(stop_myself, ())).await
    });
    assert!(r.is_err(), "a stopped task finished: {r:?}");
    assert!(
        wait_until(Duration::from_secs(5), || is_reaped(worker)),
        "the stopped worker {worker} was not killed"
    );
    assert_eq!(pool.apply_blocking(square, 5), Ok(25));
}

fn a_task_that_leaves_a_thread_running_fails_nothing() {
    let pool = ProcessPool::new(1).unwrap();
    let first = pool.apply_blocking(leave_a_thread_running, ()).unwrap();
    for i in 0..5 {
        assert_eq!(pool.apply_blocking(pid, ()), Ok(first), "task {i} moved");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), pool.shutdown()).await })
        .expect("shutdown waited on the task's stray thread");
    assert!(wait_until(Duration::from_secs(5), || is_reaped(first)));
}

#[cfg(unix)]
fn a_task_that_closes_every_descriptor_fails_only_itself() {
    let pool = ProcessPool::new(1).unwrap();
    let worker = pool.worker_pids()[0];
    let r = apply_within_a_minute(&pool, "closing descriptors", close_every_descriptor);
    assert!(
        matches!(
            r,
            Err(TaskError::WorkerDied { .. } | TaskError::Protocol { .. })
        ),
        "{r:?}"
    );
    assert!(wait_until(Duration::from_secs(5), || is_reaped(worker)));
    assert_eq!(pool.apply_blocking(square, 6), Ok(36));
}

/// The worker sleeps in a blocking read of its job pipe between jobs; a
/// task that makes it non-blocking must not make the worker fail.
#[cfg(unix)]
fn a_task_that_makes_every_descriptor_non_blocking_fails_nothing() {
    let pool = ProcessPool::new(1).unwrap();
    let worker = pool.worker_pids()[0];
    let ran_in = apply_within_a_minute(
        &pool,
        "non-blocking descriptors",
        make_every_descriptor_non_blocking,
    );
    assert_eq!(ran_in, Ok(worker));
    // Idle between calls (the direct lane) and through the queue.
    for i in 0..20u64 {
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(pool.apply_blocking(square, i), Ok(i * i));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let squares: Vec<u64> = rt.block_on(async {
        let tasks: Vec<_> = (0..200u64).map(|i| pool.spawn(square, i)).collect();
        futures::future::try_join_all(tasks).await.unwrap()
    });
    assert_eq!(squares, (0..200u64).map(|x| x * x).collect::<Vec<_>>());
    // Results larger than a pipe holds, on both result pipes.
    let big = vec![7u8; 4 << 20];
    // (A small argument goes the direct lane: its result, the reply pipe.)
    assert_eq!(pool.apply_blocking(bytes_of, big.len()), Ok(big.clone()));
    assert_eq!(
        pool.apply_blocking(echo_bytes, big.clone())
            .map(|b| b.len()),
        Ok(big.len())
    );
    let echoed = rt.block_on(async {
        let tasks: Vec<_> = (0..3)
            .map(|_| pool.spawn(echo_bytes, big.clone()))
            .collect();
        futures::future::try_join_all(tasks).await.unwrap()
    });
    assert!(echoed.iter().all(|b| b.len() == big.len()));
    assert_eq!(pool.worker_pids(), vec![worker], "the worker served on");
}

fn ten_megabytes_printed_by_a_task_neither_deadlock_nor_corrupt() {
    let mut child = role(&this_exe(), "print")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut printed = Vec::new();
        stdout.read_to_end(&mut printed).unwrap();
        printed
    });
    let mut err = String::new();
    stderr.read_to_string(&mut err).unwrap();
    let printed = reader.join().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?} {err}");
    assert_eq!(printed.len(), 10 << 20, "the task's output was cut or grew");
    assert!(printed
        .split(|&b| b == b'\n')
        .all(|l| l.iter().all(|&b| b == b'x')));
    assert!(
        err.contains("procpool-test-result Ok(10485760) Ok(144)"),
        "stderr: {}",
        &err[err.len().saturating_sub(2000)..]
    );
}

fn panics_with_odd_payloads_give_bounded_messages() {
    let pool = ProcessPool::new(1).unwrap();
    match pool.apply_blocking(panic_with_a_number, ()) {
        Err(TaskError::Panicked { message, pid, .. }) => {
            assert!(message.contains("not a string"), "{message}");
            assert!(pid.is_some());
        }
        other => panic!("unexpected {other:?}"),
    }
    match pool.apply_blocking(panic_with_ten_megabytes, ()) {
        Err(TaskError::Panicked { message, .. }) => {
            assert!(
                message.len() <= 70_000,
                "message of {} bytes",
                message.len()
            );
            assert!(message.starts_with("yyyy"));
            assert!(
                message.contains("bytes cut"),
                "{}",
                &message[message.len() - 100..]
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    // (The thread pool shares the same bound; its threads report panics
    // through the program's hook, so only the small case is run here.)
    let threads = ThreadPool::new(1).unwrap();
    match threads.apply_blocking(panic_with_a_number, ()) {
        Err(TaskError::Panicked { message, pid, .. }) => {
            assert!(message.contains("not a string"), "{message}");
            assert_eq!(pid, None);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(pool.apply_blocking(square, 3), Ok(9));
}

// ---------------------------------------------------------------- 6. many pools

fn many_pools_leave_nothing_behind() {
    fn cycle() {
        let pool = ProcessPool::new(2).unwrap();
        assert_eq!(pool.apply_blocking(square, 3), Ok(9));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(pool.apply(square, 4)), Ok(16));
        drop(pool);
        let threads = ThreadPool::new(2).unwrap();
        assert_eq!(threads.apply_blocking(square, 5), Ok(25));
    }
    cycle(); // first use: lazily made statics, tokio's signal pipe, …
             // This binary runs its tests in `main`: once the pools' own threads are
             // gone, the main thread is the only one left.
    assert!(
        wait_until(Duration::from_secs(15), || threads() == 1),
        "threads left after the warm-up: {}",
        threads()
    );
    let baseline = (threads(), open_fds());
    let rss = rss_kib();
    for _ in 0..200 {
        cycle();
    }
    back_to(baseline, "after 200 pools");
    let grown = rss_kib().saturating_sub(rss);
    assert!(grown < 32 * 1024, "RSS grew by {grown} KiB over 200 pools");
}

#[cfg(unix)]
fn run_tests() {
    common::run_sequentially(&[
        (
            "ctrl_c_to_the_group_lets_a_handling_program_finish_its_tasks",
            &ctrl_c_to_the_group_lets_a_handling_program_finish_its_tasks,
        ),
        (
            "ctrl_c_ends_a_program_that_does_not_handle_it_and_its_workers",
            &ctrl_c_ends_a_program_that_does_not_handle_it_and_its_workers,
        ),
        (
            "a_deploy_over_the_executable_does_not_stop_the_pool",
            &a_deploy_over_the_executable_does_not_stop_the_pool,
        ),
        (
            "a_program_started_through_a_symlink_survives_its_target_changing",
            &a_program_started_through_a_symlink_survives_its_target_changing,
        ),
        (
            "a_program_started_by_a_relative_path_survives_chdir_and_deletion",
            &a_program_started_by_a_relative_path_survives_chdir_and_deletion,
        ),
        (
            "dropping_the_last_process_pool_handle_inside_a_task",
            &dropping_the_last_process_pool_handle_inside_a_task,
        ),
        (
            "dropping_the_last_thread_pool_handle_inside_a_task",
            &dropping_the_last_thread_pool_handle_inside_a_task,
        ),
        (
            "tasks_dropped_and_spawned_while_a_thread_exits",
            &tasks_dropped_and_spawned_while_a_thread_exits,
        ),
        (
            "blocking_calls_inside_a_current_thread_runtime_do_not_deadlock",
            &blocking_calls_inside_a_current_thread_runtime_do_not_deadlock,
        ),
        (
            "waiting_with_block_on_inside_a_current_thread_runtime_does_not_deadlock",
            &waiting_with_block_on_inside_a_current_thread_runtime_does_not_deadlock,
        ),
        (
            "a_task_polled_on_the_runtime_then_waited_for_in_block_on_does_not_hang",
            &a_task_polled_on_the_runtime_then_waited_for_in_block_on_does_not_hang,
        ),
        (
            "exit_zero_inside_a_task_is_a_worker_death_not_a_success",
            &exit_zero_inside_a_task_is_a_worker_death_not_a_success,
        ),
        (
            "a_task_that_stops_itself_is_still_killed_by_a_timeout",
            &a_task_that_stops_itself_is_still_killed_by_a_timeout,
        ),
        (
            "a_task_that_leaves_a_thread_running_fails_nothing",
            &a_task_that_leaves_a_thread_running_fails_nothing,
        ),
        (
            "a_task_that_closes_every_descriptor_fails_only_itself",
            &a_task_that_closes_every_descriptor_fails_only_itself,
        ),
        (
            "a_task_that_makes_every_descriptor_non_blocking_fails_nothing",
            &a_task_that_makes_every_descriptor_non_blocking_fails_nothing,
        ),
        (
            "ten_megabytes_printed_by_a_task_neither_deadlock_nor_corrupt",
            &ten_megabytes_printed_by_a_task_neither_deadlock_nor_corrupt,
        ),
        (
            "panics_with_odd_payloads_give_bounded_messages",
            &panics_with_odd_payloads_give_bounded_messages,
        ),
        (
            "many_pools_leave_nothing_behind",
            &many_pools_leave_nothing_behind,
        ),
    ]);
}

#[cfg(not(unix))]
fn main() {
    println!("hazards: Unix-only scenarios (see the file's docs); none run on this platform");
}
