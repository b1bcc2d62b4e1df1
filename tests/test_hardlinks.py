"""Hard links, end to end with the real programs: files linked together in the
source are backed up once and come back linked (as `rsync -H` and restic do)
from `ironcore restore`, from `ironcore decrypt` of an export, through a FUSE
mount (one inode number and the right link count per group) and over WebDAV;
an incremental after links were added and removed restores each snapshot
with its own structure, and an unchanged tree records no new versions."""
import hashlib
import json
import os
import random
import shutil
import sqlite3
import ssl
import stat
import subprocess
from collections import defaultdict
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from conftest import assert_same_tree
from serverkit import login, server  # noqa: F401 (server is a fixture)
from test_fuse import unmount
from test_remote import ALICE_PW, add_server_set, machine, set_volume

MiB = 1 << 20


def linked_tree(top: Path, rnd: random.Random) -> Path:
    """`top/src`, with groups of hard links across folders (one of 3 links to a file
    written in parts on restore, one of 4 in one folder, one whose first link is
    in a parent folder of the other), a group with one link outside the source and
    one with only one link inside, an empty file linked, and a copy of a linked
    file that is not linked (same bytes, its own inode). `top/outside` holds the
    links the backup does not see."""
    src, outside = top / "src", top / "outside"
    for folder in ("a/zz", "b/c", "d"):
        (src / folder).mkdir(parents=True)
    outside.mkdir()
    for i in range(40):
        (src / "d" / f"plain{i:02d}").write_bytes(rnd.randbytes(rnd.randint(0, 9000)))

    def group(first: str, data: bytes, *others: str) -> None:
        (top / first).write_bytes(data)
        for other in others:
            os.link(top / first, top / other)

    pair = rnd.randbytes(70_001)
    group("src/a/pair", pair, "src/b/pair-link")
    (src / "d" / "pair-copy").write_bytes(pair)
    group("src/b/c/big", rnd.randbytes(5 * MiB + 12_345), "src/a/big-1", "src/big-top")
    group("src/d/m1", rnd.randbytes(301_017), "src/d/m2", "src/d/m3", "src/d/m4")
    group("src/a/aa", rnd.randbytes(4 * MiB + 777), "src/a/zz/aa-link")
    group("src/b/twin", rnd.randbytes(13_331), "src/b/c/twin", "src/d/twin")
    group("outside/shared", rnd.randbytes(9_999), "src/a/shared-in", "src/b/c/shared-in")
    group("outside/lone", rnd.randbytes(2_048), "src/d/lone-in")
    group("src/a/empty", b"", "src/b/empty-link")
    return src


