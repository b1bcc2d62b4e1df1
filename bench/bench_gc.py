"""gc time and peak memory on a server volume of many blobs.

Builds a data root with one set whose volume holds --blobs small blobs, one
per file, spread over --snapshots snapshots of distinct files (written with
the volume format API, not through a client, so that building a million
blobs takes minutes rather than an hour), forgets the older half of the
snapshots, then runs `ironfs gc` as its own process and reports its wall
time, CPU time and peak RSS, and the volume's size before and after.

    .venv/bin/python bench/bench_gc.py [--blobs 1000000] [--snapshots 10] [--dir PARENT] [--keep]
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from ironfs.format.content import ContentHasher  # noqa: E402
from ironfs.format.volume import Volume  # noqa: E402
from ironfs.store.dataroot import DataRoot  # noqa: E402
from ironfs.store.sets import SetStore  # noqa: E402

PASSWORD = "bench password"
BIN = os.path.join(os.path.dirname(sys.executable))


def stored_bytes(volume: str) -> int:
    """Packs and commits: what the account's usage counts (the catalog is derived and apart)."""
    return sum(os.path.getsize(os.path.join(d, f)) for sub in ("packs", "log")
               for d, _, files in os.walk(os.path.join(volume, sub)) for f in files)


def build(work: str, blobs: int, snapshots: int) -> tuple[SetStore, str]:
    root = DataRoot.init(os.path.join(work, "root"), "admin", PASSWORD)
    root.accounts.add("bench", PASSWORD, quota=None)
    sets = SetStore(root)
    proto = Volume.create(os.path.join(work, "proto"), {"login": PASSWORD.encode()},
                          kdf_params={"alg": "argon2id", "time_cost": 1, "memory_cost": 8192, "parallelism": 1})
    sets.create("bench", "docs", {"sources": ["/bench"]}, proto.config)
    vol = Volume(sets.volume_dir("bench", "docs"))
    vol.unlock(PASSWORD.encode())
    per = blobs // snapshots
    counter = 0
    for snap in range(snapshots):
        with vol.writer() as writer:
            commit = writer.start_commit("snapshot", sources=["/bench"], set="docs")
            for i in range(per):
                data = counter.to_bytes(8, "little") * 8   # 64 distinct bytes per file
                counter += 1
                blob_id = vol.key.blob_id(data)
                writer.add_blob(blob_id, 0, vol.sealer.seal(blob_id, data), len(data))
                hasher = ContentHasher(vol.key, vol.max_blob)
                hasher.add_chunk(blob_id, len(data))
                cid = hasher.digest()
                commit.add({"t": "content", "id": cid, "size": len(data), "ext": [[blob_id, 0, len(data)]],
                            "sig": [], "bs": None})
                commit.add({"t": "ver", "p": b"s%d/f%07d" % (snap, i), "k": "f", "mode": 0o644, "uid": 0,
                            "gid": 0, "mtime_ns": 0, "size": len(data), "c": cid})
            if snap:   # each snapshot holds only its own files
                for i in range(per):
                    commit.add({"t": "del", "p": b"s%d/f%07d" % (snap - 1, i)})
            writer.finish_commit(commit)
        print(f"[{time.strftime('%H:%M:%S')}] snapshot {snap + 1}/{snapshots}: {counter:,} blobs", flush=True)
    vol.close()
    seqs = [s["seq"] for s in sets.volume("bench", "docs").refresh().snapshots()]
    sets.forget("bench", "docs", seqs[:len(seqs) // 2])
    return sets, root.path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blobs", type=int, default=1_000_000)
    ap.add_argument("--snapshots", type=int, default=10)
    ap.add_argument("--dir", default=None, help="parent folder of the work folder")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="ironcore-bench-gc-", dir=args.dir)
    try:
        started = time.monotonic()
        sets, root = build(work, args.blobs, args.snapshots)
        build_s = time.monotonic() - started
        volume = sets.volume_dir("bench", "docs")
        before = stored_bytes(volume)
        t0, r0 = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run([os.path.join(BIN, "ironfs"), "gc", "bench", "docs", "--data-root", root, "--json"],
                              capture_output=True, text=True)
        wall = time.monotonic() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            sys.exit(f"gc failed: {proc.stderr}")
        report = json.loads(proc.stdout)[0]
        result = {"blobs": args.blobs, "snapshots": args.snapshots, "forgotten": args.snapshots // 2,
                  "build_s": round(build_s, 1), "gc_wall_s": round(wall, 2),
                  "gc_cpu_s": round(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, 2),
                  "gc_peak_rss_mib": round(r1.ru_maxrss / 1024, 1), "volume_before_mb": round(before / 1e6, 1),
                  "volume_after_mb": round(stored_bytes(volume) / 1e6, 1), "packs_dropped": len(report["dropped"]),
                  "packs_rewritten": len(report["repacked"]), "new_packs": len(report["new_packs"]),
                  "contents_released": report["dead_contents"]}
        print(json.dumps(result, indent=1))
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
