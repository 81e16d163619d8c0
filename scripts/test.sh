#!/usr/bin/env bash
# Runs every zforce test (unit and cluster suites) with meson test.
# Installs and builds first if needed (scripts/setup.sh).
#   scripts/test.sh                 all suites
#   scripts/test.sh --suite unit    one suite (any meson test arguments pass through)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
builddir=${ZFORCE_BUILD:-build}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
meson test -C "$builddir" --print-errorlogs --num-processes 2 "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
ok=$(awk '/^Ok:/{print $2}' "$log")
fail=$(awk '/^Fail:/{print $2}' "$log")
timeouts=$(awk '/^Timeout:/{print $2}' "$log")
echo "${ok:-0} passed, $(( ${fail:-0} + ${timeouts:-0} )) failed"
exit "$status"
