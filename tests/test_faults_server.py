"""Faults on the server, with a real `ironfs serve` and real client processes:
a data root on a small file system that fills up (a refused run keeps nothing,
and gc removes what dead runs left), a commit log damaged at rest (no commit
is added on top, every client says so, and the documented repair works), and a
damaged pack healed by the next backup (gc retires it, verify turns clean)."""
import json
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN, assert_same_tree, wait_for
from serverkit import Server, login, make_root, server  # noqa: F401 (server is a fixture)
from test_corruption import blob_location, flip_byte, make_tree as make_victim_tree
from test_diskfull import free_bytes, unmount
from test_remote import ALICE_PW, add_server_set, machine, make_tree, metric, server_packs, set_volume, verify_clean

MiB = 1 << 20


def no_traceback(proc) -> str:
    err = proc.stderr.decode(errors="replace")
    assert "Traceback" not in err, err
    return err


def committed_packs(volume) -> set[str]:
    """Packs the set's log names (and does not drop), from the server's catalog."""
    import sqlite3
    db = sqlite3.connect(volume / "catalog.db")
    try:
        return {n for (n,) in db.execute("SELECT name FROM packs WHERE dropped IS NULL")}
    finally:
        db.close()


def usage(server) -> float:
    return metric(server, 'ironfs_account_usage_bytes{account="alice"}')


# --- 14: a full disk ------------------------------------------------------------------

