#!/usr/bin/env python3
"""Issue 16's goal lines for perf/run.sh, each against its bound from the same run.

  goals.py decode START      per class: inflate+prost (the bound) against kiln's decode,
                             from criterion's estimates written after START (epoch seconds)
  goals.py sync P99 SYNC     push p99 at half of peak against max(5 ms, 1.5 x fdatasync p99)
  goals.py flamegraph START  the 3M-unique-stack flame graph, from criterion's estimates
"""
import json
import os
import sys


def median_ms(path, start):
    """Criterion's median in ms from an estimates.json written after `start`, else None."""
    if os.path.exists(path) and os.path.getmtime(path) > start:
        with open(path) as f:
            return json.load(f)["median"]["point_estimate"] / 1e6
    return None


def decode(start):
    root = "target/criterion/decode"
    print("| file | bound µs (inflate+prost) | kiln µs | bound/kiln |")
    print("|---|---:|---:|---:|")
    for f in sorted(os.listdir(os.path.join(root, "kiln"))):
        b = median_ms(os.path.join(root, "inflate+prost", f, "new", "estimates.json"), start)
        k = median_ms(os.path.join(root, "kiln", f, "new", "estimates.json"), start)
        if b and k:
            print(f"| {f} | {b * 1000:.0f} | {k * 1000:.0f} | {b / k:.2f} |")


def sync(p99, sync_p99):
    bound = max(5.0, 1.5 * sync_p99)
    verdict = "met" if p99 <= bound else "not met"
    print(f"2. push p99 at half of peak {p99:.1f} ms against max(5 ms, 1.5 x fdatasync p99 "
          f"{sync_p99:.2f} ms) = {bound:.1f} ms: {verdict}")


def flamegraph(start):
    path = "target/criterion/flamegraph/select_merge_stacktraces/3000000/new/estimates.json"
    ms = median_ms(path, start)
    if ms is not None:
        print(f"3. flame graph over 3M unique stacks: {ms / 1000:.2f} s "
              "(goal < 1.2 s on one core; Pyroscope publishes 3.6 s)")


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "decode":
        decode(float(sys.argv[2]))
    elif what == "sync":
        sync(float(sys.argv[2]), float(sys.argv[3]))
    elif what == "flamegraph":
        flamegraph(float(sys.argv[2]))
    else:
        sys.exit(__doc__)
