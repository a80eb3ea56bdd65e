#!/usr/bin/env python3
"""Python's process pools on the workloads procpool is compared against.

Measures, on this machine, with 2 worker processes and the platform's default
start method (fork on Linux):

* round trip of one trivial call on a warm pool: ``Pool.apply``,
  ``Pool.apply_async(...).get()``, ``ProcessPoolExecutor.submit(...).result()``,
  and a raw pipe ping-pong with a ``cat`` child as the floor, interleaved;
  once free-running and once with everything pinned to one CPU (Linux);
* 10,000 trivial tasks (2,000 with ``--quick``): ``apply_async`` x 10,000
  then ``get`` each,
  ``submit`` x 10,000 then ``result`` each, ``ProcessPoolExecutor.map``
  without chunksize (per-item times);
* ``Pool.map`` of 1,000,000 trivial items (x*x) with the default chunksize;
* skewed work, fib(n) for n = 38 down to 1: ``Pool.map`` default chunksize and
  chunksize=1;
* uniform work, trial-division factorisation of 20,000 numbers from
  10,000,000: ``Pool.map`` default chunksize and a serial loop;
* pool start: a 2-worker pool built and its first task done (fork, and the
  ``spawn`` start method for comparison with procpool's re-exec).

The map figures are medians of a few repetitions (the variants of one
workload interleaved). Prints one flat JSON object to stdout (progress goes to
stderr). ``--quick`` shrinks the heavy workloads for smoke tests (fib from 30,
2,000 numbers, 100,000 map items, 2,000 small tasks); ``--map-items``,
``--fib-top`` and ``--factor-count`` set those sizes explicitly (the
``bench_report`` example passes its own, so both sides do the same work).
Standard library only.
"""

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor

WORKERS = 2


def ident(x):
    """The trivial task of the round trips."""
    return x


def square(x):
    """The trivial task of the many-items workloads."""
    return x * x


def fib(n):
    """Naive Fibonacci: exponential, so fib(38) dwarfs fib(1)."""
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def factorize(n):
    """Naive trial division; returns the prime factors of n."""
    factors = []
    d = 2
    while d * d <= n:
        while n % d == 0:
            factors.append(d)
            n //= d
        d += 1
    if n > 1:
        factors.append(n)
    return factors


def log(msg):
    print(f"[python_peers] {msg}", file=sys.stderr, flush=True)


