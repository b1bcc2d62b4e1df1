"""`ironfs mount`: an account's snapshots as a real FUSE mount (the tests run as
root with /dev/fuse): contents and metadata as stored, read-only everywhere,
new snapshots without remounting, and clean ends on SIGTERM and SIGKILL."""
import errno
import filecmp
import mmap
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import BIN
from serverkit import login, server  # noqa: F401 (server is a fixture)
from test_remote import ALICE_PW, add_server_set, make_tree, private_key_set

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")


def mounted(path) -> bool:
    return os.path.ismount(path)


def unmount(path) -> None:
    if mounted(path):
        subprocess.run(["fusermount3", "-u", str(path)], check=False)
    if mounted(path):
        subprocess.run(["umount", "-l", str(path)], check=False)


def wait_until(predicate, seconds=15) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def account_with_snapshots(env, server, tmp_path):
    """Two snapshots of a mixed tree with an xattr, and a copy of the source at each."""
    src = tmp_path / "src"
    make_tree(src, random.Random(11))
    os.setxattr(src / "docs" / "note002.txt", "user.comment", b"kept with the file")
    login(env, server.url)
    add_server_set(env, "docs", src)
    env.backup_json("docs")
    copies = {1: tmp_path / "copy1"}
    shutil.copytree(src, copies[1], symlinks=True)
    (src / "docs" / "note003.txt").write_bytes(b"second version\n" * 100)
    (src / "docs" / "note004.txt").unlink()
    (src / "new.txt").write_bytes(os.urandom(300_000))
    env.backup_json("docs")
    copies[2] = tmp_path / "copy2"
    shutil.copytree(src, copies[2], symlinks=True)
    return src, copies


def mount_account(env, server, mnt, *extra):
    mnt.mkdir(exist_ok=True)
    env.ironfs("mount", "alice", mnt, "--data-root", server.root, "--password-stdin", *extra, input=ALICE_PW)
    assert mounted(mnt)


def test_snapshots_read_back_identical_with_their_metadata(env, server, tmp_path, account_with_snapshots):
    src, copies = account_with_snapshots
    mnt = tmp_path / "mnt"
    mount_account(env, server, mnt)
    try:
        snaps = sorted(os.listdir(mnt / "docs" / "snapshots"))
        assert len(snaps) == 2
        assert os.readlink(mnt / "docs" / "latest") == f"snapshots/{snaps[-1]}"
        for number, name in enumerate(snaps, 1):
            top = mnt / "docs" / "snapshots" / name / str(src).lstrip("/")
            copy = copies[number]
            seen = 0
            for dirpath, dirnames, filenames in os.walk(copy):
                rel = os.path.relpath(dirpath, copy)
                assert sorted(os.listdir(top / rel)) == sorted(dirnames + filenames), rel
                for f in filenames:
                    a, b = os.path.join(dirpath, f), top / rel / f
                    sa, sb = os.lstat(a), os.lstat(b)
                    assert (sa.st_mode, sa.st_size, sa.st_uid, sa.st_gid) == (sb.st_mode, sb.st_size, sb.st_uid,
                                                                               sb.st_gid), b
                    assert sa.st_mtime_ns == sb.st_mtime_ns, b
                    if os.path.islink(a):
                        assert os.readlink(a) == os.readlink(b)
                    else:
                        assert filecmp.cmp(a, b, shallow=False), b
                        seen += 1
            assert seen > 100
        latest = mnt / "docs" / "latest" / str(src).lstrip("/")
        assert os.getxattr(latest / "docs" / "note002.txt", "user.comment") == b"kept with the file"
        # reads at random offsets and sizes match the source
        rnd = random.Random(5)
        data = (src / "big.bin").read_bytes()
        fd = os.open(latest / "big.bin", os.O_RDONLY)
        try:
            for _ in range(200):
                off, size = rnd.randrange(len(data)), rnd.randrange(1, 300_000)
                assert os.pread(fd, size, off) == data[off:off + size]
        finally:
            os.close(fd)
        # the tools show the same
        out = subprocess.run(["ls", "-l", latest / "docs" / "note001.txt"], capture_output=True, text=True).stdout
        assert out.startswith("-rw-------")
        found = subprocess.run(["find", latest, "-type", "f"], capture_output=True, text=True).stdout.split()
        assert len(found) == sum(len(f) for _, _, f in os.walk(copies[2])) - 1   # the symlink is not -type f
        assert subprocess.run(["getfattr", "-n", "user.comment", latest / "docs" / "note002.txt"],
                              capture_output=True, text=True).stdout.count("kept with the file") == 1
        assert os.statvfs(mnt).f_namemax == 255
    finally:
        unmount(mnt)
    assert not mounted(mnt)


