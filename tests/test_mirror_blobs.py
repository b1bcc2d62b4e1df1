"""The client's catalog holds every blob of every pack it lists.

A backup to a server names each pack in its commit as soon as the pack is
written, and the catalog process takes the pack's blobs in from its index while
the run goes on, when the upload may not have landed yet. Once whole packs lost
their blobs so, and the machine that made the backup could not restore it
("Blob ... is not in any sound pack") while a new machine could. Here: trees
big enough for dozens of 16 MiB packs, restored on the same machine and on a
new one, to a server and to a local volume; and a catalog that lacks the blobs
of some packs mends itself from the pack indexes before a restore or backup."""
import os
import random
import sqlite3
from pathlib import Path

import msgpack
import pytest

from client.catalog_process import CatalogProcess
from conftest import assert_same_tree
from ironfs.errors import MissingData
from ironfs.format import pack as packfmt
from ironfs.format.volume import Volume
from serverkit import login, server  # noqa: F401 (server is a fixture)
from test_catalog_process import FAST_KDF, write_snapshot
from test_remote import add_server_set, machine, metric, server_packs, set_volume

MiB = 1 << 20
LARGE = (71 * MiB + 4099, 97 * MiB + 12_345, 127 * MiB + 77)   # odd sizes, not multiples of a blob or page


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """About 420 MB: 3,000 small files of 0.2-90 KB in nested folders (some text,
    most random) and three large random files: 24 packs or more."""
    src = tmp_path_factory.mktemp("mirror") / "src"
    rnd = random.Random(20261204)
    words = b" ".join(rnd.choice([b"pack", b"blob", b"index", b"mirror", b"catalog"]) for _ in range(30_000))
    for i in range(3000):
        folder = src / "small" / f"d{i % 23:02d}" / f"e{i % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        size = rnd.randint(200, 90_000)
        data = words[:size] if i % 5 == 0 else rnd.randbytes(size)
        (folder / f"f{i:05d}.{'txt' if i % 5 == 0 else 'dat'}").write_bytes(data)
    for i, size in enumerate(LARGE):
        with open(src / f"large{i}.bin", "wb") as f:
            left = size
            while left:
                n = min(left, 8 * MiB)
                f.write(rnd.randbytes(n))
                left -= n
    return src


def indexes(pack_files) -> dict[str, set[bytes]]:
    """pack name -> the blob ids its index lists, read from the pack files themselves."""
    return {p.name: {e.blob_id for e in packfmt.read_index(str(p))} for p in pack_files}


def catalog_file(home: Path) -> Path:
    (path,) = home.glob("volumes/*/catalog.db")   # the mirror of the one server set
    return path


def assert_catalog_holds(catalog: Path, packs: dict[str, set[bytes]]) -> None:
    """The catalog lists exactly these packs, each with blob rows, and every blob of
    every pack index has a row."""
    db = sqlite3.connect(catalog)
    try:
        listed = {n for (n,) in db.execute("SELECT name FROM packs WHERE dropped IS NULL")}
        assert listed == set(packs)
        empty = {n for (n,) in db.execute("SELECT name FROM packs WHERE dropped IS NULL AND NOT EXISTS "
                                          "(SELECT 1 FROM blobs WHERE blobs.pack = packs.name)")}
        assert not empty, f"{len(empty)} of {len(listed)} packs listed without any blob row"
        rows = {bytes(b) for (b,) in db.execute("SELECT id FROM blobs WHERE damaged=0")}
        lacking = {n: len(ids - rows) for n, ids in packs.items() if ids - rows}
        assert not lacking, f"blobs of pack indexes missing from the catalog: {lacking}"
    finally:
        db.close()


def drop_blob_rows(catalog: Path, every: int, also=()) -> None:
    """Delete the blob rows of every `every`-th pack and of `also`, as the mirrors were found."""
    db = sqlite3.connect(catalog)
    try:
        names = [n for (n,) in db.execute("SELECT name FROM packs WHERE dropped IS NULL ORDER BY name")][::every]
        names = sorted(set(names) | set(also))
        with db:
            db.executemany("DELETE FROM blobs WHERE pack=?", ((n,) for n in names))
        assert names and not db.execute(f"SELECT 1 FROM blobs WHERE pack IN ({','.join('?' * len(names))})",
                                        names).fetchone()
    finally:
        db.close()


def packs_of_file(catalog: Path, path: Path) -> set[str]:
    """The packs that hold a file's data or signature, as the catalog says."""
    db = sqlite3.connect(catalog)
    try:
        pid = 0
        for name in str(path).lstrip("/").split("/"):
            (pid,) = db.execute("SELECT id FROM paths WHERE parent=? AND name=?", (pid, name.encode())).fetchone()
        (ext, sig), = db.execute("SELECT c.extents, c.sig FROM versions v JOIN contents c ON c.id = v.content "
                                 "WHERE v.path=? AND v.died IS NULL", (pid,))
        blobs = [b for b, _, _ in msgpack.unpackb(ext) + msgpack.unpackb(sig) if b is not None]
        return {p for (p,) in db.execute(f"SELECT DISTINCT pack FROM blobs WHERE id IN ({','.join('?' * len(blobs))})",
                                         blobs)}
    finally:
        db.close()


