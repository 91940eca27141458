#!/usr/bin/env bash
# The cost of replication (issue 10): push throughput and latency of one node against a
# 3-member RF=3 cluster on the same machine, and what each pushed MB costs in CPU seconds
# and internal-RPC bytes.
#
# Every process (the members and kiln-load) binds and talks to 127.0.0.1 only and shares the
# machine's cores. kiln pins its core N to CPU N, so on one machine every process's core 0
# runs on CPU 0: three -shards=1 members share CPU 0 exactly as one -shards=1 node has it,
# and three -shards=2 members share CPUs 0 and 1 as one -shards=2 node has them. Each
# scenario starts fresh processes on empty directories, reads their idle CPU over 3 s, pushes
# the real profiles of testdata/pprof closed loop (CONNS connections in all) for SECS
# seconds, waits 2 s for replicas still being written after the acks, then reads /metrics
# and each process's CPU time (utime+stime of /proc/<pid>/stat) over the push and wait:
#   single-1   one node, -shards=1, no cluster (all core work on CPU 0)
#   cluster-1  three -target=all members, -shards=1 each, RF=3, all load through member 0
#   cluster-1x3  the same, the load spread over the three members (CONNS/3 connections
#              each, one kiln-load process per member)
#   single-2   one node, -shards=2 (CPUs 0 and 1)
#   cluster-2  three members, -shards=2 each, RF=3, all load through member 0
# "pushed MB" is kiln_distributor_received_compressed_bytes_total summed over the members
# (the gzip pprof bodies the distributors accepted); internal bytes are
# kiln_cluster_call_bytes_total{kind="push"} (the replicas' copies, sent as WAL records).
#
# Usage (hold the build lock so no build skews the figures; this script runs cargo build
# itself, which is a no-op once built):
#   flock /tmp/kiln-build.lock perf/cluster.sh [seconds per run, 30] [rounds, 1]
# Env: KILN_PERF_PORT (HTTP base port, 4070: members use +0..+2), KILN_PERF_GOSSIP_PORT
# (7970, +0..+2), KILN_PERF_CONNS (9), KILN_PERF_FLAGS (more flags for every kiln, e.g.
# -ingester.wal-sync-policy=write), KILN (the kiln binary, ./target/release/kiln).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-30}
ROUNDS=${2:-1}
CONNS=${KILN_PERF_CONNS:-9}
HTTP=${KILN_PERF_PORT:-4070}
GOSSIP=${KILN_PERF_GOSSIP_PORT:-7970}
KILN=${KILN:-./target/release/kiln}
LOAD=./target/release/kiln-load
TICK=$(getconf CLK_TCK)
TMP=$(mktemp -d /tmp/kiln-cluster-perf.XXXXXX)
RUN=$TMP/run # each scenario's data, emptied before it starts
RESULTS=$TMP/results.jsonl
cargo build --release -q -p kiln -p kiln-load

# shellcheck source=perf/processes.sh
. perf/processes.sh
ports_free "$HTTP" 3

COMMON=(-server.http-listen-address=127.0.0.1 -validation.reject-older-than=0
  -distributor.ingestion-rate-limit-mb=0 -validation.max-profile-stacktrace-samples=0
  -querier.max-query-length=0 ${KILN_PERF_FLAGS:-})

# start NAME PORT ARGS...: one kiln on PORT, data under $RUN/NAME; waits for /ready.
start() {
  local name=$1 port=$2
  shift 2
  mkdir -p "$RUN/$name"
  $KILN "${COMMON[@]}" -server.http-listen-port="$port" -storage.path="$RUN/$name" "$@" >"$RUN/$name.log" 2>&1 &
  PIDS+=($!)
  wait_ready "$port" "$RUN/$name.log" "kiln $name"
}

