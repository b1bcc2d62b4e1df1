"""Whole files through a real FUSE mount, read the way outside tools read them:
`cat`, `cp -a`, `tar -c | tar -x`, `dd bs=4k` and Python reads of odd sizes,
of files larger than many extents, sizes that are not multiples of 128 KiB,
sparse files and files stored as a delta of their previous version. Every byte
is compared (SHA-256) with the source, and the size the kernel shows must stay
the stored size after the reads."""
import hashlib
import os
import random
import subprocess
from pathlib import Path

import pytest

from conftest import Env, describe_tree
from serverkit import login, server  # noqa: F401 (server is a fixture)
from test_fuse import mount_account, mounted, unmount
from test_remote import add_server_set

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")

KiB, MiB = 1 << 10, 1 << 20


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def rewrite_in_place(path: Path, offset: int, length: int, rnd: random.Random) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(rnd.randbytes(length))


def make_reads_tree(src: Path, rnd: random.Random) -> None:
    """Files of many shapes: below, at and above one blob, many blobs, sparse."""
    (src / "mixed").mkdir(parents=True)
    for i in range(60):
        size = rnd.choice([0, 1, 4095, 4097, 128 * KiB - 1, 128 * KiB + 1, rnd.randint(1, 2 * MiB)])
        (src / "mixed" / f"f{i:03d}.bin").write_bytes(rnd.randbytes(size))
    (src / "big.bin").write_bytes(rnd.randbytes(9 * MiB + 12345))
    (src / "delta.bin").write_bytes(rnd.randbytes(24 * MiB + 777))
    with open(src / "sparse.img", "wb") as f:   # data, hole, data, hole, data at an odd end
        f.write(rnd.randbytes(70_001))
        f.seek(3 * MiB + 5)
        f.write(rnd.randbytes(200_003))
        f.seek(7 * MiB + 333)
        f.write(b"tail")


@pytest.fixture(scope="module")
def local_set(tmp_path_factory):
    """A local set backed up twice: the second run stores delta.bin (1 MiB rewritten
    in its middle) as a delta. Returns (env, source, its tree description)."""
    env = Env(tmp_path_factory.mktemp("reads"))
    src = env.tmp / "src"
    make_reads_tree(src, random.Random(17))
    env.add_set("s", src)
    env.backup_json("s")
    rewrite_in_place(src / "delta.bin", 11 * MiB + 4097, MiB, random.Random(3))
    second = env.backup_json("s")
    assert second["files_changed"] == 1 and second["bytes_stored"] < 3 * MiB, second   # stored as a delta
    return env, src, describe_tree(src)


@pytest.fixture
def mounted_latest(local_set, tmp_path):
    """A fresh `ironcore mount` of the local set: (its copy of the source, the source, the description)."""
    env, src, described = local_set
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env.ironcore("mount", "s", mnt)
    assert mounted(mnt)
    try:
        yield mnt / "s" / "latest" / str(src).lstrip("/"), src, described
    finally:
        unmount(mnt)


def assert_sizes_unchanged(top: Path, src: Path) -> None:
    for dirpath, _, filenames in os.walk(src):
        for name in filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), src)
            assert os.stat(top / rel).st_size == os.stat(src / rel).st_size, rel


def test_cat_of_every_file_gives_its_bytes(mounted_latest, tmp_path):
    top, src, _ = mounted_latest
    out = tmp_path / "out"
    for dirpath, _, filenames in os.walk(src):
        for name in filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), src)
            with open(out, "wb") as f:
                subprocess.run(["cat", top / rel], stdout=f, check=True)
            assert sha256_file(out) == sha256_file(src / rel), rel
    assert_sizes_unchanged(top, src)


def test_cp_and_tar_copy_the_tree_whole(mounted_latest, tmp_path):
    top, src, described = mounted_latest
    subprocess.run(["cp", "-a", top, tmp_path / "cp"], check=True)
    assert describe_tree(tmp_path / "cp") == described
    (tmp_path / "tar").mkdir()
    subprocess.run(f"tar -C '{top}' --format=posix -cf - . | tar -C '{tmp_path / 'tar'}' -xpf -", shell=True, check=True)
    assert describe_tree(tmp_path / "tar") == described
    assert_sizes_unchanged(top, src)


