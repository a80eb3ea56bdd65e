//! The "More than one machine" section of the bench report: procpool workers
//! over ssh on loopback next to local ones. Runs when `PROCPOOL_TEST_SSH_CONFIG`
//! names an ssh client config with a `procpool-test` host (as
//! `scripts/test-sshd.sh start` prints); otherwise prints that it was skipped.

use std::time::{Duration, Instant};

use futures::executor::block_on;
use procpool::{ProcessPool, Remote};

fn square(x: u64) -> u64 {
    x * x
}
fn sleep_forever(_: ()) {
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// One side's figures.
struct Side {
    build: Duration,
    round_trip: Duration,
    many: Duration,
    map: Duration,
    replace: Duration,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn measure(make: &dyn Fn(usize) -> ProcessPool, tasks: u64, reps: usize) -> Side {
    let t = Instant::now();
    let pool = make(2);
    let build = t.elapsed();
    for _ in 0..100 {
        block_on(pool.apply(square, 3)).unwrap(); // warm up
    }
    let round_trip = median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..200 {
                    block_on(pool.apply(square, 3)).unwrap();
                }
                t.elapsed() / 200
            })
            .collect(),
    );
    let many = median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                let all: Vec<_> = (0..tasks).map(|i| pool.spawn(square, i)).collect();
                for task in all {
                    block_on(task).unwrap();
                }
                t.elapsed()
            })
            .collect(),
    );
    let map = median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                let n = pool.map_blocking(square, 0..100_000u64).count();
                assert_eq!(n, 100_000);
                t.elapsed()
            })
            .collect(),
    );
    drop(pool);
    // Kill-to-replacement on a one-worker pool: from dropping the running
    // task to the next task's result, which only a new worker can give.
    let single = make(1);
    let replace = median(
        (0..reps)
            .map(|_| {
                let task = single.spawn(sleep_forever, ());
                while single.stats().running == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
                std::thread::sleep(Duration::from_millis(20));
                let t = Instant::now();
                drop(task);
                block_on(single.apply(square, 2)).unwrap();
                t.elapsed()
            })
            .collect(),
    );
    Side {
        build,
        round_trip,
        many,
        map,
        replace,
    }
}

fn ms(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.1} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }
}

/// Measures and prints the section.
pub fn print_remote_section(quick: bool) {
    println!("\n### More than one machine (ssh on loopback)\n");
    let Some(config) = std::env::var_os("PROCPOOL_TEST_SSH_CONFIG") else {
        println!(
            "skipped: no sshd (set PROCPOOL_TEST_SSH_CONFIG to the config that \
             `scripts/test-sshd.sh start` prints)"
        );
        return;
    };
    let (tasks, reps) = if quick { (10_000, 3) } else { (10_000, 7) };
    let local = measure(&|n| ProcessPool::new(n).unwrap(), tasks, reps);
    let ssh = |n| {
        Remote::ssh("procpool-test")
            .arg("-F")
            .arg(&config)
            .workers(n)
    };
    let remote = measure(
        &|n| ProcessPool::builder().remote(ssh(n)).build().unwrap(),
        tasks,
        reps,
    );
    println!("Two workers each (one for the kill), all on this machine; \"ssh\" workers run through OpenSSH on 127.0.0.1, so");
    println!(
        "the figures show the cost of the ssh channel (encryption, two more processes per hop),"
    );
    println!("not of a network. Medians of {reps} runs.\n");
    println!("| workload | local | ssh (loopback) | ssh / local |");
    println!("|---|---|---|---|");
    let row = |name: &str, l: Duration, r: Duration| {
        println!(
            "| {name} | {} | {} | {:.1}× |",
            ms(l),
            ms(r),
            r.as_secs_f64() / l.as_secs_f64()
        );
    };
    row(
        "pool build (ssh: executable already shipped)",
        local.build,
        remote.build,
    );
    row("`apply` round trip", local.round_trip, remote.round_trip);
    row(
        &format!("{tasks} tasks (spawn all, await all)"),
        local.many,
        remote.many,
    );
    row("`map` of 100 000 tiny items", local.map, remote.map);
    row(
        "kill-on-drop → a replacement serves (1 worker)",
        local.replace,
        remote.replace,
    );
    println!(
        "\n10k-task throughput: local {:.0} tasks/s, ssh {:.0} tasks/s.",
        tasks as f64 / local.many.as_secs_f64(),
        tasks as f64 / remote.many.as_secs_f64()
    );
}
