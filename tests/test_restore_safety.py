"""Restore never writes outside its target, and a wrong secret writes nothing."""
import os

import pytest

from client.restore import Restore
from conftest import PASSWORD
from ironfs.errors import CorruptData
from ironfs.format.content import content_id
from ironfs.format.pack import BLOB_DATA
from ironfs.format.volume import Volume

FAST_KDF = {"alg": "argon2id", "time_cost": 1, "memory_cost": 1024, "parallelism": 1}


def craft_snapshot(volume: Volume, entries) -> int:
    """Write a snapshot commit by hand: entries are (path, kind, data-or-target)."""
    with volume.writer() as w:
        commit = w.start_commit("snapshot", sources=["/crafted"], set="x")
        for path, kind, payload in entries:
            rec = {"t": "ver", "p": path, "k": kind, "mode": 0o644 if kind != "d" else 0o755, "uid": 0, "gid": 0,
                   "mtime_ns": 10**18, "size": 0}
            if kind == "f":
                blob_id = volume.key.blob_id(payload)
                w.add_blob(blob_id, BLOB_DATA, volume.sealer.seal(blob_id, payload), len(payload))
                cid = content_id(volume.key, payload)
                commit.add({"t": "content", "id": cid, "size": len(payload), "ext": [[blob_id, 0, len(payload)]]})
                rec.update(c=cid, size=len(payload))
            elif kind == "l":
                rec["target"] = payload
            commit.add(rec)
        return w.finish_commit(commit)


@pytest.fixture
def volume(tmp_path):
    vol = Volume.create(str(tmp_path / "vol"), {"private": b"pw"}, kdf_params=FAST_KDF)
    yield vol
    vol.close()


@pytest.mark.parametrize("path", [b"a/../../escape", b"/abs", b"a//b", b"..", b"a/./b", b"nul\x00"])
def test_unsafe_path_never_enters_the_log(tmp_path, volume, path):
    with pytest.raises(CorruptData, match="unsafe"):
        craft_snapshot(volume, [(path, "f", b"evil")])
    assert volume.seqs() == []
    assert craft_snapshot(volume, [(b"fine", "f", b"ok")]) == 1


def test_unsafe_names_in_a_tampered_catalog_are_refused(tmp_path, volume):
    seq = craft_snapshot(volume, [(b"ok", "f", b"fine"), (b"evil1", "f", b"x"), (b"evil2", "f", b"y")])
    db = volume.catalog().db
    db.execute("UPDATE paths SET name=? WHERE name=?", (b"..", b"evil1"))
    db.execute("UPDATE paths SET name=? WHERE name=?", (b"../../outside", b"evil2"))
    target = tmp_path / "t" / "target"
    report = Restore(volume, seq, str(target)).run()
    assert sorted(e["path"] for e in report["errors"]) == ["..", "../../outside"]
    assert (target / "ok").read_bytes() == b"fine"
    assert sorted(os.listdir(tmp_path / "t")) == ["target"]
    assert not (tmp_path / "outside").exists()


def test_symlink_restored_earlier_is_never_followed(tmp_path, volume):
    outside = tmp_path / "outside"
    outside.mkdir()
    # "d" is a symlink pointing outside, and the same snapshot claims a file "d/f" below it.
    seq = craft_snapshot(volume, [(b"d", "l", os.fsencode(outside)), (b"d/f", "f", b"payload")])
    target = tmp_path / "target"
    Restore(volume, seq, str(target)).run()
    assert os.readlink(target / "d") == str(outside)
    report = Restore(volume, seq, str(target)).run(path="d/f")   # d already exists as that symlink
    assert report["errors"] == []
    assert os.listdir(outside) == []
    assert not os.path.islink(target / "d") and (target / "d" / "f").read_bytes() == b"payload"


def test_wrong_password_gives_clear_error_and_writes_nothing(env, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data")
    env.add_set("s", src)
    env.backup_json()

    def state():
        return sorted((p, os.path.getsize(os.path.join(p, n))) for p, _, names in os.walk(env.volume)
                      for n in names if n != "catalog.db-shm" and not n.startswith("catalog"))
    before = state()
    bad = dict(env.env, IRONCORE_PASSWORD="not the password")
    (src / "g").write_bytes(b"new")
    for args in (["backup", "s"], ["restore", "s", "--to", tmp_path / "out"]):
        proc = env.ironcore(*args, env=bad, check=False)
        assert proc.returncode == 3
        assert b"does not open" in proc.stderr and b"Traceback" not in proc.stderr
    assert state() == before
    assert not (tmp_path / "out").exists()
    proc = env.ironfs("verify", "--read-data", env.volume, env=dict(env.env, IRONFS_PASSWORD="wrong"), check=False)
    assert proc.returncode == 3 and b"does not open" in proc.stderr
    ok = env.ironcore("restore", "s", "--to", tmp_path / "out", "--password-stdin", input=PASSWORD.encode() + b"\n",
                      env=dict(env.env, IRONCORE_PASSWORD=""))
    assert ok.returncode == 0
