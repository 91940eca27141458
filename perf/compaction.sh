#!/usr/bin/env bash
# The compactor in a whole process: query latency over a day of level-1 blocks and over the
# same day compacted, the compactor's throughput from its /metrics, and push latency while
# it works against the same load with it idle (as kiln-load sees it, and as kiln's own
# request histogram does).
#
# One single-node kiln (-shards=1, its core pinned to CPU 0) on 127.0.0.1, multitenant:
# tenant-0 holds the day, tenant-1 takes kiln-load's pushes.
# (a) kiln starts with -compactor.first-level-compaction-wait-period=1h (nothing compacts).
#     A day of profiles is backfilled through /ingest with old timestamps: SERVICES services,
#     a folded profile every STEP seconds each (STACKS stacks, drawn from 16 bodies over a
#     pool of 4 x STACKS stacks), from an 8h-aligned start 40 to 48 hours ago, so the day is
#     three whole 8h windows; /ingester/flush after every simulated hour: 24 level-1 blocks.
#     Then: query latency over the last 48 h (kiln-load --mode query, 2 connections, after a
#     5 s warm-up run), and push latency at RATE profiles/s to tenant-1 (real pprofs of
#     testdata/) with the compactor idle.
#     Then the same restart with nothing to compact, and the same push run: the control for
#     (b)'s, whose first seconds are a fresh process's as well.
# (b) kiln restarts on the same data with compaction on at once (interval 5s, wait 0s,
#     cleanup 5s, deletion delay 0s). From its /ready, kiln-load pushes RATE profiles/s to
#     tenant-1 for SECS seconds; the script waits until tenant-0's bucket index holds only
#     the three 8h blocks, prints the compactor's counters (MB/s and rows/s per job thread)
#     and how much of the push run a job overlapped, with the per-second push p99 of the
#     seconds a job ran against the other seconds (jobs' times from kiln's log); then the same
#     query latency, and the same push load again with the compactor idle (nothing to plan).
# About 7 to 8 minutes with the defaults on the 2-core dev VM, 4.5 of them the backfill.
#
# Usage (hold the build lock so no build skews the figures):
#   flock /tmp/kiln-build.lock perf/compaction.sh [seconds per load run, 20]
# Env: KILN_PERF_PORT (HTTP port, 4150), KILN_PERF_SERVICES (32), KILN_PERF_STEP (30),
# KILN_PERF_STACKS (1000), KILN_PERF_RATE (pushes/s, 100), KILN_PERF_DELETION_DELAY (0s: the
# inputs are deleted during the push run; 1h: they are not, and the script waits only for
# the three 8h blocks, not for the marks to go), KILN_PERF_FLAGS (more kiln flags, for every
# start: e.g. -ingester.wal-preallocate=false).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-20}
PORT=${KILN_PERF_PORT:-4150}
SERVICES=${KILN_PERF_SERVICES:-32}
STEP=${KILN_PERF_STEP:-30}
STACKS=${KILN_PERF_STACKS:-1000}
RATE=${KILN_PERF_RATE:-100}
DELETION_DELAY=${KILN_PERF_DELETION_DELAY:-0s}
KILN=${KILN:-./target/release/kiln}
LOAD=./target/release/kiln-load
URL=http://127.0.0.1:$PORT
TMP=$(mktemp -d /tmp/kiln-compaction-perf.XXXXXX)
cargo build --release -q -p kiln -p kiln-load

# shellcheck source=perf/processes.sh
. perf/processes.sh
ports_free "$PORT" 1

COMMON=(-server.http-listen-address=127.0.0.1 -server.http-listen-port="$PORT" -shards=1
  -storage.path="$TMP/data" -auth.multitenancy-enabled=true -validation.reject-older-than=0
  -distributor.ingestion-rate-limit-mb=0 -validation.max-profile-stacktrace-samples=0
  -querier.max-query-length=0 -querier.max-query-lookback=0)
# shellcheck disable=SC2206 # flags are split on spaces, on purpose
COMMON+=(${KILN_PERF_FLAGS:-})
INDEX=$TMP/data/blocks/tenant-0/bucket-index.json

start_kiln() {
  $KILN "${COMMON[@]}" "$@" >>"$TMP/kiln.log" 2>&1 &
  PIDS+=($!)
  wait_ready "$PORT" "$TMP/kiln.log" kiln
}

