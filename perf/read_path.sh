#!/usr/bin/env bash
# The read path at scale (issue 11): query latency straight at a querier against through a
# query-frontend and a query-scheduler (the cost of the hop), a 24 h range with and without
# splitting and from a warm results cache, and fairness (one tenant's latency while another
# floods the scheduler).
#
# One microservices layout on 127.0.0.1, every process -shards=1 on this machine's cores:
# a query-scheduler, an ingester, a distributor, a querier (-querier.max-concurrent=4) and
# three query-frontends: "plain" (no split, no cache), "split" (split by 1h, no cache) and
# "cached" (split by 1h, results cache on). The data: tenant-0 and tenant-1 each get one
# profile per service every 5 minutes over the last 24 h (SERVICES services, a folded
# profile of STACKS stacks each), pushed through the distributor's /ingest with their old
# timestamps, then cut into blocks. Each scenario is one kiln-load --mode query run (its
# fixed mix: SelectMergeProfile, render, SelectMergeStacktraces, LabelNames, Series):
#   querier-1h / frontend-1h      range 1h, straight at the querier, through "plain"
#   querier-24h / frontend-24h    range 24h, straight, through "plain"
#   split-24h                     range 24h through "split"
#   cached-24h                    range 24h through "cached", after one warm-up run
#   light-alone                   tenant-1, range 1h, 1 connection, through "plain"
#   light-with-heavy              the same while tenant-0 runs 24h queries through "split"
#                                 with HEAVY connections (its own kiln-load process)
#
# Usage (hold the build lock so no build skews the figures):
#   flock /tmp/kiln-build.lock perf/read_path.sh [seconds per run, 20]
# Env: KILN_PERF_PORT (HTTP base port, 4090: +0..+7), KILN_PERF_GOSSIP_PORT (7990, +0..+7),
# KILN_PERF_CONNS (4), KILN_PERF_HEAVY (16), KILN_PERF_SERVICES (4), KILN_PERF_STACKS (200).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-20}
CONNS=${KILN_PERF_CONNS:-4}
HEAVY=${KILN_PERF_HEAVY:-16}
SERVICES=${KILN_PERF_SERVICES:-4}
STACKS=${KILN_PERF_STACKS:-200}
HTTP=${KILN_PERF_PORT:-4090}
GOSSIP=${KILN_PERF_GOSSIP_PORT:-7990}
KILN=${KILN:-./target/release/kiln}
LOAD=./target/release/kiln-load
TMP=$(mktemp -d /tmp/kiln-read-path-perf.XXXXXX)
cargo build --release -q -p kiln -p kiln-load

# shellcheck source=perf/processes.sh
. perf/processes.sh
ports_free "$HTTP" 8

COMMON=(-server.http-listen-address=127.0.0.1 -shards=1 -auth.multitenancy-enabled=true
  -validation.reject-older-than=0 -distributor.ingestion-rate-limit-mb=0
  -querier.max-query-length=0 -distributor.replication-factor=1
  -memberlist.bind-addr=127.0.0.1 -memberlist.join=127.0.0.1:$GOSSIP
  -storage.filesystem.dir="$TMP/blocks" -ingester.heartbeat-period=1s)

# start N TARGET ARGS...: member N (port HTTP+N, gossip GOSSIP+N); waits for /ready.
start() {
  local n=$1 target=$2 port=$((HTTP + $1))
  shift 2
  mkdir -p "$TMP/m$n"
  $KILN "${COMMON[@]}" -target="$target" -server.http-listen-port="$port" \
    -memberlist.bind-port=$((GOSSIP + n)) -storage.path="$TMP/m$n" "$@" >"$TMP/m$n.log" 2>&1 &
  PIDS+=($!)
  wait_ready "$port" "$TMP/m$n.log" "member $n ($target)"
}

