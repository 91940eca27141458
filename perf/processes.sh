# Sourced by the perf scripts that run several kiln processes: the processes started (PIDS),
# stopping them all on exit along with the scratch directory TMP, and checking that the
# ports a script will use are free. Needs TMP set before it is sourced.
PIDS=()

stop_all() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
trap 'stop_all; rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM

# wait_ready PORT LOG WHAT: waits up to 30 s for PORT's /ready; else shows LOG's tail and exits.
wait_ready() {
  for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$1/ready" >/dev/null && return
    sleep 0.1
  done
  echo "$3 is not ready:" >&2
  tail -20 "$2" >&2
  exit 1
}

# ports_free BASE COUNT: exits unless nothing answers HTTP on BASE..BASE+COUNT-1.
ports_free() {
  local i
  for i in $(seq 0 $(($2 - 1))); do
    if curl -s -o /dev/null "http://127.0.0.1:$(($1 + i))/"; then
      echo "port $(($1 + i)) is taken: set KILN_PERF_PORT" >&2
      exit 1
    fi
  done
}

# start_one_core PORT DATA_DIR LOG: starts ./target/release/kiln on one core (`-shards=1`)
# with the limits that would refuse replayed test data turned off (and KILN_FLAGS, if set),
# adds it to PIDS, sets KILN to its pid and waits until it is ready.
start_one_core() {
  # shellcheck disable=SC2086 # KILN_FLAGS is a list of flags.
  ./target/release/kiln -shards=1 -server.http-listen-address=127.0.0.1 -server.http-listen-port="$1" \
    -storage.path="$2" -validation.reject-older-than=0 -distributor.ingestion-rate-limit-mb=0 \
    -validation.max-profile-stacktrace-samples=0 -querier.max-query-length=0 ${KILN_FLAGS:-} >"$3" 2>&1 &
  KILN=$!
  PIDS+=("$KILN")
  wait_ready "$1" "$3" kiln
}
