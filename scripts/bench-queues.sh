#!/usr/bin/env bash
# Cost of the master's queue bookkeeping per event with 1k, 10k and 100k
# waiting instances across 100 queues; ratios near 1 (or near log) show
# O(log n). Builds a release tree in build-release/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --no-build
[ -f build-release/build.ninja ] || meson setup build-release --buildtype=release >/dev/null
ninja -C build-release tests/queue_scheduler_bench >/dev/null
build-release/tests/queue_scheduler_bench
