#!/usr/bin/env bash
# Issue 8 benchmark: a real master (no local slots) and two workers on
# loopback; prints one line per figure, `name: value`, each the median of
# three runs. Then, per run, fresh masters with a backlog of 1,000,000 and of
# 1,000 waiting instances (memory, dispatch rate), and one master with 1,000
# simulated workers. Figures and what bounds them: docs/performance.md.
#
#   scripts/bench.sh            full run (100,000 noop instances per run, 1,000,000 queued)
#   scripts/bench.sh --quick    under 2 minutes (20,000 noop instances per run, 200,000 queued)
#   scripts/bench.sh --only PARTS
#                               only these parts (comma-separated): cluster (noop, true,
#                               latency), sync-normal (latency with --sync normal and
#                               with --no-store), backlog, workers-1000
#
# Environment: ZFORCE_BUILD (build folder, default build-release, configured
# with --buildtype=release if it does not exist), BENCH_SLOTS (slots
# per worker for processes, default 2: the cores), BENCH_NOOP_SLOTS (slots per
# worker for noop, default 256), BENCH_RUNS (runs per figure, default 3),
# BENCH_MASTER_OPTS (more options for every master, e.g. --no-store).
#
# Beside zforce's figures it prints the machine's floors, measured in the same
# run by zforce-bench-floor with nothing of zforce in the way: floor_hops_*
# (the latency probe's four hops with bare libzmq), floor_fdatasync_* (the
# disk's sync, in the data folder), floor_dealers_per_s (a ROUTER and 1,000
# echoing DEALERs, one frame outstanding each).
#
# Three pairs of workers: noop instances run on w1, w2 (BENCH_NOOP_SLOTS each;
# a builtin noop takes no CPU, so its slots are only the pipeline depth: with
# 2 x 2 the figure measured round trips, with 2 x 64 mostly the commit round
# trip per slot, from 2 x 256 on the master's throughput), and on n1, n2 with
# 64 slots each for noop_per_s_64_slots (what sessions 2 to 4 reported as
# noop_per_s); processes on p1, p2 (BENCH_SLOTS each, as many as the cores,
# the same parallelism as the bare spawn loop). Jobs pick their pair with
# `requires`.
# Stops everything it started, by pid, and removes its temp folder.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0 only=
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --only)
      [ $# -ge 2 ] || { echo "--only needs a list of parts (try --help)" >&2; exit 2; }
      only=$2
      shift
      for part in ${only//,/ }; do
        case "$part" in
          cluster|sync-normal|backlog|workers-1000) ;;
          *) echo "unknown part '$part' (cluster, sync-normal, backlog, workers-1000)" >&2; exit 2 ;;
        esac
      done
      ;;
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
# want PART: the part is to run (every part without --only).
want() { [ -z "$only" ] || [[ ",$only," == *",$1,"* ]]; }

B=${ZFORCE_BUILD:-build-release}
SLOTS=${BENCH_SLOTS:-2}
NOOP_SLOTS=${BENCH_NOOP_SLOTS:-256}
RUNS=${BENCH_RUNS:-3}
read -r -a MASTER_OPTS <<<"${BENCH_MASTER_OPTS:-}"
# BIG_Q: instances waiting for the backlog figures (compared with 1,000
# waiting); WINDOW: ends timed with that backlog; SIM_N: noop instances per
# run with 1,000 simulated workers.
if [ "$quick" = 1 ]; then
  NOOP_N=20000 TRUE_N=1000 BIG_Q=200000 WINDOW=20000 SIM_N=20000
else
  NOOP_N=100000 TRUE_N=5000 BIG_Q=1000000 WINDOW=50000 SIM_N=50000
fi
REFILL=500  # with a backlog, 500 more are submitted whenever Q - 500 or fewer wait
SIM_WORKERS=1000
LAT_N=2000
PAR=$((2 * SLOTS))  # the workers' total slots

