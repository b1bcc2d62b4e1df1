"""Format-level behaviour of a volume: key slots, packs, commits, the catalog
as a rebuildable derivative of the log, the single-writer lock."""
import os
import sqlite3

import pytest

from ironfs.errors import CorruptData, VolumeBusy, WrongSecret
from ironfs.format import log as commitlog, pack as packfmt
from ironfs.format.content import content_id
from ironfs.format.pack import BLOB_DATA
from ironfs.format.volume import Volume

FAST_KDF = {"alg": "argon2id", "time_cost": 1, "memory_cost": 1024, "parallelism": 1}


def snapshot(volume, files: dict[bytes, bytes]) -> int:
    with volume.writer() as w:
        commit = w.start_commit("snapshot")
        for folder in {p.rsplit(b"/", 1)[0] for p in files if b"/" in p}:
            commit.add({"t": "ver", "p": folder, "k": "d", "mode": 0o755, "mtime_ns": 1})
        for path, data in files.items():
            blob_id = volume.key.blob_id(data)
            w.add_blob(blob_id, BLOB_DATA, volume.sealer.seal(blob_id, data), len(data))
            cid = content_id(volume.key, data)
            commit.add({"t": "content", "id": cid, "size": len(data), "ext": [[blob_id, 0, len(data)]]})
            commit.add({"t": "ver", "p": path, "k": "f", "mode": 0o644, "mtime_ns": 1, "size": len(data),
                        "c": cid})
        return w.finish_commit(commit)


@pytest.fixture
def volume(tmp_path):
    vol = Volume.create(str(tmp_path / "vol"), {"private": b"one", "recovery": b"two"}, kdf_params=FAST_KDF)
    yield vol
    vol.close()


def test_every_slot_opens_the_same_key_and_a_wrong_one_none(volume):
    keys = set()
    for secret, slot in ((b"one", "private"), (b"two", "recovery")):
        v = Volume(volume.root)
        assert v.unlock(secret) == slot
        keys.add(v.key.raw)
    assert keys == {volume.key.raw}
    with pytest.raises(WrongSecret, match="private, recovery"):
        Volume(volume.root).unlock(b"three")


def test_temporal_tree_lists_each_snapshot(volume):
    s1 = snapshot(volume, {b"a/x": b"1", b"a/y": b"2"})
    s2 = snapshot(volume, {b"a/x": b"changed"})
    with volume.writer() as w:
        c = w.start_commit("snapshot")
        c.add({"t": "del", "p": b"a/y"})
        s3 = w.finish_commit(c)
    cat = volume.catalog()
    a = cat.lookup(b"a/x", s1)
    assert a.size == 1
    assert cat.lookup(b"a/x", s2).size == 7
    assert cat.lookup(b"a/y", s2) is not None and cat.lookup(b"a/y", s3) is None
    # a version that did not change costs no row: y has one version across s1 and s2
    assert cat.db.execute("SELECT count(*) FROM versions WHERE path=(SELECT id FROM paths WHERE name=?)",
                          (b"y",)).fetchone()[0] == 1
    # the whole history of one path, in one query
    assert [(e.size, died) for e, died in cat.path_versions(b"a/x")] == [(1, s2), (7, None)]
    assert [died for _, died in cat.path_versions(b"a/y")] == [s3]
    assert cat.path_versions(b"a/nothing") == [] and cat.path_versions(b"b/x") == []


def test_deleted_or_damaged_catalog_is_rebuilt_identically(volume):
    snapshot(volume, {b"d/f1": b"one", b"d/f2": b"two"})
    snapshot(volume, {b"d/f1": b"three"})
    digests = {t: volume.catalog().table_digest(t) for t in ("paths", "versions", "blobs", "contents")}
    volume.close()
    os.unlink(volume.catalog_path)
    v = Volume(volume.root)
    assert {t: v.catalog().table_digest(t) for t in digests} == digests
    v.close()
    with open(volume.catalog_path, "r+b") as f:   # scribble over the SQLite header
        f.write(b"\xff" * 4096)
    v = Volume(volume.root)
    assert {t: v.catalog().table_digest(t) for t in digests} == digests
    v.close()


