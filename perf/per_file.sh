#!/usr/bin/env bash
# Each file of kiln-load's real-profile mix pushed alone, at a low open-loop rate, to one
# kiln core (issue 16 goal 2): its unloaded push latency (p50, p99) and the CPU the kiln
# process spent per push (decode thread, core and WAL together, from /proc). The slowest
# files' unloaded latency is a floor under the mix's p99 at any load: each file is about
# 1/N of the mix's requests.
#
# Usage (hold the build lock so no build skews the figures):
#   flock /tmp/kiln-build.lock perf/per_file.sh [SOURCE_DIR, default testdata/pprof]
# Env: KILN_PERF_PORT (4170), RATE (20 pushes/s), SECS (3).
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${1:-testdata/pprof}
PORT=${KILN_PERF_PORT:-4170}
RATE=${RATE:-20}
SECS=${SECS:-3}
TMP=$(mktemp -d /tmp/kiln-per-file.XXXXXX)
cargo build --release -q -p kiln -p kiln-load
# shellcheck source=perf/processes.sh
. perf/processes.sh
ports_free "$PORT" 1

start_one_core "$PORT" "$TMP/data" "$TMP/log"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$KILN/stat"; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u '+%F %H:%M UTC')"
echo "| file | pushes | p50 ms | p99 ms | kiln CPU ms per push |"
echo "|---|---:|---:|---:|---:|"
find "$SRC" -type f | sort | while read -r f; do
  rm -rf "$TMP/one"
  mkdir -p "$TMP/one"
  cp "$f" "$TMP/one/"
  before=$(cpu_ticks)
  out=$(./target/release/kiln-load --url "http://127.0.0.1:$PORT" --source "$TMP/one" --rate "$RATE" \
    --duration "${SECS}s" --threads 1 --json --quiet 2>/dev/null | tail -1) || continue
  after=$(cpu_ticks)
  # Files kiln-load does not send (not a pprof, over its limits) report no pushes.
  echo "$out" | python3 -c "
import json, os, sys
d = json.loads(sys.stdin.read())
tick = os.sysconf('SC_CLK_TCK')
if d['ok']:
    cpu = ($after - $before) / tick * 1000 / d['ok']
    print('| %s | %d | %.2f | %.2f | %.1f |' % ('${f#"$SRC"/}', d['ok'], d['p50'], d['p99'], cpu))
"
done