@pytest.fixture
def small_data_root(tmp_path):
    """A 100 MiB ext4 file system on a loop device (a tmpfs where loop devices are not
    available), for the whole data root."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    image = tmp_path / "small.img"
    subprocess.run(["truncate", "-s", "100M", str(image)], check=True)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], capture_output=True)
    mounted = made.returncode == 0 and subprocess.run(["mount", "-o", "loop", str(image), str(mnt)],
                                                      capture_output=True).returncode == 0
    if not mounted:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100m", "tmpfs", str(mnt)], capture_output=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a small file system here: {proc.stderr.decode(errors='replace').strip()}")
    try:
        yield mnt
    finally:
        unmount(mnt)


def test_disk_full_on_the_server_keeps_nothing_of_the_run_and_the_set_is_not_stuck(env, tmp_path, small_data_root):
    root = small_data_root / "root"
    make_root(env, root)
    srv = Server(root)
    try:
        src = tmp_path / "src"
        make_tree(src, random.Random(14), big=2 * MiB)
        login(env, srv.url)
        add_server_set(env, "docs", src)
        assert env.backup_json("docs")["snapshot"] == 1
        volume = set_volume(srv)
        packs_before = sorted(server_packs(volume))
        free_before, usage_before = free_bytes(small_data_root), usage(srv)

        extra = src / "extra"
        extra.mkdir()
        for i in range(4):   # 160 MiB for the ~95 MiB left
            (extra / f"x{i}.bin").write_bytes(os.urandom(40 * MiB))
        for attempt in range(2):   # a retry fails the same way, and again keeps nothing
            proc = env.ironcore("backup", "docs", check=False)
            err = no_traceback(proc)
            assert proc.returncode == 5, (proc.returncode, err)
            assert "full" in err and "removed" in err, err
            assert sorted(server_packs(volume)) == packs_before, f"attempt {attempt}: the refused run's packs stayed"
            assert [p for p in volume.rglob(".tmp-*")] == []
            assert free_bytes(small_data_root) >= free_before - MiB, \
                f"attempt {attempt}: {(free_before - free_bytes(small_data_root)) / MiB:.1f} MiB kept"
            assert usage(srv) == usage_before
        assert len(list((volume / "log").glob("*.commit"))) == 1

        # with the big files gone, the next backup goes through and restores whole
        shutil.rmtree(extra)
        (src / "docs" / "note000.txt").write_bytes(b"changed after the full disk\n")
        assert env.backup_json("docs")["snapshot"] == 2
        out = tmp_path / "out"
        env.ironcore("restore", "docs", "--to", out)
        assert_same_tree(src, env.restored(out, src))
        verified = env.ironfs("verify", "alice", "docs", "--data-root", root).stdout.decode()
        assert "clean" in verified and "not referenced" not in verified, verified
    finally:
        assert srv.stop() == 0


def test_gc_removes_the_packs_a_dead_run_left(env, tmp_path):
    make_root(env, tmp_path / "root")
    srv = Server(tmp_path / "root", extra=["--lease-seconds", "4"])
    try:
        src = tmp_path / "src"
        make_tree(src, random.Random(141), big=72 * MiB)   # five packs
        login(env, srv.url)
        add_server_set(env, "docs", src)
        # killed as its fourth pack is written: the first is uploaded by then (two may be in flight)
        died = env.ironcore("backup", "docs", env=dict(env.env, IRONCORE_CRASH_AT="pack-published:4"), check=False)
        assert died.returncode < 0, died.stderr
        volume = set_volume(srv)
        lease = volume.parent / "lease.json"   # once it has ended, no upload of the dead run can land any more
        wait_for(lambda: json.loads(lease.read_text())["expires"] < time.time(), 60, "the dead run's lease to end")
        orphans = {p.name for p in server_packs(volume)} - committed_packs(volume)
        assert orphans, "the killed run left no pack on the server"
        held = usage(srv)
        assert held >= len(orphans) * 15 * MiB
        report = json.loads(env.ironfs("gc", "alice", "docs", "--data-root", srv.root, "--json").stdout)[0]
        assert {p.name for p in server_packs(volume)} == committed_packs(volume) == set(), "gc kept the orphans"
        assert sorted(report["orphans"]) == sorted(orphans), report
        assert report["bytes_freed"] >= held * 0.9, report
        wait_for(lambda: usage(srv) < MiB, 30, "the server to count the freed bytes")
        verified = env.ironfs("verify", "alice", "docs", "--data-root", srv.root).stdout.decode()
        assert "clean" in verified and "not referenced" not in verified, verified

        assert env.backup_json("docs")["snapshot"] == 1   # the set works on as before
        out = tmp_path / "out"
        env.ironcore("restore", "docs", "--to", out)
        assert_same_tree(src, env.restored(out, src))
    finally:
        assert srv.stop() == 0


# --- 16: a damaged commit log --------------------------------------------------------------

def truncate_commit(volume, seq: int) -> bytes:
    """Cut commit `seq` to half its length, as damage at rest would; its old bytes."""
    path = volume / "log" / f"{seq:010d}.commit"
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return data


@pytest.mark.parametrize("damaged", [1, 2])
def test_backup_onto_a_damaged_log_is_refused_and_the_documented_repair_works(env, server, tmp_path, damaged):
    src = tmp_path / "src"
    make_tree(src, random.Random(16))
    login(env, server.url)
    add_server_set(env, "docs", src)
    env.backup_json("docs")
    (src / "docs" / "note001.txt").write_bytes(b"second\n")
    env.backup_json("docs")
    volume = set_volume(server)
    packs = sorted(server_packs(volume))
    truncate_commit(volume, damaged)

    (src / "docs" / "note002.txt").write_bytes(b"third\n")
    proc = env.ironcore("backup", "docs", check=False)
    err = no_traceback(proc)
    assert proc.returncode == 4, (proc.returncode, err, proc.stdout)
    assert "commit log of set docs on the server is damaged" in err and f"Commit {damaged} " in err, err
    assert "OPERATIONS.md" in err, err
    assert sorted(p.name for p in (volume / "log").iterdir()) == [f"{s:010d}.commit" for s in (1, 2)]
    assert sorted(server_packs(volume)) == packs

    # a machine without a copy of the log is told which commit is damaged, not a temporary file
    fresh = machine(tmp_path, "fresh")
    login(fresh, server.url)
    proc = fresh.ironcore("restore", "docs", "--to", tmp_path / "none", check=False)
    err = no_traceback(proc)
    assert proc.returncode != 0
    assert f"Commit {damaged} of set docs on the server" in err and ".tmp-" not in err, err

    # the repair of docs/OPERATIONS.md: the exact bytes from a client machine's copy of the log
    volume_id = json.loads((volume / "volume.json").read_text())["id"]
    copy = env.home / "volumes" / volume_id / "log" / f"{damaged:010d}.commit"
    shutil.copyfile(copy, volume / "log" / copy.name)
    verify_clean(env, server.root)
    assert env.backup_json("docs")["snapshot"] == 3
    out = tmp_path / "out"
    fresh.ironcore("restore", "docs", "--to", out)
    assert_same_tree(src, fresh.restored(out, src))


def test_a_log_damaged_while_a_backup_runs_gets_no_commit_on_top(env, server, tmp_path):
    src = tmp_path / "src"
    make_tree(src, random.Random(161), big=MiB)
    login(env, server.url)
    add_server_set(env, "docs", src)
    env.backup_json("docs")
    env.ironcore("set", "edit", "docs", "--bandwidth-limit", "2M")
    (src / "new.bin").write_bytes(os.urandom(8 * MiB))   # four seconds of uploads
    volume = set_volume(server)
    running = subprocess.Popen([BIN / "ironcore", "backup", "docs"], env=env.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: (volume.parent / "lease.json").exists(), 60, "the backup to take the lease", running)
        truncate_commit(volume, 1)
        stdout, stderr = running.communicate(timeout=300)
    finally:
        if running.poll() is None:
            running.kill()
            running.wait()
    err = stderr.decode(errors="replace")
    assert running.returncode == 4 and "Traceback" not in err, (running.returncode, err, stdout)
    assert "commit log of set docs on the server is damaged" in err and "Commit 1 " in err, err
    assert [p.name for p in (volume / "log").iterdir()] == ["0000000001.commit"]


# --- 17: a damaged pack, healed ------------------------------------------------------------

def test_gc_retires_a_damaged_pack_once_the_next_backup_healed_it(env, server, tmp_path):
    src = tmp_path / "src"
    make_victim_tree(src)
    login(env, server.url)
    add_server_set(env, "docs", src)
    assert env.backup_json("docs")["snapshot"] == 1
    snap1 = tmp_path / "snap1"
    subprocess.run(["cp", "-a", str(src), str(snap1)], check=True, timeout=60)
    volume = set_volume(server)
    pack, pack_path, entry = blob_location(volume, src, "docs/victim.bin", extent=1)
    pack_path = Path(pack_path)
    flip_byte(pack_path, entry.offset + entry.length // 2)

    read_data = ["verify", "alice", "docs", "--data-root", server.root, "--read-data", "--password-stdin"]
    found = env.ironfs(*read_data, "--json", input=ALICE_PW, check=False)
    assert found.returncode == 1
    assert json.loads(found.stdout)[0]["damaged_blobs"] == [{"blob": entry.blob_id.hex(), "pack": pack}]

    # gc leaves a damaged pack alone until the blob has a sound copy ...
    report = json.loads(env.ironfs("gc", "alice", "docs", "--data-root", server.root, "--json").stdout)[0]
    assert pack_path.exists() and not report.get("damaged_retired"), report
    # ... which the next backup stores
    assert env.backup_json("docs")["snapshot"] == 3
    assert env.ironfs("verify", "alice", "docs", "--data-root", server.root, check=False).returncode == 1

    report = json.loads(env.ironfs("gc", "alice", "docs", "--data-root", server.root, "--json").stdout)[0]
    clean = env.ironfs(*read_data, input=ALICE_PW, check=False)
    assert clean.returncode == 0 and b"clean" in clean.stdout, clean.stdout
    assert not pack_path.exists()
    assert report["damaged_retired"] == [pack] and pack in report["repacked"], report
    assert len(list((volume / "log").glob("*.commit"))) == 4   # the repack, and no damage recorded again

    for who in (env, machine(tmp_path, "fresh")):
        if who is not env:
            login(who, server.url)
        for seq, tree in ((1, snap1), (3, src)):
            out = tmp_path / f"out-{id(who)}-{seq}"
            who.ironcore("restore", "docs", "--snapshot", seq, "--to", out)
            assert_same_tree(tree, who.restored(out, src))
