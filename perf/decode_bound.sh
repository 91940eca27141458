#!/usr/bin/env bash
# kiln's decode+normalise of each test-data class against the inflate+protobuf-decode bound,
# before and after a change, in one sitting: the two `hot_paths` bench binaries run in turn,
# ROUNDS times each, and the table gives per class the bound, before and after (the minimum
# over rounds of criterion's median, in µs) and bound/after.
# Usage: perf/decode_bound.sh BEFORE_BIN AFTER_BIN [ROUNDS, default 3] [criterion filter]
# (build a binary with `cargo bench --bench hot_paths --no-run` and copy
# target/release/deps/hot_paths-<hash> aside). On a shared machine, run it under the build
# lock: `flock /tmp/kiln-build.lock perf/decode_bound.sh …`.
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE=$1
AFTER=$2
ROUNDS=${3:-3}
FILTER=${4:-decode/}
OUT=$(mktemp -d /tmp/kiln-decode-bound.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F)"
collect() { # label round
  python3 - "$1" "$2" "$OUT" <<'EOF'
import json, os, sys
label, rnd, out = sys.argv[1:]
root = "target/criterion/decode"
for fn in os.listdir(root):
    for f in os.listdir(os.path.join(root, fn)):
        p = os.path.join(root, fn, f, "new", "estimates.json")
        if os.path.exists(p) and os.path.getmtime(p) > float(open(os.path.join(out, "start")).read()):
            med = json.load(open(p))["median"]["point_estimate"] / 1000
            with open(os.path.join(out, "rows"), "a") as w:
                w.write(f"{label} {rnd} {fn} {f} {med}\n")
EOF
}
for r in $(seq "$ROUNDS"); do
  for which in before after; do
    bin=$BEFORE
    [ "$which" = after ] && bin=$AFTER
    date +%s.%N >"$OUT/start"
    "$bin" --bench "$FILTER" --warm-up-time 1 --measurement-time 2 --noplot >/dev/null 2>&1
    collect "$which" "$r"
  done
done
python3 - "$OUT/rows" <<'EOF'
import collections, statistics, sys
v = collections.defaultdict(list)
for line in open(sys.argv[1]):
    label, _, fn, f, med = line.split()
    v[(label, fn, f)].append(float(med))
files = sorted({f for (_, _, f) in v})
def cell(label, fn, f):
    xs = v.get((label, fn, f))
    return (min(xs), statistics.median(xs)) if xs else (float("nan"), float("nan"))
print("| file | bound µs (inflate+prost) | before µs | after µs | bound/before | bound/after |")
print("|---|---:|---:|---:|---:|---:|")
for f in files:
    # The bound from both binaries' runs (the same code in each).
    xs = v.get(("before", "inflate+prost", f), []) + v.get(("after", "inflate+prost", f), [])
    bound = min(xs) if xs else float("nan")
    b, _ = cell("before", "kiln", f)
    a, _ = cell("after", "kiln", f)
    print(f"| {f} | {bound:.0f} | {b:.0f} | {a:.0f} | {bound / b:.2f} | {bound / a:.2f} |")
print()
print("min over rounds of criterion's median; medians over rounds (before / after):")
for f in files:
    print(f"  {f}: {cell('before', 'kiln', f)[1]:.0f} / {cell('after', 'kiln', f)[1]:.0f} µs")
EOF
