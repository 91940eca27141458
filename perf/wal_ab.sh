#!/usr/bin/env bash
# The WAL's syncs under other writes on the same filesystem: small real profiles pushed at
# RATE/s (open loop) to kiln on one core while a background writer dirties 4 MiB every 20 ms
# in files beside the data directory (as a compaction's output does), with
# -ingester.wal-preallocate off and on in turn. Segments of 8 MiB, and a 5 s warm-up that
# fills the first (always plain) one, so the measured run writes preallocated segments when
# the flag is on. A bare 64 KiB fdatasync probe of the same disk ends the run.
# Usage: perf/wal_ab.sh [pairs, 2] [seconds, 20] [rate, 300]
# On a shared machine, hold the build lock: flock /tmp/kiln-build.lock perf/wal_ab.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${1:-2} SECS=${2:-20} RATE=${3:-300}
PORT=${KILN_PERF_PORT:-4061}
cargo build --release -q -p kiln -p kiln-load
KILN=./target/release/kiln
LOAD=./target/release/kiln-load
WORK=$(mktemp -d "${KILN_PERF_DIR:-$PWD/target}/kiln-wal-ab.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/small"
for f in go.cpu.labels.pprof profile_java profile_python profile_nodejs profile_rust; do
  cp "testdata/pprof/pyroscope/pkg-pprof/$f" "$WORK/small/"
done
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +'%F %H:%M') UTC"

# writer SECONDS: 4 MiB buffered writes every 20 ms into three files in turn, 128 MiB each.
writer() {
  python3 - "$WORK/bg" "$1" <<'PY'
import os, sys, time
base, end = sys.argv[1], time.time() + float(sys.argv[2])
buf, i = os.urandom(4 << 20), 0
while time.time() < end:
    fd = os.open(f"{base}{i % 3}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for _ in range(32):
        os.write(fd, buf)
        time.sleep(0.02)
    os.close(fd)
    i += 1
PY
}

run() {
  local pre=$1 data pid bg
  data=$(mktemp -d "$WORK/data.XXXXXX")
  $KILN -shards=1 -server.http-listen-address=127.0.0.1 -server.http-listen-port=$PORT -storage.path="$data" \
    -validation.reject-older-than=0 -distributor.ingestion-rate-limit-mb=0 -ingester.wal-segment-size-bytes=8388608 \
    -ingester.wal-preallocate="$pre" -self-profiling.disable-push=true >"$data.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:$PORT/ready >/dev/null && break; sleep 0.1; done
  $LOAD --url http://127.0.0.1:$PORT --source "$WORK/small" --rate 500 --duration 5s --threads 1 --quiet >/dev/null 2>&1
  writer $((SECS + 2)) &
  bg=$!
  $LOAD --url http://127.0.0.1:$PORT --source "$WORK/small" --rate "$RATE" --duration "${SECS}s" --threads 1 \
    --json --quiet >"$data.json" 2>/dev/null
  wait $bg
  curl -s http://127.0.0.1:$PORT/metrics >"$data.metrics"
  python3 - "$pre" "$data.json" "$data.metrics" <<'PY'
import json, sys
pre, j = sys.argv[1], json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
m = {l.split()[0]: l.split()[1] for l in open(sys.argv[3]) if l.startswith("kiln_wal_segments_")}
print(f"| {pre} | {j['p50']:.1f} | {j['p90']:.1f} | {j['p99']:.1f} | {j['p999']:.1f} | {j['throughput']:.1f} | "
      f"{m.get('kiln_wal_segments_preallocated_total', '?')} / {m.get('kiln_wal_segments_unprepared_total', '?')} |")
PY
  kill $pid
  wait $pid 2>/dev/null || true
  rm -rf "$data" "$data".* "$WORK"/bg*
}

echo "| -ingester.wal-preallocate | p50 ms | p90 ms | p99 ms | p99.9 ms | pushes/s | segments preallocated / plain |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for _ in $(seq "$PAIRS"); do
  run false
  run true
done
echo "bare 64 KiB fdatasync p99 on the same disk: $(python3 perf/fsync_probe.py 65536 200 "$WORK") ms"
