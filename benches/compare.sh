#!/bin/sh
# Drain throughput of pgsql-broker against graphile-worker on the same server, back to back.
#
# Run: benches/compare.sh   (from any directory; BROKER_TEST_DSN and BENCH_JOBS as for
# `cargo bench --bench throughput`, default 20000 jobs on host=127.0.0.1 port=5432 user=postgres)
#
# Runs scenario 1 of benches/throughput/ (BENCH_ONLY=drain: pre-queued no-op jobs, 4 queues,
# one worker each), then benches/graphile/bench.js (the same jobs, graphile-worker with
# concurrency 10; `npm ci` first if node_modules is missing), and prints both rates and their
# ratio. Needs cargo, Node.js 20 and npm.
set -eu

benches=$(cd "$(dirname "$0")" && pwd)
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# Each bench's own output goes to stderr as it runs; its result line is kept in $log.
(cd "$benches/.." && BENCH_ONLY=drain cargo bench --bench throughput) | tee "$log" >&2
ours=$(sed -n 's/^1\. drain: .* = \([0-9.]*\) jobs\/s.*/\1/p' "$log")

cd "$benches/graphile"
[ -d node_modules ] || npm ci --no-audit --no-fund >&2
node bench.js | tee "$log" >&2
theirs=$(sed -n 's/^graphile-worker .* = \([0-9.]*\) jobs\/s.*/\1/p' "$log")

if [ -z "$ours" ] || [ -z "$theirs" ]; then
    echo "compare.sh: a bench printed no jobs/s line" >&2
    exit 1
fi
echo "pgsql-broker:    $ours jobs/s"
echo "graphile-worker: $theirs jobs/s"
awk -v a="$ours" -v b="$theirs" 'BEGIN { printf "ratio pgsql-broker / graphile-worker: %.2f\n", a / b }'
