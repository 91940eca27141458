#!/usr/bin/env bash
# WAL replay speed of two kiln binaries on the same WAL (issue 16 goal 4): one kiln fills a
# WAL with kiln-load's real-profile mix for SECS seconds (8 connections, closed loop) and is
# killed with -9; then each binary in turn starts on a fresh copy of that data, ROUNDS times,
# alternating, and the script prints each replay's "WAL replayed" figures (record bytes and
# seconds, from kiln's log) and MB/s. -shards=1: the figure is per core (the replay thread
# decodes, the core appends; the WAL is adopted in place).
#
# Usage (hold the build lock so no build skews the figures):
#   flock /tmp/kiln-build.lock perf/replay_ab.sh OLD_BINARY [NEW_BINARY, ./target/release/kiln]
# Env: KILN_PERF_PORT (4160), SECS (15), ROUNDS (3).
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${1:?usage: perf/replay_ab.sh OLD_BINARY [NEW_BINARY]}
NEW=${2:-./target/release/kiln}
PORT=${KILN_PERF_PORT:-4160}
SECS=${SECS:-15}
ROUNDS=${ROUNDS:-3}
TMP=$(mktemp -d /tmp/kiln-replay-ab.XXXXXX)
cargo build --release -q -p kiln -p kiln-load
# shellcheck source=perf/processes.sh
. perf/processes.sh
ports_free "$PORT" 1

start() { # BINARY DATA_DIR
  "$1" -shards=1 -server.http-listen-address=127.0.0.1 -server.http-listen-port="$PORT" -storage.path="$2" \
    -validation.reject-older-than=0 -distributor.ingestion-rate-limit-mb=0 \
    -validation.max-profile-stacktrace-samples=0 -querier.max-query-length=0 >>"$TMP/log" 2>&1 &
  PIDS+=($!)
  wait_ready "$PORT" "$TMP/log" "$1"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u '+%F %H:%M UTC')"
start "$NEW" "$TMP/src"
./target/release/kiln-load --url "http://127.0.0.1:$PORT" --duration "${SECS}s" --connections 8 --threads 1 --json --quiet >/dev/null 2>&1
kill -9 "${PIDS[@]}"
stop_all
echo "WAL: $(du -sb "$TMP/src/wal" | cut -f1) bytes on disk"
for _ in $(seq "$ROUNDS"); do
  for bin in "$OLD" "$NEW"; do
    rm -rf "$TMP/run"
    cp -a "$TMP/src" "$TMP/run"
    : >"$TMP/log"
    start "$bin" "$TMP/run"
    line=$(grep 'WAL replayed' "$TMP/log" | tail -1)
    bytes=$(echo "$line" | sed -E 's/.*bytes=([0-9]+).*/\1/')
    secs=$(echo "$line" | sed -E 's/.*seconds=([0-9.]+).*/\1/')
    printf "%-40s %s MB of records in %.2f s = %.0f MB/s\n" "$bin" "$((bytes / 1000000))" "$secs" \
      "$(python3 -c "print($bytes / 1e6 / $secs)")"
    stop_all
  done
done
