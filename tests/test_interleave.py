"""A large file's runs are read while small files are sealed: the backup hands
the workers one run of the large file after each batch of small files, so the
disk and the cores are busy at once. The packs show it, and the tree restores
whole, including several large files in a row (more than wait at once)."""
import os
import random

from conftest import assert_same_tree
from ironfs.format.volume import Volume

KiB = 1 << 10
MiB = 1 << 20


def make_tree(src):
    rnd = random.Random(5)
    src.mkdir()
    (src / "a-big.bin").write_bytes(rnd.randbytes(12 * MiB))         # walked first
    (src / "b-docs").mkdir()
    for i in range(300):
        (src / "b-docs" / f"f{i:03d}.txt").write_bytes(rnd.randbytes(rnd.randint(1, 4 * KiB)))
    (src / "c-media").mkdir()
    for i in range(4):                                                  # large files one after another
        (src / "c-media" / f"m{i}.bin").write_bytes(rnd.randbytes(2 * MiB + i * 1000))
    (src / "d-tail").mkdir()
    for i in range(20):
        (src / "d-tail" / f"t{i:02d}").write_bytes(rnd.randbytes(100 + i))
    (src / "d-tail" / "empty").write_bytes(b"")


def locations(volume_dir, paths):
    """{path: [(pack, offset) of each of its data blobs]} in snapshot 1."""
    vol = Volume(str(volume_dir))
    try:
        cat = vol.catalog()
        out = {}
        for p in paths:
            entry = cat.lookup(str(p).lstrip("/").encode(), 1)
            ids = [e[0] for e in cat.content(entry.content)["ext"] if e[0] is not None]
            where = cat.blob_locations(ids)
            out[p] = [(where[i][0], where[i][1]) for i in ids]
        return out
    finally:
        vol.close()


def test_large_file_runs_interleave_with_small_files_and_restore_whole(env, tmp_path):
    src = tmp_path / "src"
    make_tree(src)
    env.add_set("s", src)
    report = env.backup_json()
    assert report["files_new"] == 1 + 300 + 4 + 21 and not report["errors"]

    small = sorted((src / "b-docs").iterdir())
    where = locations(env.volume, [src / "a-big.bin", *small])
    big = where.pop(src / "a-big.bin")
    assert len(big) == 12 * MiB // (128 * KiB)
    packs = {pack for pack, _ in big}
    first, last = {}, {}
    for pack, offset in big:
        first[pack] = min(first.get(pack, offset), offset)
        last[pack] = max(last.get(pack, offset), offset)
    between = [(pack, offset) for blobs in where.values() for pack, offset in blobs
               if pack in packs and first[pack] < offset < last[pack]]
    assert between, "the small files' blobs were all written before or after the large file's"

    env.ironcore("restore", "s", "--to", tmp_path / "out")
    assert_same_tree(src, env.restored(tmp_path / "out", src))
    assert env.backup_json()["files_unchanged"] == 326
