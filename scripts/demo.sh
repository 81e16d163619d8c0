#!/usr/bin/env bash
# The main job: a real master (with one local slot) and two workers on
# loopback, the example jobs from examples/, their results and the live tap.
# Stops everything it started, by pid, and removes its temp folder.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
B=${ZFORCE_BUILD:-build}
tmp=$(mktemp -d /tmp/zforce-demo.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp" /tmp/zforce-demo
}
trap cleanup EXIT
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "starting a master (ports chosen by the kernel) and two workers"
"$B/master/zforce-master" --data "$tmp/master" --local-slots 1 \
  --workers 'tcp://127.0.0.1:*' --api 'tcp://127.0.0.1:*' --events 'tcp://127.0.0.1:*' 2>"$tmp/master.log" &
pids+=($!)
for _ in $(seq 100); do [ -s "$tmp/master/endpoints.json" ] && break; sleep 0.05; done
ep() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p" "$tmp/master/endpoints.json"; }
export ZFORCE_API=$(ep api) ZFORCE_EVENTS=$(ep events)
workers=$(ep workers)
echo "workers $workers, api $ZFORCE_API, events $ZFORCE_EVENTS"

# The live tap, printed as it happens.
"$B/client/zforce" tap > >(sed -u 's/^/  tap | /') &
pids+=($!)
sleep 0.3
"$B/worker/zforce-worker" --master "$workers" --name worker-1 --slots 2 2>"$tmp/worker-1.log" &
pids+=($!)
"$B/worker/zforce-worker" --master "$workers" --name worker-2 --slots 2 2>"$tmp/worker-2.log" &
pids+=($!)
sleep 0.5
"$B/client/zforce" workers

say "loading the example queues and jobs"
"$B/client/zforce" queue put examples/queues/*.toml
"$B/client/zforce" job put examples/*.toml
"$B/client/zforce" job list

say "zforce run hello -p who=operator --wait"
"$B/client/zforce" run hello -p who=operator --wait

say "zforce run report -p title=weekly --wait"
"$B/client/zforce" run report -p title=weekly --wait

say "zforce run flaky --wait (fails on purpose; exit code $("$B/client/zforce" run flaky --wait >/dev/null 2>&1; echo $?))"

say "zforce run batch --count 20 --wait (builtin sleep, spread over the members)"
"$B/client/zforce" run batch --count 20 --wait
sleep 0.3

say "queues: 4 thumbnails and 2 transcodes share the queue 'media' (2 per worker); 3 backups run one at a time, 500 ms apart"
"$B/client/zforce" run thumbnail --count 4 >/dev/null
"$B/client/zforce" run transcode --count 2 >/dev/null
"$B/client/zforce" run backup --count 3 --wait
"$B/client/zforce" queue list
sleep 1

say "zforce instances"
"$B/client/zforce" instances
flaky=$("$B/client/zforce" --json instances --job flaky | sed -n 's/.*"id":\([0-9]*\).*/\1/p')
say "zforce instance show $flaky"
"$B/client/zforce" instance show "$flaky"
say "zforce workers"
"$B/client/zforce" workers

say "stopping everything the demo started"
