#!/usr/bin/env bash
# Runs every zforce test (unit and cluster suites) with meson test.
# Installs and builds first if needed (scripts/setup.sh).
#   scripts/test.sh                 all suites
#   scripts/test.sh --sanitize      all suites on a build with AddressSanitizer
#                                   + UndefinedBehaviorSanitizer (build-asan/):
#                                   any report fails the test that caused it
#   scripts/test.sh --suite unit    one suite (any meson test arguments pass through)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
builddir=${ZFORCE_BUILD:-build}
args=()
for a in "$@"; do
  if [ "$a" = --sanitize ]; then
    builddir=${ZFORCE_ASAN_BUILD:-build-asan}
    if [ ! -f "$builddir/build.ninja" ]; then
      meson setup "$builddir" --buildtype=debug -Db_sanitize=address,undefined -Db_lundef=false
    fi
    # Every report is an error (halt), leaks included; the processes the
    # cluster tests start inherit these.
    export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:halt_on_error=1}
    export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
    ninja -C "$builddir"
  else
    args+=("$a")
  fi
done
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
# Sanitized binaries are slower: give every test three times its timeout.
mult=1
[ "$builddir" = "${ZFORCE_ASAN_BUILD:-build-asan}" ] && mult=3
meson test -C "$builddir" --print-errorlogs --num-processes 2 --timeout-multiplier "$mult" "${args[@]}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
ok=$(awk '/^Ok:/{print $2}' "$log")
fail=$(awk '/^Fail:/{print $2}' "$log")
timeouts=$(awk '/^Timeout:/{print $2}' "$log")
echo "${ok:-0} passed, $(( ${fail:-0} + ${timeouts:-0} )) failed"
exit "$status"
