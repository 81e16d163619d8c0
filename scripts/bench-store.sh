#!/usr/bin/env bash
# Instances per second with the durable store on, against the store off
# (--no-store, everything in memory), in the same run: master + 2 workers,
# builtin noop instances submitted in one batch and waited for. Median of 9
# rounds (BENCH_RUNS) of the three modes; the cost is also given as the median
# of the rounds' own costs (each against the store-off run of its round),
# which the machine's drifts between rounds move less. Within a round the
# store-off run comes first in odd rounds and last in even ones, so a drift
# during a round favours neither side. Usage: scripts/bench-store.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --no-build  # the packages; the figures come from a release build
B=${ZFORCE_BUILD:-build-release}
[ -f "$B/build.ninja" ] || meson setup "$B" --buildtype=release >/dev/null
ninja -C "$B" >/dev/null || { ninja -C "$B"; exit 1; }
# 100,000 per run: a run of 50,000 lasted about 0.6 s, short enough for one
# hiccup of the machine to move its figure by a tenth.
N=100000
RUNS=${BENCH_RUNS:-9}
if [ "${1:-}" = "--quick" ]; then N=20000 RUNS=${BENCH_RUNS:-3}; fi
# Slots per worker. A throughput figure needs enough instances in flight to
# keep the pipeline full: with 2 x 2 slots each instance waits for two commits
# in turn and the figure measures commit latency, not throughput (set
# BENCH_SLOTS=2 to see that; docs/performance.md has both). 16 slots still
# left the store-on figure bound by commit latency; from 256 on it is bound by
# CPU (docs/performance.md, session 3 and 4 tables).
SLOTS=${BENCH_SLOTS:-256}
tmp=$(mktemp -d /tmp/zforce-bench-store.XXXXXX)
pids=()
stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap 'stop_all; rm -rf "$tmp"' EXIT
now() { date +%s.%N; }
# cost ON OFF: what the store costs, in percent of the store-off rate.
cost() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", 100 * (1 - a / b) }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# one_run MODE: prints instances/s for N noop instances on a fresh cluster.
one_run() {
  local dir="$tmp/$1-$RANDOM" extra=()
  [ "$1" = off ] && extra=(--no-store)
  [ "$1" = normal ] && extra=(--sync normal)
  "$B/master/zforce-master" --data "$dir" --local-slots 0 "${extra[@]}" \
    --workers 'tcp://127.0.0.1:*' --api 'tcp://127.0.0.1:*' --events 'tcp://127.0.0.1:*' 2>"$dir.log" &
  pids+=($!)
  for _ in $(seq 200); do [ -s "$dir/endpoints.json" ] && break; sleep 0.05; done
  ep() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p" "$dir/endpoints.json"; }
  local api workers
  api=$(ep api) workers=$(ep workers)
  for w in w1 w2; do
    "$B/worker/zforce-worker" --master "$workers" --name "$w" --slots "$SLOTS" 2>/dev/null &
    pids+=($!)
  done
  printf 'name = "noop"\n[[steps]]\nbuiltin = "noop"\n' >"$dir.toml"
  "$B/client/zforce" --api "$api" job put "$dir.toml" >/dev/null
  for _ in $(seq 200); do
    [ "$("$B/client/zforce" --api "$api" --json workers | grep -o '"state":"active"' | wc -l)" -ge 2 ] && break
    sleep 0.05
  done
  local t0 t1
  t0=$(now)
  "$B/client/zforce" --api "$api" run noop --count "$N" --wait >/dev/null
  t1=$(now)
  stop_all
  awk -v n="$N" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }'
}

# The figures move with what else runs on the machine: say how busy it was.
echo "# load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
on=() normal=() off=() cost_full=() cost_normal=()
for r in $(seq "$RUNS"); do
  if ((r % 2)); then
    off+=("$(one_run off)")
    on+=("$(one_run on)")
    normal+=("$(one_run normal)")
  else
    normal+=("$(one_run normal)")
    on+=("$(one_run on)")
    off+=("$(one_run off)")
  fi
  cost_full+=("$(cost "${on[-1]}" "${off[-1]}")")
  cost_normal+=("$(cost "${normal[-1]}" "${off[-1]}")")
  echo "# run $r: store on (--sync full) ${on[-1]}/s, store on (--sync normal) ${normal[-1]}/s, store off ${off[-1]}/s;" \
    "cost ${cost_full[-1]} % (full), ${cost_normal[-1]} % (normal) ($N noop instances, 2 workers x $SLOTS slots, build $B)"
done
echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
m_on=$(median "${on[@]}") m_normal=$(median "${normal[@]}") m_off=$(median "${off[@]}")
echo "store_on_sync_full_per_s: $m_on"
echo "store_on_sync_normal_per_s: $m_normal"
echo "store_off_per_s: $m_off"
echo "store_cost_sync_full_pct: $(cost "$m_on" "$m_off")"
echo "store_cost_sync_normal_pct: $(cost "$m_normal" "$m_off")"
echo "store_cost_sync_full_pct_median_of_runs: $(median "${cost_full[@]}")"
echo "store_cost_sync_normal_pct_median_of_runs: $(median "${cost_normal[@]}")"