def test_every_write_is_refused_read_only(env, server, tmp_path, account_with_snapshots):
    src, _ = account_with_snapshots
    mnt = tmp_path / "mnt"
    mount_account(env, server, mnt)
    top = mnt / "docs" / "latest" / str(src).lstrip("/")
    attempts = [
        lambda: open(top / "docs" / "note000.txt", "r+b"),
        lambda: open(top / "docs" / "note000.txt", "ab"),
        lambda: os.open(top / "docs" / "note000.txt", os.O_RDONLY | os.O_TRUNC),
        lambda: open(top / "created.txt", "wb"),
        lambda: os.mkdir(top / "newdir"),
        lambda: os.unlink(top / "docs" / "note000.txt"),
        lambda: os.rmdir(top / "docs" / "deep"),
        lambda: os.rename(top / "docs" / "note000.txt", top / "moved.txt"),
        lambda: os.chmod(top / "docs" / "note000.txt", 0o777),
        lambda: os.truncate(top / "docs" / "note000.txt", 0),
        lambda: os.setxattr(top / "docs" / "note000.txt", "user.x", b"1"),
        lambda: os.link(top / "docs" / "note000.txt", top / "hard"),
        lambda: os.symlink("x", top / "sym"),
    ]
    try:
        for attempt in attempts:
            with pytest.raises(OSError) as caught:
                attempt()
            assert caught.value.errno == errno.EROFS, caught.value
        assert filecmp.cmp(top / "docs" / "note000.txt", src / "docs" / "note000.txt", shallow=False)
    finally:
        unmount(mnt)


def test_a_new_snapshot_appears_without_remounting(env, server, tmp_path, account_with_snapshots):
    src, _ = account_with_snapshots
    mnt = tmp_path / "mnt"
    mount_account(env, server, mnt)
    try:
        (src / "third.txt").write_bytes(b"third snapshot\n")
        env.backup_json("docs")
        assert wait_until(lambda: len(os.listdir(mnt / "docs" / "snapshots")) == 3)
        assert wait_until(lambda: (mnt / "docs" / "latest" / str(src).lstrip("/") / "third.txt").exists())
    finally:
        unmount(mnt)


def test_sigterm_unmounts_and_a_killed_mount_can_be_cleaned(env, server, tmp_path, account_with_snapshots):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        proc = subprocess.Popen([BIN / "ironfs", "mount", "alice", mnt, "--data-root", server.root, "--foreground",
                                 "--password-stdin"], stdin=subprocess.PIPE, env=env.env)
        proc.stdin.write(ALICE_PW)
        proc.stdin.close()
        assert wait_until(lambda: mounted(mnt))
        os.listdir(mnt / "docs")
        proc.send_signal(sig)
        proc.wait(timeout=20)
        if sig == signal.SIGTERM:
            assert proc.returncode == 0 and not mounted(mnt)
        else:
            with pytest.raises(OSError):   # the dead mount answers ENOTCONN until cleaned
                os.listdir(mnt)
            unmount(mnt)
            assert not mounted(mnt) and os.listdir(mnt) == []


def test_without_a_secret_names_and_sizes_show_but_contents_do_not(env, server, tmp_path, account_with_snapshots):
    src, _ = account_with_snapshots
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    no_secret = {k: v for k, v in env.env.items() if k != "IRONFS_PASSWORD"}
    env.run("ironfs", "mount", "alice", mnt, "--data-root", server.root, env=no_secret)
    try:
        note = mnt / "docs" / "latest" / str(src).lstrip("/") / "docs" / "note000.txt"
        assert note.stat().st_size == (src / "docs" / "note000.txt").stat().st_size
        with pytest.raises(PermissionError):
            note.read_bytes()
    finally:
        unmount(mnt)


