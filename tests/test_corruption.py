"""Damaged storage is found, named and contained: a flipped byte in a pack is
reported by `ironfs verify` (pack and damaged files), a restore fails for the
damaged files only, and the next backup of the same data heals older snapshots.
Truncated or missing packs and damaged commits give clear errors, never a traceback."""
import json
import os
import random
import subprocess
import time

import pytest

from conftest import assert_same_tree, describe_tree
from ironfs.format import log as commitlog
from ironfs.format import pack as packfmt
from ironfs.format.volume import Volume

KiB = 1 << 10
MiB = 1 << 20


def make_tree(src):
    rnd = random.Random(77)
    victim = os.urandom(300 * KiB)           # three data blobs; the middle one gets damaged
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "victim.bin").write_bytes(victim)
    (src / "copies").mkdir()
    (src / "copies" / "victim-copy.bin").write_bytes(victim)   # same content: shares every blob
    (src / "docs" / "notes.txt").write_bytes(b"notes\n" * 1000)
    (src / "other").mkdir()
    (src / "other" / "big.bin").write_bytes(os.urandom(MiB))
    for i in range(30):
        (src / "other" / f"s{i:02d}.txt").write_bytes(rnd.randbytes(rnd.randint(0, 3000)))


def stored_path(src, rel) -> str:
    """A path as the catalog and verify show it: absolute, without the leading slash."""
    return str(src / rel).lstrip("/")


def no_traceback(proc) -> str:
    err = proc.stderr.decode(errors="replace")
    assert "Traceback" not in err, err
    return err


def run_verify(env, read_data=False, as_json=False):
    args = ["verify", env.volume] + (["--read-data"] if read_data else []) + (["--json"] if as_json else [])
    proc = env.ironfs(*args, check=False)
    no_traceback(proc)
    out = proc.stdout.decode(errors="replace")
    return proc.returncode, (json.loads(out) if as_json else out), proc.stderr.decode(errors="replace")


def blob_location(volume_dir, src, rel, extent=0):
    """(pack name, index entry) of one data blob of a file in snapshot 1, found through
    the catalog (content extents) and the pack indexes."""
    vol = Volume(str(volume_dir))
    try:
        cat = vol.catalog()
        entry = cat.lookup(stored_path(src, rel).encode(), 1)
        assert entry is not None and entry.content is not None
        blob_id = cat.content(entry.content)["ext"][extent][0]
        packs = vol.all_pack_files()
    finally:
        vol.close()
    for name, path in packs.items():
        for e in packfmt.read_index(path):
            if e.blob_id == blob_id:
                assert e.type == packfmt.BLOB_DATA
                return name, path, e
    raise AssertionError(f"blob {blob_id.hex()} is in no pack index")


def flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes((b[0] ^ 0x5A,)))


def restore(env, tmp_path, seq):
    target = tmp_path / f"restore-{seq}-{time.monotonic_ns()}"
    proc = env.ironcore("restore", "s", "--snapshot", seq, "--to", target, check=False)
    no_traceback(proc)
    return proc, target


def assert_restored_except(expected_root, restored_root, missing):
    """Every entry identical except `missing`, which must be absent (not empty, not short)."""
    want, got = describe_tree(expected_root), describe_tree(restored_root)
    missing = {os.fsencode(m) for m in missing}
    for m in missing:
        assert m not in got, f"{m!r} was restored although its data is damaged: {got.get(m)}"
    assert sorted(k for k in want if k not in missing) == sorted(got), "restored entries differ"
    for k in got:
        assert want[k] == got[k], f"{k!r} differs:\n source  {want[k]}\n restore {got[k]}"


VICTIMS = ("docs/victim.bin", "copies/victim-copy.bin")


