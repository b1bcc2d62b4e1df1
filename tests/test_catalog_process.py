"""The catalog applied beside a backup, in a process of its own
(client.catalog_process): it commits once the commit file is published, and
if it fails the commit is applied from the log as usual, losing nothing."""
import os
import signal
import time

import pytest

from client.catalog_process import CatalogProcess
from ironfs.format import catalog as catalogmod
from ironfs.format.content import content_id
from ironfs.format.pack import BLOB_DATA
from ironfs.format.verify import verify_volume
from ironfs.format.volume import Volume

FAST_KDF = {"alg": "argon2id", "time_cost": 1, "memory_cost": 1024, "parallelism": 1}
FILES = 3000   # more than one batch of records (256 KiB) reaches the process


@pytest.fixture
def volume(tmp_path):
    vol = Volume.create(str(tmp_path / "vol"), {"private": b"pw"}, kdf_params=FAST_KDF)
    yield vol
    vol.close()


def write_snapshot(volume, writer, tag: bytes, before_finish=None) -> int:
    commit = writer.start_commit("snapshot")
    commit.add({"t": "ver", "p": b"d", "k": "d", "mode": 0o755, "mtime_ns": 1})
    for i in range(FILES):
        data = tag + b"%d" % i
        blob_id = volume.key.blob_id(data)
        writer.add_blob(blob_id, BLOB_DATA, volume.sealer.seal(blob_id, data), len(data))
        cid = content_id(volume.key, data)
        commit.add({"t": "content", "id": cid, "size": len(data), "ext": [[blob_id, 0, len(data)]]})
        commit.add({"t": "ver", "p": b"d/f%05d" % i, "k": "f", "mode": 0o644, "mtime_ns": 1, "size": len(data),
                    "c": cid})
    if before_finish is not None:
        before_finish()
    return writer.finish_commit(commit)


def listing(volume, seq: int) -> list:
    cat = volume.refresh()
    folder = cat.lookup(b"d", seq)
    return [(e.name, e.size) for e in cat.iter_dir(folder.path_id, seq)]


def test_the_process_applies_the_commit_and_the_backup_does_not(volume, monkeypatch):
    applier = CatalogProcess(volume)
    try:
        def no_apply_here(*args, **kw):
            raise AssertionError("the backup applied the commit itself")
        monkeypatch.setattr(catalogmod.Catalog, "apply", no_apply_here)
        with volume.writer() as writer:
            writer.apply_live(applier)
            first = write_snapshot(volume, writer, b"one")
        with volume.writer() as writer:
            writer.apply_live(applier)
            second = write_snapshot(volume, writer, b"second")
        monkeypatch.undo()
    finally:
        applier.close()
    assert len(listing(volume, first)) == FILES and len(listing(volume, second)) == FILES
    assert listing(volume, second)[7] == (b"f00007", len(b"second7"))
    assert verify_volume(volume)["errors"] == []


def test_a_process_killed_mid_commit_leaves_it_to_the_backup(volume):
    """Killed while its transaction is open (after some batches, before the
    commit is published): nothing of it stays, and the published commit is
    applied from the log."""
    applier = CatalogProcess(volume)
    assert applier._workers.processes
    pid = applier._workers._workers[0].pid

    def kill():
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while open(f"/proc/{pid}/stat").read().split(")")[1].split()[0] != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)   # dead, not yet reaped: the pool reaps it on close
    try:
        with volume.writer() as writer:
            writer.apply_live(applier)
            seq = write_snapshot(volume, writer, b"x", before_finish=kill)
    finally:
        applier.close()
    assert volume.refresh().applied_seq == seq
    assert len(listing(volume, seq)) == FILES
    assert verify_volume(volume)["errors"] == []


def test_an_aborted_run_leaves_the_catalog_as_it_was(volume):
    applier = CatalogProcess(volume)
    try:
        with volume.writer() as writer:
            writer.apply_live(applier)
            first = write_snapshot(volume, writer, b"kept")
        with pytest.raises(RuntimeError):
            with volume.writer() as writer:
                writer.apply_live(applier)
                def fail():
                    raise RuntimeError("the run fails before its commit is published")
                write_snapshot(volume, writer, b"lost", before_finish=fail)
        with volume.writer() as writer:   # the process rolled back: the next commit goes through it
            writer.apply_live(applier)
            third = write_snapshot(volume, writer, b"next")
    finally:
        applier.close()
    assert third == first + 1 and volume.refresh().applied_seq == third
    assert verify_volume(volume)["errors"] == []
