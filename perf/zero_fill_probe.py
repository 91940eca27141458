#!/usr/bin/env python3
"""The CPU of writing a spare WAL segment's zeros (io/src/wal/spare.rs), buffered against
direct I/O: 64 MiB of zeros in 1 MiB writes, an fdatasync every 8 MiB and an fsync at the
end, as the spare writer does, alternating the two ROUNDS times. Prints each round's CPU
time (user + system, this process) and wall time.

Usage: python3 perf/zero_fill_probe.py [DIR (a directory on the WAL's disk, default /tmp)] [ROUNDS (3)]
"""
import mmap
import os
import resource
import sys
import time

SIZE = 64 << 20
CHUNK = 1 << 20
SYNC_EVERY = 8 << 20


def fill(path, direct, buf):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    flags = os.O_WRONLY | os.O_CREAT | (os.O_DIRECT if direct else 0)
    fd = os.open(path, flags, 0o644)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    for i in range(SIZE // CHUNK):
        os.pwrite(fd, buf, i * CHUNK)
        if ((i + 1) * CHUNK) % SYNC_EVERY == 0:
            os.fdatasync(fd)
    os.fsync(fd)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.perf_counter() - t0
    os.close(fd)
    os.unlink(path)
    cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
    return cpu * 1e3, wall * 1e3


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "/tmp"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    path = os.path.join(d, "kiln-zero-fill-probe.%d" % os.getpid())
    buf = mmap.mmap(-1, CHUNK)  # page-aligned zeros, as direct I/O needs
    for r in range(rounds):
        for direct in (False, True):
            cpu, wall = fill(path, direct, buf)
            kind = "direct  " if direct else "buffered"
            print("round %d %s cpu %.1f ms wall %.1f ms per 64 MiB" % (r + 1, kind, cpu, wall))


if __name__ == "__main__":
    main()