def test_stored_permissions_hold_for_other_users_and_odirect_reads_work(env, server, tmp_path,
                                                                         account_with_snapshots):
    src, _ = account_with_snapshots
    mnt = Path(tempfile.mkdtemp(prefix="ironcore-mnt-"))   # outside pytest's 0700 folders
    os.chmod(mnt, 0o755)
    mount_account(env, server, mnt, "--allow-other")
    try:
        latest = mnt / "docs" / "latest"
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        assert subprocess.run([*as_nobody, "ls", latest], capture_output=True).returncode == 0
        # the stored tree starts in pytest's 0700 folders: another user may not enter them
        denied = subprocess.run([*as_nobody, "ls", latest / str(src).lstrip("/")], capture_output=True, text=True)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
        # O_DIRECT reads (aligned buffer) work and match
        path = latest / str(src).lstrip("/") / "big.bin"
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        try:
            buf = mmap.mmap(-1, 1 << 16)
            assert os.preadv(fd, [buf], 1 << 16) == 1 << 16
            assert bytes(buf) == (src / "big.bin").read_bytes()[1 << 16:2 << 16]
        finally:
            os.close(fd)
    finally:
        unmount(mnt)
        mnt.rmdir()


def test_a_damaged_pack_fails_only_the_reads_it_touches(env, server, tmp_path, account_with_snapshots):
    src, _ = account_with_snapshots
    packs = sorted((server.root / "accounts" / "alice" / "docs" / "volume" / "packs").glob("*/*"),
                   key=lambda p: p.stat().st_size)
    with open(packs[-1], "r+b") as f:   # the biggest pack: one byte in the middle of its blobs
        f.seek(packs[-1].stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    mnt = tmp_path / "mnt"
    mount_account(env, server, mnt)
    try:
        top = mnt / "docs" / "latest" / str(src).lstrip("/")
        failed, read = [], 0
        for dirpath, _, filenames in os.walk(top):
            for name in filenames:
                p = os.path.join(dirpath, name)
                if os.path.islink(p):
                    continue
                try:
                    with open(p, "rb") as f:
                        f.read()
                    read += 1
                except OSError as exc:
                    assert exc.errno == errno.EIO, exc
                    failed.append(p)
        assert failed and read > 100
        assert os.listdir(top)   # still mounted and answering
    finally:
        unmount(mnt)


def test_ironcore_mount_decrypts_on_the_client_for_a_private_key_set(env, server, tmp_path):
    src, _ = private_key_set(env, server, tmp_path, "vault", 12)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env.ironcore("mount", "vault", mnt)
    try:
        top = mnt / "vault" / "latest" / str(src).lstrip("/")
        assert filecmp.cmp(top / "big.bin", src / "big.bin", shallow=False)
        assert os.readlink(top / "link") == os.readlink(src / "link")
        (src / "later.txt").write_bytes(b"a later snapshot\n")
        env.backup_json("vault")
        assert wait_until(lambda: (mnt / "vault" / "latest" / str(src).lstrip("/") / "later.txt").exists())
    finally:
        unmount(mnt)


def test_listing_a_folder_of_100000_files_keeps_the_mount_small(env, server, tmp_path):
    many = tmp_path / "src" / "many"
    many.mkdir(parents=True)
    for i in range(100_000):
        (many / f"f{i:06d}").write_bytes(b"")
    login(env, server.url)
    add_server_set(env, "docs", tmp_path / "src")
    env.backup_json("docs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen([BIN / "ironfs", "mount", "alice", mnt, "--data-root", server.root, "--foreground"],
                            env={k: v for k, v in env.env.items() if k != "IRONFS_PASSWORD"})
    try:
        assert wait_until(lambda: mounted(mnt))
        folder = mnt / "docs" / "latest" / str(many).lstrip("/")
        names = os.listdir(folder)
        assert len(names) == 100_000 and len(set(names)) == 100_000
        assert sum(1 for _ in os.scandir(folder)) == 100_000   # and again, from a fresh opendir
        with open(f"/proc/{proc.pid}/status") as f:
            peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024
        assert peak < 200 << 20, f"the mount process peaked at {peak >> 20} MiB"
    finally:
        unmount(mnt)
        proc.wait(timeout=20)
