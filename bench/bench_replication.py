#!/usr/bin/env python3
"""Replication: how far behind a replica is, and how fast it copies.

A plain script, not a test. On one machine, over loopback TLS:

  throughput  a set with a 1 GiB initial backup (random data, so its packs are
              about 1 GiB) is on the source; a replica starts on an empty data
              root and is timed until its copy holds every commit. Against it:
              `rsync -a` of the same packs folder into an empty folder, alone
              and followed by `sync` (the replica fsyncs each pack; rsync does
              not). Page caches are dropped before both (root only).
  lag         with the replica idle and following, 100 small backups (one
              changed file each) go to the source one after another; for each
              commit, the lag is the time the commit file appears in the
              replica's log (watched every millisecond) minus the modification
              time of the source's commit file (written as its upload ended,
              before the server's checks: so the figure errs on the long side).

    .venv/bin/python bench/bench_replication.py --markdown FRAGMENT.md --json RESULTS.json
    .venv/bin/python bench/bench_replication.py --size 100M --commits 10    # a quick check

Everything lives under one temporary folder, removed at the end unless --keep.
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_backup as bb  # noqa: E402
from bench_remote import ACCOUNT, ACCOUNT_PASSWORD, ADMIN_PASSWORD, Server, log, parse_size  # noqa: E402

MiB = bb.MiB
BIN = os.path.dirname(sys.executable)


def cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def commits(log_dir: str) -> set[str]:
    try:
        return {n for n in os.listdir(log_dir) if n.endswith(".commit")}
    except FileNotFoundError:
        return set()


def run_checked(cmd: list, env: dict, stdin: bytes | None = None) -> str:
    proc = subprocess.run(cmd, env=env, input=stdin, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode()


def bench(args) -> dict:
    work = tempfile.mkdtemp(prefix="ironcore-replbench-", dir=args.workdir)
    env = dict(os.environ, IRONCORE_HOME=os.path.join(work, "client"), IRONCORE_HOSTNAME="bench-client")
    ironfs, ironcore = os.path.join(BIN, "ironfs"), os.path.join(BIN, "ironcore")
    source_root, replica_root = os.path.join(work, "source"), os.path.join(work, "replica")
    server = replica = None
    res = {"machine": bb.machine(), "version": bb.ironcore_version(), "size": args.size, "commits": args.commits}
    try:
        run_checked([ironfs, "init", "--data-root", source_root, "--password-stdin"], env, ADMIN_PASSWORD.encode())
        run_checked([ironfs, "account", "add", ACCOUNT, "--data-root", source_root, "--password-stdin"], env,
                    ACCOUNT_PASSWORD.encode())
        server = Server(ironfs, source_root, work, env)
        run_checked([ironcore, "login", "--server", server.url, "--account", ACCOUNT, "--password-stdin"], env,
                     ACCOUNT_PASSWORD.encode())

        big, small = os.path.join(work, "big"), os.path.join(work, "small")
        os.makedirs(big)
        os.makedirs(small)
        files = 8
        for i in range(files):
            with open(os.path.join(big, f"part{i}.bin"), "wb") as f:
                left = args.size // files
                while left:
                    n = min(left, 4 * MiB)
                    f.write(os.urandom(n))
                    left -= n
        for i in range(10):
            with open(os.path.join(small, f"note{i}.txt"), "w") as f:
                f.write(f"note {i}\n" * 200)
        for name, folder in (("big", big), ("small", small)):
            run_checked([ironcore, "set", "add", name, "--source", folder, "--password-stdin"], env,
                        ACCOUNT_PASSWORD.encode())
        log(f"initial backup of {args.size / MiB:.0f} MiB to the source")
        run_checked([ironcore, "backup", "big", "--json"], env)
        run_checked([ironcore, "backup", "small", "--json"], env)
        volume = os.path.join(source_root, "accounts", ACCOUNT, "big", "volume")
        res["pack_bytes"] = bb.du_bytes(os.path.join(volume, "packs"))

        # --- throughput: an empty replica catches up; rsync copies the same packs -------------
        bb.drop_caches()
        renv = dict(env, IRONFS_SOURCE_USER="admin", IRONFS_SOURCE_PASSWORD=ADMIN_PASSWORD, IRONCORE_LOG="INFO")
        replica_err = open(os.path.join(work, "replica.stderr"), "wb")
        started = time.monotonic()
        replica = subprocess.Popen([ironfs, "replica", "run", "--data-root", replica_root, "--source", server.url],
                                   env=renv, stdout=subprocess.DEVNULL, stderr=replica_err)
        want = {"big": commits(os.path.join(volume, "log")),
                "small": commits(os.path.join(source_root, "accounts", ACCOUNT, "small", "volume", "log"))}
        mirror = os.path.join(replica_root, "sources", f"127.0.0.1-{server.url.rsplit(':', 1)[1]}",
                              "accounts", ACCOUNT)
        while any(commits(os.path.join(mirror, s, "volume", "log")) != w for s, w in want.items()):
            if replica.poll() is not None or time.monotonic() - started > 1800:
                raise RuntimeError("the replica did not catch up; see replica.stderr")
            time.sleep(0.01)
        res["replica_s"] = time.monotonic() - started
        res["replica_cpu_s"] = cpu_of(replica.pid)
        log(f"replica caught up in {res['replica_s']:.2f} s")
        bb.drop_caches()
        dest = os.path.join(work, "rsync-copy")
        started = time.monotonic()
        subprocess.run(["rsync", "-a", os.path.join(volume, "packs") + "/", dest + "/"], check=True)
        res["rsync_s"] = time.monotonic() - started
        subprocess.run(["sync"], check=True)   # the replica fsyncs every pack; rsync leaves them in the page cache
        res["rsync_sync_s"] = time.monotonic() - started
        log(f"rsync took {res['rsync_s']:.2f} s, {res['rsync_sync_s']:.2f} s with sync")

        # --- lag: one small commit after another, the replica idle and following ---------------
        src_log = os.path.join(source_root, "accounts", ACCOUNT, "small", "volume", "log")
        dst_log = os.path.join(mirror, "small", "volume", "log")
        seen: dict[str, int] = {}
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                for name in commits(dst_log) - seen.keys():
                    seen[name] = time.time_ns()
                time.sleep(0.001)
        watcher = threading.Thread(target=watch)
        watcher.start()
        lags = []
        for i in range(args.commits):
            with open(os.path.join(small, f"note{i % 10}.txt"), "a") as f:
                f.write(f"change {i}\n")
            before = commits(src_log)
            run_checked([ironcore, "backup", "small", "--json"], env)
            (name,) = commits(src_log) - before
            committed = os.stat(os.path.join(src_log, name)).st_mtime_ns
            deadline = time.monotonic() + 30
            while name not in seen and time.monotonic() < deadline:
                time.sleep(0.001)
            lags.append((seen[name] - committed) / 1e6)
        stop.set()
        watcher.join()
        lags.sort()
        res["lag_ms"] = {"median": statistics.median(lags), "p99": lags[max(0, int(len(lags) * 0.99) - 1)],
                         "max": lags[-1], "min": lags[0], "n": len(lags)}
        log(f"lag median {res['lag_ms']['median']:.1f} ms, p99 {res['lag_ms']['p99']:.1f} ms")
        return res
    finally:
        if replica is not None and replica.poll() is None:
            replica.send_signal(signal.SIGTERM)
            replica.wait(timeout=30)
        if server is not None:
            server.stop()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def markdown(res: dict) -> str:
    mb = res["pack_bytes"] / 1e6
    lag = res["lag_ms"]
    return "\n".join([
        f"Packs of the initial backup: {mb:,.0f} MB.",
        "",
        "| what | wall s | MB/s | CPU s |",
        "|---|---|---|---|",
        f"| replica catches up from empty (`ironfs replica run`, TLS) | {res['replica_s']:.2f} | "
        f"{mb / res['replica_s']:.0f} | {res['replica_cpu_s']:.2f} |",
        f"| `rsync -a` of the packs folder | {res['rsync_s']:.2f} | {mb / res['rsync_s']:.0f} | |",
        f"| `rsync -a` of the packs folder, then `sync` | {res['rsync_sync_s']:.2f} | "
        f"{mb / res['rsync_sync_s']:.0f} | |",
        "",
        f"Ratio (replica time / rsync time): **{res['replica_s'] / res['rsync_s']:.2f}** "
        f"({res['replica_s'] / res['rsync_sync_s']:.2f} against rsync followed by sync).",
        "",
        f"Lag over {lag['n']} small commits, the replica idle: median **{lag['median']:.0f} ms**, "
        f"p99 **{lag['p99']:.0f} ms** (min {lag['min']:.0f}, max {lag['max']:.0f}).",
    ]) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=parse_size, default=1 << 30, help="initial backup size (default 1G)")
    ap.add_argument("--commits", type=int, default=100, help="small commits for the lag figures (default 100)")
    ap.add_argument("--workdir", default=None, help="where the temporary folder goes")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--markdown", metavar="FILE", help="write the tables as a markdown fragment")
    ap.add_argument("--json", metavar="FILE", help="write the raw results as JSON")
    args = ap.parse_args()
    res = bench(args)
    text = markdown(res)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
