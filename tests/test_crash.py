"""A backup killed at any moment leaves the volume clean: earlier snapshots restore
byte-identical, `ironfs verify` passes, and the next backup adopts the packs the
dead run had already published instead of storing their data again.

The crash points are the named ones of ironfs/format/faults.py (the process
SIGKILLs itself there), plus one kill from outside at a random moment. A backup
or restore killed from outside leaves none of its worker processes behind."""
import json
import os
import random
import shutil
import sqlite3
import subprocess
import time

import pytest

from conftest import BIN, assert_same_tree
from ironfs.format import log as commitlog

MiB = 1 << 20
BIG_FILES = 4
BIG_FILE_SIZE = 15 * MiB          # 60 MiB of random data: four 16 MiB packs in the crashing run
PACK_TARGET = 16 * MiB


# --- the source tree ------------------------------------------------------------------
def write_small_files(folder, count, rnd, prefix="f"):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"{prefix}{i:03d}.txt").write_bytes(rnd.randbytes(rnd.randint(0, 4096)))


def make_base(src, rnd):
    """Snapshot 1: a few hundred small files, one 1 MiB file and a symlink."""
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(MiB))
    write_small_files(src / "small", 200, rnd)
    os.symlink("a.bin", src / "link")


def grow(src, rnd) -> int:
    """The crashing run's changes: 60 MiB in a few big files, 100 new small files, one
    small file changed and one deleted. Returns the bytes of new data."""
    (src / "big").mkdir()
    for i in range(BIG_FILES):
        (src / "big" / f"b{i}.bin").write_bytes(os.urandom(BIG_FILE_SIZE))
    write_small_files(src / "more", 100, rnd, prefix="m")
    (src / "small" / "f000.txt").write_bytes(b"changed after snapshot 1\n" * 100)
    (src / "small" / "f001.txt").unlink()
    return sum(p.stat().st_size for p in (src / "big").iterdir()) + \
        sum(p.stat().st_size for p in (src / "more").iterdir()) + 2500


def snapshot_copy(src, dst):
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True, timeout=120)


# --- looking at the volume --------------------------------------------------------------
def pack_files(volume) -> dict:
    """name -> size of every published pack on disk."""
    out = {}
    packs = volume / "packs"
    for sub in packs.iterdir():
        if sub.is_dir() and len(sub.name) == 2:
            for f in sub.iterdir():
                out[f.name] = f.stat().st_size
    return out


def commit_packs(volume, seq) -> set:
    return {r["name"] for r in commitlog.read_commit(str(volume / "log" / commitlog.commit_name(seq)))
            if r["t"] == "pack"}


def referenced_packs(volume) -> set:
    return set().union(*(commit_packs(volume, s) for s in commitlog.list_seqs(str(volume / "log"))))


def tmp_files(volume) -> list:
    return sorted(str(p.relative_to(volume)) for p in volume.rglob(".tmp-*"))


def no_traceback(proc):
    err = proc.stderr.decode(errors="replace")
    assert "Traceback" not in err, err
    return err


def verify(env, read_data=False) -> str:
    args = ["verify", env.volume] + (["--read-data"] if read_data else [])
    proc = env.ironfs(*args, check=False)
    out = proc.stdout.decode(errors="replace")
    no_traceback(proc)
    assert proc.returncode == 0, f"verify{' --read-data' if read_data else ''} failed:\n{out}\n" \
                                 f"{proc.stderr.decode(errors='replace')}"
    return out


def snapshot_seqs(env) -> list:
    return [s["seq"] for s in json.loads(env.ironcore("snapshots", "s", "--json").stdout)]


def restore_and_compare(env, tmp_path, seq, expected, src):
    target = tmp_path / f"restore-{seq}-{time.monotonic_ns()}"
    env.ironcore("restore", "s", "--snapshot", seq, "--to", target)
    assert_same_tree(expected, env.restored(target, src))
    shutil.rmtree(target)   # restores of 60 MiB add up in the kept pytest folders


def crashing_backup(env, point):
    proc = env.ironcore("backup", "s", "--json", check=False, env=dict(env.env, IRONCORE_CRASH_AT=point))
    assert proc.returncode == -9, (f"backup with IRONCORE_CRASH_AT={point} exited {proc.returncode}, "
                                   f"not killed by SIGKILL:\n{proc.stderr.decode(errors='replace')}")