# blocks: "live_blocks live_bytes levels marked" of tenant-0's bucket index.
# blocks wait T0 DELETION_DELAY: the same, once the index holds at most three live blocks
# (and no marked ones unless the deletion delay is not 0s), followed by the seconds since
# T0; exits 1 after 300 s. It polls from one process, four times a second: launching a
# process per poll (bash, the python3 shim, the interpreter) took about a third of a CPU
# here, during the very push run it measures.
blocks() {
  python3 - "$INDEX" "$@" <<'PY'
import json, sys, time
def state():
    idx = json.load(open(sys.argv[1]))
    marked = {m["block_id"] for m in idx.get("block_deletion_marks") or []}
    live = [b for b in idx["blocks"] if b["block_id"] not in marked]
    levels = sorted({b.get("compaction_level", 1) for b in live})
    return len(live), sum(b.get("size_bytes", 0) for b in live), ",".join(map(str, levels)), len(marked)
if len(sys.argv) == 2:
    print(*state())
    sys.exit(0)
t0, delay = float(sys.argv[3]), sys.argv[4]
deadline = time.time() + 300
while time.time() < deadline:
    s = state()
    if s[0] <= 3 and (s[3] == 0 or delay != "0s"):
        print(*s, round(time.time() - t0, 1))
        sys.exit(0)
    time.sleep(0.25)
print("not compacted after 300 s:", *state(), file=sys.stderr)
sys.exit(1)
PY
}

# load LABEL ARGS...: one kiln-load run of SECS seconds; prints one JSON line.
load() {
  local label=$1
  shift
  $LOAD --url "$URL" --threads 1 --tenants 1 --duration "${SECS}s" --json --quiet "$@" 2>"$TMP/$label.err" \
    | tail -1 >"$TMP/$label.json"
  python3 - "$label" "$TMP/$label.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[2]))
print(json.dumps({"run": sys.argv[1], "per_s": r["throughput"], "p50_ms": r["p50"], "p90_ms": r["p90"],
                  "p99_ms": r["p99"], "max_ms": r["max"], "errors": r["error_count"]}))
PY
}

query() {
  $LOAD --url "$URL" --mode query --range 48h --connections 2 --threads 1 --tenants 1 --duration 5s \
    --quiet >/dev/null 2>&1
  load "$1" --mode query --range 48h --connections 2 --tenant-offset 0
}

# push LABEL ARGS...: a push run; also prints kiln's own view of it, from the push route's
# histogram (kiln_request_duration_seconds) before and after: the share of pushes kiln took
# over 10, 25 and 50 ms to answer, without kiln-load's own scheduling on a shared CPU.
push() {
  local label=$1
  shift
  server_buckets >"$TMP/$label.before"
  load "$label" --rate "$RATE" --tenant-offset 1 "$@"
  server_buckets >"$TMP/$label.after"
  python3 - "$label" "$TMP/$label.before" "$TMP/$label.after" <<'PY'
import re, sys
def read(p):
    return {r.group(1): float(r.group(2)) for line in open(p) if (r := re.search(r'le="([^"]+)"\} (\S+)', line))}
b, a = read(sys.argv[2]), read(sys.argv[3])
d = {le: a[le] - b.get(le, 0) for le in a}
n = d.get("+Inf", 0)
over = lambda le: 100 * (n - d.get(le, n)) / n if n else 0
print(f"{sys.argv[1]}, kiln's side: {n:.0f} pushes; answered in over 10 ms {over('0.01'):.1f}%, "
      f"over 25 ms {over('0.025'):.1f}%, over 50 ms {over('0.05'):.2f}%")
PY
}

