#!/usr/bin/env bash
# Reproduces the tables in perf/RESULTS.md: builds release, runs kiln on one core with
# kiln-load on another, measures peak ingest, p99 at half of peak (with the bare fdatasync
# bound of the same disk in the same run), query latency, head bytes per sample, and the
# criterion benchmarks (decode against its inflate+protobuf bound per class, append, the
# 3M-stack flame graph); then issue 16's goals: the whole push path's CPU against the
# decode bound (perf/ingest_bound.sh), small pushes while large ones stream in
# (perf/hol.sh), WAL replay and the query mix from blocks against the head
# (perf/durability.sh), and kiln on 1 against all cores.
# Usage: perf/run.sh [seconds per load run, default 20]   (about 20 minutes with 20)
# On a shared machine, hold the build lock: flock /tmp/kiln-build.lock perf/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-20}
PORT=${KILN_PERF_PORT:-4049}
DATA=$(mktemp -d /tmp/kiln-perf.XXXXXX)
cargo build --release -q -p kiln -p kiln-load
KILN=./target/release/kiln
LOAD=./target/release/kiln-load
URL=http://127.0.0.1:$PORT

start_kiln() {
  rm -rf "$DATA"/*
  $KILN -shards="${SHARDS:-1}" -server.http-listen-address=127.0.0.1 -server.http-listen-port=$PORT -storage.path="$DATA" \
    -validation.reject-older-than=0 -distributor.ingestion-rate-limit-mb=0 \
    -validation.max-profile-stacktrace-samples=0 -querier.max-query-length=0 >"$DATA.log" 2>&1 &
  KPID=$!
  for _ in $(seq 100); do curl -sf $URL/ready >/dev/null && return; sleep 0.1; done
  echo "kiln did not start" >&2; exit 1
}
stop_kiln() { kill "$KPID" 2>/dev/null || true; wait "$KPID" 2>/dev/null || true; }
trap 'stop_kiln; rm -rf "$DATA" "$DATA.log"' EXIT
field() { python3 -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['$1'])"; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F)"
echo

# 1. Peak: closed loop, real profiles from testdata/pprof, WAL fsync before ack.
start_kiln
PEAK_JSON=$($LOAD --url $URL --duration ${SECS}s --connections 8 --threads 1 --json --quiet)
PEAK=$(echo "$PEAK_JSON" | field throughput)
MBS=$(echo "$PEAK_JSON" | field mb_per_s)
MBU=$(echo "$PEAK_JSON" | field mb_per_s_uncompressed)
SAMPLES=$(curl -s $URL/metrics | awk '/^kiln_head_samples\{/ {s+=$2} END {print s}')
HEADB=$(curl -s $URL/metrics | awk '/^kiln_head_bytes\{/ {s+=$2} END {print s}')
# 2. Query latency over what was just ingested.
Q_JSON=$($LOAD --url $URL --mode query --duration ${SECS}s --connections 2 --threads 1 --json --quiet)
stop_kiln

# 3. Open loop at half of peak: latency without coordinated omission; then the bare
# fdatasync bound on the disk the WAL is on, in the same run.
start_kiln
HALF=$(python3 -c "print(max(1, int($PEAK / 2)))")
HALF_JSON=$($LOAD --url $URL --duration ${SECS}s --rate $HALF --threads 1 --json --quiet)
stop_kiln
SYNC_P99=$(python3 perf/fsync_probe.py 65536 200 "$DATA")

printf "| figure | value |\n|---|---|\n"
printf "| ingest, closed loop (8 conns), 1 kiln core | %.1f profiles/s, **%.2f MB/s gzip wire** (%.2f MB/s uncompressed) |\n" "$PEAK" "$MBS" "$MBU"
printf "| push latency at peak p50 / p99 | %s / %s ms |\n" "$(echo "$PEAK_JSON" | field p50)" "$(echo "$PEAK_JSON" | field p99)"
printf "| open loop at half of peak (%s/s): p50 / p99 / p99.9 | %s / **%s** / %s ms |\n" "$HALF" "$(echo "$HALF_JSON" | field p50)" "$(echo "$HALF_JSON" | field p99)" "$(echo "$HALF_JSON" | field p999)"
printf "| query mix (78%% merge-profile, 15%% render) p50 / p99 | %s / %s ms at %.1f q/s |\n" "$(echo "$Q_JSON" | field p50)" "$(echo "$Q_JSON" | field p99)" "$(echo "$Q_JSON" | field throughput)"
printf "| head bytes per sample (kiln_head_bytes / kiln_head_samples) | %.1f B (%s samples) |\n" "$(python3 -c "print($HEADB / max(1, $SAMPLES))")" "$SAMPLES"
printf "| bare 64 KiB write+fdatasync p99, same disk, same run | %s ms |\n" "$SYNC_P99"
echo
echo "criterion (cargo bench --bench hot_paths): decode, append and flame graph"
CRIT_START=$(date +%s.%N)
cargo bench --bench hot_paths -- 'decode|append/warm|flamegraph|route|channel' 2>/dev/null \
  | grep -E '^[a-z_]+/|time:|thrpt:' | grep -v '%' | sed 's/^/    /'

# Issue 16's goals, each beside its bound or baseline from this run.
echo
echo "goals (issue 16)"
echo
echo "1. decode+normalise against inflate+prost of the same bytes (the criterion run above; goal >= 0.8):"
python3 perf/goals.py decode "$CRIT_START" | sed 's/^/    /'
echo
echo "1. the same on the whole push path: kiln's CPU per acknowledged push, each class alone (perf/ingest_bound.sh; goal >= 0.8):"
BENCH=0 perf/ingest_bound.sh | sed 's/^/    /'
echo
python3 perf/goals.py sync "$(echo "$HALF_JSON" | field p99)" "$SYNC_P99"
python3 perf/goals.py flamegraph "$CRIT_START"
echo
echo "2. small pushes while large ones stream in on the same core (perf/hol.sh 1 $SECS):"
perf/hol.sh 1 "$SECS" | sed 's/^/    /'
echo
echo "4-5. WAL replay per core, and the query mix from blocks against the head (perf/durability.sh $SECS):"
perf/durability.sh "$SECS" | sed 's/^/    /'
echo
echo "6. scaling: peak closed loop, kiln on 1 and on all $(nproc) cores (kiln-load shares the CPUs when kiln has them all):"
for n in 1 "$(nproc)"; do
  SHARDS=$n start_kiln
  J=$($LOAD --url $URL --duration ${SECS}s --connections 8 --threads 1 --json --quiet)
  stop_kiln
  printf "    -shards=%s: %.1f profiles/s, %.2f MB/s gzip\n" "$n" "$(echo "$J" | field throughput)" "$(echo "$J" | field mb_per_s)"
done
