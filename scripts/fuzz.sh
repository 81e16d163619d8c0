#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz, docs/fuzzing.md) with clang,
# AddressSanitizer and UndefinedBehaviorSanitizer into build-fuzz/, and runs
# each for a fixed time on a copy of its seed corpus (the checked-in corpus
# never grows). Installs what it needs from Debian 12 packages if missing.
# Exits non-zero if any target crashed, leaked, hit UB, timed out or ran out
# of memory; the inputs that did are kept in build-fuzz/findings/TARGET/.
#
#   scripts/fuzz.sh                      every target, 60 s each
#   scripts/fuzz.sh --seconds 10         10 s each (or FUZZ_SECONDS=10)
#   scripts/fuzz.sh --target cron --target zap
#   scripts/fuzz.sh --list               the target names
#   scripts/fuzz.sh --no-install         do not touch packages
#   ZFORCE_FUZZ_BUILD=DIR scripts/fuzz.sh  another build dir than build-fuzz/
set -euo pipefail
cd "$(dirname "$0")/.."

targets_all=(protocol protocol_body job_loader cron trigger_values curve_keys zap)
seconds=${FUZZ_SECONDS:-60}
builddir=${ZFORCE_FUZZ_BUILD:-build-fuzz}
install=1
targets=()

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) [ $# -ge 2 ] || { echo "fuzz: --seconds needs a number" >&2; exit 2; }
               seconds=$2; shift 2 ;;
    --seconds=*) seconds=${1#*=}; shift ;;
    --target) [ $# -ge 2 ] || { echo "fuzz: --target needs a name" >&2; exit 2; }
              targets+=("$2"); shift 2 ;;
    --target=*) targets+=("${1#*=}"); shift ;;
    --list) printf '%s\n' "${targets_all[@]}"; exit 0 ;;
    --no-install) install=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "fuzz: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || { echo "fuzz: --seconds wants a whole number > 0, not '$seconds'" >&2; exit 2; }
[ ${#targets[@]} -gt 0 ] || targets=("${targets_all[@]}")
for t in "${targets[@]}"; do
  [[ " ${targets_all[*]} " == *" $t "* ]] || { echo "fuzz: no target '$t' (--list)" >&2; exit 2; }
done

# ---- packages: what setup.sh installs, plus clang, its runtimes (libFuzzer,
# the sanitizers) and llvm-symbolizer for readable stack traces.
if [ "$install" = 1 ]; then
  scripts/setup.sh --no-build
  packages=(clang libclang-rt-14-dev llvm)
  missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "fuzz: installing ${missing[*]}"
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo_cmd[@]}" apt-get update -qq >/dev/null
    "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

# ---- build: only the fuzz targets (and what they link), not the whole tree.
if [ ! -f "$builddir/build.ninja" ]; then
  CC=clang CXX=clang++ meson setup "$builddir" -Dfuzz=true --buildtype=debugoptimized \
    -Db_sanitize=address,undefined -Db_lundef=false \
    "-Dcpp_args=-fsanitize=fuzzer-no-link -fno-sanitize-recover=all" >/dev/null
fi
ninja_targets=()
for t in "${targets[@]}"; do ninja_targets+=("tests/fuzz/fuzz_$t"); done
ninja -C "$builddir" "${ninja_targets[@]}" >"$builddir/last-fuzz-build.log" 2>&1 ||
  { cat "$builddir/last-fuzz-build.log"; echo "fuzz: build failed"; exit 1; }

# ---- run
work=$(mktemp -d "${TMPDIR:-/tmp}/zf-fuzz.XXXXXX")
child=
cleanup() {
  [ -z "$child" ] || kill "$child" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM  # so that a kill stops the fuzzer and cleans up too
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

# Longest input per target: a frame or job file of realistic size; key files
# a little over the loader's 4 KiB limit.
max_len() {
  case "$1" in
    job_loader) echo 8192 ;;
    curve_keys) echo 4200 ;;
    cron|trigger_values) echo 256 ;;
    zap) echo 1024 ;;
    *) echo 4096 ;;
  esac
}

failed=()
printf '%-15s %10s %9s %7s %7s %7s  %s\n' target runs exec/s cov ft corpus result
for t in "${targets[@]}"; do
  corpus="$work/$t/corpus"
  artifacts="$work/$t/artifacts"
  mkdir -p "$corpus" "$artifacts" "$work/$t/tmp"
  rm -rf "$builddir/findings/$t"
  cp tests/fuzz/corpus/"$t"/* "$corpus"/
  dict=()
  [ -f "tests/fuzz/dict/$t.dict" ] && dict=("-dict=tests/fuzz/dict/$t.dict")
  log="$work/$t/log"
  set +e
  # In the background and waited for, so that a signal reaches the traps at once.
  TMPDIR="$work/$t/tmp" "$builddir/tests/fuzz/fuzz_$t" "$corpus" "${dict[@]}" \
    -max_total_time="$seconds" -max_len="$(max_len "$t")" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$artifacts/" >"$log" 2>&1 &
  child=$!
  wait "$child"
  status=$?
  child=
  set -e
  runs=$(awk '/^stat::number_of_executed_units:/{print $2}' "$log")
  speed=$(awk '/^stat::average_exec_per_sec:/{print $2}' "$log")
  last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)  # none if it died at start
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([0-9]*\)\/.*/\1/p' <<<"$last")
  found=$(find "$artifacts" -type f | wc -l)
  result=ok
  if [ "$status" -ne 0 ] || [ "$found" -gt 0 ]; then
    kind=$(grep -m1 -oE 'ERROR: (AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|libFuzzer): [a-zA-Z-]+|runtime error|FUZZ_CHECK failed' "$log" || true)
    result="FAILED (exit $status, ${found} input(s)${kind:+, $kind})"
    keep="$builddir/findings/$t"
    mkdir -p "$keep"
    cp "$artifacts"/* "$keep"/ 2>/dev/null || true
    cp "$log" "$keep/log"
    failed+=("$t")
  fi
  printf '%-15s %10s %9s %7s %7s %7s  %s\n' "$t" "${runs:-?}" "${speed:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$result"
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: ${#failed[@]} target(s) failed: ${failed[*]}; inputs and logs in $builddir/findings/"
  echo "      reproduce with: $builddir/tests/fuzz/fuzz_TARGET $builddir/findings/TARGET/crash-..."
  exit 1
fi
echo "fuzz: ${#targets[@]} target(s) ran ${seconds} s each, no findings"