scripts/setup.sh --no-build  # the packages; the figures come from a release build
[ -f "$B/build.ninja" ] || meson setup "$B" --buildtype=release >/dev/null
ninja -C "$B" >/dev/null || { ninja -C "$B"; exit 1; }
for b in master/zforce-master worker/zforce-worker client/zforce bench/zforce-bench-latency bench/zforce-bench-bare-spawn \
  bench/zforce-bench-dispatch bench/zforce-bench-sim-workers bench/zforce-bench-floor; do
  [ -x "$B/$b" ] || { echo "missing $B/$b (is subdir('bench') in meson.build?)" >&2; exit 1; }
done
buildtype=$(python3 -c 'import json, sys
print(next(o["value"] for o in json.load(open(sys.argv[1])) if o["name"] == "buildtype"))' \
  "$B/meson-info/intro-buildoptions.json" 2>/dev/null || echo unknown)
tmp=$(mktemp -d /tmp/zforce-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
# forget_pid PID: it has been waited for; cleanup must not signal that number again.
forget_pid() {
  local p keep=()
  for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  pids=("${keep[@]}")
}
# stop_pid PID: SIGTERM one process we started, wait for it, forget it.
stop_pid() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  forget_pid "$1"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
# ms_since T0: milliseconds from T0 (a `now`) until now.
ms_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.0f", (b - a) * 1000 }'; }
# rate N T0 T1: N per second between two `now` stamps.
rate() { awk -v n="$1" -v a="$2" -v b="$3" 'BEGIN { printf "%.1f", n / (b - a) }'; }
# median of the arguments (numbers).
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
note() { echo "# $*"; }
# field NAME TEXT: the value of the line `NAME: value` in TEXT.
field() { sed -n "s/^$1: //p" <<<"$2"; }
# CPU seconds (user + system) a process has used so far.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }

note "machine: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1), kernel $(uname -r)"
note "build: $B, buildtype $buildtype"
note "mode: $([ "$quick" = 1 ] && echo quick || echo full); noop on 2 workers x $NOOP_SLOTS slots, processes on 2 workers x $SLOTS slots; median of $RUNS runs"
note "load average before: $(cut -d' ' -f1-3 /proc/loadavg) (anything else running on the machine skews every figure)"

cat >"$tmp/bench-noop.toml" <<'EOF'
name = "bench-noop"
[[steps]]
builtin = "noop"
EOF
cat >"$tmp/bench-noop-tagged.toml" <<'EOF'
name = "bench-noop"
requires = ["noop"]
[[steps]]
builtin = "noop"
EOF
cat >"$tmp/bench-noop-64.toml" <<'EOF'
name = "bench-noop-64"
requires = ["noop64"]
[[steps]]
builtin = "noop"
EOF
cat >"$tmp/bench-true.toml" <<'EOF'
name = "bench-true"
requires = ["spawn"]
[[steps]]
run = ["true"]
EOF
# zf ARGS: the client, against the master in API and EVENTS.
zf() { "$B/client/zforce" --api "$API" --events "$EVENTS" "$@"; }

# --- the cluster -------------------------------------------------------------
if want cluster; then
  "$B/master/zforce-master" --data "$tmp/master" "${MASTER_OPTS[@]}" --local-slots 0 \
    --workers 'tcp://127.0.0.1:*' --api 'tcp://127.0.0.1:*' --events 'tcp://127.0.0.1:*' 2>"$tmp/master.log" &
  master_pid=$!
  pids+=("$master_pid")
  for _ in $(seq 200); do [ -s "$tmp/master/endpoints.json" ] && break; sleep 0.05; done
  [ -s "$tmp/master/endpoints.json" ] || { echo "the master did not start:" >&2; cat "$tmp/master.log" >&2; exit 1; }
  ep() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p" "$tmp/master/endpoints.json"; }
  API=$(ep api) EVENTS=$(ep events) WORKERS=$(ep workers)
  for w in w1 w2; do
    "$B/worker/zforce-worker" --master "$WORKERS" --name "$w" --slots "$NOOP_SLOTS" --tag noop 2>"$tmp/worker-$w.log" &
    pids+=($!)
  done
  for w in n1 n2; do
    "$B/worker/zforce-worker" --master "$WORKERS" --name "$w" --slots 64 --tag noop64 2>"$tmp/worker-$w.log" &
    pids+=($!)
  done
  for w in p1 p2; do
    "$B/worker/zforce-worker" --master "$WORKERS" --name "$w" --slots "$SLOTS" --tag spawn 2>"$tmp/worker-$w.log" &
    pids+=($!)
  done
  for _ in $(seq 200); do
    [ "$(zf --json workers | grep -o '"state":"active"' | wc -l)" -ge 6 ] && break
    sleep 0.05
  done
  [ "$(zf --json workers | grep -o '"state":"active"' | wc -l)" -ge 6 ] ||
    { echo "the workers did not join:" >&2; zf workers >&2; exit 1; }

  zf job put "$tmp/bench-noop-tagged.toml" "$tmp/bench-noop-64.toml" "$tmp/bench-true.toml" >/dev/null
fi

# run_rate JOB N: instances/s of `zforce run JOB --count N --wait` (submission to all done).
run_rate() {
  local t0 t1 out
  t0=$(now)
  out=$(zf run "$1" --count "$2" --wait) || { echo "zforce run $1 failed: $out" >&2; exit 1; }
  t1=$(now)
  rate "$2" "$t0" "$t1"
}
# bare_rate N P: sets bare to the faster of xargs -P and the posix_spawn loop
# for N /bin/true, and bare_note to both rates.
bare_rate() {
  local t0 t1 x s
  t0=$(now)
  seq "$1" | xargs -P "$2" -n 1 /bin/true
  t1=$(now)
  x=$(rate "$1" "$t0" "$t1")
  s=$("$B/bench/zforce-bench-bare-spawn" "$1" "$2" | sed -n 's/.*, \([0-9.]*\) per s$/\1/p')
  bare=$(awk -v a="$x" -v b="$s" 'BEGIN { print (a > b ? a : b) }')
  bare_note="xargs -P $2 $x/s, posix_spawn x $2 threads $s/s"
}

# latency_run P50 P99: one run of the latency probe against the current
# cluster; appends its median and 99th percentile to the arrays named.
latency_run() {
  local lat
  lat=$("$B/bench/zforce-bench-latency" --api "$API" --events "$EVENTS" --job bench-noop --count "$LAT_N")
  local -n a50=$1 a99=$2
  a50+=("$(field latency_p50_ms "$lat")")
  a99+=("$(field latency_p99_ms "$lat")")
}

# floor_run MODE ARGS...: one run of zforce-bench-floor; prints its output.
floor_run() {
  "$B/bench/zforce-bench-floor" "$@" || { echo "zforce-bench-floor $1 failed" >&2; exit 1; }
}

# tapped_rate JOB N: run_rate with `zforce tap` attached, subscribed to every
# event. The master builds every event either way, but its PUB socket sends
# only those someone subscribed to, so noop_per_s, measured without a tap,
# does not include sending them.
tapped_rate() {
  # The client itself, not through zf (a background function is a subshell:
  # its pid is not the tap's, and killing it left the tap running).
  "$B/client/zforce" --api "$API" --events "$EVENTS" tap >/dev/null 2>&1 &
  local tap_pid=$! rate_out
  pids+=("$tap_pid")
  sleep 0.5  # the subscription reaches the master
  rate_out=$(run_rate "$1" "$2")
  stop_pid "$tap_pid"
  echo "$rate_out"
}

if want cluster; then
  noop=() noop_tap=() noop64=() tru=() bares=() ratio=() p50=() p99=() h50=() h99=() f50=() f99=()
  for r in $(seq "$RUNS"); do
    c0=$(cpu_s "$master_pid")
    noop+=("$(run_rate bench-noop "$NOOP_N")")
    master_us=$(awk -v a="$c0" -v b="$(cpu_s "$master_pid")" -v n="$NOOP_N" 'BEGIN { printf "%.0f", (b - a) * 1e6 / n }')
    noop_tap+=("$(tapped_rate bench-noop "$NOOP_N")")
    noop64+=("$(run_rate bench-noop-64 "$NOOP_N")")
    t=$(run_rate bench-true "$TRUE_N")
    bare_rate "$TRUE_N" "$PAR"
    b=$bare
    tru+=("$t") bares+=("$b")
    ratio+=("$(awk -v a="$t" -v b="$b" 'BEGIN { printf "%.3f", a / b }')")
    latency_run p50 p99
    # The floors under the latency, at the same moment: libzmq's hops, the disk's sync.
    out=$(floor_run hops --count "$LAT_N")
    h50+=("$(field floor_hops_p50_ms "$out")") h99+=("$(field floor_hops_p99_ms "$out")")
    out=$(floor_run fsync "$tmp" --count "$LAT_N")
    f50+=("$(field floor_fdatasync_p50_ms "$out")") f99+=("$(field floor_fdatasync_p99_ms "$out")")
    note "run $r: floors: four libzmq hops p50 ${h50[-1]} p99 ${h99[-1]} ms, fdatasync p50 ${f50[-1]} p99 ${f99[-1]} ms"
    note "run $r: noop ${noop[-1]}/s ($NOOP_N; ${noop_tap[-1]}/s with a tap of every event; ${noop64[-1]}/s on 2 x 64 slots), true $t/s ($TRUE_N), bare $b/s ($bare_note), latency p50 ${p50[-1]} p99 ${p99[-1]} ms ($LAT_N)," \
      "master cpu ${master_us} us per noop instance, load $(cut -d' ' -f1 /proc/loadavg), master rss $(awk '/VmRSS/ { printf "%.0f MB", $2 / 1024 }' "/proc/$master_pid/status")"
  done

  echo "noop_per_s: $(median "${noop[@]}")"
  echo "noop_per_s_tap_all: $(median "${noop_tap[@]}")"
  echo "noop_per_s_64_slots: $(median "${noop64[@]}")"
  echo "true_per_s: $(median "${tru[@]}")"
  echo "bare_true_per_s: $(median "${bares[@]}")"
  echo "true_vs_bare: $(median "${ratio[@]}")"
  echo "latency_p50_ms: $(median "${p50[@]}")"
  echo "latency_p99_ms: $(median "${p99[@]}")"
  echo "floor_hops_p50_ms: $(median "${h50[@]}")"
  echo "floor_hops_p99_ms: $(median "${h99[@]}")"
  echo "floor_fdatasync_p50_ms: $(median "${f50[@]}")"
  echo "floor_fdatasync_p99_ms: $(median "${f99[@]}")"

  # The sections below start masters of their own: stop this cluster (workers first).
  first=("${pids[@]}")
  for ((i = ${#first[@]} - 1; i >= 0; i--)); do stop_pid "${first[i]}"; done
fi

# start_master DIR [OPTION...]: a master like the one above, with its data in
# DIR and the options given; sets API, EVENTS, WORKERS (so zf talks to it) and m_pid.
start_master() {
  "$B/master/zforce-master" --data "$1" "${MASTER_OPTS[@]}" "${@:2}" --local-slots 0 \
    --workers 'tcp://127.0.0.1:*' --api 'tcp://127.0.0.1:*' --events 'tcp://127.0.0.1:*' 2>"$1.log" &
  m_pid=$!
  pids+=("$m_pid")
  for _ in $(seq 200); do [ -s "$1/endpoints.json" ] && break; sleep 0.05; done
  [ -s "$1/endpoints.json" ] || { echo "the master did not start:" >&2; cat "$1.log" >&2; exit 1; }
  local f
  for f in api events workers; do
    printf -v "${f^^}" '%s' "$(sed -n "s/.*\"$f\":\"\([^\"]*\)\".*/\1/p" "$1/endpoints.json")"
  done
  zf job put "$tmp/bench-noop.toml" >/dev/null
}
# active_members: members in state active.
active_members() { zf --json workers | grep -o '"state":"active"' | wc -l; }
rss_mb() { awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
# label N: 1000000 -> 1m, 100000 -> 100k (for figure names).
label() {
  if [ $(($1 % 1000000)) = 0 ]; then echo "$(($1 / 1000000))m"
  elif [ $(($1 % 1000)) = 0 ]; then echo "$(($1 / 1000))k"
  else echo "$1"; fi
}
# fill N: N noop instances, in calls of at most 100,000 (the api's limit per `run`).
fill() {
  local left=$1 c
  while [ "$left" -gt 0 ]; do
    c=$((left < 100000 ? left : 100000))
    zf run bench-noop --count "$c" >/dev/null || { echo "zforce run --count $c failed" >&2; exit 1; }
    left=$((left - c))
  done
}

# --- latency when commits do not wait for the disk, and without a store -------
# The same probe against a master started with --sync normal: what it
# acknowledges survives kill -9 of the master, not a power loss (the default,
# --sync full, waits for fdatasync twice per instance: at submission and at
# the end; docs/durability.md). Then against one with --no-store, which
# keeps nothing over a restart: what the store adds to the latency.
if want sync-normal; then
  for mode in sync-normal no-store; do
    if [ "$mode" = sync-normal ]; then start_master "$tmp/$mode" --sync normal; else start_master "$tmp/$mode" --no-store; fi
    "$B/worker/zforce-worker" --master "$WORKERS" --name n1 --slots "$NOOP_SLOTS" 2>"$tmp/worker-$mode.log" &
    n1_pid=$!
    pids+=("$n1_pid")
    for _ in $(seq 200); do [ "$(active_members)" -ge 1 ] && break; sleep 0.05; done
    p50n=() p99n=()
    for r in $(seq "$RUNS"); do
      latency_run p50n p99n
      note "run $r, --$mode: latency p50 ${p50n[-1]} p99 ${p99n[-1]} ms ($LAT_N)"
    done
    echo "latency_p50_ms_${mode//-/_}: $(median "${p50n[@]}")"
    echo "latency_p99_ms_${mode//-/_}: $(median "${p99n[@]}")"
    stop_pid "$n1_pid"
    stop_pid "$m_pid"
  done
fi

# --- a backlog: memory and dispatch rate with Q instances waiting --------------
# backlog_run Q: a fresh master, Q noop instances submitted with no worker
# connected, then two workers (as above) join. Sets rss0, rss_mid and rss (MB:
# empty, before the last batch of `batch` instances, with Q waiting), fill_s,
# stats_ms (a `zforce stats` with Q waiting), list_ms (`zforce instances
# --state running` with Q waiting and none running),
# disp (ends per second over WINDOW ends, counted on the tap from the first
# end; whenever the queue says Q - REFILL or fewer wait, REFILL more are
# submitted, so that about Q keep waiting) and disp_note.
backlog_run() {
  local q=$1 dir="$tmp/backlog" t0 t1 waiting probe w wp=()
  batch=$((q / 2 < 100000 ? q / 2 : 100000))
  start_master "$dir"
  rss0=$(rss_mb "$m_pid")
  t0=$(now)
  fill $((q - batch))
  rss_mid=$(rss_mb "$m_pid")
  fill "$batch"
  t1=$(now)
  fill_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  local s0
  s0=$(now)
  waiting=$(zf --json stats | sed -n 's/.*"waiting":\([0-9]*\).*/\1/p')
  stats_ms=$(ms_since "$s0")
  [ "$waiting" = "$q" ] || { echo "expected $q waiting, the master says '$waiting'" >&2; exit 1; }
  s0=$(now)
  zf --json instances --state running --limit 10 >/dev/null
  list_ms=$(ms_since "$s0")
  rss=$(rss_mb "$m_pid")
  "$B/bench/zforce-bench-dispatch" --api "$API" --events "$EVENTS" --job bench-noop --count "$WINDOW" \
    --backlog "$q" --refill "$REFILL" --ready-file "$dir.ready" >"$dir.probe" 2>&1 &
  probe=$!
  pids+=("$probe")
  for _ in $(seq 200); do [ -e "$dir.ready" ] && break; sleep 0.05; done
  for w in b1 b2; do
    "$B/worker/zforce-worker" --master "$WORKERS" --name "$w" --slots "$NOOP_SLOTS" 2>"$dir-$w.log" &
    wp+=($!)
    pids+=($!)
  done
  if ! wait "$probe"; then echo "the dispatch probe failed:" >&2; cat "$dir.probe" >&2; exit 1; fi
  forget_pid "$probe"
  disp=$(sed -n 's/^dispatch_per_s: //p' "$dir.probe")
  disp_note="$(sed -n 's/^# dispatch: //p' "$dir.probe")$(sed -n 's/^# queue: /; queue sampled: /p' "$dir.probe")"
  for w in "${wp[@]}"; do stop_pid "$w"; done
  stop_pid "$m_pid"
  rm -rf "$dir" "$dir".* "$dir"-*
}

if want backlog; then
  BQ=$(label "$BIG_Q")
  note "backlog: per run, a fresh master with $BIG_Q noop instances waiting, then with 1000; 2 workers x $NOOP_SLOTS slots join;" \
    "rate over $WINDOW ends, $REFILL more submitted whenever $REFILL fewer wait"
  rss_big=() bytes=() extra=() disp_big=() disp_1k=() disp_ratio=() stats_big=() list_big=()
  for r in $(seq "$RUNS"); do
    backlog_run "$BIG_Q"
    rss_big+=("$rss")
    stats_big+=("$stats_ms")
    list_big+=("$list_ms")
    # Per instance: the growth over the last batch of 100,000. The average over
    # all Q also carries the allocator's peak of one batch (its events, its
    # reply, its store writes: ~25-50 MB); over a smaller last batch that peak
    # still shows (50,000: ~1,170 bytes, where 1,000,000 waiting cost ~730 each).
    bytes+=("$(awk -v a="$rss_mid" -v b="$rss" -v n="$batch" 'BEGIN { printf "%.0f", (b - a) * 1048576 / n }')")
    extra+=("$(awk -v r="$rss" -v b="${bytes[-1]}" -v q="$BIG_Q" 'BEGIN { printf "%.0f", r + b * (1e6 - q) / 1048576 }')")
    disp_big+=("$disp")
    note "run $r, $BIG_Q waiting: master rss $rss0 MB empty, $rss_mid MB with $((BIG_Q - batch)), $rss MB with $BIG_Q waiting" \
      "(${bytes[-1]} bytes each over the last $batch, $(awk -v a="$rss0" -v b="$rss" -v q="$BIG_Q" 'BEGIN { printf "%.0f", (b - a) * 1048576 / q }') on average; filled in $fill_s s);" \
      "dispatch $disp/s; $disp_note; load $(cut -d' ' -f1 /proc/loadavg)"
    backlog_run 1000
    disp_1k+=("$disp")
    disp_ratio+=("$(awk -v a="${disp_big[-1]}" -v b="$disp" 'BEGIN { printf "%.3f", a / b }')")
    note "run $r, 1000 waiting: dispatch $disp/s; $disp_note; load $(cut -d' ' -f1 /proc/loadavg)"
  done
  echo "master_rss_mb_${BQ}_queued: $(median "${rss_big[@]}")"
  echo "master_bytes_per_queued_instance: $(median "${bytes[@]}")"
  # `zforce stats` (the whole client run) with that backlog waiting.
  echo "stats_ms_${BQ}_queued: $(median "${stats_big[@]}")"
  echo "list_running_ms_${BQ}_queued: $(median "${list_big[@]}")"
  if [ "$BIG_Q" != 1000000 ]; then
    # Honest name: measured with fewer waiting, extrapolated with the per-instance growth.
    echo "master_rss_mb_1m_queued_extrapolated: $(median "${extra[@]}")"
  fi
  echo "dispatch_per_s_${BQ}_queued: $(median "${disp_big[@]}")"
  echo "dispatch_per_s_1k_queued: $(median "${disp_1k[@]}")"
  echo "dispatch_${BQ}_vs_1k: $(median "${disp_ratio[@]}")"
fi

# --- 1,000 simulated workers x 1 slot ------------------------------------------
# Each connection costs the master a file descriptor (the simulator raises its
# own limit); with the usual soft limit of 1024 the master could not accept 1,000.
if want workers-1000; then
  if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 4096 ]; then
    hard=$(ulimit -Hn)
    if [ "$hard" = unlimited ] || [ "$hard" -ge 4096 ]; then ulimit -n 4096; else ulimit -n "$hard"; fi
  fi
  start_master "$tmp/sim-master"
  "$B/bench/zforce-bench-sim-workers" --master "$WORKERS" --count "$SIM_WORKERS" --slots 1 2>"$tmp/sim-workers.log" &
  sim_pid=$!
  pids+=("$sim_pid")
  t0=$(now)
  for _ in $(seq 600); do [ "$(active_members)" -ge "$SIM_WORKERS" ] && break; sleep 0.2; done
  [ "$(active_members)" -ge "$SIM_WORKERS" ] ||
    { echo "only $(active_members) of $SIM_WORKERS simulated workers joined:" >&2; tail -n 5 "$tmp/sim-workers.log" >&2; exit 1; }
  note "simulated workers: $SIM_WORKERS x 1 slot joined in $(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }') s;" \
    "master fds $(ls "/proc/$m_pid/fd" | wc -l), limit $(ulimit -n)"
  sim_rate=()
  for r in $(seq "$RUNS"); do
    c0=$(cpu_s "$m_pid") s0=$(cpu_s "$sim_pid")
    # In calls of 5,000: one call of 50,000 keeps the master's loop busy for
    # over a second under load, longer than heartbeat x liveness, and every
    # simulated worker would reconnect.
    out=$("$B/bench/zforce-bench-dispatch" --api "$API" --events "$EVENTS" --job bench-noop --count "$SIM_N" \
      --submit "$SIM_N" --batch 5000) ||
      { echo "the dispatch probe failed: $out" >&2; exit 1; }
    sim_rate+=("$(field dispatch_per_s "$out")")
    note "run $r: ${sim_rate[-1]}/s after the submission ($(field "# after the submission" "$out"));" \
      "$(field "# dispatch" "$out");" \
      "cpu per instance: master $(awk -v a="$c0" -v b="$(cpu_s "$m_pid")" -v n="$SIM_N" 'BEGIN { printf "%.0f", (b - a) * 1e6 / n }') us," \
      "simulator $(awk -v a="$s0" -v b="$(cpu_s "$sim_pid")" -v n="$SIM_N" 'BEGIN { printf "%.0f", (b - a) * 1e6 / n }') us; load $(cut -d' ' -f1 /proc/loadavg)"
  done
  stop_pid "$sim_pid"
  # Its totals; reconnects: workers whose WELCOME took longer than heartbeat x liveness while all joined.
  note "$(tail -n 1 "$tmp/sim-workers.log")"
  stop_pid "$m_pid"
  # The floor: libzmq alone, a ROUTER and 1,000 echoing DEALERs, as many round trips.
  floor=()
  for r in $(seq "$RUNS"); do
    out=$(floor_run dealers --peers "$SIM_WORKERS" --count "$SIM_N")
    floor+=("$(field floor_dealers_per_s "$out")")
    note "run $r: floor, a ROUTER and $SIM_WORKERS DEALERs echoing (libzmq alone): ${floor[-1]} round trips/s"
  done
  echo "workers_1000_dispatch_per_s: $(median "${sim_rate[@]}")"
  echo "floor_dealers_per_s: $(median "${floor[@]}")"
  echo "workers_1000_vs_floor: $(awk -v a="$(median "${sim_rate[@]}")" -v b="$(median "${floor[@]}")" 'BEGIN { printf "%.3f", a / b }')"
fi
