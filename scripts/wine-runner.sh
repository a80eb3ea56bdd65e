#!/bin/sh
# Cargo runner for x86_64-pc-windows-gnu binaries under Wine:
#   CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=scripts/wine-runner.sh
# Builds the ProcessPrng shim once (scripts/wine/), puts it beside the
# executable, starts the Wine prefix if needed, and runs the binary.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
exe=$1
shift
shim_dir=${PROCPOOL_WINE_SHIM_DIR:-/tmp/procpool-wine}
if [ ! -f "$shim_dir/bcryptprimitives.dll" ]; then
    "$here/wine/build.sh" "$shim_dir"
fi
cp -f "$shim_dir/bcryptprimitives.dll" "$(dirname "$exe")/"
export WINEPREFIX=${WINEPREFIX:-/tmp/procpool-wineprefix}
export WINEDEBUG=${WINEDEBUG:--all}
if [ ! -f "$WINEPREFIX/system.reg" ]; then
    wineboot --init >/dev/null 2>&1 || true
    wineserver --wait || true
fi
exec wine "$exe" "$@"
