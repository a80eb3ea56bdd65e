//! A progress bar over a big `map_unordered`: Python's
//! `for f in tqdm(as_completed(futures), total=n)` pattern, with `indicatif`.
//!
//! `cargo run --release --example progress`
//!
//! 10,000 items, each the longest Collatz chain in a block of 2,000 numbers
//! (a few seconds in all on two cores), run in a `ProcessPool`. Results arrive as they complete and
//! tick the bar, which shows the rate and the ETA. When stderr is not a
//! terminal (CI logs, `2>file`) the bar is hidden and a plain line is printed
//! every 10% instead, so logs stay readable. A summary follows.

use std::fmt;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use procpool::ProcessPool;

const ITEMS: u64 = 10_000;
/// Numbers per item: item `i` covers `i*BLOCK+1 ..= (i+1)*BLOCK`.
const BLOCK: u64 = 2_000;

/// The longest Collatz chain in one block of numbers: `(start, steps)`.
///
/// Chain lengths vary, so items take uneven time and finish out of order,
/// which is what `map_unordered` is for.
fn longest_chain(item: u64) -> (u64, u32) {
    let mut best = (0, 0);
    for start in item * BLOCK + 1..=(item + 1) * BLOCK {
        let (mut x, mut steps) = (start, 0u32);
        while x != 1 {
            x = if x % 2 == 0 { x / 2 } else { 3 * x + 1 };
            steps += 1;
        }
        if steps > best.1 {
            best = (start, steps);
        }
    }
    best
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = ProcessPool::new(0)?;
    let started = Instant::now();

    let bar = ProgressBar::new(ITEMS);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} ({rate}, ETA {eta})",
        )?
        // The built-in {per_sec} prints four decimals; whole items are enough.
        .with_key("rate", |s: &ProgressState, w: &mut dyn fmt::Write| {
            let _ = write!(w, "{:.0} items/s", s.per_sec());
        }),
    );
    // indicatif draws on stderr and stays silent when it is not a terminal; in
    // that case we report progress ourselves with plain lines.
    let interactive = std::io::stderr().is_terminal();
    if !interactive {
        bar.set_draw_target(ProgressDrawTarget::hidden());
        println!("stderr is not a terminal: printing progress every 10% instead of a bar");
    } else {
        bar.enable_steady_tick(Duration::from_millis(100));
    }

    // Items go to the workers in adaptive chunks; each result comes back as soon
    // as its chunk finishes, in whatever order that is.
    let mut results = pool.map_unordered(longest_chain, 0..ITEMS);
    let (mut best, mut failed, mut done) = ((0u64, 0u32), 0u64, 0u64);
    let mut next_report = ITEMS / 10;
    while let Some(r) = results.next().await {
        match r {
            Ok(found) if found.1 > best.1 => best = found,
            Ok(_) => {}
            Err(e) => {
                failed += 1;
                bar.println(format!("an item failed: {e}"));
            }
        }
        done += 1;
        bar.inc(1);
        if !interactive && done >= next_report {
            // The hidden bar still keeps its rate estimate, so the ETA is free.
            println!(
                "{done:>6}/{ITEMS} ({:>3}%)  {:>5.1} s elapsed, {:>6.0} items/s, ETA {:.1} s",
                done * 100 / ITEMS,
                started.elapsed().as_secs_f64(),
                bar.per_sec(),
                bar.eta().as_secs_f64()
            );
            next_report += ITEMS / 10;
        }
    }
    bar.finish_and_clear();

    let elapsed = started.elapsed();
    println!("\nSummary");
    println!(
        "  items:       {done} ({failed} failed), covering 1..={}",
        ITEMS * BLOCK
    );
    println!(
        "  workers:     {} processes {:?}",
        pool.workers(),
        pool.worker_pids()
    );
    println!(
        "  elapsed:     {:.2} s ({:.0} items/s)",
        elapsed.as_secs_f64(),
        done as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  answer:      {} has the longest Collatz chain below {}: {} steps",
        best.0,
        ITEMS * BLOCK + 1,
        best.1
    );
    pool.shutdown().await;
    Ok(())
}
