#!/usr/bin/env bash
# Load test of the web_server example: /health latency idle and under CPU load,
# for each way of running the CPU work (procpool, spawn_blocking, inline).
#
# Everything stays on this machine: the example binds its servers to
# 127.0.0.1 (ephemeral ports) and its load generator refuses any non-loopback
# address. Takes 15-20 seconds after the build; prints a markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --release --example web_server -- --self-test --all-modes "$@"