def test_a_server_backup_restores_on_the_machine_that_made_it_and_on_another(env, server, tmp_path, tree):
    extra = tmp_path / "extra"   # a second source, for a file added later
    extra.mkdir()
    (extra / "note.txt").write_bytes(b"first\n")
    login(env, server.url)
    add_server_set(env, "docs", tree, extra)
    first = env.backup_json("docs")
    assert first["files_new"] == 3000 + len(LARGE) + 1 and not first["errors"]
    packs = indexes(server_packs(set_volume(server)))
    assert len(packs) >= 24
    catalog = catalog_file(env.home)
    assert_catalog_holds(catalog, packs)

    env.ironcore("restore", "docs", "--to", tmp_path / "here")
    assert_same_tree(tree, env.restored(tmp_path / "here", tree))

    other = machine(tmp_path, "other")
    login(other, server.url)
    other.ironcore("restore", "docs", "--to", tmp_path / "there", input=b"alice pw\n")
    assert_same_tree(tree, other.restored(tmp_path / "there", tree))
    assert_catalog_holds(catalog_file(other.home), packs)

    # The mirror as it was found: whole packs without blob rows, among them those of
    # large0.bin. A new file that shares 40 MiB of blobs with it sends only its own MiB.
    drop_blob_rows(catalog, every=3, also=packs_of_file(catalog, tree / "large0.bin"))
    with open(tree / "large0.bin", "rb") as f:
        (extra / "prefix.bin").write_bytes(f.read(40 * MiB) + random.Random(5).randbytes(MiB + 333))
    sent_before = metric(server, "ironfs_bytes_in_total")
    second = env.backup_json("docs")
    sent = metric(server, "ironfs_bytes_in_total") - sent_before
    assert second["files_new"] == 1 and second["files_unchanged"] == 3000 + len(LARGE) + 1, second
    assert sent < 3 * MiB, f"the backup after the mend sent {sent} bytes for 1 MiB of new data"
    assert_catalog_holds(catalog, indexes(server_packs(set_volume(server))))

    # and again before a restore
    drop_blob_rows(catalog, every=2, also=packs_of_file(catalog, tree / "large0.bin"))
    env.ironcore("restore", "docs", "--path", str(tree / "large0.bin").lstrip("/"), "--to", tmp_path / "large")
    assert (env.restored(tmp_path / "large", tree) / "large0.bin").read_bytes() == (tree / "large0.bin").read_bytes()
    env.ironcore("restore", "docs", "--path", str(extra).lstrip("/"), "--to", tmp_path / "extra-again")
    assert_same_tree(extra, env.restored(tmp_path / "extra-again", extra))
    assert_catalog_holds(catalog, indexes(server_packs(set_volume(server))))


def test_a_local_volume_restores_on_the_machine_that_made_it_and_mends_itself(env, tmp_path, tree):
    env.add_set("s", tree)
    env.backup_json("s")
    pack_files = [p for p in (env.volume / "packs").glob("*/*") if not p.name.startswith(".tmp-")]
    packs = indexes(pack_files)
    assert len(packs) >= 24
    catalog = env.volume / "catalog.db"
    assert_catalog_holds(catalog, packs)

    drop_blob_rows(catalog, every=3)
    env.ironcore("restore", "s", "--to", tmp_path / "out")
    assert_same_tree(tree, env.restored(tmp_path / "out", tree))
    assert_catalog_holds(catalog, packs)



def test_the_catalog_process_takes_in_no_pack_whose_index_it_cannot_read(tmp_path, monkeypatch):
    """As when it met a pack whose upload had not landed: it gives the commit up,
    and the backup applies it from the log with the pack's blobs."""
    volume = Volume.create(str(tmp_path / "vol"), {"private": b"pw"}, kdf_params=FAST_KDF)
    backup_pid, read_index = os.getpid(), volume.pack_index

    def index_out_of_reach_in_the_process(name):
        if os.getpid() != backup_pid:
            raise MissingData(f"Pack {name} is no longer on the server.")
        return read_index(name)
    monkeypatch.setattr(volume, "pack_index", index_out_of_reach_in_the_process)
    applier = CatalogProcess(volume)   # forks: the process reads indexes through the function above
    try:
        with volume.writer() as writer:
            writer.apply_live(applier)
            write_snapshot(volume, writer, b"x")
    finally:
        applier.close()
        volume.close()
    packs = indexes(Path(p) for p in volume.all_pack_files().values())
    assert packs
    assert_catalog_holds(Path(volume.catalog_path), packs)