def test_dd_in_4k_blocks_and_odd_sized_reads(mounted_latest, tmp_path):
    top, src, _ = mounted_latest
    for name in ("delta.bin", "big.bin", "sparse.img"):
        subprocess.run(["dd", f"if={top / name}", f"of={tmp_path / name}", "bs=4k", "status=none"], check=True)
        assert sha256_file(tmp_path / name) == sha256_file(src / name), name
    rnd = random.Random(8)
    for name in ("delta.bin", "big.bin", "sparse.img", "mixed/f007.bin"):
        want = (src / name).read_bytes()
        for size in (4095, 4097, 12289, 131071, 333333) + ((1,) if len(want) < MiB else ()):
            with open(top / name, "rb", buffering=0) as f:
                got = bytearray()
                while chunk := f.read(size):
                    assert len(chunk) == size or len(got) + len(chunk) == len(want), (name, size, len(got))
                    got += chunk
            assert hashlib.sha256(got).digest() == hashlib.sha256(want).digest(), (name, size)
        fd = os.open(top / name, os.O_RDONLY)
        try:   # random ranges, those across the rewritten MiB of delta.bin included
            for _ in range(100):
                off, size = rnd.randrange(len(want) + 1), rnd.randrange(1, 3 * MiB)
                assert os.pread(fd, size, off) == want[off:off + size], (name, off, size)
        finally:
            os.close(fd)
    assert_sizes_unchanged(top, src)


def test_the_older_version_of_a_delta_file_reads_whole_too(local_set, tmp_path):
    env, src, _ = local_set
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env.ironcore("mount", "s", mnt)
    try:
        first = sorted(os.listdir(mnt / "s" / "snapshots"))[0]
        old = mnt / "s" / "snapshots" / first / str(src).lstrip("/") / "delta.bin"
        current = (src / "delta.bin").read_bytes()
        with open(tmp_path / "old", "wb") as f:
            subprocess.run(["cat", old], stdout=f, check=True)
        got = (tmp_path / "old").read_bytes()
        assert len(got) == len(current) == os.stat(old).st_size
        assert got[:11 * MiB + 4097] == current[:11 * MiB + 4097]
        assert got[12 * MiB + 4097:] == current[12 * MiB + 4097:]
        assert got[11 * MiB + 4097:12 * MiB + 4097] != current[11 * MiB + 4097:12 * MiB + 4097]
    finally:
        unmount(mnt)


def test_server_sets_read_whole_through_ironfs_and_ironcore_mounts(env, server, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rnd = random.Random(23)
    (src / "delta.bin").write_bytes(rnd.randbytes(16 * MiB + 4321))
    (src / "big.bin").write_bytes(rnd.randbytes(5 * MiB + 1))
    login(env, server.url)
    add_server_set(env, "docs", src)
    env.backup_json("docs")
    rewrite_in_place(src / "delta.bin", 7 * MiB + 999, MiB, rnd)
    assert env.backup_json("docs")["bytes_stored"] < 3 * MiB   # stored as a delta
    for how in ("ironfs", "ironcore"):
        mnt = tmp_path / f"mnt-{how}"
        if how == "ironfs":
            mount_account(env, server, mnt)
        else:
            mnt.mkdir()
            env.ironcore("mount", "docs", mnt)
        try:
            top = mnt / "docs" / "latest" / str(src).lstrip("/")
            for name in ("delta.bin", "big.bin"):
                with open(tmp_path / "out", "wb") as f:
                    subprocess.run(["cat", top / name], stdout=f, check=True)
                assert sha256_file(tmp_path / "out") == sha256_file(src / name), (how, name)
                assert os.stat(top / name).st_size == os.stat(src / name).st_size, (how, name)
        finally:
            unmount(mnt)