# start_cluster SHARDS: three members, each with SHARDS cores; waits until each sees three
# ACTIVE ingesters on its /ring.
start_cluster() {
  local i
  rm -rf "$RUN"
  for i in 0 1 2; do
    start "m$i" $((HTTP + i)) -shards="$1" -storage.filesystem.dir="$RUN/blocks" \
      -memberlist.bind-addr=127.0.0.1 -memberlist.bind-port=$((GOSSIP + i)) \
      -memberlist.join=127.0.0.1:$GOSSIP -ingester.heartbeat-period=1s
  done
  for i in 0 1 2; do
    for _ in $(seq 600); do
      [ "$(curl -s "http://127.0.0.1:$((HTTP + i))/ring" | grep -o '<td>ACTIVE</td>' | wc -l)" = 3 ] && continue 2
      sleep 0.1
    done
    echo "member $i does not see three ACTIVE members" >&2
    exit 1
  done
}

# cpu_ticks PID: utime + stime (fields 14 and 15; the name in parentheses has no spaces).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# metric PORT NAME: the sum of NAME's series on PORT's /metrics (NAME, optionally with labels).
metric() {
  curl -s "http://127.0.0.1:$1/metrics" | awk -v n="$2" \
    'index($0, n) == 1 && (substr($0, length(n) + 1, 1) ~ /[ {]/ || index(n, "{")) {s += $NF} END {printf "%.0f\n", s}'
}

# snapshot PORTS...: one line "cpu_ticks received_bytes call_bytes calls_ok calls_failed
# received_uncompressed_bytes" per member, in the order of PORTS (the members' PIDs are
# PIDS, in the same order).
snapshot() {
  local i=0 port
  for port in "$@"; do
    echo "$(cpu_ticks "${PIDS[$i]}") $(metric "$port" kiln_distributor_received_compressed_bytes_total)" \
      "$(metric "$port" 'kiln_cluster_call_bytes_total{kind="push"}')" \
      "$(metric "$port" 'kiln_cluster_calls_total{kind="push",outcome="ok"}')" \
      "$(metric "$port" 'kiln_cluster_calls_total{kind="push",outcome="failed"}')" \
      "$(metric "$port" kiln_distributor_received_decompressed_bytes_total)"
    i=$((i + 1))
  done
}

# measure LABEL "MEMBER PORTS" "TARGET PORTS": pushes through each target port at once
# (CONNS split evenly), then prints one JSON line of the scenario's figures.
measure() {
  local label=$1 members=$2 targets=$3 port n per j=0 p loads=()
  n=$(echo "$targets" | wc -w)
  per=$((CONNS / n))
  # shellcheck disable=SC2086
  snapshot $members >"$RUN/idle"
  sleep 3
  # shellcheck disable=SC2086
  snapshot $members >"$RUN/before"
  for port in $targets; do
    /usr/bin/time -f "%U %S" -o "$RUN/load$j.time" \
      $LOAD --url "http://127.0.0.1:$port" --duration "${SECS}s" --connections "$per" --threads 1 \
      --json --quiet >"$RUN/load$j.json" 2>"$RUN/load$j.err" &
    loads+=($!)
    j=$((j + 1))
  done
  for p in "${loads[@]}"; do wait "$p"; done
  sleep 2
  # shellcheck disable=SC2086
  snapshot $members >"$RUN/after"
  python3 - "$label" "$TICK" "$RUN" "$n" <<'EOF'
import json, sys
label, tick, tmp, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
rows = lambda f: [list(map(float, l.split())) for l in open(f"{tmp}/{f}")]
d = [[a - b for a, b in zip(x, y)] for x, y in zip(rows("after"), rows("before"))]
idle = sum(x[0] - y[0] for x, y in zip(rows("before"), rows("idle"))) / tick / 3
loads = [json.loads(open(f"{tmp}/load{j}.json").read().strip().splitlines()[-1]) for j in range(n)]
load_cpu = sum(sum(map(float, open(f"{tmp}/load{j}.time").read().split()[-2:])) for j in range(n))
cpu = [r[0] / tick for r in d]
recv = sum(r[1] for r in d)
out = {
    "scenario": label,
    "profiles_s": round(sum(l["throughput"] for l in loads), 1),
    "mb_s_wire": round(sum(l["mb_per_s"] for l in loads), 2),
    "p50_ms": round(sum(l["p50"] * l["ok"] for l in loads) / max(1, sum(l["ok"] for l in loads)), 1),
    "p99_ms": max(l["p99"] for l in loads),
    "errors": sum(l["error_count"] for l in loads),
    "ok": sum(l["ok"] for l in loads),
    "received_mb": round(recv / 1e6, 2),
    "cpu_s": [round(c, 2) for c in cpu],
    "cpu_s_sum": round(sum(cpu), 2),
    "load_cpu_s": round(load_cpu, 2),
    "cpu_s_per_mb": round(sum(cpu) / max(1e-9, recv / 1e6), 3),
    "idle_cpu_s_per_s": round(idle, 3),
    "received_mb_uncompressed": round(sum(r[5] for r in d) / 1e6, 2),
    "internal_push_calls_ok": int(sum(r[3] for r in d)),
    "internal_push_calls_failed": int(sum(r[4] for r in d)),
    "internal_mb": round(sum(r[2] for r in d) / 1e6, 2),
    "internal_bytes_per_pushed_byte": round(sum(r[2] for r in d) / max(1.0, recv), 3),
    "internal_bytes_per_uncompressed_byte": round(sum(r[2] for r in d) / max(1.0, sum(r[5] for r in d)), 3),
}
print(json.dumps(out))
EOF
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F)," \
  "every kiln and kiln-load on it; $SECS s per run, $CONNS connections, $ROUNDS round(s)"
for _ in $(seq "$ROUNDS"); do
  rm -rf "$RUN"
  start s1 "$HTTP" -shards=1 -storage.filesystem.dir="$RUN/blocks"
  measure single-1 "$HTTP" "$HTTP" | tee -a "$RESULTS"
  stop_all

  rm -rf "$RUN"
  start s2 "$HTTP" -shards=2 -storage.filesystem.dir="$RUN/blocks"
  measure single-2 "$HTTP" "$HTTP" | tee -a "$RESULTS"
  stop_all

  start_cluster 1
  measure cluster-1 "$HTTP $((HTTP + 1)) $((HTTP + 2))" "$HTTP" | tee -a "$RESULTS"
  stop_all

  start_cluster 1
  measure cluster-1x3 "$HTTP $((HTTP + 1)) $((HTTP + 2))" "$HTTP $((HTTP + 1)) $((HTTP + 2))" | tee -a "$RESULTS"
  stop_all

  start_cluster 2
  measure cluster-2 "$HTTP $((HTTP + 1)) $((HTTP + 2))" "$HTTP" | tee -a "$RESULTS"
  stop_all
done

# The summary: means over the rounds, and the cluster's cost against single-1.
python3 - "$RESULTS" <<'EOF'
import json, sys
from collections import defaultdict
runs = defaultdict(list)
for line in open(sys.argv[1]):
    if line.startswith("{"):
        r = json.loads(line)
        runs[r["scenario"]].append(r)
mean = lambda s, k: sum(r[k] for r in runs[s]) / len(runs[s])
print()
print("| scenario | profiles/s | MB/s gzip wire | p50 / p99 ms | errors | kiln CPU s (per member) | idle CPU s/s | CPU s per pushed MB | internal MB per pushed MB (gzip / uncompressed) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for s in ("single-1", "cluster-1", "cluster-1x3", "single-2", "cluster-2"):
    if not runs[s]:
        continue
    per = " + ".join(f"{sum(r['cpu_s'][i] for r in runs[s]) / len(runs[s]):.1f}" for i in range(len(runs[s][0]["cpu_s"])))
    print(f"| {s} | {mean(s, 'profiles_s'):.1f} | {mean(s, 'mb_s_wire'):.2f} | {mean(s, 'p50_ms'):.1f} / {mean(s, 'p99_ms'):.1f} "
          f"| {sum(r['errors'] for r in runs[s])} | {mean(s, 'cpu_s_sum'):.1f} ({per}) | {mean(s, 'idle_cpu_s_per_s'):.3f} "
          f"| {mean(s, 'cpu_s_per_mb'):.3f} | {mean(s, 'internal_bytes_per_pushed_byte'):.2f} / "
          f"{mean(s, 'internal_bytes_per_uncompressed_byte'):.2f} |")
for s, b in (("cluster-1", "single-1"), ("cluster-1x3", "single-1"), ("cluster-2", "single-2")):
    if runs[s] and runs[b]:
        c, base = mean(s, "cpu_s_per_mb"), mean(b, "cpu_s_per_mb")
        print(f"{s}: {mean(s, 'profiles_s') / mean(b, 'profiles_s'):.2f}x the throughput and {c / base:.2f}x the CPU "
              f"per pushed MB of {b}; replication adds {c - base:.3f} CPU s and "
              f"{mean(s, 'internal_bytes_per_pushed_byte'):.2f} MB of internal push bodies per pushed MB")
EOF
