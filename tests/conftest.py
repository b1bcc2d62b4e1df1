"""Shared fixtures: an isolated client home, the real command-line programs run
as subprocesses, and a tree comparison that looks at content and metadata."""
import hashlib
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
PASSWORD = "correct horse battery staple"


class Env:
    """One test's client machine: $IRONCORE_HOME, a volume folder, and runners."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.home = tmp / "home"
        self.volume = tmp / "volume"
        self.env = dict(os.environ, IRONCORE_HOME=str(self.home), IRONCORE_PASSWORD=PASSWORD,
                        IRONFS_PASSWORD=PASSWORD)

    def run(self, program: str, *args, input: bytes | None = None, check: bool = True, env: dict | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(BIN / program), *map(str, args)], input=input, capture_output=True,
                              env=env or self.env, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{program} {' '.join(map(str, args))} exited {proc.returncode}\n"
                                 f"stdout: {proc.stdout.decode(errors='replace')}\n"
                                 f"stderr: {proc.stderr.decode(errors='replace')}")
        return proc

    def ironcore(self, *args, **kw):
        return self.run("ironcore", *args, **kw)

    def ironfs(self, *args, **kw):
        return self.run("ironfs", *args, **kw)

    def add_set(self, name: str, *sources, excludes=()):
        args = ["set", "add", name, "--to", f"file://{self.volume}"]
        for s in sources:
            args += ["--source", s]
        for e in excludes:
            args += ["--exclude", e]
        return self.ironcore(*args)

    def backup_json(self, name: str = "s") -> dict:
        import json
        return json.loads(self.ironcore("backup", name, "--json").stdout)

    def restored(self, target: Path, source: Path) -> Path:
        """Where `source` lands inside a restore into `target` (full paths are kept)."""
        return target / str(source).lstrip("/")


@pytest.fixture
def env(tmp_path) -> Env:
    return Env(tmp_path)


def describe_tree(root: Path) -> dict:
    """path -> (kind, mode, uid, gid, mtime_ns, size, sha256 | link target, xattrs) for every entry below root."""
    out = {}
    root_b = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(root_b):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root_b)
            kind = stat.S_IFMT(st.st_mode)
            if stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                data = h.hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                data = os.readlink(path)
            else:
                data = None
            try:
                xattrs = sorted((n, os.getxattr(path, n, follow_symlinks=False))
                                for n in os.listxattr(path, follow_symlinks=False))
            except OSError:
                xattrs = []
            mode = None if stat.S_ISLNK(st.st_mode) else stat.S_IMODE(st.st_mode)
            out[rel] = (kind, mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_size if not stat.S_ISDIR(st.st_mode) else 0,
                        data, xattrs)
    return out


def assert_same_tree(a: Path, b: Path) -> None:
    da, db = describe_tree(a), describe_tree(b)
    assert sorted(da) == sorted(db), f"entries differ: only in source {set(da) - set(db)}, only in restore {set(db) - set(da)}"
    for k in da:
        assert da[k] == db[k], f"{k!r} differs:\n source  {da[k]}\n restore {db[k]}"


def wait_for(predicate, timeout: float, what: str, proc=None):
    """The first true value of predicate(), polled until `timeout` s have passed; fails if
    `proc` (a Popen) ends first. Tests wait on conditions like this, never on fixed sleeps."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process exited {proc.returncode} while waiting for {what}: "
                                 f"{proc.stderr.read().decode(errors='replace')}")
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
