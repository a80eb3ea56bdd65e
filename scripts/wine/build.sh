#!/bin/sh
# Builds the ProcessPrng shim DLL (see bcryptprimitives.c) into $1 (default:
# /tmp/procpool-wine).
set -eu
out=${1:-/tmp/procpool-wine}
mkdir -p "$out"
x86_64-w64-mingw32-gcc -O2 -shared -o "$out/bcryptprimitives.dll" \
    "$(dirname "$0")/bcryptprimitives.c" -ladvapi32
