#!/usr/bin/env bash
# Installs what the Windows checks need: the rustup target, the MinGW C
# compiler (some dependencies' build scripts compile C for the target) and
# Wine, from Debian's packages when missing and root.
set -euo pipefail

if ! command -v wine >/dev/null || ! command -v x86_64-w64-mingw32-gcc >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wine64 gcc-mingw-w64-x86-64 >/dev/null
  else
    echo "windows-tools: need wine64 and gcc-mingw-w64-x86-64" >&2
    exit 1
  fi
fi
rustup target add x86_64-pc-windows-gnu >/dev/null 2>&1 || true
