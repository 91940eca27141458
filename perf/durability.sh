#!/usr/bin/env bash
# Durability figures for perf/RESULTS.md: WAL replay time per GB, bytes per sample on disk
# once the head is cut into blocks, and the query mix against the head and then against the
# same data read from blocks. Release build, kiln on -shards=1 (plus the load generator).
# Usage: perf/durability.sh [seconds of load per phase, default 20]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-20}
PORT=${KILN_PERF_PORT:-4048}
DATA=$(mktemp -d /tmp/kiln-dur.XXXXXX)
cargo build --release -q -p kiln -p kiln-load
KILN=${KILN:-./target/release/kiln}
LOAD=./target/release/kiln-load
URL=http://127.0.0.1:$PORT
LOG=$DATA.log

start_kiln() {
  $KILN -shards=1 -server.http-listen-address=127.0.0.1 -server.http-listen-port=$PORT -storage.path="$DATA" \
    -validation.reject-older-than=0 -distributor.ingestion-rate-limit-mb=0 \
    -validation.max-profile-stacktrace-samples=0 -querier.max-query-length=0 >>"$LOG" 2>&1 &
  KPID=$!
  for _ in $(seq 600); do curl -sf $URL/ready >/dev/null && return; sleep 0.1; done
  echo "kiln did not start" >&2; exit 1
}
trap 'kill -9 $KPID 2>/dev/null || true; rm -rf "$DATA" "$LOG"' EXIT
field() { python3 -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['$1'])"; }
metric() { curl -s $URL/metrics | awk -v m="^$1\\\\{" '$0 ~ m {s+=$2} END {printf "%d", s}'; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F)"

# 1. Fill the head (and WAL) with real profiles, then kill -9 and time the replay.
start_kiln
$LOAD --url $URL --duration ${SECS}s --connections 8 --threads 1 --json --quiet >/dev/null 2>&1
SAMPLES=$(metric kiln_head_samples)
WAL_BYTES=$(du -sb "$DATA/wal" | cut -f1)
kill -9 $KPID; wait $KPID 2>/dev/null || true
: >"$LOG"
T0=$(date +%s.%N)
start_kiln
T1=$(date +%s.%N)
REPLAY=$(grep 'WAL replayed' "$LOG" | tail -1)
RSECS=$(echo "$REPLAY" | sed -E 's/.*seconds=([0-9.]+).*/\1/')
RBYTES=$(echo "$REPLAY" | sed -E 's/.*bytes=([0-9]+).*/\1/')
printf "| WAL replay | %s MB of records in %.2f s = **%.1f s per GB** (start to ready %.2f s; WAL on disk %s MB) |\n" \
  "$((RBYTES / 1000000))" "$RSECS" "$(python3 -c "print($RSECS / max(1e-9, $RBYTES / 1e9))")" \
  "$(python3 -c "print($T1 - $T0)")" "$((WAL_BYTES / 1000000))"

# 2. The query mix against the head.
HEAD_Q=$($LOAD --url $URL --mode query --duration ${SECS}s --connections 2 --threads 1 --json --quiet)

# 3. Cut everything into blocks; bytes per sample on disk.
T0=$(date +%s.%N)
curl -sf -X POST $URL/ingester/flush
T1=$(date +%s.%N)
BLOCK_BYTES=$(du -sb "$DATA/blocks" | cut -f1)
printf "| flush of the head to blocks (%s samples) | %.2f s; %s MB on disk = **%.2f B/sample** |\n" "$SAMPLES" \
  "$(python3 -c "print($T1 - $T0)")" "$((BLOCK_BYTES / 1000000))" "$(python3 -c "print($BLOCK_BYTES / max(1, $SAMPLES))")"
grep 'block uploaded' "$LOG" | sed -E 's/.*(profiles=[0-9]+ samples=[0-9]+ bytes=[0-9]+ encode_s=[0-9.]+ total_s=[0-9.]+).*/    \1/'

# 4. The same query mix against the blocks (the head is empty now).
BLOCK_Q=$($LOAD --url $URL --mode query --duration ${SECS}s --connections 2 --threads 1 --json --quiet)
printf "| query mix, head: p50 / p99 | %s / %s ms at %.1f q/s |\n" "$(echo "$HEAD_Q" | field p50)" "$(echo "$HEAD_Q" | field p99)" "$(echo "$HEAD_Q" | field throughput)"
printf "| query mix, same data from blocks: p50 / p99 | %s / %s ms at %.1f q/s (cache: %s bytes) |\n" "$(echo "$BLOCK_Q" | field p50)" "$(echo "$BLOCK_Q" | field p99)" "$(echo "$BLOCK_Q" | field throughput)" "$(metric kiln_block_cache_bytes)"
