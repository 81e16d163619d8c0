#!/usr/bin/env bash
# 10,000 jobs with timers (ZF_TRIGGER_JOBS=N to change): the idle master's CPU
# over 10 s, then firing latency (scheduled time to instance.queued on the tap)
# with about 1,000 firings a second.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
B=${ZFORCE_BUILD:-build}
export ZF_MASTER_BIN=$PWD/$B/master/zforce-master ZF_WORKER_BIN=$PWD/$B/worker/zforce-worker ZF_CLIENT_BIN=$PWD/$B/client/zforce
"$B/bench/zforce-bench-triggers" --no-intro --no-version 2>&1 | grep -E '^(trigger|idle|busy|fire)|FAIL|ERROR' || true
