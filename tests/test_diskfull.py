"""A full destination fails the backup cleanly: a plain message, earlier snapshots
intact, no unfinished files, the failed run's space given back, and the next
backup (once there is room) succeeds."""
import os
import subprocess
import time

import pytest

from conftest import assert_same_tree

MiB = 1 << 20


def free_bytes(path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def unmount(mnt) -> None:
    deadline = time.monotonic() + 30
    while subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
            return
        time.sleep(0.2)


@pytest.fixture
def small_destination(env):
    """The set's volume folder is a 24 MiB tmpfs."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs as the full destination needs root")
    mnt = env.volume
    mnt.mkdir(parents=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): "
                    f"{proc.stderr.decode(errors='replace').strip()}")
    try:
        yield mnt
    finally:
        unmount(mnt)


def test_full_destination_fails_cleanly_and_gives_space_back(env, tmp_path, small_destination):
    mnt = small_destination
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    (src / "a.bin").write_bytes(os.urandom(MiB))
    (src / "b.bin").write_bytes(os.urandom(MiB))
    for i in range(20):
        (src / "docs" / f"d{i}.txt").write_bytes(os.urandom(i * 300))
    env.add_set("s", src)
    assert env.backup_json()["snapshot"] == 1
    snap1 = tmp_path / "snap1"
    subprocess.run(["cp", "-a", str(src), str(snap1)], check=True, timeout=60)

    extra = src / "extra"
    extra.mkdir()
    for i in range(4):
        (extra / f"x{i}.bin").write_bytes(os.urandom(10 * MiB))
    free_before = free_bytes(mnt)
    assert free_before < 40 * MiB

    proc = env.ironcore("backup", "s", check=False)
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode != 0, proc.stdout.decode(errors="replace")
    assert "Traceback" not in err, err
    assert "destination is full" in err.lower(), err

    leftovers = [str(p) for p in mnt.rglob(".tmp-*")]
    assert leftovers == [], leftovers
    free_after = free_bytes(mnt)
    assert abs(free_after - free_before) <= MiB, \
        f"the failed run kept {(free_before - free_after) / MiB:.1f} MiB of the destination"

    proc = env.ironfs("verify", mnt, check=False)
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0 and "not referenced" not in out, out + proc.stderr.decode(errors="replace")
    target = tmp_path / "r1"
    env.ironcore("restore", "s", "--snapshot", 1, "--to", target)
    assert_same_tree(snap1, env.restored(target, src))

    subprocess.run(["rm", "-rf", str(extra)], check=True, timeout=60)
    report = env.backup_json()
    assert report["snapshot"] == 2
    target = tmp_path / "r2"
    env.ironcore("restore", "s", "--snapshot", 2, "--to", target)
    assert_same_tree(src, env.restored(target, src))
    proc = env.ironfs("verify", "--read-data", mnt, check=False)
    assert proc.returncode == 0, proc.stdout.decode(errors="replace")
