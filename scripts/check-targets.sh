#!/usr/bin/env bash
# Type-checks procpool (every target: lib, tests, examples, benches) and runs
# clippy for the Unix systems that cannot be run here: macOS (Intel and Apple
# silicon) and FreeBSD. Linux itself, the portable backend and Windows are run,
# not only checked (see .ci/run).
#
# criterion (a dev-dependency) builds one small C file through `cc`; for the
# Apple targets clang compiles it freestanding (it needs no SDK headers), so
# no macOS SDK is required.
set -euo pipefail
cd "$(dirname "$0")/.."

targets=(x86_64-apple-darwin aarch64-apple-darwin x86_64-unknown-freebsd)

if ! command -v clang >/dev/null || ! command -v llvm-ar >/dev/null; then
  apt-get update -qq && apt-get install -y -qq clang llvm >/dev/null
fi
rustup target add "${targets[@]}" >/dev/null

for apple in x86_64_apple_darwin aarch64_apple_darwin; do
  export "CC_${apple}=clang" "AR_${apple}=llvm-ar" "CFLAGS_${apple}=-ffreestanding"
done

for target in "${targets[@]}"; do
  echo "--- $target"
  cargo clippy --all-targets --target "$target" -- -D warnings
done
