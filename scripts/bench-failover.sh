#!/usr/bin/env bash
# Time from a worker's SIGKILL to its instances running on another member,
# read from the tap: median and worst of 20 kills (ZF_FAILOVER_KILLS=N to change).
# Two ways to die: SIGKILL (the TCP connection drops, the master notices at
# its next send) and SIGSTOP (a hung or cut-off machine: only missed
# heartbeats tell).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
B=${ZFORCE_BUILD:-build}
export ZF_MASTER_BIN=$PWD/$B/master/zforce-master ZF_WORKER_BIN=$PWD/$B/worker/zforce-worker ZF_CLIENT_BIN=$PWD/$B/client/zforce
for mode in kill freeze; do
  ZF_FAILOVER_MODE=$mode "$B/bench/zforce-bench-failover" --no-intro --no-version 2>&1 | grep -E '^(failover|settings)|FAIL|ERROR' || true
done