def setup_two_states(env, tmp_path):
    """Snapshot 1 of the base tree (kept as a copy), then the grown tree, not backed up yet."""
    rnd = random.Random(1234)
    src = tmp_path / "src"
    make_base(src, rnd)
    env.add_set("s", src)
    first = env.backup_json()
    assert first["snapshot"] == 1
    snap1 = tmp_path / "snap1"
    snapshot_copy(src, snap1)
    new_bytes = grow(src, rnd)
    return src, snap1, new_bytes


def check_after_crash(env, tmp_path, src, snap1, new_bytes, packs_before, min_orphans):
    """The properties every crash before the commit must keep; returns the next backup's report."""
    volume = env.volume
    on_disk = pack_files(volume)
    orphans = {n: s for n, s in on_disk.items() if n not in referenced_packs(volume)}
    assert set(packs_before) <= set(on_disk), "a crash removed packs of an earlier snapshot"
    assert len(orphans) >= min_orphans, f"expected at least {min_orphans} published packs left, found {orphans}"
    assert commitlog.list_seqs(str(volume / "log")) == [1], "the crashed run must not have published a commit"

    out = verify(env)
    for name in orphans:
        assert name in out and "not referenced" in out, f"verify does not mention unreferenced pack {name}:\n{out}"
    verify(env, read_data=True)
    assert snapshot_seqs(env) == [1]
    restore_and_compare(env, tmp_path, 1, snap1, src)

    report = env.backup_json()
    assert report["snapshot"] == 2
    named = commit_packs(volume, 2)
    assert set(orphans) <= named, f"packs {set(orphans) - named} left by the crash were not adopted"
    orphan_bytes = sum(orphans.values())
    # everything already in an adopted pack is not stored again (sealing adds ~29 bytes a blob,
    # signatures ~0.5%: 1 MiB of slack for those)
    assert report["bytes_stored"] <= new_bytes - orphan_bytes + MiB, (report, orphan_bytes)
    if orphan_bytes >= 2 * PACK_TARGET:
        assert report["bytes_stored"] < new_bytes / 2, report
    assert tmp_files(volume) == [], "the next writer must remove unfinished files"

    out = verify(env, read_data=True)
    assert "not referenced" not in out, out
    restore_and_compare(env, tmp_path, 2, src, src)
    restore_and_compare(env, tmp_path, 1, snap1, src)
    return report, orphans


@pytest.mark.parametrize("point, min_orphans, exact", [
    ("mid-pack:1", 0, True),            # first blob of the run: nothing published yet
    ("mid-pack:300", 2, True),          # two packs published, a third half written
    ("pack-published:1", 1, True),
    ("pack-published:3", 3, True),
    ("mid-commit", 4, False),           # every pack published, the commit half written
])
def test_crash_before_commit_keeps_volume_clean_and_next_backup_adopts_packs(env, tmp_path, point, min_orphans,
                                                                             exact):
    src, snap1, new_bytes = setup_two_states(env, tmp_path)
    packs_before = pack_files(env.volume)
    crashing_backup(env, point)

    leftovers = tmp_files(env.volume)
    if point.startswith("mid-pack"):
        assert any(t.startswith("packs/.tmp-pack-") for t in leftovers), leftovers
    if point == "mid-commit":
        assert any(t.startswith("log/.tmp-commit-") for t in leftovers), leftovers
    orphans_now = len(pack_files(env.volume)) - len(packs_before)
    if exact:
        assert orphans_now == min_orphans, f"{point}: {orphans_now} packs published before the crash"

    report, orphans = check_after_crash(env, tmp_path, src, snap1, new_bytes, packs_before, min_orphans)
    if point == "mid-commit":
        assert report["bytes_stored"] == 0 and report["blobs_stored"] == 0, report