def link_groups(root: Path) -> dict[str, tuple[int, frozenset]]:
    """Every regular file below root -> (its st_nlink, the paths below root that share its inode)."""
    by_inode, seen = defaultdict(set), {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                rel = os.path.relpath(path, root)
                by_inode[(st.st_dev, st.st_ino)].add(rel)
                seen[rel] = (st.st_nlink, (st.st_dev, st.st_ino))
    return {rel: (nlink, frozenset(by_inode[key])) for rel, (nlink, key) in seen.items()}


def assert_restored_linked(source: Path, restored: Path) -> None:
    """Same content and metadata, and the same hard-link groups within the tree, each
    restored file's link count being the size of its group there (links outside
    the source are not restored)."""
    assert_same_tree(source, restored)
    want = {rel: members for rel, (_, members) in link_groups(source).items()}
    got = link_groups(restored)
    assert {rel: members for rel, (_, members) in got.items()} == want
    for rel, (nlink, members) in got.items():
        assert nlink == len(members), (rel, nlink, sorted(members))


def copy_with_links(src: Path, dest: Path) -> Path:
    """What a restore of `src` should give: `cp -a` keeps the links inside the copy."""
    subprocess.run(["cp", "-a", str(src), str(dest)], check=True)
    return dest


def assert_stored_once(catalog_db: Path, *trees: Path) -> None:
    """The volume holds each distinct file content once: its data blobs add up to the
    distinct contents of the trees, whatever the number of links."""
    sizes = {}
    for tree in trees:
        for dirpath, _, files in os.walk(tree):
            for name in files:
                path = os.path.join(dirpath, name)
                if stat.S_ISREG(os.lstat(path).st_mode):
                    with open(path, "rb") as f:
                        data = f.read()
                    sizes[hashlib.sha256(data).digest()] = len(data)
    db = sqlite3.connect(catalog_db)
    try:
        stored = db.execute("SELECT count(*), sum(raw_length) FROM blobs WHERE type = 0").fetchone()
        contents = db.execute("SELECT count(*) FROM contents").fetchone()[0]
    finally:
        db.close()
    assert stored[1] == sum(sizes.values()), (stored, sum(sizes.values()))
    assert contents == len(sizes)


def change_links(src: Path, rnd: random.Random) -> None:
    """A link added to a group and one removed from another, a pair broken into a
    lone file, a plain file given a second name, and a linked file rewritten in
    place (through one link: every link sees it)."""
    os.link(src / "d" / "m1", src / "b" / "m5")
    os.unlink(src / "big-top")
    os.unlink(src / "b" / "pair-link")
    os.link(src / "d" / "plain07", src / "a" / "plain07-link")
    with open(src / "b" / "c" / "shared-in", "r+b") as f:
        f.seek(1234)
        f.write(rnd.randbytes(500))


def files_born(catalog_db: Path, seq: int, src: Path) -> set[str]:
    """Paths below src of the file versions recorded by snapshot `seq`."""
    from ironfs.format.catalog import Catalog
    catalog = Catalog(str(catalog_db))
    try:
        pids = [r[0] for r in catalog.db.execute("SELECT path FROM versions WHERE kind = 'f' AND born = ?", (seq,))]
        return {os.path.relpath(os.fsdecode(catalog.full_path(pid)), str(src).lstrip("/")) for pid in pids}
    finally:
        catalog.close()


def file_versions(catalog_db: Path) -> int:
    """Versions of files recorded so far (folders above the source change with the test's own folder)."""
    db = sqlite3.connect(catalog_db)
    try:
        return db.execute("SELECT count(*) FROM versions WHERE kind = 'f'").fetchone()[0]
    finally:
        db.close()


def test_local_set_restores_links_across_incrementals(env, tmp_path):
    src = linked_tree(tmp_path, random.Random(41))
    assert os.stat(src / "a" / "shared-in").st_nlink == 3 and os.stat(src / "d" / "lone-in").st_nlink == 2
    env.add_set("s", src)
    assert not env.backup_json()["errors"]
    copy1 = copy_with_links(src, tmp_path / "copy1")
    assert_stored_once(env.volume / "catalog.db", src)

    out = tmp_path / "out1"
    env.ironcore("restore", "s", "--to", out)
    assert_restored_linked(copy1, env.restored(out, src))

    rnd = random.Random(42)
    change_links(src, rnd)
    assert env.backup_json()["snapshot"] == 2
    # new versions only where a file changed, gained or lost its group: the other
    # links of the groups that changed kept theirs
    assert files_born(env.volume / "catalog.db", 2, src) == {"b/m5", "a/plain07-link", "d/plain07", "a/pair",
                                                              "a/shared-in", "b/c/shared-in"}
    copy2 = copy_with_links(src, tmp_path / "copy2")
    for snapshot, copy in (("latest", copy2), ("1", copy1)):
        out = tmp_path / f"out-{snapshot}"
        env.ironcore("restore", "s", "--snapshot", snapshot, "--to", out)
        assert_restored_linked(copy, env.restored(out, src))
    assert_stored_once(env.volume / "catalog.db", copy1, copy2)

    # nothing changed: no file is read and no version recorded (each link kept its group)
    before = file_versions(env.volume / "catalog.db")
    third = env.backup_json()
    assert (third["files_new"], third["files_changed"], third["bytes_read"]) == (0, 0, 0), third
    assert file_versions(env.volume / "catalog.db") == before

    # a part of the tree: the links inside it are linked, a lone link is a plain file
    part = tmp_path / "part"
    env.ironcore("restore", "s", "--path", str(src / "b").lstrip("/"), "--to", part)
    assert_restored_linked(copy2 / "b", env.restored(part, src / "b"))
    one = tmp_path / "one"
    env.ironcore("restore", "s", "--path", str(src / "d" / "m2").lstrip("/"), "--to", one)
    alone = os.stat(env.restored(one, src / "d" / "m2"))
    assert alone.st_nlink == 1 and alone.st_size == 301_017
    assert (env.restored(one, src / "d" / "m2")).read_bytes() == (src / "d" / "m1").read_bytes()

    # a restore over an earlier restore of the same snapshot replaces its files with
    # links, also where symlinks to a file outside the target were put in their place
    over = env.restored(tmp_path / "out-latest", src)
    victim = tmp_path / "victim"
    victim.write_bytes(b"not to be touched")
    for rel in ("b/m5", "d/m3", "b/c/big"):
        (over / rel).unlink()
        os.symlink(victim, over / rel)
    env.ironcore("restore", "s", "--to", tmp_path / "out-latest")
    assert_restored_linked(copy2, over)
    assert victim.read_bytes() == b"not to be touched" and os.stat(victim).st_nlink == 1

    # `ironcore mount` of the local set shows the same groups
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env.ironcore("mount", "s", mnt)
    try:
        assert_mount_shows_links(mnt / "s" / "latest" / str(src).lstrip("/"), copy2)
    finally:
        unmount(mnt)


def stat_tool(paths: list[Path]) -> dict[Path, tuple[int, int]]:
    """path -> (inode, link count), as coreutils `stat` sees them."""
    out = subprocess.run(["stat", "-c", "%i %h", *map(str, paths)], capture_output=True, text=True, check=True)
    return {p: tuple(map(int, line.split())) for p, line in zip(paths, out.stdout.splitlines())}


def assert_mount_shows_links(top: Path, copy: Path) -> None:
    """Through the mount, the links of a group have one inode number and their group's
    count, other files their own inode and a count of 1; sizes are right, and files
    of one blob read back whole with `cat` (longer reads are the read path's own tests)."""
    groups = link_groups(copy)
    seen = stat_tool([top / rel for rel in sorted(groups)])
    by_inode = defaultdict(set)
    for rel in groups:
        inode, nlink = seen[top / rel]
        by_inode[inode].add(rel)
        assert nlink == len(groups[rel][1]), (rel, nlink)
    assert sorted(map(sorted, by_inode.values())) == sorted(map(sorted, {g for _, g in groups.values()}))
    for rel in groups:
        assert os.stat(top / rel).st_size == os.stat(copy / rel).st_size, rel
        if os.stat(copy / rel).st_size <= 128 * 1024:
            shown = subprocess.run(["cat", str(top / rel)], capture_output=True, check=True).stdout
            assert shown == (copy / rel).read_bytes(), rel


def test_server_set_restore_decrypt_mount_and_webdav_agree(env, server, tmp_path):
    src = linked_tree(tmp_path, random.Random(43))
    login(env, server.url)
    add_server_set(env, "docs", src)
    env.backup_json("docs")
    copy1 = copy_with_links(src, tmp_path / "copy1")
    change_links(src, random.Random(44))
    env.backup_json("docs")
    copy2 = copy_with_links(src, tmp_path / "copy2")
    assert_stored_once(set_volume(server) / "catalog.db", copy1, copy2)

    out = tmp_path / "restored"
    env.ironcore("restore", "docs", "--to", out)
    assert_restored_linked(copy2, env.restored(out, src))

    export = tmp_path / "disk" / "docs"
    env.ironfs("export", "alice", "docs", export, "--data-root", server.root)
    other = machine(tmp_path, "laptop2")
    for snapshot, copy in (("latest", copy2), ("1", copy1)):
        out = tmp_path / f"decrypted-{snapshot}"
        other.ironcore("decrypt", export, "--to", out, "--snapshot", snapshot, "--password-stdin", input=ALICE_PW)
        assert_restored_linked(copy, other.restored(out, src))

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env.ironfs("mount", "alice", mnt, "--data-root", server.root, "--password-stdin", input=ALICE_PW)
    try:
        snaps = sorted(os.listdir(mnt / "docs" / "snapshots"))
        assert len(snaps) == 2
        for name, copy in zip(snaps, (copy1, copy2)):
            assert_mount_shows_links(mnt / "docs" / "snapshots" / name / str(src).lstrip("/"), copy)
    finally:
        unmount(mnt)

    ctx = ssl.create_default_context(cafile=str(server.root / "tls" / "cert.pem"))
    ctx.check_hostname = False
    with httpx.Client(base_url=server.url, verify=ctx, auth=("alice", "alice pw"), timeout=30) as dav:
        base = "/dav/docs/latest/" + quote(str(src).lstrip("/"))
        for members in ({"b/c/big", "a/big-1"}, {"d/m1", "d/m2", "d/m3", "d/m4", "b/m5"}):
            answers = [dav.get(f"{base}/{rel}") for rel in sorted(members)]
            assert all(r.status_code == 200 for r in answers)
            assert {r.content for r in answers} == {(copy2 / sorted(members)[0]).read_bytes()}
            assert len({r.headers["etag"] for r in answers}) == 1


def test_a_catalog_from_before_link_groups_upgrades_and_verifies(env, tmp_path):
    """A volume made before link groups existed: its catalog and the client's file
    cache have no `link` column (made here by dropping them: the commits of such
    a volume are what a tree without links gives today). It opens, verifies clean
    against a rebuild, and the next backups record the links made since."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        (src / f"f{i}").write_bytes(random.Random(i).randbytes(3000 + i))
    env.add_set("s", src)
    env.backup_json()
    db = sqlite3.connect(env.volume / "catalog.db")
    db.execute("DROP INDEX versions_link")
    db.execute("ALTER TABLE versions DROP COLUMN link")
    db.commit()
    db.close()
    (cache,) = (env.home / "cache").glob("*.db")
    db = sqlite3.connect(cache)
    db.execute("ALTER TABLE entries DROP COLUMN link")
    db.commit()
    db.close()
    env.ironfs("verify", env.volume)
    assert env.backup_json()["files_unchanged"] == 12
    os.link(src / "f3", src / "f3-link")
    os.link(src / "f3", src / "f3-again")
    env.backup_json()
    env.ironfs("verify", env.volume)
    out = tmp_path / "out"
    env.ironcore("restore", "s", "--to", out)
    assert_restored_linked(copy_with_links(src, tmp_path / "copy"), env.restored(out, src))


@pytest.mark.parametrize("kind, group", [("f", "7"), ("f", 0), ("f", -3), ("f", True), ("f", 1 << 63),
                                         ("l", 7)])
def test_a_commit_with_a_bad_link_group_is_refused_whole(tmp_path, kind, group):
    """A link group that is not a file's number in 1 .. 2^63-1 never enters the log,
    and a catalog refuses the commit whole if a log holds one (a tampered copy)."""
    from ironfs.errors import CorruptData
    from ironfs.format.catalog import Catalog
    from ironfs.format.volume import Volume
    volume = Volume.create(str(tmp_path / "vol"), {"private": b"pw"},
                           kdf_params={"alg": "argon2id", "time_cost": 1, "memory_cost": 1024, "parallelism": 1})
    try:
        rec = {"t": "ver", "p": b"x", "k": kind, "mode": 0o644, "mtime_ns": 1, "size": 0, "h": group}
        if kind == "l":
            rec["target"] = b"elsewhere"
        with volume.writer() as w:
            commit = w.start_commit("snapshot", sources=["/crafted"], set="x")
            with pytest.raises(CorruptData, match="link group"):
                commit.add(rec)
            commit.abort()
        assert volume.seqs() == []
    finally:
        volume.close()
    catalog = Catalog(str(tmp_path / "other.db"))
    try:
        header = {"t": "commit", "format": 1, "seq": 1, "kind": "snapshot", "time_ns": 1, "host": "h"}
        with pytest.raises(CorruptData, match="link group"):
            catalog.apply(1, [header, dict(rec, p=b"y", h=5, k="f"), rec], lambda name: [])
        assert catalog.applied_seq == 0
        assert catalog.db.execute("SELECT count(*) FROM versions").fetchone()[0] == 0
    finally:
        catalog.close()