SCHED=$HTTP ING=$((HTTP + 1)) DIST=$((HTTP + 2)) QUERIER=$((HTTP + 3))
PLAIN=$((HTTP + 4)) SPLIT=$((HTTP + 5)) CACHED=$((HTTP + 6))
start 0 query-scheduler
start 1 ingester
start 2 distributor
start 3 querier -querier.max-concurrent=4
start 4 query-frontend -query-frontend.cache-results=false
start 5 query-frontend -query-frontend.cache-results=false -querier.split-queries-by-interval=1h
# The distributor takes any age here (the data is pushed with old timestamps); this frontend
# is told profiles older than 2h are refused, so it caches the parts that end before then.
start 6 query-frontend -querier.split-queries-by-interval=1h -validation.reject-older-than=2h

# The data: STACKS distinct stacks per profile, a profile every 5 minutes over 24 h.
body="$TMP/profile.folded"
for s in $(seq "$STACKS"); do echo "main;serve;handler_$((s % 17));work_$s $((s * 7 % 100 + 1))"; done >"$body"
now=$(date +%s)
echo "pushing 24h of data for 2 tenants x $SERVICES services..." >&2
for tenant in tenant-0 tenant-1; do
  for svc in $(seq "$SERVICES"); do
    for t in $(seq $((now - 86400)) 300 "$now"); do
      printf 'url = "http://127.0.0.1:%s/ingest?name=svc-%s.cpu&from=%s&until=%s&format=folded"\n' "$DIST" "$svc" "$t" "$((t + 10))"
    done
  done >"$TMP/curl-$tenant.cfg"
  curl -sf --no-progress-meter -X POST -H "X-Scope-OrgID: $tenant" --data-binary @"$body" --parallel --parallel-max 8 \
    -K "$TMP/curl-$tenant.cfg" -o /dev/null
done
curl -sf -X POST "http://127.0.0.1:$ING/ingester/flush" >/dev/null

# run LABEL PORT RANGE CONNS TENANT_OFFSET: one kiln-load query run; one JSON line.
run() {
  $LOAD --url "http://127.0.0.1:$2" --mode query --range "$3" --duration "${SECS}s" --connections "$4" \
    --threads 1 --tenants 1 --tenant-offset "$5" --json --quiet 2>"$TMP/$1.err" | tail -1 >"$TMP/$1.json"
  python3 - "$1" "$TMP/$1.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[2]))
print(json.dumps({"scenario": sys.argv[1], "queries_s": r["throughput"], "p50_ms": r["p50"], "p99_ms": r["p99"],
                  "errors": r["error_count"], "ok": r["ok"]}))
PY
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F)," \
  "every process on it; $SECS s per run, $CONNS connections"
run querier-1h "$QUERIER" 1h "$CONNS" 0
run frontend-1h "$PLAIN" 1h "$CONNS" 0
run querier-24h "$QUERIER" 24h "$CONNS" 0
run frontend-24h "$PLAIN" 24h "$CONNS" 0
run split-24h "$SPLIT" 24h "$CONNS" 0
run cached-warmup "$CACHED" 24h "$CONNS" 0 >/dev/null
run cached-24h "$CACHED" 24h "$CONNS" 0
run light-alone "$PLAIN" 1h 1 1
$LOAD --url "http://127.0.0.1:$SPLIT" --mode query --range 24h --duration "$((SECS + 4))s" --connections "$HEAVY" \
  --threads 1 --tenants 1 --tenant-offset 0 --json --quiet >"$TMP/heavy.json" 2>"$TMP/heavy.err" &
heavy=$!
sleep 2
run light-with-heavy "$PLAIN" 1h 1 1
wait "$heavy"
python3 - "$TMP/heavy.json" <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(json.dumps({"scenario": "heavy (tenant-0, 24h, split)", "queries_s": r["throughput"], "p50_ms": r["p50"],
                  "p99_ms": r["p99"], "errors": r["error_count"], "ok": r["ok"], "error_kinds": r["errors"],
                  "error_messages": r.get("error_messages")}))
PY
echo "scheduler: $(curl -s "http://127.0.0.1:$SCHED/metrics" | grep -E '^kiln_query_scheduler_jobs_total' | tr '\n' ' ')"
echo "cached frontend: $(curl -s "http://127.0.0.1:$CACHED/metrics" | grep -E '^kiln_query_frontend_results_cache_(hits|misses)_total' | tr '\n' ' ')"
