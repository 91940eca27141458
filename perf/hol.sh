#!/usr/bin/env bash
# Head-of-line blocking (issue 16 goal 2): the latency of small pushes while large profiles
# stream in on the same core, in three arms alternating in one run: large decodes on the
# accepting core (-distributor.decode-offload-bytes=0), on the decode threads, and on the
# decode threads with large appends interned in steps (-ingester.append-step-frames, the
# defaults); the first two append in one piece (-ingester.append-step-frames=0). kiln runs -shards=1, so every request lands on the one core; two kiln-load
# processes push on their own: large pprofs (testdata's google-pprof large.cpu and Go heap)
# at LARGE_RATE/s, small real profiles (Go, Java, Python, Node, Rust) at SMALL_RATE/s, both
# open loop (latency from the scheduled start). A bare fdatasync probe of the same disk runs
# beside each pair as the bound the issue names.
# Usage: perf/hol.sh [rounds of the three arms, default 3] [seconds, default 20] [large rate, 8] [small rate, 100]
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${1:-3} SECS=${2:-20} LARGE_RATE=${3:-8} SMALL_RATE=${4:-100}
PORT=${KILN_PERF_PORT:-4052}
cargo build --release -q -p kiln -p kiln-load
KILN=./target/release/kiln
LOAD=./target/release/kiln-load
SRC=$(mktemp -d /tmp/kiln-hol-src.XXXXXX)
trap 'rm -rf "$SRC"' EXIT
mkdir -p "$SRC/large" "$SRC/small"
cp testdata/pprof/google-pprof/large.cpu testdata/pprof/pyroscope/pkg-pprof/heap "$SRC/large/"
for f in go.cpu.labels.pprof profile_java profile_python profile_nodejs profile_rust; do
  cp "testdata/pprof/pyroscope/pkg-pprof/$f" "$SRC/small/"
done
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +'%F %H:%M') UTC"

# fsync_p99: p99 in ms of 200 bare 64 KiB write+fdatasync rounds on the disk under /tmp.
fsync_p99() { python3 perf/fsync_probe.py 65536 200 /tmp; }

run() {
  local name=$1 offload=$2 steps=$3 data pid
  data=$(mktemp -d /tmp/kiln-hol.XXXXXX)
  $KILN -shards=1 -server.http-listen-address=127.0.0.1 -server.http-listen-port=$PORT -storage.path="$data" \
    -validation.reject-older-than=0 -distributor.ingestion-rate-limit-mb=0 -validation.max-profile-size-bytes=0 \
    -validation.max-profile-stacktrace-samples=0 -distributor.decode-offload-bytes="$offload" -ingester.append-step-frames="$steps" >"$data.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:$PORT/ready >/dev/null && break; sleep 0.1; done
  $LOAD --url http://127.0.0.1:$PORT --source "$SRC/large" --rate "$LARGE_RATE" --duration "${SECS}s" --threads 1 \
    --services 2 --json --quiet >"$data.large" 2>/dev/null &
  local large=$!
  $LOAD --url http://127.0.0.1:$PORT --source "$SRC/small" --rate "$SMALL_RATE" --duration "${SECS}s" --threads 1 \
    --json --quiet >"$data.small" 2>/dev/null
  wait $large
  local offloaded
  offloaded=$(curl -s http://127.0.0.1:$PORT/metrics | awk '/^kiln_distributor_decode_offloaded_total /{print $2}')
  python3 - "$name" "$data.small" "$data.large" "$offloaded" <<'EOF'
import json, sys
name, small, large, off = sys.argv[1], *(json.loads(open(p).read().strip().splitlines()[-1]) for p in sys.argv[2:4]), sys.argv[4]
print(f"| {name} | {small['p50']:.1f} | {small['p99']:.1f} | {small['throughput']:.1f} | {large['p50']:.1f} | {large['p99']:.1f} | {large['throughput']:.1f} | {sum(small['errors'].values()) + sum(large['errors'].values())} | {off} |")
EOF
  kill $pid; wait $pid 2>/dev/null || true; rm -rf "$data" "$data".*
}

echo "| decode of large profiles | small p50 ms | small p99 ms | small/s | large p50 ms | large p99 ms | large/s | errors | offloaded |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for _ in $(seq "$PAIRS"); do
  run "on the core" 0 0
  run "decode threads" 524288 0
  run "decode threads, append in steps" 524288 65536
  echo "| bare 64 KiB fdatasync p99 | $(fsync_p99) ms | | | | | | | |"
done