server_buckets() { curl -s "$URL/metrics" | grep '^kiln_request_duration_seconds_bucket{route="push"' || true; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
  "$(free -g | awk '/^Mem/ {print $2}') GiB, $(date -u '+%F %H:%M UTC'); kiln and kiln-load on it;" \
  "$SERVICES services x a profile every ${STEP}s x $STACKS stacks; $SECS s per load run, push at $RATE/s"

# (a) The day, as level-1 blocks.
start_kiln -compactor.first-level-compaction-wait-period=1h
python3 - "$TMP" "$STACKS" <<'PY'
import random, sys
tmp, stacks = sys.argv[1], int(sys.argv[2])
rng = random.Random(1)
funcs = [f"pkg{i % 40}.fn_{i}" for i in range(stacks)]
pool = []
for _ in range(4 * stacks):
    depth = rng.randint(6, 24)
    pool.append(";".join(["main", "run"] + [rng.choice(funcs) for _ in range(depth)]))
for b in range(16):
    with open(f"{tmp}/body-{b}.folded", "w") as f:
        for s in rng.sample(pool, stacks):
            f.write(f"{s} {rng.randint(1, 1000)}\n")
PY
now=$(date +%s)
day=$(((now - 48 * 3600 + 8 * 3600 - 1) / (8 * 3600) * 8 * 3600))
t0=$(date +%s.%N)
for h in $(seq 0 23); do
  hour=$((day + h * 3600))
  for s in $(seq "$SERVICES"); do
    for t in $(seq "$hour" "$STEP" $((hour + 3600 - STEP))); do
      printf 'next\nurl = "%s/ingest?name=svc-%s.cpu&from=%s&until=%s&format=folded"\n' "$URL" "$s" "$t" "$((t + 10))"
      printf 'header = "X-Scope-OrgID: tenant-0"\ndata-binary = "@%s/body-%s.folded"\n' "$TMP" $(((s * 7 + t / STEP) % 16))
    done
  done | tail -n +2 >"$TMP/curl.cfg"
  curl -sf --no-progress-meter --parallel --parallel-max 8 -K "$TMP/curl.cfg" -o /dev/null
  curl -sf -X POST "$URL/ingester/flush" >/dev/null
done
profiles=$((24 * SERVICES * 3600 / STEP))
echo "backfill: $profiles profiles ($((profiles * STACKS)) samples) in" \
  "$(python3 -c "import time; print(round(time.time() - $t0, 1))") s, 24 flushes"
read -r n_before bytes_before levels_before _ < <(blocks)
echo "before: $n_before live blocks, $bytes_before bytes, levels $levels_before"
query query-level1
push push-idle-before
stop_all
# The control for (b): the same restart with nothing to compact (the wait period again), so
# a fresh process's first seconds are told apart from the compactor's work.
start_kiln -compactor.first-level-compaction-wait-period=1h
push push-idle-after-restart --quiet false
python3 - "$TMP/push-idle-after-restart.err" <<'PY'
import re, statistics, sys
p99 = [float(r.group(1)) for line in open(sys.argv[1]) if (r := re.search(r"\]\s.*p99\s+([0-9.]+) ms", line))]
print(f"push after a restart, compactor idle: per-second p99 (ms), median / max: {statistics.median(p99):.1f} / {max(p99):.1f}")
PY
stop_all

# (b) The same data, compacted while tenant-1 pushes. The push run prints a line per second
# (its p99 that second); the compactor's log gives each job's end and length, so the seconds
# with a job running are told apart from the rest.
t0=$(date +%s.%N)
start_kiln -compactor.compaction-interval=5s -compactor.first-level-compaction-wait-period=0s \
  -compactor.cleanup-interval=5s -compactor.deletion-delay="$DELETION_DELAY"
push_start=$(date +%s.%N)
push push-while-compacting --quiet false &
pusher=$!
read -r n bytes levels marked done_at < <(blocks wait "$t0" "$DELETION_DELAY")
[ -n "$done_at" ] || exit 1
wait "$pusher"
echo "after: $n live blocks, $bytes bytes, levels $levels; compacted $done_at s after the restart began"
curl -s "$URL/metrics" | grep -E '^kiln_compactor_(bytes|rows|job|jobs|replica|runs)' | tee "$TMP/metrics"
python3 - "$TMP/metrics" "$TMP/kiln.log" "$push_start" "$SECS" "$TMP/push-while-compacting.err" <<'PY'
import datetime, re, statistics, sys
metrics, log, push_start, secs, progress = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
m = {}
for line in open(metrics):
    name, value = line.rsplit(" ", 1)
    m[name.split("{")[0] + ("_ok" if 'result="success"' in name else "")] = float(value)
job_s = m["kiln_compactor_job_duration_seconds_total"]
print(f"compactor: {m['kiln_compactor_bytes_read_total'] / 1e6 / job_s:.1f} MB/s read, "
      f"{m['kiln_compactor_bytes_written_total'] / 1e6 / job_s:.1f} MB/s written, "
      f"{m['kiln_compactor_rows_read_total'] / job_s:,.0f} rows/s read, per job thread (one core); "
      f"{job_s:.2f} s in {m['kiln_compactor_jobs_total_ok']:.0f} jobs")
# Jobs as [start, end) in unix seconds, from the log.
jobs = []
for line in open(log):
    if "compaction done" in line:
        ts = re.search(r"\bts=(\S+)", line)
        ts = ts.group(1) if ts else line.split()[0]
        end = datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
        jobs.append((end - float(re.search(r"seconds=([0-9.e-]+)", line).group(1)), end))
# kiln-load starts sending 50 ms after it starts; progress line n covers second n of the run.
start = push_start + 0.05
busy, idle = [], []
for line in open(progress):
    r = re.match(r"\[\s*(\d+)s\].*p99\s+([0-9.]+) ms", line)
    if not r:
        continue
    a = start + int(r.group(1)) - 1
    overlap = sum(max(0.0, min(e, a + 1) - max(s, a)) for s, e in jobs)
    (busy if overlap >= 0.5 else idle).append(float(r.group(2)))
window = sum(max(0.0, min(e, start + secs) - max(s, start)) for s, e in jobs)
print(f"push window {secs} s: a job ran for {window:.1f} s of it; per-second p99 (ms), median / max: "
      f"seconds with a job running (>= 0.5 s of it, {len(busy)} s) "
      f"{statistics.median(busy) if busy else 0:.1f} / {max(busy, default=0):.1f}, "
      f"the other seconds ({len(idle)} s) {statistics.median(idle) if idle else 0:.1f} / {max(idle, default=0):.1f}")
PY
query query-compacted
push push-idle --quiet false
python3 - "$TMP/push-idle.err" <<'PY'
import re, statistics, sys
p99 = [float(r.group(1)) for line in open(sys.argv[1]) if (r := re.search(r"\]\s.*p99\s+([0-9.]+) ms", line))]
print(f"push, compactor idle: per-second p99 (ms), median / max: {statistics.median(p99):.1f} / {max(p99):.1f}")
PY
