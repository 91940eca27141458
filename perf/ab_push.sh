#!/usr/bin/env bash
# Same-run A/B of push throughput: two kiln binaries, alternating, each on 2 cores, pushed
# by the same kiln-load with the fixtures of testdata/pprof.
# Usage: perf/ab_push.sh OLD_KILN NEW_KILN [pairs] [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$1 NEW=$2 PAIRS=${3:-3} SECS=${4:-15}
PORT=${KILN_PERF_PORT:-4051}
cargo build --release -q -p kiln-load
LOAD=./target/release/kiln-load
run() {
  local bin=$1 name=$2 data
  data=$(mktemp -d /tmp/kiln-ab.XXXXXX)
  "$bin" -shards=2 -server.http-listen-address=127.0.0.1 -server.http-listen-port=$PORT -storage.path="$data" \
    -validation.reject-older-than=0 -distributor.ingestion-rate-limit-mb=0 \
    -validation.max-profile-stacktrace-samples=0 -querier.max-query-length=0 >"$data.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:$PORT/ready >/dev/null && break; sleep 0.1; done
  $LOAD --url http://127.0.0.1:$PORT --duration "${SECS}s" --connections 8 --threads 1 --json --quiet | tail -1 |
    python3 -c "import json,sys; j=json.loads(sys.stdin.read()); print('$name', round(j['throughput'],1), 'profiles/s', round(j['mb_per_s'],2), 'MB/s wire')"
  kill $pid; wait $pid 2>/dev/null || true; rm -rf "$data" "$data.log"
}
for _ in $(seq "$PAIRS"); do run "$OLD" old; run "$NEW" new; done
