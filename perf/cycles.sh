#!/usr/bin/env bash
# Where a push's CPU goes (issue 16 goal 1: "write down where each remaining cycle goes").
# One file pushed alone, open loop at RATE/s, to one kiln core (`-shards=1`, WAL fsync before
# ack, 8 MiB segments so that the measured pushes land in preallocated ones); `perf record`
# samples the kiln process with DWARF call graphs for SECS seconds. Prints the process's CPU
# per acknowledged push (from /proc) and each part of the push path's share of kiln's
# samples, per kind of thread: the core, the decode threads, the kernel's io_uring workers
# (the WAL's writes and syncs) and the rest (the spare segment's writer, self-profiling).
# Shares are inclusive (a part's callees are in it); the parts are disjoint but for the last
# two, which cut across them. perf's DWARF stack copies are charged to kiln, so the CPU per
# push printed here is higher than without perf (perf/ingest_bound.sh measures it bare).
#
# Usage (needs `perf`; hold the build lock so no build skews the figures):
#   flock /tmp/kiln-build.lock perf/cycles.sh testdata/pprof/pyroscope/pkg-pprof/heap 30 4
# Env: KILN_PERF_PORT (4176).
set -euo pipefail
cd "$(dirname "$0")/.."
FILE=${1:?usage: perf/cycles.sh FILE [RATE] [SECS]}
RATE=${2:-30}
SECS=${3:-4}
PORT=${KILN_PERF_PORT:-4176}
TMP=$(mktemp -d /tmp/kiln-cycles.XXXXXX)
cargo build --release -q -p kiln -p kiln-load
# shellcheck source=perf/processes.sh
. perf/processes.sh
ports_free "$PORT" 1
mkdir -p "$TMP/one"
cp "$FILE" "$TMP/one/"
KILN_FLAGS=-ingester.wal-segment-size-bytes=8388608 start_one_core "$PORT" "$TMP/data" "$TMP/log"
load() {
  ./target/release/kiln-load --url "http://127.0.0.1:$PORT" --source "$TMP/one" --rate "$RATE" \
    --duration "$1" --threads 1 --json --quiet 2>/dev/null | tail -1
}
# Warm up past the first (plain) segment.
load 3s >/dev/null
ticks() { awk '{print $14 + $15}' "/proc/$KILN/stat"; }
before=$(ticks)
perf record -q -e cpu-clock -F 999 --call-graph dwarf,32768 -o "$TMP/perf.data" -p "$KILN" -- sleep "$SECS" \
  >/dev/null 2>&1 &
REC=$!
out=$(load "${SECS}s")
after=$(ticks)
wait "$REC" || true
stop_all
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u '+%F %H:%M UTC')"
echo "$out" | python3 -c "
import json, os, sys
d = json.loads(sys.stdin.read())
cpu_ms = ($after - $before) * 1000 / os.sysconf('SC_CLK_TCK')
print('%s at %s/s: %d pushes acknowledged, p50 %.2f ms, p99 %.2f ms, kiln CPU %.2f ms per push (perf attached)' % (
    os.path.basename('$FILE'), '$RATE', d['ok'], d['p50'], d['p99'], cpu_ms / max(1, d['ok'])))
"
perf report -i "$TMP/perf.data" --children --sort comm,sym --stdio -g none 2>/dev/null | python3 -c '
import re, sys
# (part, symbols whose inclusive share is the part: the largest share among them is taken,
# since one function shows once inlined and once out of line).
PARTS = [
    ("inflate (gzip)", ["kiln_io::compress::maybe_gunzip"]),
    ("pprof decode, normalise, Go repair", ["kiln::distributor::pprof::decode_and_normalize"]),
    ("stack keys", ["kiln_shards::model::profile::Profile::stack_keys"]),
    ("WAL record body", ["kiln_shards::ingester::walcodec::RecordBody::new"]),
    ("freeing the profile", ["kiln::distributor::offload::free"]),
    ("head append and WAL record (Ingester::apply)", ["kiln_shards::ingester::Ingester::apply"]),
    ("sending answers (tcp_sendmsg, with loopback delivery)", ["tcp_sendmsg"]),
    ("WAL fdatasync", ["io_fsync"]),
    ("WAL write into the page cache", ["io_write"]),
    # Across the parts above, not beside them.
    ("of all the above: page faults", ["exc_page_fault"]),
    ("of all the above: context switches (finish_task_switch, self)", ["finish_task_switch.isra.0"]),
]
def kind(comm):
    for prefix, k in (("kiln-core", "core"), ("kiln-decode", "decode threads"), ("iou-wrk", "io_uring workers")):
        if comm.startswith(prefix):
            return k
    return "other"
KINDS = ["core", "decode threads", "io_uring workers", "other"]
total = {k: 0.0 for k in KINDS}
share = {}
for line in sys.stdin:
    m = re.match(r"\s+([\d.]+)%\s+([\d.]+)%\s+(\S+)\s+\[[.k]\]\s+(.*)$", line)
    if not m:
        continue
    children, self_, comm, sym = float(m.group(1)), float(m.group(2)), m.group(3), m.group(4).strip()
    k = kind(comm)
    total[k] += self_
    for part, names in PARTS:
        # Context switches are counted by self time; every other part inclusively.
        v = self_ if "context switches" in part else children
        if any(re.search(r"(^|[^\w])" + re.escape(n) + r"($|[^\w])", sym) for n in names):
            share[(part, k)] = max(share.get((part, k), 0.0), v)
print("| part of the push path | " + " | ".join(KINDS) + " |")
print("|---|" + "---:|" * len(KINDS))
print("| **all of the thread kind** | " + " | ".join("**%.1f%%**" % total[k] for k in KINDS) + " |")
rest = {k: total[k] - sum(share.get((p, k), 0.0) for p, _ in PARTS if not p.startswith("of all")) for k in KINDS}
PARTS.insert(next(i for i, (p, _) in enumerate(PARTS) if p.startswith("of all")), ("elsewhere (HTTP, routing, the runtime, the spare segment, self-profiling)", []))
share.update({("elsewhere (HTTP, routing, the runtime, the spare segment, self-profiling)", k): v for k, v in rest.items()})
for part, _ in PARTS:
    cells = ["%.1f%%" % share[(part, k)] if share.get((part, k), 0) >= 0.05 else "" for k in KINDS]
    if any(cells):
        print("| " + part + " | " + " | ".join(cells) + " |")
'