def test_crash_after_commit_published_catalog_catches_up_and_is_rebuildable(env, tmp_path):
    src, snap1, new_bytes = setup_two_states(env, tmp_path)
    crashing_backup(env, "commit-published")
    volume = env.volume
    assert commitlog.list_seqs(str(volume / "log")) == [1, 2]
    db = sqlite3.connect(str(volume / "catalog.db"))
    try:
        applied = db.execute("SELECT value FROM meta WHERE key='applied_seq'").fetchone()[0]
    finally:
        db.close()
    assert int(applied) == 1, "the crash point is after the commit file, before the catalog"

    assert snapshot_seqs(env) == [1, 2], "the catalog must catch up from the log"
    assert "not referenced" not in verify(env)
    restore_and_compare(env, tmp_path, 1, snap1, src)

    for suffix in ("", "-wal", "-shm"):
        try:
            os.unlink(f"{volume / 'catalog.db'}{suffix}")
        except FileNotFoundError:
            pass
    assert snapshot_seqs(env) == [1, 2], "a deleted catalog must be rebuilt from the log"
    assert (volume / "catalog.db").exists()
    restore_and_compare(env, tmp_path, 2, src, src)
    out = verify(env, read_data=True)
    assert "differed" not in out and "not referenced" not in out, out

    report = env.backup_json()
    assert report["snapshot"] == 3
    assert report["bytes_stored"] < MiB, report    # every file is read again but nothing is stored twice
    restore_and_compare(env, tmp_path, 1, snap1, src)
    assert tmp_files(volume) == []


def written_bytes(volume) -> int:
    """Bytes of packs on disk, published or being written."""
    total = 0
    for dirpath, _, names in os.walk(volume / "packs"):
        for n in names:
            try:
                total += os.stat(os.path.join(dirpath, n)).st_size
            except FileNotFoundError:
                pass   # renamed between listing and stat
    return total


def test_backup_killed_from_outside_at_a_random_moment(env, tmp_path):
    src, snap1, new_bytes = setup_two_states(env, tmp_path)
    packs_before = pack_files(env.volume)
    base = written_bytes(env.volume)
    seed = int.from_bytes(os.urandom(4), "little")
    threshold = random.Random(seed).randint(1 * MiB, 40 * MiB)   # well before the 60 MiB end of the run
    why = f"(seed {seed}: kill after {threshold} bytes of packs)"

    state = {"started": False}

    def far_enough(proc) -> bool:
        if not state["started"]:
            state["started"] = any(p.name.startswith(".tmp-pack-") for p in (env.volume / "packs").iterdir())
        return state["started"] and written_bytes(env.volume) - base >= threshold
    proc = kill_when(env, ["backup", "s", "--json"], tmp_path / "backup.err", far_enough, f"backup {why}")
    assert proc.returncode == -9, why
    check_after_crash(env, tmp_path, src, snap1, new_bytes, packs_before, 0)


def kill_when(env, args: list, err_path, ready, what: str, limit: float = 120):
    """Run `ironcore ARGS` and SIGKILL it as soon as ready(proc) is true; returns
    the ended process."""
    with open(err_path, "wb") as err:
        proc = subprocess.Popen([str(BIN / "ironcore"), *args], env=env.env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + limit
            while not ready(proc):
                assert time.monotonic() < deadline, f"{what}: not reached before the deadline"
                assert proc.poll() is None, f"{what}: ended (exit {proc.returncode}) before it was killed"
                time.sleep(0.002)
            proc.kill()
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=60)
    return proc


def alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("command", ["backup", "restore"])
def test_killed_run_leaves_no_worker_behind(env, tmp_path, command):
    """Backups and restores of a local volume work in forked worker processes;
    SIGKILL of the run ends them too."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(80 * MiB))
    write_small_files(src / "small", 300, random.Random(5))
    env.add_set("s", src)
    if command == "restore":
        env.backup_json()
        args = ["restore", "s", "--to", str(tmp_path / "out"), "--json"]
    else:
        args = ["backup", "s", "--json"]
    workers = []

    def forked(proc) -> bool:
        try:
            with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
                workers[:] = [int(p) for p in f.read().split()]
        except FileNotFoundError:
            pass
        return len(workers) >= 2
    kill_when(env, args, tmp_path / "run.err", forked, f"the {command} starting its workers", limit=60)
    deadline = time.monotonic() + 10
    while any(alive(w) for w in workers):
        assert time.monotonic() < deadline, f"workers {[w for w in workers if alive(w)]} outlived the {command}"
        time.sleep(0.01)
