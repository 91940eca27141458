#!/usr/bin/env python3
"""The bound issue 16 goal 2 names: the p99 in ms of ROUNDS bare write+fdatasync rounds of
SIZE bytes appended to a new file in DIR (the disk the WAL is on).
Usage: perf/fsync_probe.py [SIZE, 65536] [ROUNDS, 200] [DIR, /tmp]"""
import os
import sys
import tempfile
import time

size = int(sys.argv[1]) if len(sys.argv) > 1 else 65536
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 200
fd, path = tempfile.mkstemp(dir=sys.argv[3] if len(sys.argv) > 3 else "/tmp")
buf = os.urandom(size)
ts = []
for _ in range(rounds):
    t = time.perf_counter()
    os.write(fd, buf)
    os.fdatasync(fd)
    ts.append(time.perf_counter() - t)
os.close(fd)
os.unlink(path)
ts.sort()
print(f"{ts[int(len(ts) * 0.99) - 1] * 1000:.2f}")
