#!/usr/bin/env bash
# Issue 16 goal 1 measured on the whole process: each file of the decode bench's classes
# pushed alone, closed loop (CONNS connections, SECS seconds), to one kiln core (`-shards=1`,
# WAL fsync before ack); the CPU time of the kiln process per acknowledged push (decode
# threads, core, WAL writer and HTTP together, from /proc), against the inflate+protobuf
# bound of the same profile on the same machine (criterion's `decode/inflate+prost/<file>`
# median, measured first in the same run): ratio = bound / CPU per push, which is the
# issue's "acknowledged bytes per CPU-second over the bound's" for one profile sent again
# and again. kiln-load sends each profile re-encoded and gzipped by itself (its bytes on the
# wire differ from the file's, its content does not), hence time per profile, not per byte.
#
# The decode bench (`decode/kiln`) compares the decode alone with its bound; this is the
# whole push path, so what kiln does besides the decode (interning, the WAL record, HTTP,
# memory) is in the figure too.
#
# Usage (hold the build lock so no build skews the figures):
#   flock /tmp/kiln-build.lock perf/ingest_bound.sh
# Env: KILN_PERF_PORT (4175), SECS (5), CONNS (4), BENCH (1: run the bound's bench first; 0: use
# the criterion estimates already in target/criterion).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${KILN_PERF_PORT:-4175}
SECS=${SECS:-5}
CONNS=${CONNS:-4}
TMP=$(mktemp -d /tmp/kiln-ingest-bound.XXXXXX)
cargo build --release -q -p kiln -p kiln-load
# shellcheck source=perf/processes.sh
. perf/processes.sh
ports_free "$PORT" 1

# The bench's classes (benches/hot_paths.rs, DECODE_FIXTURES).
FILES=$(sed -n '/^const DECODE_FIXTURES/,/^];/p' benches/hot_paths.rs | grep -o '"pprof/[^"]*"' | tr -d '"')
if [ "${BENCH:-1}" = 1 ]; then
  cargo bench -q --bench hot_paths -- 'decode/inflate\+prost/' >/dev/null 2>&1
fi

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u '+%F %H:%M UTC')"
echo "| file | pushes/s | kiln CPU ms per push | bound ms (inflate+prost) | bound / CPU per push |"
echo "|---|---:|---:|---:|---:|"
for rel in $FILES; do
  f="testdata/$rel"
  name=$(basename "$f")
  est="target/criterion/decode/inflate+prost/$name/new/estimates.json"
  [ -f "$est" ] || { echo "| $name | no bound: run with BENCH=1 | | | |"; continue; }
  rm -rf "$TMP/one" "$TMP/data"
  mkdir -p "$TMP/one"
  cp "$f" "$TMP/one/"
  start_one_core "$PORT" "$TMP/data" "$TMP/log"
  ticks() { awk '{print $14 + $15}' "/proc/$KILN/stat"; }
  before=$(ticks)
  out=$(./target/release/kiln-load --url "http://127.0.0.1:$PORT" --source "$TMP/one" --connections "$CONNS" \
    --duration "${SECS}s" --threads 1 --json --quiet 2>/dev/null | tail -1) || true
  after=$(ticks)
  stop_all
  # kiln-load does not send every file (over its sample limit, an empty sample type name).
  [ -n "$out" ] || { echo "| $name | not sent by kiln-load | | | |"; continue; }
  echo "$out" | python3 -c "
import json, os, sys
d = json.loads(sys.stdin.read())
cpu_s = ($after - $before) / os.sysconf('SC_CLK_TCK')
bound_ms = json.load(open('$est'))['median']['point_estimate'] / 1e6
if d['ok'] and cpu_s > 0:
    per_push = cpu_s * 1000 / d['ok']
    print('| %s | %.0f | %.2f | %.2f | %.2f |' % ('$name', d['throughput'], per_push, bound_ms, bound_ms / per_push))
"
done