def test_flipped_byte_is_reported_contained_and_healed(env, tmp_path):
    src = tmp_path / "src"
    make_tree(src)
    env.add_set("s", src)
    assert env.backup_json()["snapshot"] == 1
    snap1 = tmp_path / "snap1"
    subprocess.run(["cp", "-a", str(src), str(snap1)], check=True, timeout=60)

    pack, pack_path, entry = blob_location(env.volume, src, "docs/victim.bin", extent=1)
    flip_byte(pack_path, entry.offset + entry.length // 2)

    # without the key: the pack fails its SHA-256
    rc, out, _ = run_verify(env)
    assert rc != 0, out
    assert pack in out and "SHA-256" in out, out

    # a restore fails loudly for the damaged files only
    proc, target = restore(env, tmp_path, 1)
    assert proc.returncode != 0
    err = proc.stderr.decode(errors="replace")
    for v in VICTIMS:
        assert v in err, err
    assert "notes.txt" not in err and "big.bin" not in err, err
    assert_restored_except(src, env.restored(target, src), VICTIMS)

    # with the key: the damaged blob, its pack and both files that use it are named
    rc, out, _ = run_verify(env, read_data=True)
    assert rc != 0, out
    assert pack in out, out
    assert entry.blob_id.hex() in out, out
    damaged_lines = [line for line in out.splitlines() if "damaged file" in line]
    for v in VICTIMS:
        assert any(stored_path(src, v) in line for line in damaged_lines), out
    assert len(damaged_lines) == len(VICTIMS), out
    seqs = commitlog.list_seqs(str(env.volume / "log"))
    assert seqs == [1, 2], "verify --read-data records the damage in a commit"
    assert commitlog.read_header(str(env.volume / "log" / commitlog.commit_name(2)))["kind"] == "damage"

    # once recorded, the restore still refuses the damaged files (the blob is known bad)
    proc, target = restore(env, tmp_path, 1)
    assert proc.returncode != 0
    assert_restored_except(src, env.restored(target, src), VICTIMS)

    # the next backup of the unchanged source stores the damaged blob again ...
    report = env.backup_json()
    assert report["snapshot"] == 3
    assert report["blobs_stored"] >= 1 and report["bytes_stored"] >= entry.raw_length, report
    assert report["bytes_stored"] < 2 * MiB, report   # ... and nothing else of the sound data

    # ... which heals the older snapshot
    proc, target = restore(env, tmp_path, 1)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert_same_tree(snap1, env.restored(target, src))
    proc, target = restore(env, tmp_path, 3)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert_same_tree(src, env.restored(target, src))

    # The old pack file still holds the flipped byte: until gc/repack rewrites it, verify keeps
    # saying so (and only that); the superseded bad copy of the blob damages no file and must not
    # be recorded as damage again (which would undo the healing).
    expected_error = f"Pack {pack} is damaged: its SHA-256 does not match its name."
    for read_data in (True, False, True):
        rc, report_v, _ = run_verify(env, read_data=read_data, as_json=True)
        assert rc != 0
        assert report_v["errors"] == [expected_error], report_v
        assert report_v["damaged_packs"] == [pack], report_v
        assert report_v["affected"] == [] and report_v["damaged_blobs"] == [], report_v
    assert commitlog.list_seqs(str(env.volume / "log")) == [1, 2, 3], "no further damage commit"

    proc, target = restore(env, tmp_path, 1)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert_same_tree(snap1, env.restored(target, src))


def test_damage_in_one_part_of_a_large_file_fails_that_file_only(env, tmp_path):
    """A large file is restored in parts by several workers (64 MiB each); a damaged
    blob in its second part removes the whole file and fails the run, and every
    other file, large or small, is restored."""
    src = tmp_path / "src"
    (src / "big").mkdir(parents=True)
    (src / "big" / "huge.bin").write_bytes(os.urandom(70 * MiB))
    (src / "big" / "other.bin").write_bytes(os.urandom(6 * MiB))
    (src / "small").mkdir()
    for i in range(50):
        (src / "small" / f"f{i:02d}").write_bytes(os.urandom(100 * i))
    env.add_set("s", src)
    assert env.backup_json()["snapshot"] == 1
    _, pack_path, entry = blob_location(env.volume, src, "big/huge.bin", extent=540)   # at 67.5 MiB
    flip_byte(pack_path, entry.offset + entry.length // 2)

    proc, target = restore(env, tmp_path, 1)
    assert proc.returncode != 0
    err = proc.stderr.decode(errors="replace")
    assert "big/huge.bin" in err and "not restored" in err, err
    assert "other.bin" not in err and "small/" not in err, err
    assert_restored_except(src, env.restored(target, src), ["big/huge.bin"])


@pytest.fixture
def two_snapshots(env, tmp_path):
    src = tmp_path / "src"
    make_tree(src)
    env.add_set("s", src)
    env.backup_json()
    (src / "other" / "later.bin").write_bytes(os.urandom(200 * KiB))
    env.backup_json()
    return src


def some_pack(env):
    vol = Volume(str(env.volume))
    try:
        packs = vol.all_pack_files()
    finally:
        vol.close()
    name = sorted(packs)[0]
    return name, packs[name]


def assert_clear_failure(env, tmp_path, names):
    """verify (with and without the key) fails naming the damaged file; nothing prints a traceback."""
    for read_data in (False, True):
        rc, out, err = run_verify(env, read_data=read_data)
        assert rc != 0, out
        assert any(n in out + err for n in names), f"no mention of {names}:\n{out}\n{err}"
        assert "ERROR" in out or "error" in err, out + err
    rc, report, _ = run_verify(env, read_data=True, as_json=True)
    assert rc != 0 and report["errors"], report
    proc = env.ironcore("snapshots", "s", check=False)
    no_traceback(proc)
    proc, _ = restore(env, tmp_path, "latest")
    no_traceback(proc)


def test_truncated_pack_is_reported(env, tmp_path, two_snapshots):
    name, path = some_pack(env)
    size = os.path.getsize(path)
    os.truncate(path, size - 1000)
    assert_clear_failure(env, tmp_path, [name])


def test_truncated_pack_inside_its_index_is_reported(env, tmp_path, two_snapshots):
    name, path = some_pack(env)
    os.truncate(path, os.path.getsize(path) // 2)
    assert_clear_failure(env, tmp_path, [name])


def test_deleted_pack_is_reported(env, tmp_path, two_snapshots):
    name, path = some_pack(env)
    os.unlink(path)
    assert_clear_failure(env, tmp_path, [name])
    rc, out, _ = run_verify(env)
    assert f"Pack {name} named by the log is missing" in out, out


@pytest.mark.parametrize("where", ["magic", "body", "trailer", "truncated"])
def test_corrupted_commit_is_reported(env, tmp_path, two_snapshots, where):
    commit = env.volume / "log" / commitlog.commit_name(1)
    size = commit.stat().st_size
    if where == "truncated":
        os.truncate(commit, size // 2)
    else:
        flip_byte(commit, {"magic": 0, "body": size // 2, "trailer": size - 1}[where])
    assert_clear_failure(env, tmp_path, [commit.name])


@pytest.mark.parametrize("where", ["body", "trailer"])
def test_corrupted_commit_with_lost_catalog_gives_clear_error(env, tmp_path, two_snapshots, where):
    """Rebuilding the catalog from a damaged log must stop with an error, not a traceback."""
    commit = env.volume / "log" / commitlog.commit_name(1)
    size = commit.stat().st_size
    flip_byte(commit, size // 2 if where == "body" else size - 1)
    for suffix in ("", "-wal", "-shm"):
        try:
            os.unlink(f"{env.volume / 'catalog.db'}{suffix}")
        except FileNotFoundError:
            pass
    proc = env.ironcore("snapshots", "s", check=False)
    err = no_traceback(proc)
    assert proc.returncode != 0 and commit.name in err, err
    rc, out, err = run_verify(env)
    assert rc != 0 and commit.name in out + err, out + err


def remove_catalog(env):
    for suffix in ("", "-wal", "-shm"):
        try:
            os.unlink(f"{env.volume / 'catalog.db'}{suffix}")
        except FileNotFoundError:
            pass


def rewrite_records(commit, change):
    """Re-encode a commit with `change(records)` applied, keeping its old trailer hash: a
    commit whose bytes were altered yet still decode (zstd frames carry no checksum)."""
    import msgpack
    import zstandard
    raw = commit.read_bytes()
    records = list(commitlog.read_commit(str(commit)))
    records.append({"t": "end", "n": len(records)})
    change(records)
    body = zstandard.ZstdCompressor(level=3).compress(b"".join(msgpack.packb(r, use_bin_type=True) for r in records))
    commit.write_bytes(raw[:len(commitlog.HEADER)] + body + raw[-commitlog.TRAILER_LEN:])


@pytest.mark.parametrize("field", ["time_ns", "name"])
def test_altered_commit_that_still_decodes_gives_clear_error(env, tmp_path, two_snapshots, field):
    """Records of a commit that fails its hash are never acted on: no KeyError from a
    missing field, with or without a catalog to rebuild."""
    commit = env.volume / "log" / commitlog.commit_name(1)

    def drop(records):
        kind = "commit" if field == "time_ns" else "pack"
        next(r for r in records if r["t"] == kind).pop(field)
    rewrite_records(commit, drop)
    assert_clear_failure(env, tmp_path, [commit.name])
    remove_catalog(env)
    for args in (["snapshots", "s"], ["restore", "s", "--to", tmp_path / "r"]):
        proc = env.ironcore(*args, check=False)
        err = no_traceback(proc)
        assert proc.returncode != 0 and commit.name in err, err
    rc, out, err = run_verify(env)
    assert rc != 0 and commit.name in out + err, out + err


def test_any_flipped_byte_of_a_commit_gives_a_typed_error(env, two_snapshots):
    """In process, over many single-byte flips of commit 1: rebuilding the catalog and
    verify only ever fail with the typed errors the command line prints plainly."""
    from ironfs.errors import IroncoreError
    from ironfs.format.verify import verify_volume
    commit = env.volume / "log" / commitlog.commit_name(1)
    original = commit.read_bytes()
    for pos in range(0, len(original), 3):
        damaged = bytearray(original)
        damaged[pos] ^= 0x5A
        commit.write_bytes(bytes(damaged))
        remove_catalog(env)
        vol = Volume(str(env.volume))
        try:
            with pytest.raises(IroncoreError):
                vol.catalog()
        finally:
            vol.close()
        vol = Volume(str(env.volume))
        try:
            report = verify_volume(vol)
        finally:
            vol.close()
        assert any("0000000001.commit" in e for e in report["errors"]), (pos, report["errors"])