def test_catalog_catches_up_with_commits_applied_elsewhere(volume):
    snapshot(volume, {b"f": b"x"})
    other = Volume(volume.root)
    other.unlock(b"one")
    snapshot(other, {b"g": b"y"})
    other.close()
    assert [s["seq"] for s in volume.refresh().snapshots()] == [1, 2]


def test_commit_corruption_is_detected(volume):
    snapshot(volume, {b"f": b"x"})
    path = volume.commit_path(1)
    data = bytearray(open(path, "rb").read())
    for pos in (20, len(data) - 5):
        bad = bytearray(data)
        bad[pos] ^= 1
        open(path, "wb").write(bad)
        with pytest.raises(CorruptData, match="0000000001.commit"):
            list(commitlog.read_commit(path))
    open(path, "wb").write(data[:-40])
    with pytest.raises(CorruptData):
        list(commitlog.read_commit(path))


def test_pack_index_and_names(volume, tmp_path):
    writer = packfmt.PackWriter(str(tmp_path))
    ids = []
    for i in range(5):
        data = os.urandom(1000 + i)
        blob_id = volume.key.blob_id(data)
        writer.add(blob_id, BLOB_DATA, volume.sealer.seal(blob_id, data), len(data))
        ids.append(blob_id)
    name, size = writer.finish()
    path = tmp_path / name[:2] / name
    assert packfmt.file_sha256(str(path)) == name and os.path.getsize(path) == size
    entries = packfmt.read_index(str(path))
    assert [e.blob_id for e in entries] == ids
    raw = path.read_bytes()
    with pytest.raises(CorruptData):
        packfmt.parse_index(raw[:-1] + b"Y", len(raw))


def test_one_writer_at_a_time(volume):
    with volume.writer():
        with pytest.raises(VolumeBusy, match="pid"):
            Volume(volume.root).writer()
    Volume(volume.root).writer().close()


def test_gap_in_the_log_is_an_error(volume):
    snapshot(volume, {b"f": b"x"})
    snapshot(volume, {b"g": b"y"})
    os.rename(volume.commit_path(1), volume.commit_path(1) + ".moved")
    with pytest.raises(CorruptData, match="commit 1 is missing"):
        Volume(volume.root).seqs()


