"""Stored POSIX ACLs hold through a mount with --allow-other: a real second unix
user (made here, removed after) reads through the mount with `setpriv`, and an
ACL entry that denies it, or grants it more than the mode bits, is obeyed."""
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from test_fuse import mounted, unmount

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse"),
    pytest.mark.skipif(os.geteuid() != 0, reason="makes a unix user: needs root"),
    pytest.mark.skipif(not all(shutil.which(t) for t in ("useradd", "userdel", "setfacl", "setpriv")),
                       reason="needs useradd, userdel, setfacl and setpriv"),
]


@pytest.fixture
def other_user():
    """A new unix user with no home and no login: (name, uid)."""
    name = f"ironacl{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--no-create-home", "--no-user-group", "--shell", "/usr/sbin/nologin", name],
                   check=True)
    try:
        yield name, pwd.getpwnam(name).pw_uid
    finally:
        subprocess.run(["userdel", name], check=False)


@pytest.fixture
def world_dir():
    """A folder outside pytest's 0700 ones, so another user can walk to what is inside."""
    path = Path(tempfile.mkdtemp(prefix="ironcore-acl-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        for sub in path.iterdir():
            if os.path.ismount(sub):
                unmount(sub)
        shutil.rmtree(path)


def test_acl_entries_are_enforced_for_other_users(env, world_dir, other_user):
    name, uid = other_user
    src = world_dir / "src"
    (src / "closed").mkdir(parents=True)
    os.chmod(src, 0o755)
    os.chmod(src / "closed", 0o755)
    (src / "open.txt").write_bytes(b"anyone may read this\n")
    (src / "denied.txt").write_bytes(b"everyone but one user\n")
    (src / "granted.txt").write_bytes(b"the owner and one named user\n")
    (src / "closed" / "inside.txt").write_bytes(b"behind a denied folder\n")
    for f in ("open.txt", "denied.txt", "closed/inside.txt"):
        os.chmod(src / f, 0o644)
    os.chmod(src / "granted.txt", 0o600)
    subprocess.run(["setfacl", "-m", f"u:{name}:---", src / "denied.txt", src / "closed"], check=True)
    subprocess.run(["setfacl", "-m", f"u:{name}:r", src / "granted.txt"], check=True)
    env.add_set("s", src)
    env.backup_json("s")
    mnt = world_dir / "mnt"
    mnt.mkdir(mode=0o755)
    env.ironcore("mount", "s", mnt, "--allow-other")
    assert mounted(mnt)
    top = mnt / "s" / "latest" / str(src).lstrip("/")
    as_other = ["setpriv", f"--reuid={uid}", "--regid=65534", "--clear-groups"]

    def cat(path) -> subprocess.CompletedProcess:
        return subprocess.run([*as_other, "cat", path], capture_output=True, timeout=60)

    try:
        assert cat(top / "open.txt").stdout == b"anyone may read this\n"
        shown = subprocess.run(["getfacl", "-n", top / "denied.txt"], capture_output=True, text=True).stdout
        assert f"user:{uid}:---" in shown, shown
        denied = cat(top / "denied.txt")
        assert denied.returncode != 0 and b"Permission denied" in denied.stderr, denied
        granted = cat(top / "granted.txt")
        assert granted.returncode == 0 and granted.stdout == b"the owner and one named user\n", granted
        behind = cat(top / "closed" / "inside.txt")   # the folder's ACL denies the walk (lookup)
        assert behind.returncode != 0 and b"Permission denied" in behind.stderr, behind
        listing = subprocess.run([*as_other, "ls", top / "closed"], capture_output=True, timeout=60)
        assert listing.returncode != 0 and b"Permission denied" in listing.stderr, listing
        # the owner still reads everything
        assert (top / "denied.txt").read_bytes() == b"everyone but one user\n"
        assert (top / "closed" / "inside.txt").read_bytes() == b"behind a denied folder\n"
    finally:
        unmount(mnt)