def timed(fn):
    """Seconds one call of fn() takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_of(reps, fn):
    """Median seconds of fn() over reps runs."""
    return statistics.median(timed(fn) for _ in range(reps))


class Cat:
    """A ``cat`` child with piped stdin and stdout: the raw-pipe floor."""

    def __init__(self):
        self.proc = subprocess.Popen(
            ["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
        )
        self.wfd = self.proc.stdin.fileno()
        self.rfd = self.proc.stdout.fileno()

    def ping(self, msg):
        os.write(self.wfd, msg)
        got = 0
        while got < len(msg):
            got += len(os.read(self.rfd, len(msg) - got))

    def close(self):
        self.proc.kill()
        self.proc.wait()


def round_trips(pool, executor, batch, reps):
    """Per-call microseconds of each round-trip flavour, measured interleaved
    (every repetition runs each flavour once, in rotating order)."""
    cat = Cat()
    msg = b"x" * 16
    peers = {
        "raw_pipe_us": lambda: cat.ping(msg),
        "pool_apply_us": lambda: pool.apply(ident, (1,)),
        "pool_apply_async_us": lambda: pool.apply_async(ident, (1,)).get(),
        "executor_submit_us": lambda: executor.submit(ident, 1).result(),
    }
    names = list(peers)
    for name in names:  # warm up every path
        for _ in range(50):
            peers[name]()
    samples = {name: [] for name in names}
    for rep in range(reps):
        for k in range(len(names)):
            name = names[(rep + k) % len(names)]
            call = peers[name]

            def run(call=call):
                for _ in range(batch):
                    call()

            samples[name].append(timed(run) / batch * 1e6)
    cat.close()
    return {name: statistics.median(v) for name, v in samples.items()}


def pinned_round_trips(batch, reps):
    """The same round trips with this thread, fresh pools and their workers all
    pinned to one CPU, so no wake-up has to reach an idle vCPU (a random 10 to
    300 us on small VMs): what remains is the CPU cost. Keys get a ``pinned_``
    prefix; empty where pinning is unavailable."""
    if not hasattr(os, "sched_setaffinity"):
        return {}
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(previous)})
    try:
        with mp.Pool(WORKERS) as pool, ProcessPoolExecutor(WORKERS) as executor:
            found = round_trips(pool, executor, batch, reps)
    finally:
        os.sched_setaffinity(0, previous)
    return {f"pinned_{key}": value for key, value in found.items()}


def many_small(pool, executor, n, reps):
    """Per-task microseconds for n trivial tasks spawned, then all awaited."""

    def apply_async_all():
        for r in [pool.apply_async(square, (i,)) for i in range(n)]:
            r.get()

    def submit_all():
        for f in [executor.submit(square, i) for i in range(n)]:
            f.result()

    def executor_map():
        for _ in executor.map(square, range(n)):
            pass

    peers = {
        "pool_apply_async_10k_us": apply_async_all,
        "executor_submit_10k_us": submit_all,
        "executor_map_10k_us": executor_map,
    }
    samples = {name: [] for name in peers}
    for _ in range(reps):
        for name, fn in peers.items():
            samples[name].append(timed(fn) / n * 1e6)
    return {name: statistics.median(v) for name, v in samples.items()}


def interleaved(reps, peers):
    """Median seconds of each of ``peers`` (name -> function), over ``reps``
    repetitions that each run every peer once, in rotating order."""
    names = list(peers)
    samples = {name: [] for name in names}
    for rep in range(reps):
        for k in range(len(names)):
            name = names[(rep + k) % len(names)]
            samples[name].append(timed(peers[name]))
    return {name: statistics.median(v) for name, v in samples.items()}


def default_chunksize(items):
    """The chunksize ``Pool.map`` picks when given none (CPython's rule)."""
    chunksize, extra = divmod(items, WORKERS * 4)
    return chunksize + 1 if extra else chunksize


def pool_start(reps, spawn_reps):
    """Milliseconds to build a 2-worker pool and finish its first task."""

    def mp_pool(ctx):
        def run():
            with ctx.Pool(WORKERS) as p:
                p.apply(ident, (1,))
                p.terminate()

        return run

    def executor():
        with ProcessPoolExecutor(WORKERS) as ex:
            ex.submit(ident, 1).result()

    return {
        "pool_start_ms": median_of(reps, mp_pool(mp.get_context())) * 1e3,
        "executor_start_ms": median_of(reps, executor) * 1e3,
        "pool_start_spawn_ms": median_of(spawn_reps, mp_pool(mp.get_context("spawn")))
        * 1e3,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shrink the heavy workloads")
    parser.add_argument("--map-items", type=int, help="items of the x*x map")
    parser.add_argument("--fib-top", type=int, help="largest n of the fib map")
    parser.add_argument("--factor-count", type=int, help="numbers to factorise")
    args = parser.parse_args()
    quick = args.quick

    def size(given, quick_default, default):
        if given is not None:
            return given
        return quick_default if quick else default

    fib_top = size(args.fib_top, 30, 38)
    factor_count = size(args.factor_count, 2_000, 20_000)
    factor_start = 10_000_000
    map_items = size(args.map_items, 100_000, 1_000_000)
    small_n = 2_000 if quick else 10_000
    rt_batch, rt_reps = (200, 5) if quick else (200, 15)
    small_reps = 2 if quick else 5
    # Each fib repetition takes half a minute at n = 38; the trivial map is
    # quick, so it gets more.
    map_reps, squares_reps = 3, 5

    out = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "start_method": mp.get_start_method(),
        "workers": WORKERS,
        "quick": quick,
        "fib_top": fib_top,
        "factor_count": factor_count,
        "factor_start": factor_start,
        "map_items": map_items,
        "small_tasks": small_n,
        "map_reps": map_reps,
        "squares_reps": squares_reps,
    }

    log("round trips, pinned to one CPU")
    out.update(pinned_round_trips(rt_batch, rt_reps))

    with mp.Pool(WORKERS) as pool, ProcessPoolExecutor(WORKERS) as executor:
        log("round trips")
        out.update(round_trips(pool, executor, rt_batch, rt_reps))

        log(f"{small_n} small tasks")
        out.update(many_small(pool, executor, small_n, small_reps))

        log(f"Pool.map of {map_items} items")
        items = range(map_items)
        out["pool_map_1m_s"] = median_of(squares_reps, lambda: pool.map(square, items))
        out["pool_map_1m_chunksize"] = default_chunksize(map_items)

        fib_args = list(range(fib_top, 0, -1))
        # sum(fib(1..=n)) == fib(n + 2) - 1: checks every map returned it all.
        a, b = 0, 1
        for _ in range(fib_top + 2):
            a, b = b, a + b
        fib_sum = a - 1
        log(f"fib({fib_top}) down to fib(1), {map_reps} times")

        def fib_map(*chunksize):
            def go():
                assert sum(pool.map(fib, fib_args, *chunksize)) == fib_sum

            return go

        found = interleaved(
            map_reps,
            {"fib_pool_map_s": fib_map(), "fib_pool_map_chunksize1_s": fib_map(1)},
        )
        out.update(found)
        out["fib_pool_map_chunksize"] = default_chunksize(len(fib_args))

        log(f"factorising {factor_count} numbers, {map_reps} times")
        numbers = range(factor_start, factor_start + factor_count)
        results = {}

        def factor_run(key, run):
            def go():
                results[key] = run()

            return go

        found = interleaved(
            map_reps,
            {
                "factor_pool_map_s": factor_run(
                    "pool", lambda: pool.map(factorize, numbers)
                ),
                "factor_serial_s": factor_run(
                    "serial", lambda: [factorize(n) for n in numbers]
                ),
            },
        )
        out.update(found)
        assert results["pool"] == results["serial"]
        out["factor_total_factors"] = sum(len(f) for f in results["serial"])

    # Last, so that the pools it starts and tears down disturb nothing else.
    log("pool start")
    out.update(pool_start(3 if quick else 7, 1 if quick else 3))

    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
