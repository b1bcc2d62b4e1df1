"""Benchmark: Ironcore's delta encoder against rdiff (librsync).

Makes an old file of random bytes and a new one with a fraction of its pages
rewritten at random page-aligned offsets, then times

    ours:  signature_file(old) + encode_file(sig, new)   (threads as given, and 1)
    rdiff: rdiff signature -b BS old sig  +  rdiff delta sig new delta

Both read the files from the page cache (they were just written).  Each
measurement is repeated --repeat times and the fastest kept, for both tools
alike; CPU seconds (user + system, all threads) are shown beside the wall
clock, and the load average before and after, since a busy machine slows
the threaded run most.  Our delta size is counted as literal bytes + 12 bytes per op (an
extent record); rdiff's is the size of its delta file.  Our ops are checked
against the new file (untimed).  Temp files go under a fresh mkdtemp() and
are removed.  rdiff comes from Debian's `rdiff` package (librsync-tools
elsewhere).

    python bench/bench_delta.py [--size-mib 1024] [--block-size 8192] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from ironfs.format import delta

OP_COST = 12  # bytes per op in our size estimate


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model", "CPU part")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def make_files(tmp, size, page, fraction, seed):
    old = os.path.join(tmp, "old.bin")
    new = os.path.join(tmp, "new.bin")
    chunk = 8 << 20
    with open(old, "wb") as f:
        left = size
        while left:
            n = min(chunk, left)
            f.write(os.urandom(n))
            left -= n
    shutil.copyfile(old, new)
    rnd = random.Random(seed)
    pages = size // page
    changed = rnd.sample(range(pages), int(pages * fraction))
    fd = os.open(new, os.O_WRONLY)
    try:
        for i in changed:
            os.pwrite(fd, os.urandom(page), i * page)
    finally:
        os.close(fd)
    return old, new, len(changed) * page


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its waited-for children."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def best_of(repeat, fn):
    """(fastest wall seconds, CPU seconds of that run, result)."""
    best = None
    result = None
    for _ in range(repeat):
        c0 = cpu_seconds()
        t0 = time.perf_counter()
        result = fn()
        dt = time.perf_counter() - t0
        dc = cpu_seconds() - c0
        if best is None or dt < best[0]:
            best = (dt, dc)
    return best[0], best[1], result


def check_ops(ops, old, new):
    """Rebuild the new file from old + ops, streaming, and compare."""
    with open(old, "rb") as fo, open(new, "rb") as fn:
        for op in ops:
            if op[0] == delta.COPY:
                fo.seek(op[1])
                want = fo.read(op[2])
            else:
                want = op[1]
            if fn.read(len(want)) != want:
                raise SystemExit("ops do not rebuild the new file")
        if fn.read(1):
            raise SystemExit("ops stop before the end of the new file")


def run_ours(old, new, bs, threads, repeat):
    t_sig, c_sig, sig = best_of(repeat, lambda: delta.signature_file(old, bs, threads=threads))
    t_enc, c_enc, ops = best_of(repeat, lambda: delta.encode_file(sig, new, threads=threads))
    literal = sum(len(op[1]) for op in ops if op[0] == delta.LITERAL)
    return {
        "sig_s": t_sig,
        "delta_s": t_enc,
        "cpu_s": c_sig + c_enc,
        "sig_bytes": len(sig.to_bytes()),
        "delta_bytes": literal + OP_COST * len(ops),
        "literal": literal,
        "ops": len(ops),
    }, ops


def run_rdiff(rdiff, tmp, old, new, bs, repeat):
    sig = os.path.join(tmp, "rdiff.sig")
    dlt = os.path.join(tmp, "rdiff.delta")

    def signature():
        subprocess.run([rdiff, "-f", "signature", "-b", str(bs), old, sig], check=True)

    def make_delta():
        subprocess.run([rdiff, "-f", "delta", sig, new, dlt], check=True)

    t_sig, c_sig, _ = best_of(repeat, signature)
    t_enc, c_enc, _ = best_of(repeat, make_delta)
    return {
        "sig_s": t_sig,
        "delta_s": t_enc,
        "cpu_s": c_sig + c_enc,
        "sig_bytes": os.path.getsize(sig),
        "delta_bytes": os.path.getsize(dlt),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--block-size", type=int, default=8192)
    ap.add_argument("--page", type=int, default=8192, help="size of a rewritten page")
    ap.add_argument("--changed", type=float, default=0.01, help="fraction of pages rewritten")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rdiff", default=shutil.which("rdiff"))
    args = ap.parse_args(argv)

    if not args.rdiff:
        raise SystemExit("rdiff not found: apt-get install -y rdiff (librsync-tools on some systems)")
    version = subprocess.run([args.rdiff, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    size = args.size_mib << 20
    print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}; Python {platform.python_version()}; "
          f"implementation: {delta.IMPLEMENTATION}; {version}")
    print(f"file: {args.size_mib} MiB random, {args.changed:.1%} of {args.page}-byte pages rewritten; "
          f"block size {args.block_size}; best of {args.repeat}")

    load_before = os.getloadavg()
    tmp = tempfile.mkdtemp(prefix="ironcore-bench-")
    try:
        old, new, changed = make_files(tmp, size, args.page, args.changed, args.seed)
        rows = []
        ours, ops = run_ours(old, new, args.block_size, args.threads, args.repeat)
        check_ops(ops, old, new)
        del ops
        rows.append((f"ironcore, {args.threads} threads", ours))
        if args.threads != 1:
            ours1, ops = run_ours(old, new, args.block_size, 1, args.repeat)
            del ops
            rows.append(("ironcore, 1 thread", ours1))
        theirs = run_rdiff(args.rdiff, tmp, old, new, args.block_size, args.repeat)
        rows.append(("rdiff", theirs))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    load_after = os.getloadavg()
    print(f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print(f"changed bytes: {changed}; our ops: {ours['ops']}, literal bytes: {ours['literal']}")
    print()
    head = (f"| {'tool':<22} | {'signature s':>11} | {'delta s':>8} | {'total s':>8} | {'CPU s':>6} | "
            f"{'MB/s':>6} | {'sig bytes':>10} | {'delta bytes':>11} |")
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for name, r in rows:
        total = r["sig_s"] + r["delta_s"]
        print(f"| {name:<22} | {r['sig_s']:>11.3f} | {r['delta_s']:>8.3f} | {total:>8.3f} | {r['cpu_s']:>6.2f} | "
              f"{2 * size / total / 1e6:>6.0f} | {r['sig_bytes']:>10} | {r['delta_bytes']:>11} |")
    print()
    t_ours = ours["sig_s"] + ours["delta_s"]
    t_theirs = theirs["sig_s"] + theirs["delta_s"]
    print(f"speed-up (rdiff time / ours, {args.threads} threads): {t_theirs / t_ours:.2f}x; "
          f"CPU time rdiff / ours: {theirs['cpu_s'] / ours['cpu_s']:.2f}x")
    print(f"delta size (ours / rdiff): {ours['delta_bytes'] / theirs['delta_bytes']:.4f}; "
          f"rdiff overhead over our literal bytes: {(theirs['delta_bytes'] - ours['literal']) / ours['ops']:.1f} "
          f"bytes per op of ours")
    return 0


if __name__ == "__main__":
    sys.exit(main())
