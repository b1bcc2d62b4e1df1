"""`ironcore mount` of a server set while the server is stopped (SIGSTOP: it
accepts connections and never answers) or gone (SIGKILL): a read through the
mount fails with EIO within --read-timeout, the rest of the tree still lists,
and a reader that is SIGKILLed while it waits exits at once."""
import errno
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from serverkit import Server, login, make_root
from test_fuse import mounted, unmount
from test_remote import add_server_set

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")

MiB = 1 << 20
READ_TIMEOUT = 4   # the mount's --read-timeout in these tests
SLACK = 10         # a loaded machine


@pytest.fixture
def mounted_server_set(env, tmp_path, request):
    """A server set of files never read before, mounted with `ironcore mount
    --read-timeout` (READ_TIMEOUT unless the test says), and its server, which
    the tests stop or kill (so it is not serverkit's fixture)."""
    src = tmp_path / "src"
    src.mkdir()
    rnd = random.Random(31)
    for i in range(6):
        (src / f"f{i}.bin").write_bytes(rnd.randbytes(MiB + 1001 * i))
    make_root(env, tmp_path / "root")
    server = Server(tmp_path / "root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        login(env, server.url)
        add_server_set(env, "docs", src)
        env.backup_json("docs")
        env.ironcore("mount", "docs", mnt, "--read-timeout", getattr(request, "param", READ_TIMEOUT))
        assert mounted(mnt)
        top = mnt / "docs" / "latest" / str(src).lstrip("/")
        assert sorted(os.listdir(top)) == [f"f{i}.bin" for i in range(6)]
        yield server, top, src
    finally:
        unmount(mnt)
        if server.proc.poll() is None:
            os.kill(server.proc.pid, signal.SIGCONT)
            server.stop()


def timed_cat(path) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    proc = subprocess.run(["cat", path], capture_output=True, timeout=120)
    return proc, time.monotonic() - start


@pytest.mark.parametrize("outage", [signal.SIGSTOP, signal.SIGKILL])
def test_a_read_during_an_outage_fails_with_eio_within_the_bound(mounted_server_set, outage):
    server, top, src = mounted_server_set
    os.kill(server.proc.pid, outage)
    if outage == signal.SIGKILL:
        server.proc.wait(timeout=20)
    proc, took = timed_cat(top / "f1.bin")
    assert proc.returncode != 0 and os.strerror(errno.EIO).encode() in proc.stderr, proc
    assert took < READ_TIMEOUT + SLACK, f"cat took {took:.1f} s"
    # names, sizes and listings come from the client's mirror meanwhile
    assert os.stat(top / "f2.bin").st_size == (src / "f2.bin").stat().st_size
    assert sorted(os.listdir(top)) == [f"f{i}.bin" for i in range(6)]
    if outage == signal.SIGSTOP:   # the server back: reads work again, whole
        os.kill(server.proc.pid, signal.SIGCONT)
        proc, _ = timed_cat(top / "f3.bin")
        assert proc.returncode == 0 and proc.stdout == (src / "f3.bin").read_bytes()


@pytest.mark.parametrize("mounted_server_set", [60], indirect=True)   # far longer than "at once"
@pytest.mark.parametrize("how", ["cat", "odirect"])
def test_a_reader_killed_while_it_waits_exits_at_once(mounted_server_set, how):
    server, top, _ = mounted_server_set
    os.kill(server.proc.pid, signal.SIGSTOP)
    if how == "cat":
        reader = subprocess.Popen(["cat", top / "f4.bin"], stdout=subprocess.DEVNULL)
    else:   # O_DIRECT: a synchronous request the kernel cannot drop on its own
        reader = subprocess.Popen([sys.executable, "-c", (
            "import mmap, os, sys\n"
            "fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECT)\n"
            "os.preadv(fd, [mmap.mmap(-1, 1 << 20)], 0)\n"), top / "f5.bin"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:   # until it waits on the mount: in a FUSE request or for a page it reads
        with open(f"/proc/{reader.pid}/stack") as f:
            stack = f.read()
        if "fuse" in stack or "filemap_read" in stack:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the reader never waited on the mount: {stack}")
    reader.kill()
    start = time.monotonic()
    reader.wait(timeout=90)
    took = time.monotonic() - start
    assert took < 5, f"the killed reader took {took:.1f} s to exit"
