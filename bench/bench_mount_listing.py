"""Listing a folder of a million files through `ironfs mount`: time and the
mount process's peak memory. The volume is written with the format API (one
snapshot, one folder of --files entries sharing one content), the mount runs
without a key (listing needs none), and the folder is read with os.scandir.

    .venv/bin/python bench/bench_mount_listing.py [--files 1000000] [--dir PARENT]
"""
import argparse
import os
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

FAST_KDF = {"alg": "argon2id", "time_cost": 1, "memory_cost": 8192, "parallelism": 1}


def build(work: str, files: int) -> str:
    root = DataRoot.init(os.path.join(work, "root"), "admin", "pw")
    root.accounts.add("bench", "pw", quota=None)
    sets = SetStore(root)
    proto = Volume.create(os.path.join(work, "proto"), {"login": b"pw"}, kdf_params=FAST_KDF)
    sets.create("bench", "docs", {"sources": ["/big"]}, proto.config)
    vol = Volume(sets.volume_dir("bench", "docs"))
    vol.unlock(b"pw")
    with vol.writer() as writer:
        commit = writer.start_commit("snapshot", sources=["/big"], set="docs")
        data = b"0123456789"
        blob = vol.key.blob_id(data)
        writer.add_blob(blob, 0, vol.sealer.seal(blob, data), len(data))
        hasher = ContentHasher(vol.key, vol.max_blob)
        hasher.add_chunk(blob, len(data))
        cid = hasher.digest()
        commit.add({"t": "content", "id": cid, "size": len(data), "ext": [[blob, 0, len(data)]], "sig": [], "bs": None})
        commit.add({"t": "ver", "p": b"big", "k": "d", "mode": 0o755, "uid": 0, "gid": 0, "mtime_ns": 0, "size": 0})
        for i in range(files):
            commit.add({"t": "ver", "p": b"big/f%07d" % i, "k": "f", "mode": 0o644, "uid": 0, "gid": 0,
                        "mtime_ns": 0, "size": len(data), "c": cid})
        writer.finish_commit(commit)
    vol.close()
    return root.path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="ironcore-bench-mount-", dir=args.dir)
    mnt = os.path.join(work, "mnt")
    proc = None
    try:
        root = build(work, args.files)
        os.mkdir(mnt)
        ironfs = os.path.join(os.path.dirname(sys.executable), "ironfs")
        env = {k: v for k, v in os.environ.items() if k != "IRONFS_PASSWORD"}
        proc = subprocess.Popen([ironfs, "mount", "bench", mnt, "--data-root", root, "--foreground"], env=env,
                                stdout=subprocess.DEVNULL)
        while not os.path.ismount(mnt):
            time.sleep(0.05)
        snap = os.listdir(os.path.join(mnt, "docs", "snapshots"))[0]
        started = time.monotonic()
        count = sum(1 for _ in os.scandir(os.path.join(mnt, "docs", "snapshots", snap, "big")))
        took = time.monotonic() - started
        with open(f"/proc/{proc.pid}/status") as f:
            peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) // 1024
        print(f"listed {count:,} entries in {took:.1f} s; mount process peak RSS {peak} MiB")
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", mnt], check=False)
        if proc is not None:
            proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
