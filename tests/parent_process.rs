//! Whole-process behaviour, tested by re-executing this binary in a role:
//! workers die with a SIGKILLed parent, a program whose task hung exits at
//! once after the timeout, and `main` never runs in a worker.
//!
//! `harness = false`: this file has its own `main`, as a user's program would.

#[path = "common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{is_running, temp_dir, wait_until};
use procpool::ProcessPool;

const MAIN_LOG: &str = "PROCPOOL_TEST_MAIN_LOG";

fn hang(_: ()) {
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn pid(_: ()) -> u32 {
    std::process::id()
}

fn crash(_: ()) -> u32 {
    std::process::abort()
}

fn main() {
    // Every run of `main` is recorded: a worker must never get here.
    if let Ok(path) = std::env::var(MAIN_LOG) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        writeln!(f, "main ran in {}", std::process::id()).unwrap();
    }
    match std::env::args().nth(1).as_deref() {
        Some("--role=holder") => role_holder(),
        Some("--role=timeout") => role_timeout(),
        Some("--role=counter") => role_counter(),
        _ => run_tests(),
    }
}

/// Holds a pool whose workers are all busy, and waits to be killed.
fn role_holder() {
    let pool = ProcessPool::new(2).unwrap();
    let tasks: Vec<_> = (0..4).map(|_| pool.spawn(hang, ())).collect();
    let pids = pool.worker_pids();
    println!(
        "pids {}",
        pids.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    );
    std::thread::sleep(Duration::from_secs(300));
    drop(tasks);
}

/// The reference's seed case: a hung task under a timeout, then `main` returns.
fn role_timeout() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pool = ProcessPool::new(1).unwrap();
    println!("pids {}", pool.worker_pids()[0]);
    let task = pool.spawn(hang, ());
    let r = rt.block_on(async { tokio::time::timeout(Duration::from_secs(3), task).await });
    assert!(r.is_err());
    println!("timed out");
}

/// Runs tasks (including a crash that forces a respawn) in a fresh process.
fn role_counter() {
    let pool = ProcessPool::new(2).unwrap();
    for _ in 0..20 {
        pool.apply_blocking(pid, ()).unwrap();
    }
    assert!(pool.apply_blocking(crash, ()).is_err());
    let workers: std::collections::HashSet<u32> = (0..20)
        .map(|_| pool.apply_blocking(pid, ()).unwrap())
        .collect();
    assert!(!workers.contains(&std::process::id()));
    println!("ok");
}

fn role(name: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.arg(format!("--role={name}"))
        .stdout(Stdio::piped())
        .env_remove(MAIN_LOG);
    cmd
}

fn read_pids(line: &str) -> Vec<u32> {
    line.trim()
        .strip_prefix("pids ")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
        .split(' ')
        .map(|p| p.parse().unwrap())
        .collect()
}

fn workers_die_when_the_parent_is_sigkilled() {
    let mut child = role("holder").spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let pids = read_pids(&line);
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|&p| is_running(p)));
    std::thread::sleep(Duration::from_millis(300)); // let the tasks start
    child.kill().unwrap(); // SIGKILL: no destructor, no cleanup code runs
    child.wait().unwrap();
    let killed = Instant::now();
    // Polled every millisecond, so the printed latency means something (on
    // the portable backend the lifeline alone ends the workers).
    while !pids.iter().all(|&p| !is_running(p)) {
        assert!(
            killed.elapsed() < Duration::from_secs(2),
            "workers {pids:?} outlived their SIGKILLed parent"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    println!(
        "  workers gone {:?} after the parent's SIGKILL",
        killed.elapsed()
    );
}

fn a_program_with_a_hung_task_exits_right_after_the_timeout() {
    let mut child = role("timeout").spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let worker = read_pids(&line)[0];
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "timed out");
    let after = Instant::now();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        after.elapsed() < Duration::from_secs(10),
        "the program took {:?} to exit after its timeout",
        after.elapsed()
    );
    assert!(wait_until(Duration::from_secs(2), || !is_running(worker)));
}

fn main_runs_once_even_with_worker_restarts() {
    let dir = temp_dir("main-log");
    let log = dir.join("main.log");
    let out = role("counter").env(MAIN_LOG, &log).output().unwrap();
    assert!(out.status.success(), "{:?}", out);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    let runs = std::fs::read_to_string(&log).unwrap();
    assert_eq!(runs.lines().count(), 1, "main ran more than once:\n{runs}");
}

fn run_tests() {
    common::run_sequentially(&[
        (
            "workers_die_when_the_parent_is_sigkilled",
            &workers_die_when_the_parent_is_sigkilled,
        ),
        (
            "a_program_with_a_hung_task_exits_right_after_the_timeout",
            &a_program_with_a_hung_task_exits_right_after_the_timeout,
        ),
        (
            "main_runs_once_even_with_worker_restarts",
            &main_runs_once_even_with_worker_restarts,
        ),
    ]);
}