def test_sqlite_catalog_is_wal(volume):
    snapshot(volume, {b"f": b"x"})
    mode = sqlite3.connect(volume.catalog_path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_readers_on_many_threads_never_read_a_pack_through_a_closed_descriptor(volume, monkeypatch):
    """More packs than open descriptors kept: one thread's read must not lose its
    descriptor to another thread opening the next pack (a closed or reused fd
    would read nothing or another pack's bytes)."""
    from concurrent.futures import ThreadPoolExecutor
    import random

    from ironfs.format import volume as volmod
    monkeypatch.setattr(volmod, "PACK_FDS", 2)
    blobs = {}
    for i in range(12):   # one pack each
        data = os.urandom(2000 + i)
        snapshot(volume, {b"f%d" % i: data})
        blobs[volume.key.blob_id(data)] = data
    ids = list(blobs)

    def reader(seed):
        rnd = random.Random(seed)
        for _ in range(400):
            blob_id = rnd.choice(ids)
            assert volume.read_blob(blob_id) == blobs[blob_id]
    with ThreadPoolExecutor(8) as pool:
        for fut in [pool.submit(reader, s) for s in range(8)]:
            fut.result()


def test_long_spans_read_past_the_page_cache_or_plainly_where_refused(volume, monkeypatch):
    """Spans of many blobs are read with O_DIRECT; on a file system that refuses
    it (EINVAL, as some FUSE and network file systems do; every one here
    accepts it, so the refusal is simulated) the same blobs come back through
    plain reads, and the volume stops asking."""
    blobs = {os.urandom(16): os.urandom(100_000 + i) for i in range(24)}   # about 2.4 MB in one pack
    snapshot(volume, {b"f%d" % i: data for i, data in enumerate(blobs.values())})
    ids = [volume.key.blob_id(data) for data in blobs.values()]
    expected = dict(zip(ids, blobs.values()))
    direct_opens, refuse = [], []
    real_open = os.open

    def watched_open(path, flags, *args, **kw):
        if flags & os.O_DIRECT:
            direct_opens.append(path)
            if refuse:
                raise OSError(22, "Invalid argument")
        return real_open(path, flags, *args, **kw)
    monkeypatch.setattr(os, "open", watched_open)

    assert {k: bytes(v) for k, v in volume.read_blobs(ids).items()} == expected
    assert direct_opens and volume._direct_ok
    volume.close()   # the pack's descriptors go: the next read opens the pack again
    refuse.append(True)
    assert {k: bytes(v) for k, v in volume.read_blobs(ids).items()} == expected
    assert not volume._direct_ok
    tried = len(direct_opens)
    assert {k: bytes(v) for k, v in volume.read_blobs(ids).items()} == expected
    assert len(direct_opens) == tried, "asked again after a refusal"


def test_a_lent_blob_buffer_is_written_before_the_writer_lets_it_go(volume, monkeypatch):
    """The backup hands the pack writer views of its workers' shared slots, not
    copies. The pack lane writes them later, so `written()` stays pending until it
    has (the slot is reused only then), and what reaches the pack is the bytes
    as they were lent."""
    import threading

    from ironfs.format import pack as packfmt
    from ironfs.format.catalog import Catalog

    gate = threading.Event()
    real_append_many = packfmt.PackWriter._append_many

    def held_append_many(self, pieces):
        gate.wait(30)
        real_append_many(self, pieces)
    monkeypatch.setattr(packfmt.PackWriter, "_append_many", held_append_many)

    data = os.urandom(50_000)
    blob_id = volume.key.blob_id(data)
    slot = bytearray(volume.sealer.seal(blob_id, data))
    with volume.writer() as w:
        commit = w.start_commit("snapshot")
        assert w.add_blob(blob_id, BLOB_DATA, memoryview(slot), len(data))
        written = w.written()
        assert written is not None and not written.done(), "reported written while the lane still holds it"
        gate.set()
        written.result(30)
        assert w.written() is None
        slot[:] = bytes(len(slot))   # reused: too late to reach the pack
        cid = content_id(volume.key, data)
        commit.add({"t": "content", "id": cid, "size": len(data), "ext": [[blob_id, 0, len(data)]]})
        commit.add({"t": "ver", "p": b"f", "k": "f", "mode": 0o644, "mtime_ns": 1, "size": len(data), "c": cid})
        w.finish_commit(commit)
    assert bytes(volume.read_blob(blob_id)) == data


def test_a_slot_waits_for_the_write_of_its_blobs(tmp_path):
    """A released slot whose blobs are still being written is not handed out
    (the pack lane writes in order: slots come back in the order they went)."""
    from concurrent.futures import Future

    from client.sealers import SealWorkers

    vol = Volume.create(str(tmp_path / "vol"), {"private": b"pw"}, kdf_params=FAST_KDF)
    vol.unlock(b"pw")
    with SealWorkers(vol.sealer, vol.max_blob, 1 << 20, 2, workers=1) as slots:
        first, second = slots.free.popleft(), slots.free.popleft()
        done, pending = Future(), Future()
        slots.release(first, done)
        slots.release(second, pending)
        done.set_result(None)
        assert slots.has_free(wait_for_one=False) and list(slots.free) == [first]
        slots.free.popleft()
        assert not slots.has_free(wait_for_one=False)
        pending.set_result(None)
        assert slots.has_free(wait_for_one=False) and list(slots.free) == [second]
    vol.close()


def test_a_framed_blob_is_sealed_in_place_and_its_borrowed_byte_given_back(volume):
    """seal_into with a frame encrypts an incompressible blob where it lies: the
    byte before it carries the codec meanwhile and is restored; the result opens
    like any sealed blob. A compressible one is sealed compressed as usual."""
    for data in (os.urandom(70_000), b"compressible " * 5000):
        buf = bytearray(b"\xaa" + data + b"\xbb")
        frame = memoryview(buf)[:1 + len(data)]
        blob_id = volume.key.blob_id(data)
        out = bytearray(len(data) + 64)
        n = volume.sealer.seal_into(blob_id, frame[1:], memoryview(out), frame=frame)
        assert bytes(buf) == b"\xaa" + data + b"\xbb"
        assert bytes(volume.sealer.open(blob_id, bytes(out[:n]), len(data))) == data
        assert (n < len(data)) == data.startswith(b"compressible")
